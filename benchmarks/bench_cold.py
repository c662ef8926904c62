"""Cold start: whole fresh processes, imports included (issue 11).

Run by hand: ``python benchmarks/bench_cold.py [--runs 7] [--importtime]``. Each contender
is a new ``python`` process, timed from outside (start to exit); the contenders take turns
(one round runs each once, in an order that rotates), after one untimed warm-up round that
also puts the checkpoints into the page cache. Figures are medians (and minima) of the
timed rounds.

    torch        python -c "import torch"
    torch-gc     import torch as the cli does: collector off during the import, then
                 gc.freeze() (collections, the last one at exit included, skip torch's
                 objects); "cli - torch-gc" is the cli's own cost over the same handling
    mf.load      import modelfactory as mf; m = mf.load(d); every weight read once
    hf           GPT2LMHeadModel.from_pretrained(d_hf); every weight read once
                 (only if transformers is installed; never a dependency)
    cli          the modelfactory console script's main job (default model, a new run dir
                 each time, ``${now:...}`` as Hydra's default): ``cli.run``, which pauses
                 the collector while it imports (modelfactory/_app/startup.py)
    cli-main     the same command through ``cli.main`` (what a caller's process runs):
                 the collector left alone; "cli-main - cli" is what the pause saves

Goals: mf.load at least 2x faster than hf on GPT-2 size (124M parameters, tied head), and
the cli at most 0.4 s over ``import torch``. ``--importtime`` also prints, per contender,
the slowest imports (``python -X importtime``, cumulative) of one extra run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOUCH = "s = sum(float(t.detach().sum()) for t in [*m.parameters(), *m.buffers()])"
SNIPPETS = {
    "torch": "import torch",
    "torch-gc": "import gc; gc.disable(); import torch; gc.freeze(); gc.enable()",
    "mf.load": f"import sys; import modelfactory as mf; m = mf.load(sys.argv[1]); {TOUCH}",
    "cli-main": "from modelfactory.cli import main; main()",
    "hf": (
        "import sys; from transformers import GPT2LMHeadModel; "
        f"m = GPT2LMHeadModel.from_pretrained(sys.argv[1]); {TOUCH}"
    ),
}
# Nothing reaches for the hub, and every contender sees the same environment. Bytecode
# caching is on, as is Python's default and as a pip-installed package ships it: with
# PYTHONDONTWRITEBYTECODE set (some sandboxes set it) an editable checkout recompiles all
# of modelfactory's modules in every process, about 55 ms that no user pays.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
ENV.pop("PYTHONDONTWRITEBYTECODE", None)


def has_transformers() -> bool:
    return importlib.util.find_spec("transformers") is not None


def prepare(workdir: Path, names: list[str]) -> None:
    """The two same-size checkpoints: ``model=gpt2`` by modelfactory, a GPT2LMHeadModel
    (default GPT2Config, tied head) by ``save_pretrained``."""
    import modelfactory as mf
    from modelfactory.configs import compose

    mf.save(mf.build(compose(["model=gpt2"])), workdir / "mf")
    if has_transformers() and "hf" in names:
        from transformers import GPT2Config, GPT2LMHeadModel

        GPT2LMHeadModel(GPT2Config()).save_pretrained(workdir / "hf")


def cli_command() -> list[str]:
    """The installed console script, as a user runs it (else the module, the same ``main``)."""
    script = shutil.which("modelfactory", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "modelfactory.cli"]


# The same command line every time, a new run directory every time (Hydra resolves it late).
RUN_DIR = "hydra.run.dir=runs/${now:%Y-%m-%d_%H-%M-%S-%f}"
CLIS = ("cli", "cli-main")


def command(name: str, workdir: Path, extra: tuple[str, ...] = ()) -> list[str]:
    if name == "cli":
        cmd = cli_command()
        if extra and cmd[0] != sys.executable:
            cmd = [sys.executable, *extra, cmd[0]]
        return [*cmd, RUN_DIR]
    if name == "cli-main":
        return [sys.executable, *extra, "-c", SNIPPETS[name], RUN_DIR]
    target = {"mf.load": [str(workdir / "mf")], "hf": [str(workdir / "hf")]}.get(name, [])
    return [sys.executable, *extra, "-c", SNIPPETS[name], *target]


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_once(name: str, workdir: Path) -> tuple[float, float]:
    """Wall-clock and CPU (user + system) seconds of one fresh process."""
    cmd = command(name, workdir)
    cpu0, t0 = _child_cpu(), time.perf_counter()
    done = subprocess.run(cmd, env=ENV, cwd=workdir, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - t0, _child_cpu() - cpu0
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({' '.join(cmd)}):\n{done.stderr}")
    return seconds, cpu


def slowest_imports(name: str, workdir: Path, top: int) -> list[tuple[float, str]]:
    """The ``top`` imports with the largest cumulative time, from ``-X importtime``; torch's
    own submodules are left out (``torch`` itself is listed), so what else is imported shows."""
    cmd = command(name, workdir, extra=("-X", "importtime"))
    out = subprocess.run(cmd, check=True, env=ENV, cwd=workdir, capture_output=True, text=True)
    rows = []
    for line in out.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, module = line.removeprefix("import time:").split("|")
            if cumulative.strip().isdigit() and not module.strip().startswith("torch."):
                rows.append((int(cumulative) / 1e6, module.rstrip()))
    return sorted(rows, reverse=True)[:top]


def report(times: dict[str, list[tuple[float, float]]], hf_skipped: bool) -> None:
    n = len(next(iter(times.values())))
    print(f"\n{n} timed fresh processes per contender (alternating), seconds, whole process;")
    print("wall = start to exit, cpu = user + system (less sensitive to a busy machine)")
    print(
        f"{'contender':<13}{'wall med':>9}{'min':>8}{'- torch':>9}"
        f"{'cpu med':>9}{'- torch':>9}  goal"
    )
    wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    for k, v in times.items():
        goal = ""
        if k == "mf.load" and "hf" in wall:
            goal = (
                f"hf / mf.load = {wall['hf'] / wall[k]:.2f}x wall, "
                f"{cpu['hf'] / cpu[k]:.2f}x cpu (>= 2x)"
            )
        elif k in CLIS:
            goal = f"{k} - torch <= 0.4 s"
            if "torch-gc" in wall:
                goal += f"; - torch-gc = {wall[k] - wall['torch-gc']:+.3f} s wall"
            if k == "cli-main":  # what the collector's pause saves (keep it only if >= 50 ms)
                goal += f"; - cli = {wall[k] - wall['cli']:+.3f} s wall"
        print(
            f"{k:<13}{wall[k]:>9.3f}{min(w for w, _ in v):>8.3f}{wall[k] - wall['torch']:>+9.3f}"
            f"{cpu[k]:>9.3f}{cpu[k] - cpu['torch']:>+9.3f}  {goal}"
        )
    if hf_skipped:
        print("hf: transformers is not installed; row left out")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7, help="timed rounds (default 7)")
    ap.add_argument("--importtime", action="store_true", help="also list the slowest imports")
    ap.add_argument("--top", type=int, default=12, help="imports listed per contender")
    ap.add_argument("--only", help="comma-separated contenders (torch is always run)")
    args = ap.parse_args()
    names = ["torch", "mf.load", *(["hf"] if has_transformers() else []), "torch-gc", *CLIS]
    if args.only:
        names = [n for n in names if n == "torch" or n in args.only.split(",")]
        if "cli" in names:
            names = [n for n in names if n not in CLIS] + ["torch-gc", *CLIS]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        prepare(workdir, names)
        for name in names:  # warm-up: page cache, .pyc files
            time_once(name, workdir)
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
        for r in range(args.runs):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                times[name].append(time_once(name, workdir))
        report(times, hf_skipped=not has_transformers())
        if args.importtime:
            for name in names:
                print(f"\nslowest imports of {name} (cumulative s):")
                for seconds, module in slowest_imports(name, workdir, args.top):
                    print(f"  {seconds:7.3f}  {module}")


if __name__ == "__main__":
    main()
