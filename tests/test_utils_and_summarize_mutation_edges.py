"""Edges of the config helpers, the GPU and malloc checks, the spawned workers' logging, a run's recorded
results and the sweep summary, each left open by a mutation that no other test caught."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import lightning as L
import matplotlib.axes
import pytest
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_summarize import add_session, make_job

from cnnlab.errors import ConfigValueError
from cnnlab.tasks.results import earlier_test_results, log_hparams_with_metrics, metric_values
from cnnlab.tasks.summarize import (
    FAILED_LOG_MARK,
    RESUME_REFUSED_LOG_MARK,
    configured_values,
    parse_overrides,
    plot,
    plot_points,
    summarize,
    to_csv,
    to_markdown,
)
from cnnlab.utils import cuda_check, host_memory
from cnnlab.utils.config import (
    continues_in,
    ddp_strategy,
    ensure_values_set,
    instantiate_all,
    on_rank_zero,
    process_rank,
    run_dir_of_checkpoint,
    slurm_count,
    slurm_gpus,
)
from cnnlab.utils.cuda_check import gpu_present, skip_unloadable_nvml_check
from cnnlab.utils.job_logging import JobLoggingLauncher, log_spawned_workers_to_job_log

NVML_FLAG = "PYTORCH_NVML_BASED_CUDA_CHECK"
SESSION = "resumed_2026-01-01_10-00-00"


def table_rows(markdown: str) -> list[str]:
    """The job rows of a summary's Markdown table."""
    return [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| rank")]


# --- cnnlab.utils.config ---------------------------------------------------------------------------------------


def test_a_value_left_open_is_named_with_how_to_set_it_in_the_singular_or_for_each() -> None:
    # model.num_classes is filled in from the data, so it is never asked for.
    one = OmegaConf.create({"data": {"root": "???"}, "model": {"num_classes": "???"}})
    with pytest.raises(ConfigValueError) as refused:
        ensure_values_set(one)
    assert str(refused.value) == ("no value for data.root: set it on the command line "
                                  "(data.root=DIR, a folder with DIR/train/<class>/<image files>)")
    two = OmegaConf.create({"ckpt_path": "???", "extra": {"depth": "???"}})
    with pytest.raises(ConfigValueError) as refused:
        ensure_values_set(two)
    assert str(refused.value) == ("no value for ckpt_path, extra.depth: set each on the command line "
                                  "(ckpt_path=<run>/checkpoints/last.ckpt; extra.depth=...)")
    ensure_values_set(OmegaConf.create({"model": {"num_classes": "???"}, "seed": 3}))  # nothing else open


def test_a_checkpoint_continues_its_run_folder_only_when_that_folder_is_a_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert run_dir_of_checkpoint(str(run / "checkpoints" / "last.ckpt"), "new") == str(run)
    # A checkpoints folder outside any run (no .hydra/ beside it), e.g. downloaded weights: a new folder.
    loose = tmp_path / "downloads"
    (loose / "checkpoints").mkdir(parents=True)
    (loose / "checkpoints" / "epoch_009.ckpt").write_bytes(b"x")
    assert run_dir_of_checkpoint(str(loose / "checkpoints" / "epoch_009.ckpt"), "new") == "new"
    assert run_dir_of_checkpoint(str(run / "checkpoints" / "missing.ckpt"), "new") == "new"
    assert run_dir_of_checkpoint(None, "new") == "new"


def test_a_checkpoint_of_a_run_folder_given_as_a_relative_path_continues_that_run(tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # paths.output_dir may be relative to the start folder; the checkpoint path is resolved.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    checkpoint = str(tmp_path / "run" / "checkpoints" / "epoch_001.ckpt")
    assert continues_in(Path("run"), checkpoint)
    assert continues_in(Path("run"), "run/checkpoints/epoch_001.ckpt")
    assert not continues_in(Path("other"), checkpoint)
    assert not continues_in(Path("run"), "last")  # no last.ckpt yet
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert continues_in(Path("run"), "last")


def test_overrides_are_read_as_keys_and_values_with_deletions_and_additions() -> None:
    lines = ["model=simple_cnn", "+trainer.x=1", "~callbacks.progress_bar", "++a.b=c=d", "flag"]
    assert parse_overrides(lines) == {"model": "simple_cnn", "trainer.x": "1", "callbacks.progress_bar": "(deleted)",
                                      "a.b": "c=d", "flag": ""}


def test_the_global_rank_comes_before_the_local_one_so_other_nodes_are_not_rank_zero(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        monkeypatch.delenv(variable, raising=False)
    assert process_rank() == 0 and on_rank_zero(".hydra") == ".hydra"
    # The first process of the second node: local rank 0, global rank 2. It writes no Hydra record.
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "2")
    assert process_rank() == 2 and on_rank_zero(".hydra") is None
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert process_rank() == 1 and on_rank_zero(".hydra") is None


def test_a_multirun_job_under_torchrun_joins_its_processes_with_ddp(monkeypatch: pytest.MonkeyPatch,
                                                                   hydra_multirun_job: DictConfig) -> None:
    for variable in ("SLURM_NTASKS", "SLURM_JOB_NAME", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(variable, raising=False)
    assert ddp_strategy() == "ddp_spawn"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")  # torchrun started every process
    assert ddp_strategy() == "ddp"


def test_slurm_needs_at_least_one_device_per_node_and_no_gpus_for_a_cpu_run() -> None:
    assert slurm_count(4, "trainer.devices") == 4
    for value in (0, True):
        with pytest.raises(ValueError, match=rf"^trainer.devices={value!r}, but on SLURM it must be a positive number"):
            slurm_count(value, "trainer.devices")
    with pytest.raises(ValueError, match="trainer.devices=0"):
        slurm_gpus("gpu", 0)
    assert slurm_gpus("gpu", 2) == 2 and slurm_gpus("cpu", 2) is None


def test_only_the_entries_of_a_section_with_a_target_are_instantiated() -> None:
    section = OmegaConf.create({"timer": {"_target_": "datetime.timedelta", "seconds": 3},
                                "notes": {"text": "no _target_"}, "off": None})
    assert instantiate_all(section) == [timedelta(seconds=3)]
    assert instantiate_all(None) == [] and instantiate_all(OmegaConf.create({})) == []


def test_the_run_id_is_six_hex_digits_read_once_per_config() -> None:
    cfg = OmegaConf.create({"run": "${run_id:}"})
    assert re.fullmatch(r"[0-9a-f]{6}", cfg.run) and cfg.run == cfg.run


# --- cnnlab.utils.job_logging ----------------------------------------------------------------------------------


def cpu_trainer(strategy: str) -> L.Trainer:
    """A two-process CPU trainer that starts no process until it fits."""
    return L.Trainer(accelerator="cpu", devices=2, strategy=strategy, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False)


def test_spawned_workers_append_to_the_job_log_and_forked_ones_keep_the_parents_logging(
        hydra_multirun_job: DictConfig, tmp_path: Path) -> None:
    # A job logging config whose file handler truncates: the job's process has written its lines already.
    file_handler = cast(DictConfig, HydraConfig.get().job_logging).handlers.file
    with read_write(file_handler), open_dict(file_handler):
        file_handler.mode = "w"
    spawning = cpu_trainer("ddp_spawn")
    log_spawned_workers_to_job_log(spawning)
    launcher = spawning.strategy.launcher
    assert isinstance(launcher, JobLoggingLauncher)
    handlers = launcher._job_logging.handlers
    assert handlers.file.mode == "a" and Path(handlers.file.filename).parent == tmp_path / "run"  # resolved here
    assert "mode" not in handlers.console
    forking = cpu_trainer("ddp_fork")
    log_spawned_workers_to_job_log(forking)
    assert type(forking.strategy.launcher) is _MultiProcessingLauncher


# --- cnnlab.utils.cuda_check -----------------------------------------------------------------------------------


def cannot_load(name: str) -> None:
    raise OSError(f"{name}: cannot open shared object file")


def test_the_nvml_flag_is_left_alone_unless_lightning_set_it_on_a_cuda_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cuda_check.ctypes, "CDLL", cannot_load)
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.delenv(NVML_FLAG, raising=False)
    assert skip_unloadable_nvml_check() is False and NVML_FLAG not in os.environ
    monkeypatch.setenv(NVML_FLAG, "0")
    assert skip_unloadable_nvml_check() is False and os.environ[NVML_FLAG] == "0"
    # A CPU-only build of torch never asks NVML: nothing to drop.
    monkeypatch.setenv(NVML_FLAG, "1")
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: False)
    assert skip_unloadable_nvml_check() is False and os.environ[NVML_FLAG] == "1"


def test_an_unknown_gpu_kind_is_refused_and_each_kind_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert gpu_present("mps") == (True, "Apple GPU (MPS)")
    assert gpu_present("cuda") == (False, "CUDA GPU")
    with pytest.raises(ValueError, match=r"^not a GPU kind: 'tpu'; one of \('cuda', 'mps', 'gpu'\)$"):
        gpu_present("tpu")


# --- cnnlab.utils.host_memory ----------------------------------------------------------------------------------


class FakeLibc:
    """A C library whose ``mallopt`` records each setting and accepts all but ``refused``."""

    def __init__(self, refused: int | None = None) -> None:
        self.settings: dict[int, int] = {}
        self.refused = refused

    def mallopt(self, option: int, value: int) -> int:
        self.settings[option] = value
        return 0 if option == self.refused else 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_malloc_keeps_freed_memory_with_glibcs_parameter_numbers_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = FakeLibc()
    monkeypatch.setattr(host_memory.ctypes.util, "find_library", lambda name: "libc.so.6")
    monkeypatch.setattr(host_memory.ctypes, "CDLL", lambda name: libc)
    assert host_memory.keep_freed_memory() is True
    # M_MMAP_THRESHOLD (-3), M_TRIM_THRESHOLD (-1), M_TOP_PAD (-2) of <malloc.h>.
    assert libc.settings == {-3: 32 * 2**20, -1: 1024 * 2**20, -2: 64 * 2**20}
    assert host_memory.keep_freed_memory(mmap_threshold_mb=8, trim_threshold_mb=16, top_pad_mb=1) is True
    assert libc.settings == {-3: 8 * 2**20, -1: 16 * 2**20, -2: 2**20}
    # One setting refused: not applied (the caller reports the C library's default).
    monkeypatch.setattr(host_memory.ctypes, "CDLL", lambda name: FakeLibc(refused=-2))
    assert host_memory.keep_freed_memory() is False
    monkeypatch.setattr(host_memory.ctypes, "CDLL", lambda name: object())  # musl: no mallopt
    assert host_memory.keep_freed_memory() is False


# --- cnnlab.tasks.results --------------------------------------------------------------------------------------


def test_recorded_metrics_are_plain_floats_of_the_prefixes_asked_for_without_per_step_values() -> None:
    logged = {"train/loss_step": torch.tensor(0.75), "train/loss": torch.tensor(0.5), "val/acc": torch.tensor(0.25),
              "test/acc": 0.5, "lr-Adam": 0.001}
    values = metric_values(logged, ("train/", "val/"))
    assert values == {"train/loss": 0.5, "val/acc": 0.25}
    assert all(type(value) is float for value in values.values())


def write_tested_run(run: Path, composed: dict[str, Any], results: dict[str, Any], session: str = "") -> None:
    """A run folder whose ``metrics.json`` holds ``results``, with the session's config record ``composed``."""
    record = run / ".hydra" / session
    record.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(composed), record / "config.yaml")
    (run / "metrics.json").write_text(json.dumps(results))


