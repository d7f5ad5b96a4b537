"""The one way gepa_lab composes a config outside a Hydra app, through Hydra's public compose API: conf/run.yaml or
conf/sweep.yaml with overrides (tests, the W&B agent, scripts), and a corpus YAML as a config of its own folder."""
from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from gepa_lab.errors import ConfigError
from gepa_lab.paths import CONF_DIR, PROJECT_ROOT

# The primary config when a config is composed over `under`: `under` itself, then the config on top of it.
_UNDER = "gepa_lab_compose_under"
# Hydra's config store and GlobalHydra are the process's: composing and storing take turns (a module that stores
# its defaults may be imported in one thread while another composes)
_COMPOSING = threading.RLock()


def register_resolvers() -> None:
    """The resolvers conf/*.yaml use (${project_root:})."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


def store_config(name: str, node: Any) -> None:
    """Hydra's ConfigStore.store, taking turns with compose()."""
    from hydra.core.config_store import ConfigStore

    with _COMPOSING:
        ConfigStore.instance().store(name=name, node=node)


def hydra_message(exc: BaseException) -> str:
    """Hydra's message (all lines, joined) plus the first line of its cause when that adds something. The config
    search path Hydra lists after a missing option is left out: the options it lists say what to choose."""
    text = str(exc).split("\nConfig search path:")[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("See https://")]
    msg = " ".join(lines) or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause).strip():
        extra = str(cause).strip().splitlines()[0]
        if extra not in msg:
            msg += f" ({extra})"
    return msg


def _file_being_read(exc: BaseException) -> str:
    """' in FILE' for the config file Hydra was reading when `exc` rose (its loader's local `full_path`), else ''."""
    tb = exc.__traceback__
    while tb is not None:
        path = tb.tb_frame.f_locals.get("full_path")
        if isinstance(path, str):
            return f" in {path}"
        tb = tb.tb_next
    return ""


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'lm': {'model': 'x'}} -> {'lm.model': 'x'}: a config as dotted keys, the way overrides name them. Lists stay
    whole; an empty mapping is a value of its own (its key is not lost)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


def compose(config_name: str | None, overrides: Sequence[str] = (), *, config_dir: str | Path = CONF_DIR,
            under: Mapping[str, Any] | None = None, return_hydra_config: bool = False) -> DictConfig:
    """config_dir/config_name.yaml with Hydra command-line overrides (``a.b=1``, ``+new=2``, ``~gone``, ``group=option``),
    composed as the entry points compose it. `under`: values the config is composed on top of, so that
    ``key=value`` reaches them without a '+' (a schema's defaults); with no config_name, `under` alone is the config.
    A Hydra app running in this process is left undisturbed; threads compose one at a time (Hydra's state is the
    process's). Raises ConfigError with Hydra's message on one line."""
    with _COMPOSING:
        return _compose(config_name, overrides, config_dir, under, return_hydra_config)


def _compose(config_name: str | None, overrides: Sequence[str], config_dir: str | Path,
             under: Mapping[str, Any] | None, return_hydra_config: bool) -> DictConfig:
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_resolvers()
    primary = config_name
    if under is not None:
        node = {"defaults": ["_self_", config_name], **under} if config_name else under
        ConfigStore.instance().store(name=_UNDER, node=node)
        primary = _UNDER
    running = GlobalHydra.instance().hydra  # a Hydra app's (None outside one): set back after composing
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=None):
            return hydra_compose(primary, overrides=list(overrides), return_hydra_config=return_hydra_config)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(hydra_message(exc)) from None
    except (yaml.YAMLError, UnicodeDecodeError, ValueError) as exc:  # Hydra lets these through as they are: a config
        # file it cannot parse, or whose `# @package` header line it cannot read
        message = hydra_message(exc)
        where = _file_being_read(exc)
        what = "malformed YAML" if isinstance(exc, (yaml.YAMLError, UnicodeDecodeError)) else "bad config file"
        raise ConfigError(f"{what}{'' if where[4:] in message else where}: {message}") from None
    finally:
        if running is not None:
            GlobalHydra.instance().initialize(running)
