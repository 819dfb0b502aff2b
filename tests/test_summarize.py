"""scripts/summarize.py on sweep folders laid out as Hydra and the training task leave them."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import logging
import os
import re
import warnings
from pathlib import Path

import pytest
import yaml

from cnnlab.errors import ConfigValueError, CorruptImageError
from cnnlab.tasks.summarize import (
    FAILED_LOG_MARK,
    INTERRUPTED_LOG_MARK,
    RESUME_REFUSED_LOG_MARK,
    plot_points,
    summarize,
    to_csv,
    to_markdown,
    write_summary,
)
from cnnlab.tasks.train import failure_reason


def make_job(sweep: Path, num: int, overrides: list[str], metrics: dict | None, log: str = "",
             optimized_metric: str = "val/acc_best", direction: str | None = None) -> Path:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"optimized_metric": optimized_metric}))
    sweeper = {"direction": direction} if direction else {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"}
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"sweeper": sweeper}}))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    (job / "train.log").write_text(log)
    return job


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "2026-01-01_00-00-00_abcdef"
    common = ["trainer.max_epochs=5", "data.batch_size=64"]
    make_job(sweep, 0, ["model=simple_cnn", "optimizer.lr=0.001", *common], {"val/acc_best": 0.61, "test/acc": 0.60, "val/loss": 1.1})
    make_job(sweep, 1, ["model=simple_cnn", "optimizer.lr=0.01", *common], None,
             log="[2026-01-01][cnnlab.tasks.train][ERROR] - training failed: RuntimeError: loss is NaN\n")
    make_job(sweep, 2, ["model=simple_cnn_bn", "optimizer.lr=0.001", *common], {"val/acc_best": 0.72, "test/acc": 0.70, "val/loss": 0.8})
    make_job(sweep, 3, ["model=simple_cnn_bn", "optimizer.lr=0.01", *common], {"val/acc_best": float("nan"), "val/loss": 9.0})
    make_job(sweep, 10, ["model=resnet18_ft", "optimizer.lr=0.001", *common], {"val/acc_best": 0.65, "test/acc": 0.66, "val/loss": 1.0})
    return sweep


def test_jobs_are_ranked_best_first_with_failed_jobs_as_failed_rows(sweep: Path):
    summary = summarize(sweep)
    assert summary.metric == "val/acc_best" and summary.direction == "maximize"
    assert [job.name for job in summary.jobs] == ["2", "10", "0", "3", "1"]  # NaN after numbers, failed last
    assert summary.swept == ["model", "optimizer.lr"]
    assert summary.common == {"trainer.max_epochs": "5", "data.batch_size": "64"}
    failed = summary.jobs[-1]
    assert failed.failed and failed.status == "failed: RuntimeError: loss is NaN"

    markdown = to_markdown(summary)
    assert "5 jobs, 4 finished, 1 failed; ranked by `val/acc_best` (maximize)" in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| rank")]
    assert len(rows) == 5
    assert rows[0].startswith("| 1 | 2 | simple_cnn_bn | 0.001 | 0.7200 |")
    assert rows[-1] == "| - | 1 | simple_cnn | 0.01 |  |  |  | failed: RuntimeError: loss is NaN |"

    table = list(csv.DictReader(io.StringIO(to_csv(summary))))
    assert [row["job"] for row in table] == ["2", "10", "0", "3", "1"]
    assert table[0]["val/acc_best"] == "0.72" and table[0]["model"] == "simple_cnn_bn" and table[0]["data.batch_size"] == "64"
    assert table[-1]["status"] == "failed" and table[-1]["rank"] == "" and table[-1]["error"] == "RuntimeError: loss is NaN"


def test_the_table_shows_validation_top5_beside_validation_accuracy(tmp_path: Path):
    sweep = tmp_path / "sweep"
    for num in range(2):
        make_job(sweep, num, [f"optimizer.lr={0.001 * (num + 1)}"],
                 {"val/acc_best": 0.5 + num / 10, "val/acc": 0.5, "val/acc_top5": 0.9, "val/loss": 1.0, "test/acc": 0.5})
    header = next(line for line in to_markdown(summarize(sweep)).splitlines() if line.startswith("| rank"))
    assert header == "| rank | job | optimizer.lr | val/acc_best | val/acc | val/acc_top5 | val/loss | test/acc | status |"


def test_summary_files_are_written_into_the_sweep_folder(sweep: Path):
    written = write_summary(summarize(sweep))
    assert written == {"markdown": sweep / "summary.md", "csv": sweep / "summary.csv", "plot": sweep / "summary.png"}
    assert written["plot"].read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and written["plot"].stat().st_size > 10_000
    assert "| 1 | 2 | simple_cnn_bn |" in written["markdown"].read_text()


def test_direction_comes_from_the_optuna_sweeper_and_any_metric_can_rank(tmp_path: Path):
    sweep = tmp_path / "search"
    for num, loss in enumerate([0.9, 0.4, 0.7]):
        make_job(sweep, num, [f"optimizer.lr={0.001 * (num + 1)}"], {"val/loss": loss, "val/acc_best": 1 - loss},
                 optimized_metric="val/loss", direction="minimize")
    by_loss = summarize(sweep)
    assert (by_loss.metric, by_loss.direction) == ("val/loss", "minimize")
    assert [job.name for job in by_loss.jobs] == ["1", "2", "0"]
    by_accuracy = summarize(sweep, metric="val/acc_best", direction="maximize")
    assert [job.name for job in by_accuracy.jobs] == ["1", "2", "0"]
    assert [job.name for job in summarize(sweep, metric="val/acc_best", direction="minimize").jobs] == ["0", "2", "1"]


def test_a_loss_is_ranked_lowest_first_unless_the_sweeper_optimised_it_another_way(tmp_path: Path):
    # A basic sweep records no direction; an Optuna search's direction is for its own metric only.
    basic, search = tmp_path / "basic", tmp_path / "search"
    for num, loss in enumerate([0.9, 0.4, 0.7]):
        metrics = {"val/loss": loss, "val/acc_best": 1 - loss, "fit_seconds": 10.0 - num}
        make_job(basic, num, [f"optimizer.lr={0.001 * (num + 1)}"], metrics)
        make_job(search, num, [f"optimizer.lr={0.001 * (num + 1)}"], metrics, direction="maximize")
    for sweep in (basic, search):
        by_loss = summarize(sweep, metric="val/loss")
        assert (by_loss.direction, [job.name for job in by_loss.jobs]) == ("minimize", ["1", "2", "0"])
        assert summarize(sweep).direction == "maximize"
        assert summarize(sweep, metric="fit_seconds").direction == "maximize"  # neither kind: the default
    make_job(tmp_path / "loss_sweep", 0, [], {"val/loss": 0.5}, optimized_metric="val/loss")
    assert summarize(tmp_path / "loss_sweep").direction == "minimize"


def test_a_resumed_job_shows_the_overrides_of_the_session_that_wrote_its_metrics(tmp_path: Path):
    sweep = tmp_path / "sweep"
    # metrics.json as written before it named its session: placed by file times.
    job = make_job(sweep, 0, ["model=simple_cnn", "trainer.max_epochs=1"], {"val/acc_best": 0.5, "epochs": 2, "resumed_from": "/r/last.ckpt"})
    make_job(sweep, 1, ["model=simple_cnn_bn", "trainer.max_epochs=1"], {"val/acc_best": 0.4, "epochs": 1})
    sessions = {"resumed_2026-01-01_10-00-00": (["model=simple_cnn", "trainer.max_epochs=2", "ckpt_path=last"], 100),
                # A later session that failed before writing metrics.json: not what the metrics came from.
                "resumed_2026-01-01_11-00-00": (["model=simple_cnn", "trainer.max_epochs=3", "ckpt_path=last"], 300)}
    for name, (overrides, mtime) in sessions.items():
        (job / ".hydra" / name).mkdir()
        (job / ".hydra" / name / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        os.utime(job / ".hydra" / name / "overrides.yaml", (mtime, mtime))
    os.utime(job / ".hydra" / "overrides.yaml", (50, 50))
    os.utime(job / "metrics.json", (200, 200))
    summary = summarize(sweep)
    assert summary.jobs[0].overrides == {"model": "simple_cnn", "trainer.max_epochs": "2", "ckpt_path": "last"}
    assert summary.swept == ["model", "trainer.max_epochs", "ckpt_path"]


def add_session(job: Path, name: str, overrides: list[str]) -> None:
    """A resumed session's record, ``.hydra/<name>/overrides.yaml``."""
    (job / ".hydra" / name).mkdir()
    (job / ".hydra" / name / "overrides.yaml").write_text(yaml.safe_dump(overrides))