def test_a_finished_runs_test_is_reused_only_for_the_same_step_data_and_config(tmp_path: Path) -> None:
    composed = {"model": {"lr": 0.001}, "ckpt_path": "last"}
    best = "/r/checkpoints/epoch_001.ckpt"
    tested = {"global_step": 14, "best_checkpoint": best, "test_data": "abc", "test/acc": 0.5}
    run = tmp_path / "run"
    write_tested_run(run, {**composed, "ckpt_path": None}, tested)  # ckpt_path aside
    assert earlier_test_results(run, composed, 14, best, "abc") == tested
    assert earlier_test_results(run, composed, 21, best, "abc") is None  # trained on since
    assert earlier_test_results(run, {**composed, "seed": 1}, 14, best, "abc") is None

    # Results without the test data's digest, of a split whose digest is unknown: tested again.
    undigested = tmp_path / "undigested"
    write_tested_run(undigested, composed, {key: value for key, value in tested.items() if key != "test_data"})
    assert earlier_test_results(undigested, composed, 14, best, None) is None
    # Results of a run trained with test=false hold no test.
    untested = tmp_path / "untested"
    write_tested_run(untested, composed, {key: value for key, value in tested.items() if key != "test/acc"})
    assert earlier_test_results(untested, composed, 14, best, "abc") is None
    # A resumed session's results of an older cnnlab, which do not name the session: its record is unknown.
    older = tmp_path / "older"
    write_tested_run(older, composed, {**tested, "resumed_from": "/r/checkpoints/last.ckpt"})
    assert earlier_test_results(older, composed, 14, best, "abc") is None
    named = tmp_path / "named"
    write_tested_run(named, composed, {**tested, "resumed_from": "/r/last.ckpt", "session": SESSION}, session=SESSION)
    assert earlier_test_results(named, composed, 14, best, "abc") is not None


