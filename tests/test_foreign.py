"""Models of other libraries: a Hugging Face class with its config object, factory functions
and classmethods build like any target, and restore from the file alone where trusted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import modelfactory as mf
from modelfactory._app import job
from modelfactory.errors import CheckpointError, ConfigError, UntrustedTargetError

from .checkpoint_helpers import rewrite_doc
from .cli_helpers import checksums, run

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "mfpkg_demo"  # written by the `package` fixture, importable by name in each test
LLAMA = {
    "_target_": "transformers.LlamaForCausalLM",
    "config": {
        "_target_": "transformers.LlamaConfig",
        **{"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32},
        **{"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2},
        **{"max_position_embeddings": 32, "rope_theta": 5000.0},  # a **kwargs-only keyword
    },
}
BERT = {
    "_target_": "transformers.BertModel",
    "add_pooling_layer": False,
    "config": {
        "_target_": "transformers.BertConfig",
        **{"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32},
        **{"num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 32},
    },
}
TOKENS = {"input_shape": [2, 8], "input_dtype": "long"}
CODE = '''
import torch
from torch import nn


def make_mlp(width: int, depth: int) -> nn.Sequential:
    """A factory function returning a plain nn.Sequential."""
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers)


class Scaled(nn.Module):
    def __init__(self, layer: nn.Module, scale: float) -> None:
        super().__init__()
        self.layer = layer
        self.register_buffer("scale", torch.tensor(scale))

    def forward(self, x):
        return self.layer(x) * self.scale

    @classmethod
    def around(cls, width: int) -> "Scaled":
        return cls(nn.Linear(width, width), 0.5)


def make_scaled(width: int) -> Scaled:
    """Reads a value while it builds, so it cannot run on the meta device."""
    layer = nn.Linear(width, width)
    return Scaled(layer, float(layer.weight.detach().abs().sum()))


class Loose(nn.Linear):
    def __init__(self, in_features: int, out_features: int, **extra) -> None:
        super().__init__(in_features, out_features)
        self.extra = extra
'''


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the importable package ``mfpkg_demo``."""
    where = tmp_path_factory.mktemp("pkg")
    (where / PACKAGE).mkdir()
    (where / PACKAGE / "__init__.py").write_text(CODE)
    sys.path.insert(0, str(where))
    yield where
    sys.path.remove(str(where))
    sys.modules.pop(PACKAGE, None)


def _output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model.eval()(x)  # Hugging Face models are built in training mode: dropout
    return out if isinstance(out, torch.Tensor) else out[0]  # logits, last hidden state


def _pkg(target: str, **kw: Any) -> dict[str, Any]:
    return {"_target_": f"{PACKAGE}.{target}", **kw}