def same_file_times(job: Path) -> None:
    """Every file of ``job`` with one modification time, as ``cp -r`` leaves a copied folder (more or less)."""
    for path in job.rglob("*"):
        os.utime(path, (1000, 1000))


def test_a_copied_resumed_job_shows_the_session_its_metrics_name_not_the_newest_file(tmp_path: Path):
    sweep = tmp_path / "copied"
    first = ["model=simple_cnn", "trainer.max_epochs=2"]
    resumed = {"val/acc_best": 0.5, "epochs": 3, "resumed_from": "/elsewhere/checkpoints/last.ckpt",
               "session": "resumed_2026-01-01_10-00-00"}
    job = make_job(sweep, 0, first, resumed)
    add_session(job, "resumed_2026-01-01_10-00-00", ["model=simple_cnn", "trainer.max_epochs=3", "ckpt_path=last"])
    # The copy wrote metrics.json before .hydra/: by file times no resumed session preceded it.
    os.utime(job / "metrics.json", (100, 100))
    assert summarize(sweep).jobs[0].overrides == {"model": "simple_cnn", "trainer.max_epochs": "3", "ckpt_path": "last"}

    # A first session's results (no "session", no "resumed_from"), copied after a refused session's record.
    (job / "metrics.json").write_text(json.dumps({"val/acc_best": 0.5, "epochs": 2}))
    os.utime(job / ".hydra" / "resumed_2026-01-01_10-00-00" / "overrides.yaml", (100, 100))
    os.utime(job / "metrics.json", (2000, 2000))
    assert summarize(sweep).jobs[0].overrides == {"model": "simple_cnn", "trainer.max_epochs": "2"}