def test_the_hparams_tabs_metrics_are_on_disk_once_logged_after_the_fit_ended(tmp_path: Path) -> None:
    # The training task logs them after Lightning closed its loggers' writers at the fit's end.
    logger = TensorBoardLogger(save_dir=str(tmp_path), name="tensorboard", version="")
    logger.log_metrics({"train/loss": 1.0}, step=0)
    logger.finalize("success")
    trainer = cast(L.Trainer, SimpleNamespace(loggers=[logger]))
    log_hparams_with_metrics(trainer, {"optimizer": {"lr": 0.1}}, {"val/acc_best": 0.5, "epochs": 2})
    scalars = set()
    for events in Path(logger.log_dir).glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        scalars |= set(accumulator.Tags()["scalars"])
    assert scalars == {"train/loss", "hparams/val/acc_best"}


# --- cnnlab.tasks.summarize ------------------------------------------------------------------------------------


def test_a_failures_error_stops_at_the_next_log_record(tmp_path: Path) -> None:
    log = (f"[2026-01-01 10:00:00,000][cnnlab.tasks.train][ERROR] - {FAILED_LOG_MARK}RuntimeError: loss is NaN\n"
           "[2026-01-01 10:00:00,100][lightning.pytorch][WARNING] - teardown note:\n"
           "  the note's second line\n")
    make_job(tmp_path / "sweep", 0, ["optimizer.lr=0.1"], None, log=log)
    (job,) = summarize(tmp_path / "sweep").jobs
    assert job.status == "failed: RuntimeError: loss is NaN"


