"""Hydra/OmegaConf helpers shared by the scripts."""

from __future__ import annotations

import functools
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import ConfigValueError

log = logging.getLogger(__name__)


def register_resolvers() -> None:
    """Register cnnlab's OmegaConf resolvers. Call before Hydra composes a config.

    ``${run_id:}`` is a random 6-hex-digit suffix, drawn once per process, so two runs started
    in the same second still get different folders. ``${start_dir:}`` is the folder the command
    was started in. The others are documented below:
    ``run_dir_of_checkpoint`` and ``resume_session`` (resuming), ``on_rank_zero`` (DDP),
    ``ddp_strategy``, ``slurm_count`` and ``slurm_gpus`` (launching).
    """
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", lambda: secrets.token_hex(3), use_cache=True)
    if not OmegaConf.has_resolver("start_dir"):
        # Cached, and so carried with the config into every job of a sweep (Hydra copies the cache).
        OmegaConf.register_new_resolver("start_dir", start_dir, use_cache=True)
    resolvers: dict[str, Callable[..., Any]] = {
        "run_dir_of_checkpoint": run_dir_of_checkpoint,
        "resume_session": resume_session,
        "on_rank_zero": on_rank_zero,
        "ddp_strategy": ddp_strategy,
        "slurm_count": slurm_count,
        "slurm_gpus": slurm_gpus,
    }
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


CHECKPOINTS_FOLDER = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
RESULTS_FILE = "metrics.json"  # a run's final metrics, in its folder


# How to fill each value the configs leave open (``???``), for the error when one is not given.
_HOW_TO_SET = {
    "data.root": "data.root=DIR, a folder with DIR/train/<class>/<image files>",
    "inputs": "inputs=PATH, an image file or a folder of them",
    "ckpt_path": "ckpt_path=<run>/checkpoints/last.ckpt",
    "image": "image=PATH (an image file) or image=INDEX (of the test split)",
}


def ensure_values_set(cfg: DictConfig, filled_at_run_time: frozenset[str] = frozenset({"model.num_classes"})) -> None:
    """Fail before any work when a value the config leaves open (``???``) was not given, naming each
    one and how to set it (OmegaConf would only say "Missing mandatory value" once it is read)."""
    missing = sorted(OmegaConf.missing_keys(cfg) - filled_at_run_time)
    if missing:
        how = "; ".join(_HOW_TO_SET.get(key, f"{key}=...") for key in missing)
        raise ConfigValueError(f"no value for {', '.join(missing)}: set {'it' if len(missing) == 1 else 'each'} "
                               f"on the command line ({how})")


# What a YAML 1.1 reader (and many users) take for a switch, and the value each means.
_SWITCH_WORDS = {word: False for word in ("no", "n", "off", "false", "0")} | {
    word: True for word in ("yes", "y", "on", "true", "1")}