def test_older_results_without_a_session_name_are_placed_by_the_log_times(tmp_path: Path):
    sweep = tmp_path / "older"
    job = make_job(sweep, 0, ["trainer.max_epochs=2"], {"val/acc_best": 0.5, "epochs": 3, "resumed_from": "/r/last.ckpt"},
                   log="[2026-01-01 09:00:00,001][cnnlab.tasks.train][INFO] - results in /r\n"
                       "[2026-01-01 10:00:07,002][cnnlab.tasks.train][INFO] - results in /r\n"
                       f"[2026-01-01 11:00:01,003][cnnlab.tasks.train][ERROR] - {RESUME_REFUSED_LOG_MARK}ConfigValueError: no\n")
    add_session(job, "resumed_2026-01-01_10-00-00", ["trainer.max_epochs=3", "ckpt_path=last"])
    add_session(job, "resumed_2026-01-01_11-00-00", ["trainer.max_epochs=1", "ckpt_path=last"])  # refused
    same_file_times(job)
    assert summarize(sweep).jobs[0].overrides == {"trainer.max_epochs": "3", "ckpt_path": "last"}


def test_a_job_without_results_shows_its_last_session_that_was_not_refused(tmp_path: Path):
    sweep = tmp_path / "requeued"
    refused = f"[2026-01-01 10:00:02,500][cnnlab.tasks.train][ERROR] - {RESUME_REFUSED_LOG_MARK}ConfigValueError: no GPU\n"
    # Killed, then requeued with a resume that was refused: the row shows what the job ran with.
    job = make_job(sweep, 0, ["optimizer.lr=0.1"], None, log="[2026-01-01 09:00:00,000][cnnlab.tasks.train][INFO] - model\n" + refused)
    add_session(job, "resumed_2026-01-01_10-00-00", ["optimizer.lr=0.1", "trainer=gpu", "ckpt_path=last"])
    (row,) = summarize(sweep).jobs
    assert row.overrides == {"optimizer.lr": "0.1"}
    assert row.status == "failed: a resumed session failed before training: ConfigValueError: no GPU"
    # A session after the refused one ran (and was killed): its overrides.
    add_session(job, "resumed_2026-01-01_12-00-00", ["optimizer.lr=0.1", "ckpt_path=last", "trainer.max_epochs=9"])
    assert summarize(sweep).jobs[0].overrides == {"optimizer.lr": "0.1", "ckpt_path": "last", "trainer.max_epochs": "9"}