def test_results_logged_in_the_second_a_resumed_session_started_are_that_sessions(tmp_path: Path) -> None:
    # A resumed session with nothing left to do ends in the second it started (older results: no "session" key).
    job = make_job(tmp_path / "sweep", 0, ["trainer.max_epochs=2"],
                   {"val/acc_best": 0.5, "resumed_from": "/r/checkpoints/last.ckpt"},
                   log="[2026-01-01 09:00:00,001][cnnlab.tasks.train][INFO] - results in /r\n"
                       "[2026-01-01 10:00:00,900][cnnlab.tasks.train][INFO] - results in /r\n")
    add_session(job, SESSION, ["trainer.max_epochs=3", "ckpt_path=last"])
    assert summarize(tmp_path / "sweep").jobs[0].overrides == {"trainer.max_epochs": "3", "ckpt_path": "last"}


def test_failed_jobs_keep_the_sweeps_numeric_job_order(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    failed = f"[t][cnnlab.tasks.train][ERROR] - {FAILED_LOG_MARK}ValueError: bad\n"
    for num in (10, 2, 0):
        make_job(sweep, num, [f"optimizer.lr={num}"], {"val/acc_best": 0.5} if num == 0 else None, log=failed if num else "")
    summary = summarize(sweep)
    assert [job.name for job in summary.jobs] == ["0", "2", "10"]
    assert [row["job"] for row in csv.DictReader(io.StringIO(to_csv(summary)))] == ["0", "2", "10"]


def test_a_run_folder_with_results_but_no_hydra_record_is_still_a_job(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    make_job(runs, 0, ["optimizer.lr=0.1"], {"val/acc_best": 0.6})
    (runs / "no_record").mkdir()  # run with hydra.output_subdir=null
    (runs / "no_record" / "metrics.json").write_text(json.dumps({"val/acc_best": 0.7}))
    (runs / "notes").mkdir()  # neither: not a run
    summary = summarize(runs)
    assert [(job.name, job.status) for job in summary.jobs] == [("no_record", "ok"), ("0", "ok")]


def test_a_refused_session_whose_record_is_gone_leaves_the_first_sessions_overrides(tmp_path: Path) -> None:
    refused = f"[2026-01-01 09:30:00,000][cnnlab.tasks.train][ERROR] - {RESUME_REFUSED_LOG_MARK}ConfigValueError: no GPU\n"
    make_job(tmp_path / "sweep", 0, ["optimizer.lr=0.1"], None, log=refused)
    (job,) = summarize(tmp_path / "sweep").jobs
    assert job.overrides == {"optimizer.lr": "0.1"}
    assert job.status == "failed: a resumed session failed before training: ConfigValueError: no GPU"


def test_a_resumed_session_recorded_in_the_same_file_time_tick_as_the_results_wrote_them(tmp_path: Path) -> None:
    # No log times to go by; a filesystem with coarse file times stamps the session's record and metrics.json alike.
    job = make_job(tmp_path / "sweep", 0, ["trainer.max_epochs=2"], {"val/acc_best": 0.5, "resumed_from": "/r/last.ckpt"})
    add_session(job, SESSION, ["trainer.max_epochs=3", "ckpt_path=last"])
    os.utime(job / ".hydra" / "overrides.yaml", (500, 500))
    for path in (job / ".hydra" / SESSION / "overrides.yaml", job / "metrics.json"):
        os.utime(path, (1000, 1000))
    assert summarize(tmp_path / "sweep").jobs[0].overrides == {"trainer.max_epochs": "3", "ckpt_path": "last"}


def test_an_unreadable_metrics_file_is_the_jobs_failure_even_when_the_log_names_another(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for num, log in enumerate(["", f"[t][cnnlab.tasks.train][ERROR] - {FAILED_LOG_MARK}OSError: disk full\n"]):
        folder = make_job(sweep, num, [f"optimizer.lr={num}"], None, log=log)
        (folder / "metrics.json").write_text('{"val/acc_best": 0.')  # cut short
    summary = summarize(sweep, metric="val/acc_best")
    for job in summary.jobs:
        assert job.failed and job.status == ("failed: unreadable metrics.json: Expecting ',' delimiter: "
                                             "line 1 column 19 (char 18)")


def test_a_config_value_shown_for_a_swept_key_is_a_setting_never_a_whole_section(tmp_path: Path) -> None:
    (tmp_path / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {"model": "simple_cnn"}}}}))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"trainer": {"max_epochs": 2}, "model": {"lr": 1}}))
    assert configured_values(tmp_path, ["trainer", "trainer.max_epochs", "model", "seed"]) == {
        "trainer.max_epochs": "2", "model": "simple_cnn"}


