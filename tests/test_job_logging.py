"""The job logging config (conf/hydra/job_logging/cnnlab.yaml) that conf/hydra/default.yaml gives every task."""

from __future__ import annotations

import io
import logging
import logging.config
import warnings
from pathlib import Path

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.utilities._pytree import _tree_flatten
from lightning.pytorch.utilities.model_summary import ModelSummary
from omegaconf import OmegaConf

from cnnlab.tasks.summarize import FAILED_LOG_MARK
from cnnlab.tasks.train import train
from cnnlab.utils.library_warnings import ignore_unactionable_library_warnings
from cnnlab.utils.log_filters import CnnlabLinesFromRankZero, JobLogOnly, LightningChatter
from conftest import CONF_DIR


def configure_job_logging(log_file: Path) -> None:
    """Configure logging as Hydra does for a training job, its log file at ``log_file``."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra.job_logging.handlers.file.filename={log_file}"], return_hydra_config=True)
    logging.config.dictConfig(OmegaConf.to_container(cfg.hydra.job_logging, resolve=True))


def close_job_logging() -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()


def test_cnnlab_lines_below_errors_are_shown_from_rank_zero_only(monkeypatch, capsys, tmp_path: Path):
    configure_job_logging(tmp_path / "train.log")
    try:
        for rank in ("1", "0"):
            monkeypatch.setenv("RANK", rank)
            for name in ("cnnlab.data.base", "another.library"):
                logging.getLogger(name).info("info from rank %s", rank)
                logging.getLogger(name).error("error from rank %s", rank)
        shown = [line.split(" - ", 1)[1] for line in capsys.readouterr().out.splitlines()]
        assert shown == ["error from rank 1", "info from rank 1", "error from rank 1",  # another library's: all
                         "info from rank 0", "error from rank 0", "info from rank 0", "error from rank 0"]
    finally:
        close_job_logging()


@pytest.mark.parametrize("mode", ["RUN", "MULTIRUN"])
def test_a_failed_runs_record_goes_to_the_job_log_and_the_console_shows_the_error_once(make_config, capsys,
                                                                                        tmp_path: Path, mode: str):
    configure_job_logging(tmp_path / "train.log")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        hydra_cfg = compose("train", overrides=[f"hydra.mode={mode}"], return_hydra_config=True)
    hydra_cfg.hydra.runtime.output_dir = str(tmp_path / "run")  # make_config's run folder
    HydraConfig.instance().set_config(hydra_cfg)
    try:
        with pytest.raises(ValueError) as refused:
            train(make_config(overrides=["optimizer.lr=-1"]))
        assert f"{FAILED_LOG_MARK}ConfigValueError: {refused.value}" in (tmp_path / "train.log").read_text()
        # A single run's script prints the error as it ends; a multirun's job says it when it fails.
        assert (FAILED_LOG_MARK in capsys.readouterr().out) == (mode == "MULTIRUN")
    finally:
        HydraConfig.instance().cfg = None
        close_job_logging()


@pytest.mark.parametrize("choice", ["disabled", "stdout", "default"])
def test_another_job_logging_choice_replaces_cnnlabs_whole(choice: str, tmp_path: Path):
    # Hydra's own choices lack cnnlab's handlers' filters; merged into them, the filters alone
    # made a handler without a class, and every task failed before it started.
    for task in ("train", "eval"):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(task, overrides=[f"hydra/job_logging={choice}"], return_hydra_config=True)
        cfg.hydra.runtime.output_dir = str(tmp_path)
        logging.config.dictConfig(OmegaConf.to_container(cfg.hydra.job_logging, resolve=True))
        filters = [type(f) for handler in logging.getLogger().handlers for f in handler.filters]
        close_job_logging()
        assert not set(filters) & {CnnlabLinesFromRankZero, JobLogOnly}  # the choice replaced cnnlab's config


@pytest.mark.parametrize("name", ["lightning.pytorch", "lightning.fabric"])
def test_lightnings_lines_reach_the_job_log_and_the_console_once(monkeypatch, capsys, tmp_path: Path, name: str):
    # The state Lightning leaves its loggers in when it is imported before Hydra sets up logging,
    # as every script imports it: the subpackage's logger with a console handler of its own and no
    # propagation to the root's, the top `lightning` logger with a console handler too.
    shown_by_lightning = io.StringIO()
    for logger_name, propagate in ((name, False), ("lightning", True)):
        monkeypatch.setattr(logging.getLogger(logger_name), "handlers", [logging.StreamHandler(shown_by_lightning)])
        monkeypatch.setattr(logging.getLogger(logger_name), "propagate", propagate)
    configure_job_logging(tmp_path / "train.log")
    try:
        logging.getLogger(f"{name}.utilities.rank_zero").info("Restoring states from the checkpoint path at x.ckpt")
    finally:
        close_job_logging()
    logged = f"[{name}.utilities.rank_zero][INFO] - Restoring states from the checkpoint path at x.ckpt"
    assert logged in (tmp_path / "train.log").read_text()
    assert capsys.readouterr().out.count(logged) == 1 and shown_by_lightning.getvalue() == ""


def test_cnnlabs_job_logging_filters_both_handlers(tmp_path: Path):
    configure_job_logging(tmp_path / "train.log")
    handlers = {type(handler).__name__: [type(f) for f in handler.filters] for handler in logging.getLogger().handlers}
    close_job_logging()
    assert handlers == {"StreamHandler": [CnnlabLinesFromRankZero, JobLogOnly, LightningChatter],
                        "FileHandler": [CnnlabLinesFromRankZero, LightningChatter]}


def test_lightnings_product_tips_and_its_model_summary_note_are_dropped_and_nothing_else(capsys, tmp_path: Path):
    configure_job_logging(tmp_path / "train.log")
    try:
        rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
        rank_zero.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger](...)")
        rank_zero.info("Trainer already configured with model summary callbacks: [ModelSummary]. Skipping ...")
        rank_zero.info("GPU available: False, used: False")
        rank_zero.warning("💡 Tip: a warning is never dropped")
        logging.getLogger("my_project").info("💡 Tip: the user's own lines pass")
    finally:
        close_job_logging()
    for shown in (capsys.readouterr().out, (tmp_path / "train.log").read_text()):
        assert [line.split(" - ", 1)[1] for line in shown.splitlines()] == [
            "GPU available: False, used: False", "💡 Tip: a warning is never dropped", "💡 Tip: the user's own lines pass"]


def test_lightnings_leafspec_deprecation_is_hidden_and_nothing_else():
    # Addressed to Lightning's developers (torch 2.15 deprecates the LeafSpec Lightning builds):
    # hidden by cnnlab.utils.library_warnings, matched by message and module alone.
    message = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` instead."
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        ignore_unactionable_library_warnings()
        _tree_flatten([1, [2, 3]])  # Lightning's call that raises it, on the torch versions that deprecate it
        for module in ("lightning.pytorch.utilities._pytree", "my_project.trees"):
            warnings.warn_explicit(message, FutureWarning, "trees.py", 1, module=module)
        warnings.warn_explicit("another deprecation", FutureWarning, "_pytree.py", 1,
                               module="lightning.pytorch.utilities._pytree")
    assert [(str(w.message), w.filename) for w in shown] == [(message, "trees.py"), ("another deprecation", "_pytree.py")]


@pytest.mark.parametrize(("precision", "warned"), [("bf16-mixed", False), ("bf16-true", False),
                                                  ("transformer-engine", True)])
def test_the_model_summarys_size_warning_is_hidden_for_the_mixed_precisions_whose_weights_stay_float32(precision, warned):
    model = BoringModel()
    if precision != "transformer-engine":  # Lightning's own summary of a model on a Trainer of that precision
        model.trainer = L.Trainer(accelerator="cpu", precision=precision, logger=False, enable_progress_bar=False)
    summary_module = "lightning.pytorch.utilities.model_summary.model_summary"
    message = (f"Precision {precision} is not supported by the model summary.  Estimated model size in MB will not be "
               "accurate. Using 32 bits instead.")
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        ignore_unactionable_library_warnings()
        if precision == "transformer-engine":  # needs NVIDIA's library to build a Trainer: the warning as raised
            warnings.warn_explicit(message, UserWarning, "model_summary.py", 242, module=summary_module)
        else:
            ModelSummary(model)
    assert [str(w.message) for w in shown if "model summary" in str(w.message)] == ([message] if warned else [])