def test_a_missing_or_empty_folder_is_a_clear_error(tmp_path: Path, capsys):
    with pytest.raises(ConfigValueError, match="does not exist"):
        summarize(tmp_path / "nope")
    with pytest.raises(ConfigValueError, match="holds no job folders"):
        summarize(tmp_path)
    (tmp_path / "hostname").write_text("x\n")
    assert run_script(str(tmp_path / "hostname")) == 2
    assert capsys.readouterr().err == (f"ConfigValueError: {tmp_path / 'hostname'} is a file, not a folder; "
                                       f"pass a sweep folder like logs/train/multiruns/<sweep>\n")


def test_a_single_run_folder_is_named_as_one_with_the_folder_to_pass(tmp_path: Path):
    run = make_job(tmp_path / "runs", 0, ["optimizer.lr=0.1"], {"val/acc_best": 0.5})
    with pytest.raises(ConfigValueError, match=rf"^{re.escape(str(run))} is a run folder \(it holds \.hydra/ or metrics\.json itself\), "
                                               rf"not a folder of runs; to compare runs, pass the folder that holds them, "
                                               rf"e\.g\. {tmp_path / 'runs'}$"):
        summarize(run)


def test_one_job_is_counted_in_the_singular(tmp_path: Path):
    make_job(tmp_path / "runs", 0, ["optimizer.lr=0.1"], {"val/acc_best": 0.5})
    assert "\n1 job, 1 finished, 0 failed; ranked by" in to_markdown(summarize(tmp_path / "runs"))