def is_count(value: object, least: int = 0) -> bool:
    """Whether ``value`` is a whole number (an int, not a bool: ``True`` is an int to Python) of at least ``least``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def ensure_count(value: object, key: str, least: int = 1) -> int:
    """``value`` when it is a whole number of at least ``least``; else a :class:`ConfigValueError` naming ``key``."""
    if not is_count(value, least):
        raise ConfigValueError(f"{key} must be a whole number of at least {least}, got {value!r}")
    assert isinstance(value, int)  # is_count says so; for mypy
    return value


def ensure_switch(value: object, key: str) -> bool:
    """``value`` itself when it is a real bool; else a :class:`ConfigValueError` naming ``key``.

    OmegaConf reads YAML 1.2, where only ``true`` and ``false`` are booleans: ``key=no``,
    ``key=off`` or ``key=yes`` on the command line arrives as the string ``'no'``, ``'off'`` or
    ``'yes'``, and any non-empty string is truthy, so ``if value:`` would silently switch an
    option on that the user meant to turn off. A number or null is refused too, for a switch
    has no third state. ``key`` is the config key the user types (``classifier.flip_tta``,
    ``model.cache_features``). Called once per option in constructors, never per step.
    """
    if isinstance(value, bool):
        return value
    meant = _SWITCH_WORDS.get(str(value).strip().lower()) if isinstance(value, (str, int)) else None
    hint = f": pass {key}={str(meant).lower()}" if meant is not None else ""
    raise ConfigValueError(f"{key} must be true or false, got {value!r}{hint}")


def run_folder(cfg: DictConfig) -> Path:
    """This run's folder, ``paths.output_dir``, where a task writes its results.

    Launched by Hydra, that is Hydra's own run folder (``.hydra/`` and the log are there), and
    overriding ``paths.output_dir`` alone would split a run's files over two folders: refused,
    with the override that moves the whole run. Composed without Hydra's runtime (the compose
    API, tests), ``paths.output_dir`` is whatever the caller set.
    """
    from hydra.core.hydra_config import HydraConfig

    output_dir = Path(cfg.paths.output_dir)
    if HydraConfig.initialized():
        hydra_dir = HydraConfig.get().runtime.output_dir
        if hydra_dir and Path(hydra_dir).resolve() != output_dir.resolve():
            raise ConfigValueError(
                f"paths.output_dir={output_dir} is not this run's folder {hydra_dir}, where Hydra writes "
                f".hydra/ and the log, so the run's files would be split over two folders. Choose the run "
                f"folder with hydra.run.dir={output_dir} (hydra.sweep.dir= for a multirun) instead, and "
                f"leave paths.output_dir as it is.")
    return output_dir


def start_dir() -> str:
    """The folder the command was started in: Hydra's ``runtime.cwd``.

    Unlike ``${hydra:runtime.cwd}`` this also resolves where Hydra's runtime config is not set
    yet: a multirun's sweeper resolves the sweep folder (under ``paths.log_dir``) before any job.
    """
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.cwd)
    return os.getcwd()


def run_dir_of_checkpoint(ckpt_path: str | None, default: str, *, _root_: DictConfig | None = None) -> str:
    """The run folder a training run resumed from ``ckpt_path`` continues in.

    A checkpoint inside a run folder (``<run>/checkpoints/<file>.ckpt``, next to ``<run>/.hydra``)
    continues in ``<run>``; anything else (no checkpoint, a checkpoint file from elsewhere) gets
    ``default``, a new folder. ``ckpt_path=last`` in a single run whose folder this decides (no
    ``hydra.run.dir=`` given, which replaces this resolver) is refused: a new folder holds no last
    checkpoint. It ends the process (Hydra would turn an error raised while its callbacks resolve
    the folder into a warning), before Hydra writes anything. A multirun's jobs (and SLURM's
    requeued ones) each have their own folder, where ``last`` starts afresh when there is none yet.
    """
    from hydra.types import RunMode

    if ckpt_path == "last" and _root_ is not None and OmegaConf.select(_root_, "hydra.mode") == RunMode.RUN:
        raise SystemExit(
            "ConfigValueError: ckpt_path=last continues the last checkpoint of the run folder named by "
            "hydra.run.dir, but none was given, so this run would get a new folder, which holds none; continue "
            "a run with hydra.run.dir=logs/train/runs/<run> ckpt_path=last (or ckpt_path=<a .ckpt file>). "
            "Nothing was written."
        )
    if not ckpt_path or ckpt_path == "last":
        return default
    checkpoint = Path(ckpt_path).expanduser()
    run = checkpoint.parent.parent
    if checkpoint.is_file() and checkpoint.parent.name == CHECKPOINTS_FOLDER and (run / ".hydra").is_dir():
        return str(run)
    return default


def session_overrides(run_dir: Path, session: str) -> Path:
    """The ``overrides.yaml`` a run's session recorded: ``.hydra/<session>/`` for a resumed session, ``.hydra/`` for the first ("")."""
    return run_dir / ".hydra" / session / "overrides.yaml"


@functools.cache
def resume_session(ckpt_path: str | None, output_dir: str) -> str:
    """``""`` for a run's first session; ``resumed_<date>_<time>`` for a session that resumes one.

    A resumed session writes its TensorBoard run and its Hydra config into sub-folders of this
    name, so the first session's files stay as they were. ``ckpt_path=last`` resumes only when
    ``output_dir`` already holds a last checkpoint; a checkpoint of another folder starts a new
    run in ``output_dir``, whose record is its first (``.hydra/config.yaml``). Decided once per
    process (cached), before this session writes anything.
    """
    if not ckpt_path or not continues_in(Path(output_dir), ckpt_path):
        return ""
    return time.strftime("resumed_%Y-%m-%d_%H-%M-%S")


