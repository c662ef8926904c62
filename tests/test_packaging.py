"""What a non-editable install ships: every Python package and config group in the tree.

CI installs the project with ``pip install .``; a package missing from
``[tool.setuptools] packages`` imports fine from the checkout and fails only there.
"""

from __future__ import annotations

from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> set[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return set(tomllib.load(f)["tool"]["setuptools"]["packages"])


def test_every_python_package_in_the_tree_is_shipped() -> None:
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "modelfactory").rglob("__init__.py")
    }
    assert "modelfactory.checkpoint" in found
    assert found - _declared() == set()


def test_every_config_group_is_shipped() -> None:
    groups = {
        ".".join(("modelfactory.conf", *d.relative_to(ROOT / "conf").parts))
        for d in (ROOT / "conf").rglob("*")
        if d.is_dir() and any(d.glob("*.yaml"))
    }
    assert "modelfactory.conf.model" in groups
    assert groups - _declared() == set()
