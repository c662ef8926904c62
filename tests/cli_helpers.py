"""Shared by the tests of the ``modelfactory`` command: running it as a user does (the
console script, by subprocess), the checksums it prints, a sweep's csv, the docs."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # README first


def docs_text() -> str:
    """README.md and every page of docs/, one after the other: where the examples are."""
    return "\n".join(p.read_text() for p in DOCS)


CHECKSUM = re.compile(r"checksum: sha256=([0-9a-f]{64}) sum=(\S+)")


def command() -> list[str]:
    script = shutil.which("modelfactory", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "modelfactory.cli"]


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return subprocess.run(
        [*command(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def checksums(out: str) -> list[str]:
    return [m[0] for m in CHECKSUM.findall(out)]


def sweep_rows(sweep_dir: Path) -> list[dict[str, str]]:
    with (sweep_dir / "sweep.csv").open() as f:
        return list(csv.DictReader(f))