def test_a_multi_objective_searchs_directions_leave_the_metric_its_own_direction(tmp_path: Path) -> None:
    sweep = tmp_path / "search"
    for num, loss in enumerate([0.9, 0.4]):
        job = make_job(sweep, num, [f"optimizer.lr={num + 1}"], {"val/loss": loss}, optimized_metric="val/loss")
        sweeper = {"direction": ["minimize", "maximize"]}  # Optuna's for two objectives
        (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"sweeper": sweeper}}))
    summary = summarize(sweep)
    assert (summary.direction, [job.name for job in summary.jobs]) == ("minimize", ["1", "0"])


def test_a_direction_other_than_maximize_or_minimize_is_refused(tmp_path: Path) -> None:
    make_job(tmp_path / "sweep", 0, ["optimizer.lr=0.1"], {"val/acc_best": 0.5})
    with pytest.raises(ConfigValueError, match=r"^direction must be one of \('maximize', 'minimize'\), got 'max'$"):
        summarize(tmp_path / "sweep", direction="max")


def test_the_table_rounds_metrics_by_size_and_shortens_sampled_overrides_that_the_csv_keeps_whole(tmp_path: Path) -> None:
    sweep = tmp_path / "search"
    metrics = {"val/acc_best": 0.71234, "val/loss": 2.345678, "fit_seconds": 12.3456, "params_trainable": 1147466}
    make_job(sweep, 0, ["optimizer.lr=0.00024156772025296256", "model=simple_cnn"], metrics)
    make_job(sweep, 1, ["optimizer.lr=0.01", "model=simple_cnn_bn"], {**metrics, "val/acc_best": 0.5, "fit_seconds": 1234567.0})
    summary = summarize(sweep)
    assert table_rows(to_markdown(summary)) == [
        "| 1 | 0 | 0.0002416 | simple_cnn | 0.7123 | 2.3457 | 12.35 | 1147466 | ok |",
        "| 2 | 1 | 0.01 | simple_cnn_bn | 0.5000 | 2.3457 | 1.235e+06 | 1147466 | ok |",
    ]
    table = list(csv.DictReader(io.StringIO(to_csv(summary))))
    assert table[0]["optimizer.lr"] == "0.00024156772025296256"


