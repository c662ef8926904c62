"""Where the shipped configs live, and composing them without the command line."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._knobs import close_key
from .errors import ConfigError, dotted

__all__ = ["compose", "compose_error_text", "conf_dir", "model_names"]


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


def compose(overrides: Sequence[str] | None = None, config_name: str = "config") -> Any:
    """Compose the shipped config with Hydra overrides (``["model=rgnet", "seed=3"]``).

    Config groups on Hydra's search path are found too: a ``hydra.searchpath=[...]``
    override, or a package's search-path plugin (see the README, "Your own model").

    Returns:
        A ``DictConfig`` ready for :func:`modelfactory.build`.

    Raises:
        ConfigError: the overrides do not compose (an unknown option or key, a bad
            override), with Hydra's reason and a "did you mean" hint; also when
            ``overrides`` is a string rather than a list of strings.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(overrides, str):
        raise ConfigError(
            [
                (
                    "overrides",
                    f"expected a list of overrides such as ['model=rgnet', 'seed=3'], got the "
                    f"string {overrides!r}; wrap it in a list: [{overrides!r}]",
                )
            ]
        )
    from .resolvers import register

    register()  # ${mf.calc:...}: the composed config resolves anywhere it goes
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides or []))
    except (HydraException, OmegaConfBaseException) as e:
        key = dotted(getattr(e.__cause__, "full_key", None) or "") or "overrides"
        raise ConfigError(
            [(key, compose_error_text(e))], header="The config does not compose:"
        ) from e


def compose_error_text(e: BaseException) -> str:
    """Hydra's reason a config does not compose, on few lines, with a "did you mean" hint
    for an unknown key or group option (``d_modle=128``, ``model=gpt_smal``)."""
    from omegaconf.errors import OmegaConfBaseException

    text = str(e).split("Config search path:")[0]  # Hydra's search path: noise for a user
    options = [ln.strip() for ln in text.splitlines() if ln.startswith("\t")]
    text = "\n".join(ln for ln in text.splitlines() if not ln.startswith("\t") and ln.strip())
    missing = re.search(r"Could not find '(?:[^']*/)?([^'/]+)'", text)
    if options:  # "Available options in 'model':" + one per line -> one line
        hint = close_key(missing.group(1), options) if missing else None
        text = f"{text.rstrip()} {', '.join(options)}" + (
            f" (did you mean {hint!r}?)" if hint else ""
        )
    cause = e.__cause__
    hint = _key_hint(cause)
    if hint:
        text += f" (did you mean {hint!r}?)"
    elif isinstance(cause, OmegaConfBaseException) and str(cause) not in text:
        text += f"\n{cause}"
    return " ".join(ln.strip() for ln in text.splitlines() if ln.strip())


def _key_hint(cause: Any) -> str | None:
    """For an override of a key that does not exist: the closest key beside it."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    parent = getattr(cause, "parent_node", None)
    key = getattr(cause, "key", None)
    if not isinstance(cause, (ConfigAttributeError, ConfigKeyError)) or parent is None:
        return None
    if not isinstance(key, str) or not isinstance(parent, Mapping):
        return None
    return close_key(key, [str(k) for k in parent if k != "hydra"])
