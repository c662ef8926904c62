"""Where the shipped configs live, and composing them without the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["compose", "conf_dir", "model_names"]


def conf_dir() -> Path:
    """The shipped ``conf/`` folder: inside the installed package, or at the top of a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"modelfactory's conf/ folder was not found beside {here}")


def model_names() -> list[str]:
    """Every option of the ``model`` group."""
    return sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml"))


def compose(overrides: list[str] | None = None, config_name: str = "config") -> Any:
    """Compose the shipped config with Hydra overrides (``["model=rgnet", "seed=3"]``).

    Returns a ``DictConfig`` ready for :func:`modelfactory.build`.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))