def test_the_table_shows_metrics_of_finished_jobs_only_and_escapes_a_bar_in_an_error(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    make_job(sweep, 0, ["optimizer.lr=0.1"], {"val/acc_best": 0.6})
    # Failed after writing metrics.json, with a metric no finished job has.
    make_job(sweep, 1, ["optimizer.lr=0.2"], {"val/acc_best": 0.9, "test/acc_top5": 0.99},
             log=f"[t][cnnlab.tasks.train][ERROR] - {FAILED_LOG_MARK}ValueError: shape a|b\n")
    markdown = to_markdown(summarize(sweep))
    assert "| rank | job | optimizer.lr | val/acc_best | status |" in markdown
    assert table_rows(markdown)[1] == "| - | 1 | 0.2 | 0.9000 | failed: ValueError: shape a\\|b (after writing metrics.json) |"


def test_optunas_best_trial_is_named_above_the_table(tmp_path: Path) -> None:
    sweep = tmp_path / "search"
    make_job(sweep, 0, ["optimizer.lr=0.01"], {"val/acc_best": 0.72})
    (sweep / "optimization_results.yaml").write_text(yaml.safe_dump(
        {"name": "optuna", "best_params": {"optimizer.lr": 0.01}, "best_value": 0.72}))
    assert "\nOptuna's best: `0.72` with `optimizer.lr=0.01`\n" in to_markdown(summarize(sweep))


def test_the_csv_has_one_column_for_the_ranking_metric(tmp_path: Path) -> None:
    make_job(tmp_path / "sweep", 0, ["optimizer.lr=0.1"], {"val/acc_best": 0.6, "val/loss": 1.0})
    header = next(csv.reader(io.StringIO(to_csv(summarize(tmp_path / "sweep")))))
    assert header == ["rank", "job", "status", "error", "optimizer.lr", "val/acc_best", "val/loss", "path"]


def test_a_finished_job_whose_metric_is_not_finite_is_left_out_of_the_plot(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for num, value in enumerate([0.6, float("nan"), float("inf")]):
        make_job(sweep, num, [f"optimizer.lr={num + 1}"], {"val/acc_best": value})
    assert plot_points(summarize(sweep), "job") == [("0", 0.6)]


@pytest.mark.parametrize(("rates", "log_scale"), [(["0.001", "0.01"], False), (["0.0001", "0.01"], True)])
def test_a_swept_number_spanning_twenty_fold_or_more_is_plotted_on_a_log_axis(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch,
                                                                              rates: list[str], log_scale: bool) -> None:
    scales: list[str] = []
    set_xscale = matplotlib.axes.Axes.set_xscale

    def recorded(self: matplotlib.axes.Axes, value: str, **kwargs: Any) -> None:
        scales.append(value)
        set_xscale(self, value, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "set_xscale", recorded)
    sweep = tmp_path / "sweep"
    for num, rate in enumerate(rates):
        make_job(sweep, num, [f"optimizer.lr={rate}"], {"val/acc_best": 0.5 + num / 10})
    plot(summarize(sweep), tmp_path / "summary.png")
    assert ("log" in scales) == log_scale