def run_script(*args: str) -> int:
    """``scripts/summarize.py``'s ``main`` with these arguments, in this process (no interpreter start-up)."""
    spec = importlib.util.spec_from_file_location("summarize_script", Path(__file__).parents[1] / "scripts" / "summarize.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(list(args))


def test_a_metric_no_job_recorded_is_refused_with_the_metrics_there(sweep: Path, tmp_path: Path, capsys):
    with pytest.raises(ConfigValueError, match=r"recorded the metric 'val/acc_bst'; pass --metric with one of: "
                                               r"test/acc, val/acc_best, val/loss$"):
        summarize(sweep, metric="val/acc_bst")
    assert run_script(str(sweep), "--metric", "val/acc_bst", "--out", str(tmp_path)) == 2
    printed = capsys.readouterr()
    assert printed.err.startswith("ConfigValueError: no job in ") and "one of: test/acc, val/acc_best, val/loss" in printed.err
    assert printed.out == "" and not list(tmp_path.glob("summary.*"))
    # The jobs' own optimized_metric is checked too: runs without validation have no val/acc_best.
    search = tmp_path / "no_val"
    make_job(search, 0, ["optimizer.lr=0.001"], {"test/acc": 0.5})
    with pytest.raises(ConfigValueError, match=r"'val/acc_best' \(the jobs' optimized_metric\); pass --metric with one of: test/acc$"):
        summarize(search)
    assert summarize(search, metric="test/acc").jobs[0].status == "ok"


def test_a_sweep_whose_jobs_all_failed_is_still_tabled_without_warnings(tmp_path: Path):
    sweep = tmp_path / "all_failed"
    for num in range(2):
        make_job(sweep, num, [f"optimizer.lr={num + 1}"], None, log="[x][cnnlab.tasks.train][ERROR] - training failed: ValueError: bad\n")
    summary = summarize(sweep, metric="anything")
    assert [job.status for job in summary.jobs] == ["failed: ValueError: bad"] * 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "identical low and high xlims" for an empty panel
        write_summary(summary)


def test_a_run_that_failed_after_writing_its_metrics_is_a_failed_row(tmp_path: Path):
    sweep = tmp_path / "late_failures"
    metrics = {"val/acc_best": 0.9, "test/acc": 0.8}
    finished = "[t][cnnlab.tasks.train][INFO] - results in /x\n"
    failed = "[t][cnnlab.tasks.train][ERROR] - training failed: OSError: disk full\n"
    make_job(sweep, 0, ["optimizer.lr=0.1"], metrics, log=failed)             # wrote metrics.json, then failed
    make_job(sweep, 1, ["optimizer.lr=0.2"], {**metrics, "val/acc_best": 0.5}, log=finished)
    make_job(sweep, 2, ["optimizer.lr=0.3"], {**metrics, "val/acc_best": 0.7}, log=finished + failed)  # a later run failed
    make_job(sweep, 3, ["optimizer.lr=0.4"], {**metrics, "val/acc_best": 0.6}, log=failed + finished)  # failed, then finished
    summary = summarize(sweep)
    assert [job.name for job in summary.jobs] == ["2", "3", "1", "0"]
    assert [job.status for job in summary.jobs] == [
        "ok; a later run in its folder failed: OSError: disk full", "ok", "ok",
        "failed: OSError: disk full (after writing metrics.json)",
    ]
    markdown = to_markdown(summary)
    assert "4 jobs, 3 finished, 1 failed" in markdown
    # Its metrics are still shown; it is just not ranked.
    assert "| - | 0 | 0.1 | 0.9000 | 0.8000 | failed: OSError: disk full (after writing metrics.json) |" in markdown
    table = list(csv.DictReader(io.StringIO(to_csv(summary))))
    assert (table[-1]["status"], table[-1]["rank"], table[-1]["val/acc_best"]) == ("failed", "", "0.9")
    assert (table[0]["status"], table[0]["error"]) == ("ok", "OSError: disk full")


def test_an_error_of_several_lines_is_kept_whole_in_the_log_and_in_one_row(tmp_path: Path):
    error = CorruptImageError("2 image file(s) could not be decoded:\n  /d/a.jpg: truncated\n  /d/b.jpg: not an image\n"
                              "Remove or replace these files, then run again.")
    # As the training task logs its failure into Hydra's job log, followed by another record.
    hydra_format = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    records = [logging.LogRecord("cnnlab.tasks.train", logging.ERROR, __file__, 1, "%s%s",
                                 (FAILED_LOG_MARK, failure_reason(error)), None),
               logging.LogRecord("cnnlab.data.folder", logging.INFO, __file__, 1, "cache written", None, None)]
    log = "".join(hydra_format.format(record) + "\n" for record in records)
    assert "  /d/b.jpg: not an image\nRemove or replace these files" in log
    make_job(tmp_path / "sweep", 0, ["optimizer.lr=0.1"], None, log=log)
    (job,) = summarize(tmp_path / "sweep", metric="val/acc_best").jobs
    assert job.status == ("failed: CorruptImageError: 2 image file(s) could not be decoded: /d/a.jpg: truncated "
                          "/d/b.jpg: not an image Remove or replace these files, then run again.")


def test_a_searched_parameter_every_trial_drew_alike_is_swept_not_shared(tmp_path: Path):
    sweep = tmp_path / "search"
    for num, lr in enumerate([0.001, 0.003]):
        job = make_job(sweep, num, [f"optimizer.lr={lr}", "data.batch_size=32", "trainer.max_epochs=5"],
                       {"val/acc_best": 0.5 + num / 10}, direction="maximize")
        sweeper = {"direction": "maximize", "params": {"optimizer.lr": "tag(log, interval(1e-4, 1e-2))",
                                                       "data.batch_size": "choice(32, 64)"}}
        (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"sweeper": sweeper}}))
    summary = summarize(sweep)
    assert summary.swept == ["optimizer.lr", "data.batch_size"]
    assert summary.common == {"trainer.max_epochs": "5"}
    assert "Shared overrides: `trainer.max_epochs=5`" in to_markdown(summary)
    # The search's own record names what the sampler drew: a value the command fixed
    # (data.batch_size=32, which takes it out of the search) is shared after all.
    (sweep / "optuna_search.yaml").write_text(yaml.safe_dump({"searched": ["optimizer.lr"]}))
    summary = summarize(sweep)
    assert summary.swept == ["optimizer.lr"]
    assert summary.common == {"data.batch_size": "32", "trainer.max_epochs": "5"}


