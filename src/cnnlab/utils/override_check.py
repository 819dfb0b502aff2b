"""Refuse a command-line override that adds a config key nothing reads (a mistyped key).

Hydra refuses ``targetclass=cat`` when the config has no such key, and its hint says to write
``+targetclass=cat``; that is accepted, and the run then goes on without the setting, since the
script reads ``target_class``. ``+trainer.max_epoch=1`` is accepted too, and fails only when the
Trainer is built, after the run folder, the log and the seed. :func:`refuse_unread_additions`
stops both before the run starts.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterator
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import ConfigValueError

# Nodes (by the config's name) whose added keys a task reads without a ``_target_``, and checks
# itself: eval and visualize without ``data=`` merge ``+data.KEY=VALUE`` into the checkpoint's own
# data config, and refuse a key that config lacks (tasks/evaluate.py, with_data_settings).
FREE_FORM: dict[str, tuple[str, ...]] = {"eval": ("data",), "visualize": ("data",)}


def refuse_unread_additions(config: DictConfig) -> None:
    """Raise :class:`ConfigValueError` for an added key (``+key=value``, ``++key=value``) that nothing reads.

    ``config`` is the composed config with its ``hydra`` node (as Hydra's callbacks get it). An
    added key is read when it, or a node above it, has a ``_target_``: ``hydra.utils.instantiate``
    passes it on. A key added right under a ``_target_`` is refused here when that constructor
    takes no argument of its name (nor ``**kwargs``), as it would refuse it later. Keys under ``hydra.``
    (Hydra checks them), those of the :data:`FREE_FORM` nodes, and keys the config already had
    (``++benchmark.rounds=2``, ``+target_class=cat`` over its ``null``) are left alone, as are
    config group choices (``+model/normalize=cifar10``). Sweep overrides (``+foo=1,2``) are checked
    by each job, where they are single values.

    The keys the config had before the additions come from composing it again with the
    command's group choices alone (Hydra's compose API: in a Hydra app, or under
    ``initialize_config_dir``), only when an addition is not passed to a constructor.
    """
    hydra_cfg = config.hydra
    choices = set(hydra_cfg.runtime.choices.keys())
    overrides = OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task))
    groups = [str(o.input_line) for o in overrides if o.key_or_group in choices or o.package is not None]
    free_form = FREE_FORM.get(str(hydra_cfg.job.config_name), ())
    composed = OmegaConf.to_container(config, resolve=False)
    assert isinstance(composed, dict)  # a DictConfig's container is a dict
    added = [(override, path) for override in overrides
             if (override.is_add() or override.is_force_add()) and not override.is_sweep_override()
             and override.key_or_group not in choices and override.package is None
             for path in _added_paths(override.key_or_group, override.value())
             if path[0] not in ("hydra", *free_form)]
    # Each with the constructor that refuses it (and its arguments), or None for a key no constructor is given.
    suspects = [(override, path, refused) for override, path in added
                if (refused := _constructor_refuses(composed, path)) is not None or not _instantiated(composed, path)]
    if not suspects:
        return
    from hydra import compose

    base = OmegaConf.to_container(compose(str(hydra_cfg.job.config_name), overrides=groups), resolve=False)
    assert isinstance(base, dict)
    base.pop("hydra", None)
    for override, path, refused in suspects:
        level, missing = _first_missing(base, path)
        if missing is None:
            continue
        if refused is not None:
            raise ConfigValueError(_message(override, path, refused[1], len(path) - 1, constructor=refused[0]))
        raise ConfigValueError(_message(override, path, level, missing))


def _added_paths(key: str, value: Any) -> Iterator[list[str]]:
    # A mapping without a _target_ (+benchmark={round: 2}) is merged key by key: each is an addition.
    # One with a _target_ (+callbacks.stop={_target_: ..., patience: 3}) is added whole, and its keys are its arguments.
    path = key.split(".")
    if isinstance(value, dict) and value and "_target_" not in value:
        for name, item in value.items():
            yield from _added_paths(f"{key}.{name}", item)
        return
    yield path
    if isinstance(value, dict):
        yield from ([*path, str(name)] for name in value)


def _instantiated(composed: dict[Any, Any], path: list[str]) -> bool:
    # Whether the key, or a node above it, is handed to a constructor (has a _target_).
    node: Any = composed
    for name in path:
        if not isinstance(node, dict) or name not in node:
            return False
        node = node[name]
        if isinstance(node, dict) and "_target_" in node:
            return True
    return False


def _constructor_refuses(composed: dict[Any, Any], path: list[str]) -> tuple[str, list[str]] | None:
    """The target and its argument names, when ``path`` is added right under a ``_target_`` that takes no such argument."""
    node: Any = composed
    for name in path[:-1]:
        node = node.get(name) if isinstance(node, dict) else None
    key = path[-1]
    if not isinstance(node, dict) or "_target_" not in node or (key.startswith("_") and key.endswith("_")):
        return None  # deeper in a constructor's argument, or Hydra's own (_partial_, _convert_): not judged here
    try:
        from hydra.utils import get_object

        parameters = inspect.signature(get_object(str(node["_target_"]))).parameters
    except Exception:  # an unimportable target, or one without a signature, fails in instantiate with its own error
        return None
    if key in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return str(node["_target_"]), [name for name, p in parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]


def _first_missing(base: dict[Any, Any], path: list[str]) -> tuple[dict[Any, Any], int | None]:
    """The node where ``path`` leaves the config, and the index of the first name it lacks (None: all there)."""
    node: Any = base
    for index, name in enumerate(path):
        if not isinstance(node, dict) or name not in node:
            return (node if isinstance(node, dict) else {}), index
        node = node[name]
    return {}, None


def _message(override: Override, path: list[str], level: dict[str, Any] | list[str], missing: int,
             constructor: str | None = None) -> str:
    whole = path == override.key_or_group.split(".")  # else one key of a mapping the override merges
    keys = sorted(str(k) for k in level if k != "hydra")
    close = difflib.get_close_matches(path[missing], keys, n=3)
    fixes = [".".join([*path[:missing], name, *path[missing + 1:]]) for name in close]
    if whole:  # the key that is there needs no +: a plain override sets it
        value = str(override.input_line).split("=", 1)[1]  # as typed (Hydra's own string of it is Python's)
        fixes = [f"{fix}={value}" for fix in fixes]
    hint = f"did you mean {' or '.join(fixes)}?" if fixes else f"no key there is close to {path[missing]}."
    place = f"the keys in {'.'.join(path[:missing])}" if missing else "the top-level keys"
    added = "a key" if whole else f"the key {'.'.join(path)}"
    if constructor is not None:  # the Trainer's ~50 arguments would bury the hint: long lists are left to its docs
        listed = f"its arguments: {', '.join(keys)}; " if len(keys) <= 20 else ""
        return (f"{override.input_line} adds {added} that nothing reads: {constructor} has no argument "
                f"{path[-1]}; {hint} ({listed}nothing was run)")
    return (f"{override.input_line} adds {added} that nothing reads (no option of this task, and no constructor is "
            f"given it); {hint} ({place}: {', '.join(keys) or 'none'}; nothing was run)")
