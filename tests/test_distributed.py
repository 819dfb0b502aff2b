"""DDP with two CPU processes (gloo), run from the CLI as a user would.

Lightning's ``ddp`` strategy starts the second process by running the command line again, so
these tests run the training script in a subprocess (under pytest the command line is pytest's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from cnnlab.errors import ConfigValueError
from cnnlab.tasks.summarize import FINISHED_LOG_MARK
from cnnlab.tasks.train import build_run
from cnnlab.utils.config import ddp_strategy
from conftest import FAST, ROOT

TESTS = Path(__file__).resolve().parent


def run_script(tmp_path: Path, script: str, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / script), f"paths.root_dir={tmp_path}", *overrides],
                            capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_ddp_on_two_cpu_processes_shares_each_epoch_syncs_metrics_and_writes_once(tmp_path: Path, cifar_root: Path):
    probe = tmp_path / "probe"
    # 120 images - 21 val = 99 train: uneven on purpose, for both the training and the validation split.
    trained = run_script(tmp_path, "train.py", *FAST, "trainer=ddp_cpu", f"data.root={cifar_root}",
                         "data.val_split=21", "data.download=false",
                         "+callbacks.probe._target_=sample_probe.SampleIndexRecorder", f"+callbacks.probe.out_dir={probe}")

    runs = list((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(runs) == 1, "the second process must use the first one's run folder"
    run = runs[0]
    results = json.loads((run / "metrics.json").read_text())
    assert results["epochs"] == 2 and results["global_step"] == 2 * 4  # 50 samples per process, batches of 16
    assert len(results["epoch_seconds"]) == 2
    # Written by rank zero alone: one process's TensorBoard files, one Hydra record.
    writers = {events.name.split(".")[-2] for events in (run / "tensorboard").glob("events.out.tfevents.*")}
    assert len(writers) == 1
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".hydra")) == [".hydra"]
    # Lines about the whole run come from rank zero alone; the finished mark only in its job log, where
    # scripts/summarize.py looks (the other process logs to train_ddp_process_1.log).
    output = trained.stdout + trained.stderr
    assert output.count(FINISHED_LOG_MARK) == 1 and output.count(" parameters, ") == 1
    # Both processes load the data; its lines show once (conf/hydra/job_logging/cnnlab.yaml's log filter).
    assert output.count("][INFO] - data: 99 train, 21 val, 30 test images") == 1
    assert f"{FINISHED_LOG_MARK}{run}" in (run / "train.log").read_text()
    # Lightning's own lines reach the job logs too (conf/hydra/job_logging/cnnlab.yaml's loggers):
    # which checkpoint the test restored, and each process's place in the group.
    assert "][INFO] - Restoring states from the checkpoint path at " in (run / "train.log").read_text()
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in (run / "train_ddp_process_1.log").read_text()
    assert FINISHED_LOG_MARK not in (run / "train_ddp_process_1.log").read_text()
    # Epoch-level values are logged synchronised: Lightning recommends nothing.
    assert "sync_dist" not in output

    seen = [json.loads((probe / f"seen_rank{rank}.json").read_text()) for rank in (0, 1)]
    for epoch in (0, 1):
        train = [seen[rank][f"train/{epoch}"] for rank in (0, 1)]
        assert len(train[0]) == len(train[1]) == 50  # DDP steps in lockstep: equal shares
        counts = Counter(train[0] + train[1])
        assert set(counts) == set(range(99))  # every training image, in one of the two processes
        assert sum(counts.values()) == 100  # Lightning's sampler pads 99 to 100 with one repeat
        val = seen[0][f"val/{epoch}"] + seen[1][f"val/{epoch}"]
        assert sorted(val) == list(range(21)), "every validation image exactly once"
    assert sorted(seen[0]["test"] + seen[1]["test"]) == list(range(30))

    # Synchronised metrics: the test accuracy over both halves equals a single process's evaluation.
    run_script(tmp_path, "eval.py", f"ckpt_path={results['best_checkpoint']}", "trainer=cpu",
               "+trainer.enable_progress_bar=false")
    evaluated = json.loads(next((tmp_path / "logs" / "eval" / "runs").glob("*/metrics.json")).read_text())
    assert evaluated["test/acc"] == results["test/acc"]
    assert evaluated["test/loss"] == pytest.approx(results["test/loss"], rel=1e-5)


def test_ddp_spawn_workers_log_to_the_job_log(tmp_path: Path, cifar_root: Path):
    # A local multirun spawns the DDP processes (ddp_spawn): fresh Python processes without Hydra's logging.
    run_script(tmp_path, "train.py", *FAST, "trainer=ddp_cpu", "trainer.max_epochs=1", "test=false",
               f"data.root={cifar_root}", "data.val_split=20", "data.download=false", "-m")

    (job,) = (tmp_path / "logs" / "train" / "multiruns").glob("*/0")
    job_log = (job / "train.log").read_text()
    data_line = "[cnnlab.data.base][INFO] - data: 100 train, 20 val, 30 test images"
    # The data is loaded inside the workers: its line reaches the job's log file, from rank zero alone.
    assert job_log.count(data_line) == 1
    # Appended after the job's own lines, which are neither lost (the file truncated) nor repeated.
    assert job_log.count("[cnnlab.tasks.train][INFO] - model: ") == 1
    assert job_log.index(" parameters, ") < job_log.index(" - data: ") < job_log.index(FINISHED_LOG_MARK)
    assert "][INFO] - `Trainer.fit` stopped: `max_epochs=1` reached." in job_log  # Lightning's, in a worker

    # Evaluation's test runs in spawned workers the same way.
    run_script(tmp_path, "eval.py", f"ckpt_path={job / 'checkpoints' / 'last.ckpt'}", "trainer=ddp_cpu",
               "+trainer.enable_progress_bar=false", "-m")
    (eval_job,) = (tmp_path / "logs" / "eval" / "multiruns").glob("*/0")
    assert (eval_job / "eval.log").read_text().count(data_line) == 1


def test_ddp_strategy_re_runs_the_command_only_outside_a_local_multirun(monkeypatch, hydra_multirun_job):
    for variable in ("SLURM_NTASKS", "SLURM_JOB_NAME", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(variable, raising=False)
    # A local multirun job is a function call: the processes must be spawned.
    assert ddp_strategy() == "ddp_spawn"
    # Under SLURM every process is started from outside and ddp joins them.
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    assert ddp_strategy() == "ddp"


def test_ddp_set_by_hand_in_a_local_multirun_is_refused(monkeypatch, hydra_multirun_job, make_config):
    for variable in ("SLURM_NTASKS", "SLURM_JOB_NAME", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ConfigValueError, match="would start the whole sweep again; use trainer.strategy=ddp_spawn"):
        build_run(make_config(overrides=["trainer=ddp_cpu", "trainer.strategy=ddp"]))
    # Lightning resolves strategy=auto with several devices to ddp too.
    with pytest.raises(ConfigValueError, match="trainer.strategy=auto with several processes is Lightning's ddp"):
        build_run(make_config(overrides=["trainer=cpu", "trainer.devices=2"]))
    build_run(make_config(overrides=["trainer=cpu", "trainer.devices=1"]))  # one process: nothing re-runs


def test_ddp_strategy_of_a_single_run_is_ddp(monkeypatch):
    for variable in ("SLURM_NTASKS", "SLURM_JOB_NAME", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(variable, raising=False)
    assert ddp_strategy() == "ddp"  # Lightning re-runs the command for the other processes