def test_a_resumed_session_that_failed_before_training_is_news_only_without_results(tmp_path: Path):
    sweep = tmp_path / "resumed"
    finished = "[t][cnnlab.tasks.train][INFO] - results in /x\n"
    early = (f"[t][cnnlab.tasks.train][ERROR] - {RESUME_REFUSED_LOG_MARK}ConfigValueError: trainer.accelerator=gpu, "
             f"but this machine has no GPU\n  use trainer=cpu\n")
    make_job(sweep, 0, ["optimizer.lr=0.1"], {"val/acc_best": 0.9}, log=finished + early)  # the run stands as it was
    make_job(sweep, 1, ["optimizer.lr=0.2"], None, log=early)  # e.g. a requeued job that could not start again
    jobs = {job.name: job.status for job in summarize(sweep).jobs}
    assert jobs == {"0": "ok", "1": "failed: a resumed session failed before training: ConfigValueError: "
                                    "trainer.accelerator=gpu, but this machine has no GPU use trainer=cpu"}


def test_a_run_stopped_with_ctrl_c_is_shown_as_interrupted_with_the_command_that_continues_it(tmp_path: Path):
    sweep = tmp_path / "stopped"
    finished = "[t][cnnlab.tasks.train][INFO] - results in /x\n"
    failed = "[t][cnnlab.tasks.train][ERROR] - training failed: OSError: disk full\n"
    # As train.py logs a Ctrl-C (tests/test_resume_sessions.py checks that line).
    stopped = (f"[t][cnnlab.tasks.train][WARNING] - {INTERRUPTED_LOG_MARK}; its last checkpoint /r/last.ckpt is from "
               f"epoch 2 (step 14). To continue the run from it: python scripts/train.py optimizer.lr=0.1 "
               f"hydra.run.dir=/r ckpt_path=last\n")
    make_job(sweep, 0, ["optimizer.lr=0.1"], None, log=stopped)
    make_job(sweep, 1, ["optimizer.lr=0.2"], {"val/acc_best": 0.9}, log=finished)
    make_job(sweep, 2, ["optimizer.lr=0.3"], {"val/acc_best": 0.8}, log=finished + stopped)  # a resumed session stopped
    make_job(sweep, 3, ["optimizer.lr=0.4"], None, log=failed + stopped)  # the last session's end counts
    make_job(sweep, 4, ["optimizer.lr=0.5"], None, log=stopped + failed)
    # The two other lines train.py may log on Ctrl-C; an unreadable checkpoint's reason can run over several lines.
    early = f"[t][cnnlab.tasks.train][WARNING] - {INTERRUPTED_LOG_MARK} before the first checkpoint was saved, so ...\n"
    unreadable = (f"[t][cnnlab.tasks.train][WARNING] - {INTERRUPTED_LOG_MARK}; its last checkpoint /r/last.ckpt cannot be "
                  f"read (UnpicklingError: Weights only load failed.\nPlease file an issue)\n[t][x][INFO] - next record\n")
    make_job(sweep, 5, ["optimizer.lr=0.6"], None, log=early)
    make_job(sweep, 6, ["optimizer.lr=0.7"], None, log=unreadable)
    summary = summarize(sweep)
    jobs = {job.name: job.status for job in summary.jobs}
    told = stopped.split(" - ", 1)[1].strip()
    assert jobs == {"0": told, "1": "ok", "2": f"ok; a later run in its folder was {told}", "3": told,
                    "4": "failed: OSError: disk full",
                    "5": f"{INTERRUPTED_LOG_MARK} before the first checkpoint was saved, so ...",
                    "6": f"{INTERRUPTED_LOG_MARK}; its last checkpoint /r/last.ckpt cannot be read (UnpicklingError: "
                         f"Weights only load failed. Please file an issue)"}
    assert "7 jobs, 2 finished, 1 failed, 4 interrupted;" in to_markdown(summary)
    table = {row["job"]: (row["status"], row["rank"]) for row in csv.DictReader(io.StringIO(to_csv(summary)))}
    assert table == {"0": ("interrupted", ""), "1": ("ok", "1"), "2": ("ok", "2"), "3": ("interrupted", ""),
                     "4": ("failed", ""), "5": ("interrupted", ""), "6": ("interrupted", "")}