def test_each_restores_bit_exactly_in_a_fresh_process(package: Path, tmp_path: Path) -> None:
    floats = {"input_shape": [2, 4]}
    cases = {
        "llama": ({"model": LLAMA, **TOKENS}, "transformers.*"),
        "bert": ({"model": BERT, **TOKENS}, "transformers.*"),
        "function": ({"model": _pkg("make_mlp", width=4, depth=2), **floats}, f"{PACKAGE}.*"),
        "classmethod": ({"model": _pkg("Scaled.around", width=4), **floats}, f"{PACKAGE}.*"),
        "not on meta": ({"model": _pkg("make_scaled", width=4), **floats}, f"{PACKAGE}.*"),
    }
    expected = {}
    for name, (cfg, trusted) in cases.items():
        model = mf.build(cfg)
        x = job.sample_output(model, mf.config_of(model))[0]
        mf.save(model, tmp_path / name)
        mf.save_tensors({"x": x, "y": _output(model, x)}, tmp_path / name / "io.safetensors")
        with pytest.raises(UntrustedTargetError):
            mf.load(tmp_path / name)  # untrusted: refused before anything is imported
        expected[name] = trusted
    script = textwrap.dedent(
        f"""
        import json, torch, modelfactory as mf
        from pathlib import Path
        out = {{}}
        for name, trusted in {expected!r}.items():
            d = Path({str(tmp_path)!r}) / name
            model = mf.load(d, trusted=[trusted])
            io = mf.load_tensors(d / "io.safetensors")
            with torch.no_grad():
                y = model.eval()(io["x"])
            y = y if isinstance(y, torch.Tensor) else y[0]
            metas = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
            out[name] = [type(model).__name__, torch.equal(y, io["y"]), metas]
        print(json.dumps(out))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package), str(ROOT)])}
    r = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.splitlines()[-1])
    assert out == {
        "llama": ["LlamaForCausalLM", True, []],
        "bert": ["BertModel", True, []],
        "function": ["Sequential", True, []],
        "classmethod": ["Scaled", True, []],
        "not on meta": ["Scaled", True, []],
    }


def test_validation_takes_what_the_callable_takes(package: Path) -> None:
    from transformers import LlamaConfig

    with pytest.raises(ConfigError, match=r"model\.config: cannot read this transformers\S+"):
        mf.build({"_target_": "transformers.LlamaForCausalLM", "config": LlamaConfig()})
    model = mf.build(LLAMA)  # LlamaConfig's signature lists no rope_theta; its **kwargs take it
    assert model.config.rope_parameters["rope_theta"] == 5000.0
    loose = mf.build(_pkg("Loose", in_features=2, out_features=3, anything="goes"))
    assert loose.extra == {"anything": "goes"}
    with pytest.raises(ConfigError, match=r"hidden_size: expected int for transformers"):
        mf.build({**LLAMA, "config": {**LLAMA["config"], "hidden_size": "wide"}})


def test_a_cpu_fallback_allocates_no_more_than_the_file_justifies(
    package: Path, tmp_path: Path
) -> None:
    model = mf.build({"model": _pkg("make_scaled", width=4), "input_shape": [1, 4]})
    file = mf.save(model, tmp_path / "s")
    # the config now asks for 40,000 x 40,000 floats (6.4 GB); the file holds 4 x 4
    rewrite_doc(file, config={**mf.config_of(model), "model": _pkg("make_scaled", width=40000)})
    with pytest.raises(CheckpointError, match=r"would allocate more than [0-9,]+ bytes"):
        mf.load(file, trusted=[f"{PACKAGE}.*"])


def test_save_refuses_a_config_that_would_not_rebuild_and_keeps_the_old_checkpoint(
    package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = mf.build({"model": _pkg("make_mlp", width=4, depth=1), "input_shape": [1, 4]})
    mf.save(good, tmp_path / "c")
    before = {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()}

    class Script(nn.Linear):  # as a class of a script run with `python train.py` is
        pass

    Script.__module__, Script.__qualname__ = "__main__", "Script"
    monkeypatch.setattr(sys.modules["__main__"], "Script", Script, raising=False)
    scripted = mf.build({"_target_": Script, "in_features": 4, "out_features": 4})
    assert mf.config_of(scripted)["model"]["_target_"] == "__main__.Script"
    with pytest.raises(CheckpointError, match=r"model\._target_: '__main__\.Script' is defined in"):
        mf.save(scripted, tmp_path / "c")
    live = {"_target_": "modelfactory.blocks.Residual", "body": nn.Linear(4, 4)}
    with pytest.raises(CheckpointError, match=r"model\.body: a live torch\.nn\S+\.Linear object"):
        mf.save(mf.build(live), tmp_path / "c")  # built from a deep copy, stored as what?
    assert {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()} == before


def test_restore_on_the_command_line(package: Path, tmp_path: Path) -> None:
    model = mf.build({"model": _pkg("make_mlp", width=4, depth=2), "input_shape": [2, 4]})
    mf.save(model, package / "ckpt")  # the command imports modules from its directory
    want = job.checksum(job.sample_output(model, mf.config_of(model))[1])["sha256"]
    r = run(package, f"restore={package / 'ckpt'}", f"trusted=[{PACKAGE}.*]")
    assert r.returncode == 0, r.stderr
    assert checksums(r.stdout + r.stderr) == [want]
