"""Hyperparameter search (Optuna) and the submitit launchers (local processes; SLURM batch scripts)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import OmegaConf
from test_scripts import run, script_command, train_overrides

from cnnlab.errors import ConfigValueError
from cnnlab.tasks.summarize import summarize
from cnnlab.tasks.train import build_run
from cnnlab.utils.hydra_callbacks import RefuseUsedRunFolder, refuse_wrong_direction, sqlite_database_file
from conftest import CONF_DIR, ROOT
from hydra_plugins.cnnlab_launchers.resuming_submitit import ResumingSlurmLauncher


def job_folders(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def only_sweep(tmp_path: Path) -> Path:
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    return sweep


def test_optuna_search_of_two_trials_reports_its_best(tmp_path: Path, cifar_root: Path):
    # Started in tmp_path without paths.root_dir: the sweep folder resolves from the start folder.
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "hparams_search=simple_cnn_optuna",
                             "hydra.sweeper.n_trials=2", *train_overrides(cifar_root)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = only_sweep(tmp_path)
    jobs = job_folders(sweep)
    assert [job.name for job in jobs] == ["0", "1"]
    values = [json.loads((job / "metrics.json").read_text())["val/acc_best"] for job in jobs]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(values))  # what each trial returned is what Optuna saw
    assert set(best["best_params"]) == {"optimizer.lr", "optimizer.weight_decay", "model.dropout"}  # batch size fixed here
    # The search recorded what it draws, less the batch size the command fixed: the summary's columns.
    searched = ["optimizer.lr", "optimizer.weight_decay", "model.dropout"]
    assert yaml.safe_load((sweep / "optuna_search.yaml").read_text()) == {"searched": searched}
    assert summarize(sweep).swept == searched
    assert "Best value" in result.stdout + result.stderr
    trial_lrs = {yaml.safe_load((job / ".hydra" / "config.yaml").read_text())["optimizer"]["lr"] for job in jobs}
    assert len(trial_lrs) == 2 and all(1e-4 <= lr <= 1e-2 for lr in trial_lrs)


def test_a_search_that_would_maximise_the_loss_is_refused_before_any_trial(tmp_path: Path, cifar_root: Path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "-m", "hparams_search=simple_cnn_optuna",
                             "optimized_metric=val/loss", "hydra.sweeper.n_trials=1", *train_overrides(cifar_root)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "ConfigValueError: optimized_metric=val/loss is a loss, but the sweeper's direction is maximize "
        "(hydra.sweeper.direction), so the search would look for the largest val/loss. Add "
        "hydra.sweeper.direction=minimize to the command (or optimize another metric); no trial was started.")
    assert list(tmp_path.iterdir()) == []  # no sweep folder, no multirun.yaml, no Optuna study


def test_a_stored_study_continued_draws_new_trials_and_its_missing_folder_is_made(tmp_path: Path, cifar_root: Path):
    # The README's storage, relative to the start folder, whose db/ does not exist yet: SQLite
    # creates the file, not its folder. Run twice, the study holds both sessions' trials; the
    # sampler's fixed seed (1234) made the second session repeat the first's random draws.
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), "hparams_search=simple_cnn_optuna",
               "hydra.sweeper.n_trials=1", "hydra.sweeper.storage=sqlite:///db/optuna.db", *train_overrides(cifar_root)]
    results = [subprocess.run([*command, f"hydra.sweep.dir={tmp_path / f'sweep{session}'}"], capture_output=True,
                              text=True, cwd=tmp_path, timeout=300) for session in (1, 2)]
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "db" / "optuna.db").is_file()
    configs = [yaml.safe_load((tmp_path / f"sweep{session}" / "0" / ".hydra" / "config.yaml").read_text())
               for session in (1, 2)]
    drawn = [(c["optimizer"]["lr"], c["optimizer"]["weight_decay"], c["model"]["dropout"]) for c in configs]
    assert drawn[0] != drawn[1]
    assert ("Optuna study simple_cnn in sqlite:///db/optuna.db already holds 1 trial: the sampler's seed is 1235 "
            "(hydra.sweeper.sampler.seed=1234 plus the trials held)") in results[1].stdout + results[1].stderr
    # The trial's own record names the seed that drew it.
    hydra_record = yaml.safe_load((tmp_path / "sweep2" / "0" / ".hydra" / "hydra.yaml").read_text())["hydra"]
    assert hydra_record["sweeper"]["sampler"]["seed"] == 1235
    assert "hydra.sweeper.sampler.seed=1235" in hydra_record["overrides"]["hydra"]


@pytest.mark.parametrize(("storage", "database"), [
    ("sqlite:///logs/optuna.db", Path("logs/optuna.db")),
    ("sqlite:////abs/optuna.db?timeout=5", Path("/abs/optuna.db")),
    ("sqlite:///:memory:", None),
    ("sqlite://", None),
    ("postgresql://host/db", None),
])
def test_the_database_file_of_a_storage_url(storage: str, database: Path | None):
    assert sqlite_database_file(storage) == database


@pytest.mark.parametrize(("metric", "direction", "refused"), [
    ("val/loss", "maximize", "is a loss, but the sweeper's direction is maximize"),
    ("train/loss", ["maximize"], "is a loss, but the sweeper's direction is maximize"),
    ("val/acc_top5", "minimize", "is an accuracy, but the sweeper's direction is minimize"),
    ("val/loss", "minimize", None),
    ("val/acc_best", "maximize", None),
    ("fit_seconds", "maximize", None),  # neither a loss nor an accuracy: whichever the user meant
    ("val/loss", ["maximize", "minimize"], None),  # several objectives: left to Optuna
])
def test_the_sweep_direction_must_fit_a_loss_or_an_accuracy(metric, direction, refused):
    if refused is None:
        refuse_wrong_direction(metric, direction)
    else:
        with pytest.raises(ConfigValueError, match=refused):
            refuse_wrong_direction(metric, direction)


def test_optunas_default_direction_is_checked_too():
    # hydra/sweeper=optuna without a direction minimises (an enum in the config): wrong for val/acc_best.
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/sweeper=optuna"], return_hydra_config=True)
    with pytest.raises(ConfigValueError, match=r"^optimized_metric=val/acc_best is an accuracy, but the sweeper's "
                                               r"direction is minimize .* Add hydra.sweeper.direction=maximize"):
        refuse_wrong_direction(cfg.optimized_metric, cfg.hydra.sweeper.direction)


def test_submitit_local_launcher_runs_a_job(tmp_path: Path, cifar_root: Path):
    run(script_command("train.py", tmp_path, "hydra/launcher=local", *train_overrides(cifar_root), multirun=True))
    sweep = only_sweep(tmp_path)
    (job,) = job_folders(sweep)
    assert json.loads((job / "metrics.json").read_text())["epochs"] == 1
    assert (job / "checkpoints" / "last.ckpt").is_file() and (job / ".hydra" / "overrides.yaml").is_file()
    # It ran in a process of its own, which submitit logged.
    (job_log,) = (sweep / ".submitit").glob("*/*_0_log.out")
    assert "Job completed successfully" in job_log.read_text()


def fake_slurm_commands(folder: Path) -> Path:
    """``sbatch`` that keeps the batch script it is given and submits nothing; ``srun`` to be found."""
    folder.mkdir()
    for name, body in {"sbatch": 'cp "$1" "$SBATCH_CAPTURE"\necho "sbatch: test stand-in, nothing submitted" >&2\nexit 1',
                       "srun": "exit 1"}.items():
        path = folder / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return folder


def test_slurm_launcher_writes_a_batch_script_shaped_like_the_trainer(tmp_path: Path):
    commands = fake_slurm_commands(tmp_path / "bin")
    script = tmp_path / "job.sh"
    env = {**os.environ, "PATH": f"{commands}{os.pathsep}{os.environ['PATH']}", "SBATCH_CAPTURE": str(script)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), "-m", f"paths.root_dir={tmp_path}", "hydra/launcher=slurm",
         "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90", "trainer=ddp", "trainer.devices=4",
         "trainer.num_nodes=2", "model=simple_cnn,simple_cnn_bn"],
        capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)
    assert result.returncode != 0 and "test stand-in, nothing submitted" in result.stderr
    lines = script.read_text().splitlines()
    options = {line.removeprefix("#SBATCH ") for line in lines if line.startswith("#SBATCH")}
    # One task per device on each node (Lightning's SLURM environment), GPUs to match.
    assert {"--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu", "--time=90"} <= options
    assert "--array=0-1%2" in options  # the two jobs of the sweep, as one array
    assert "--signal=USR2@120" in options  # submitit's warning before the time limit: it requeues
    (srun,) = [line for line in lines if line.startswith("srun ")]
    assert srun.endswith(str(only_sweep(tmp_path) / ".submitit" / "%j")) and "-m submitit.core._submit" in srun


def test_a_slurm_job_needs_a_device_count():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "trainer=ddp"], return_hydra_config=True)
    with pytest.raises(Exception, match=r"trainer.devices=-1, but on SLURM it must be a positive number"):
        _ = cfg.hydra.launcher.tasks_per_node
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "trainer=ddp_cpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert (launcher.tasks_per_node, launcher.nodes, launcher.gpus_per_node) == (2, 1, None)


def requeued_after(tmp_path: Path, monkeypatch, overrides: list[str], last_saved: float | None,
                   record_written: float | None = None) -> list[str]:
    """The overrides a job started at time 1000 is requeued with, its last.ckpt (if any) stamped ``last_saved``.

    ``record_written``: the job wrote its Hydra record (.hydra/hydra.yaml), stamped so, as it began.
    """
    job_dir = tmp_path / "sweep" / "5"
    (job_dir / "checkpoints").mkdir(parents=True)
    if last_saved is not None:
        (job_dir / "checkpoints" / "last.ckpt").write_bytes(b"checkpoint")
        os.utime(job_dir / "checkpoints" / "last.ckpt", (last_saved, last_saved))
    if record_written is not None:
        (job_dir / ".hydra").mkdir()
        (job_dir / ".hydra" / "hydra.yaml").write_text("hydra: {}")
        os.utime(job_dir / ".hydra" / "hydra.yaml", (record_written, record_written))
    # In a job, Hydra's config names the job's folder (and its record's) when submitit calls checkpoint().
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: SimpleNamespace(
        runtime=SimpleNamespace(output_dir=str(job_dir)), output_subdir=".hydra" if record_written else None)))
    launcher = ResumingSlurmLauncher()
    launcher._job_started = 1000.0
    requeued = launcher.checkpoint(overrides, "hydra.sweep.dir", 5, "job_id_for_5", {})
    assert requeued.function is launcher
    assert requeued.args[1:] == ("hydra.sweep.dir", 5, "job_id_for_5", {})
    return requeued.args[0]


def test_a_requeued_job_continues_from_the_checkpoint_it_saved(tmp_path: Path, monkeypatch):
    given = ["model=simple_cnn_bn", "ckpt_path=/old/run/checkpoints/last.ckpt", "seed=3"]
    assert requeued_after(tmp_path, monkeypatch, given, last_saved=1060.0) == [
        "model=simple_cnn_bn", "seed=3", "ckpt_path=last"]


def test_a_job_requeued_before_its_first_checkpoint_starts_as_it_was_started(tmp_path: Path, monkeypatch):
    # From another run's checkpoint: again from it, not from scratch.
    given = ["model=simple_cnn_bn", "ckpt_path=/old/run/checkpoints/last.ckpt", "seed=3"]
    assert requeued_after(tmp_path, monkeypatch, given, last_saved=None) == given


def test_a_folders_older_last_checkpoint_is_not_the_requeued_jobs_own(tmp_path: Path, monkeypatch):
    # A job sent back to an earlier epoch of its folder goes back there again, not to the
    # last.ckpt its folder had before the job started.
    given = ["ckpt_path=logs/run/checkpoints/epoch_003.ckpt"]
    assert requeued_after(tmp_path, monkeypatch, given, last_saved=990.0) == given
    assert requeued_after(tmp_path / "again", monkeypatch, [], last_saved=1000.0) == ["ckpt_path=last"]


def test_a_checkpoint_is_the_jobs_own_by_the_file_servers_clock(tmp_path: Path, monkeypatch):
    # The node's clock (1000 at the job's start) runs ahead of the file server's, which stamped the
    # job's Hydra record at 400 and its last.ckpt at 460: the checkpoint is still the job's own.
    given = ["ckpt_path=/old/run/checkpoints/last.ckpt"]
    assert requeued_after(tmp_path, monkeypatch, given, last_saved=460.0, record_written=400.0) == ["ckpt_path=last"]
    assert requeued_after(tmp_path / "b", monkeypatch, given, last_saved=390.0, record_written=400.0) == given


def test_a_job_notes_when_it_started(monkeypatch):
    # The submitit launcher that runs the job, stubbed (taken from the class's bases: Hydra's plugin
    # scan may have imported its module a second time, under another name).
    runs_the_job = next(base for base in ResumingSlurmLauncher.__mro__[2:] if "__call__" in vars(base))
    monkeypatch.setattr(runs_the_job, "__call__", lambda self, *args, **kwargs: "job ran")
    launcher = ResumingSlurmLauncher()
    before = time.time()
    assert launcher(["seed=1"], "hydra.sweep.dir", 0, "job_id", {}) == "job ran"
    assert before <= launcher._job_started <= time.time()


def test_under_slurm_lightning_leaves_requeueing_to_submitit(make_config, monkeypatch):
    # Task 0 of a two-task SLURM job, as srun starts it.
    for variable, value in {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NAME": "train",
                            "SLURM_JOB_ID": "42", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
                            "SLURM_NODELIST": "localhost"}.items():
        monkeypatch.setenv(variable, value)
    _, _, trainer = build_run(make_config(overrides=["trainer=ddp_cpu"]))
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue is False
    assert type(trainer.strategy).__name__ == "DDPStrategy" and environment.creates_processes_externally
    assert trainer.world_size == 2


def test_the_example_sweep_compares_the_three_models():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=compare_models"], return_hydra_config=True)
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.hydra.sweeper.params == {"model": "simple_cnn,simple_cnn_bn,resnet18_ft"}


def test_a_continued_sweep_keeps_the_earlier_sweeps_record(tmp_path: Path):
    # `-m ... ckpt_path=last hydra.sweep.dir=<sweep>` continues each job in its folder; Hydra's
    # sweeper then writes the new command's multirun.yaml, the only record of the first command.
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("the first command\n")
    config = OmegaConf.create({"ckpt_path": "last", "hydra": {"sweep": {"dir": str(sweep)}}})
    RefuseUsedRunFolder().on_multirun_start(config)
    RefuseUsedRunFolder().on_multirun_start(config)  # continued twice within a second: two copies
    kept = sorted(sweep.glob("multirun.before_*.yaml"))
    assert [path.read_text() for path in kept] == ["the first command\n"] * 2
    # A copy: a command refused later (its sweep direction, say) leaves the record in place.
    assert (sweep / "multirun.yaml").read_text() == "the first command\n"