def test_a_run_that_left_a_swept_key_at_its_default_shows_the_value_it_ran_with(tmp_path: Path):
    # summarize.py logs/train/runs: some runs chose model= and optimizer.lr=, one ran the defaults.
    runs = tmp_path / "runs"
    make_job(runs, 0, ["model=simple_cnn_bn", "optimizer.lr=0.01"], {"val/acc_best": 0.7})
    default = make_job(runs, 1, [], {"val/acc_best": 0.6})
    (default / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
        {"hydra": {"runtime": {"choices": {"model": "simple_cnn", "optimizer": "adam"}}}}))
    (default / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"optimizer": {"lr": 0.001}}))
    summary = summarize(runs)
    assert summary.swept == ["model", "optimizer.lr"]
    rows = [line for line in to_markdown(summary).splitlines() if line.startswith("| ") and not line.startswith("| rank")]
    assert rows[1].startswith("| 2 | 1 | simple_cnn (config) | 0.001 (config) | 0.6000 |")
    table = list(csv.DictReader(io.StringIO(to_csv(summary))))
    assert (table[1]["model"], table[1]["optimizer.lr"]) == ("simple_cnn", "0.001")
    # The plot puts that run at the same values.
    assert plot_points(summary, "model") == [("simple_cnn_bn", 0.7), ("simple_cnn", 0.6)]
    assert plot_points(summary, "optimizer.lr") == [("0.01", 0.7), ("0.001", 0.6)]


def test_a_resumed_run_shows_the_config_values_of_the_session_that_wrote_its_metrics(tmp_path: Path):
    # Run 1 left trainer.max_epochs at its config value; between its sessions the config file
    # changed (2 epochs, then 4), and its metrics came from the resumed session.
    runs = tmp_path / "runs"
    make_job(runs, 0, ["trainer.max_epochs=5"], {"val/acc_best": 0.7})
    resumed_run = make_job(runs, 1, [], {"val/acc_best": 0.6, "epochs": 4, "resumed_from": "/r/last.ckpt",
                                         "session": "resumed_2026-01-01_10-00-00"})
    (resumed_run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"trainer": {"max_epochs": 2}}))
    add_session(resumed_run, "resumed_2026-01-01_10-00-00", ["ckpt_path=last"])
    (resumed_run / ".hydra" / "resumed_2026-01-01_10-00-00" / "config.yaml").write_text(
        yaml.safe_dump({"trainer": {"max_epochs": 4}}))
    summary = summarize(runs)
    assert summary.swept == ["trainer.max_epochs", "ckpt_path"]
    rows = [line for line in to_markdown(summary).splitlines() if line.startswith("| ") and not line.startswith("| rank")]
    assert rows[1].startswith("| 2 | 1 | 4 (config) | last | 0.6000 |")
    assert plot_points(summary, "trainer.max_epochs") == [("5", 0.7), ("4", 0.6)]


def test_a_metrics_file_holding_json_but_no_metrics_by_name_is_that_jobs_failure_and_the_table_still_comes(tmp_path: Path):
    # A hand-edited or foreign metrics.json ([0.7], "done", null, an image saved under that name) once crashed the
    # whole summary (AttributeError, UnicodeDecodeError).
    sweep = tmp_path / "sweep"
    make_job(sweep, 0, ["optimizer.lr=0.1"], {"val/acc_best": 0.5})
    for num, content in ((1, b"[0.7]"), (2, b'"done"'), (3, b"null"), (4, b"[" + b"0.25, " * 20 + b"1]"),
                         (5, b"\x89PNG\r\n\x1a\n\x00")):
        folder = make_job(sweep, num, [f"optimizer.lr=0.{num + 1}"], None)
        (folder / "metrics.json").write_bytes(content)
    summary = summarize(sweep)
    assert [job.name for job in summary.finished] == ["0"]
    assert [job.status for job in summary.jobs[1:]] == [
        "failed: unreadable metrics.json: it holds [0.7], not metrics by name",
        'failed: unreadable metrics.json: it holds "done", not metrics by name',
        "failed: unreadable metrics.json: it holds null, not metrics by name",
        "failed: unreadable metrics.json: it holds [0.25, 0.25, 0.25, 0.25, 0.25, 0.25, ..., not metrics by name",
        "failed: unreadable metrics.json: 'utf-8' codec can't decode byte 0x89 in position 0: invalid start byte"]
    assert "| failed: unreadable metrics.json: it holds [0.7], not metrics by name |" in to_markdown(summary)
