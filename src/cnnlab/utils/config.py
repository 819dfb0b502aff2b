"""Hydra/OmegaConf helpers shared by the scripts."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def register_resolvers() -> None:
    """Register cnnlab's OmegaConf resolvers. Call before Hydra composes a config.

    ``${run_id:}`` is a random 6-hex-digit suffix, drawn once per process, so two runs started
    in the same second still get different folders.
    """
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", lambda: secrets.token_hex(3), use_cache=True)


def instantiate_all(section: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config section that has a ``_target_`` (callbacks, loggers)."""
    if not section:
        return []
    return [instantiate(entry) for entry in section.values() if isinstance(entry, DictConfig) and "_target_" in entry]


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into ``a/b/c`` keys with scalar values (for TensorBoard's hparams)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}/"))
        elif isinstance(value, (list, tuple)):
            flat[name] = str(list(value))
        elif value is None:
            flat[name] = "null"
        else:
            flat[name] = value
    return flat


@rank_zero_only
def print_config(cfg: DictConfig, sections: Iterable[str] | None = None) -> None:
    """Print the composed config (or some of its top-level sections) as YAML."""
    keys = list(sections) if sections is not None else [k for k in cfg if k != "hydra"]
    resolved = OmegaConf.to_container(cfg, resolve=True)
    shown = {key: resolved[key] for key in keys if key in resolved}
    print("-" * 30 + " config " + "-" * 30)
    print(OmegaConf.to_yaml(shown), end="")
    print("-" * 68, flush=True)