def continues_in(output_dir: Path, ckpt_path: str) -> bool:
    """Whether ``ckpt_path`` resumes the run in ``output_dir``: ``last`` with a last checkpoint there, or one of its checkpoints."""
    if ckpt_path == "last":
        return (output_dir / CHECKPOINTS_FOLDER / LAST_CHECKPOINT).is_file()
    checkpoint = Path(ckpt_path).expanduser().resolve()
    return checkpoint.parent.name == CHECKPOINTS_FOLDER and checkpoint.parent.parent == output_dir.resolve()


def override_key(override: str) -> str:
    """The config key a command-line override sets: ``+trainer.x=1`` -> ``trainer.x``, ``~callbacks.a`` -> ``callbacks.a``."""
    return str(override).split("=", 1)[0].lstrip("+~")


def process_rank() -> int:
    """This process's global rank as the launcher set it (0 outside distributed runs)."""
    for variable in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(variable, "").isdigit():
            return int(os.environ[variable])
    return 0


def on_rank_zero(value: Any) -> Any:
    """``value`` in the rank-zero process, ``None`` in the others (e.g. SLURM's other tasks)."""
    return value if process_rank() == 0 else None


def ddp_strategy() -> str:
    """Lightning's DDP strategy that works where this run was started.

    Lightning's ``ddp`` starts the other processes by running the command again, which only
    works for a single run; in a local multirun (basic or submitit-local launcher) the job is
    a function call, so the processes are spawned instead (``ddp_spawn``). Under SLURM or
    torchrun every process is started from outside and ``ddp`` joins them.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if SLURMEnvironment.detect() or TorchElasticEnvironment.detect():
        return "ddp"
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return "ddp_spawn"
    return "ddp"


def slurm_count(value: Any, name: str) -> int:
    """A count SLURM needs as a positive number, e.g. tasks per node from ``trainer.devices``."""
    if not is_count(value, 1):
        raise ValueError(f"{name}={value!r}, but on SLURM it must be a positive number (e.g. {name}=4), "
                         f"which also sets the GPUs and tasks per node of the job")
    return value


def instantiate_all(section: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config section that has a ``_target_`` (callbacks, loggers)."""
    if not section:
        return []
    return [instantiate(entry) for entry in section.values() if isinstance(entry, DictConfig) and "_target_" in entry]


def config_dict(cfg: DictConfig, resolve: bool, throw_on_missing: bool = False) -> dict[str, Any]:
    """``OmegaConf.to_container`` of a mapping config, typed as the plain dict it gives."""
    container = OmegaConf.to_container(cfg, resolve=resolve, throw_on_missing=throw_on_missing)
    if not isinstance(container, dict):  # a DictConfig set to None gives None
        raise TypeError(f"expected a mapping config, got {type(container).__name__}")
    # Config keys from YAML and the command line are strings; OmegaConf types them more widely.
    return cast(dict[str, Any], container)


def print_config(cfg: DictConfig, sections: Iterable[str] | None = None) -> None:
    """Print the composed config (or some of its top-level sections) as YAML, from the rank-zero process only."""
    # Imported here, not at the top: Lightning takes seconds to import, and the scripts' early checks
    # (a mistyped override, a used run folder) read this module before any task runs.
    from lightning.pytorch.utilities import rank_zero_only

    rank_zero_only(_print_config)(cfg, sections)


def _print_config(cfg: DictConfig, sections: Iterable[str] | None) -> None:
    keys = list(sections) if sections is not None else [k for k in cfg if k != "hydra"]
    resolved = config_dict(cfg, resolve=True)
    shown = {key: resolved[key] for key in keys if key in resolved}
    print("-" * 30 + " config " + "-" * 30)
    print(OmegaConf.to_yaml(shown), end="")
    print("-" * 68, flush=True)


def slurm_gpus(accelerator: str, devices: Any) -> int | None:
    """GPUs per node for a SLURM job: ``trainer.devices`` when training on GPUs, none on CPUs."""
    if str(accelerator) == "cpu":
        return None
    return slurm_count(devices, "trainer.devices")
