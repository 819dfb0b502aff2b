"""The scripts as a user runs them: multirun sweeps, simultaneous runs and eval from the CLI."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.errors import InputNotFoundError
from cnnlab.tasks.predict import list_input_files
from cnnlab.tasks.summarize import summarize
from cnnlab.tasks.train import train
from conftest import FAST, ROOT, compose_run_config


def script_command(script: str, tmp_path: Path, *overrides: str, multirun: bool = False) -> list[str]:
    flags = ["-m"] if multirun else []
    return [sys.executable, str(ROOT / "scripts" / script), *flags, f"paths.root_dir={tmp_path}", *overrides]


def train_overrides(cifar_root: Path) -> list[str]:
    return [*FAST, "trainer.max_epochs=1", f"data.root={cifar_root}", "data.val_split=20", "data.download=false"]


def run(command: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_multirun_gives_one_folder_and_result_per_job(tmp_path: Path, cifar_root: Path):
    run(script_command("train.py", tmp_path, "model=simple_cnn,simple_cnn_bn", *train_overrides(cifar_root), multirun=True))
    sweeps = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    counts = {json.loads((job / "metrics.json").read_text())["params_total"] for job in jobs}
    assert counts == {1_147_466, 1_147_690}
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert list((job / "tensorboard").glob("events.out.tfevents.*"))
        assert (job / ".hydra" / "config.yaml").is_file()

    # The sweep's summary: one row per job, best first, as Markdown (printed too), CSV and a plot.
    summary = run([sys.executable, str(ROOT / "scripts" / "summarize.py"), str(sweeps[0])])
    reached = {job.name: json.loads((job / "metrics.json").read_text())["val/acc_best"] for job in jobs}
    # The two models reach different accuracies (0.65 with batch norm, 0.25 without): on a tie any
    # order of the rows would pass.
    assert len(set(reached.values())) == 2, reached
    lines = summary.stdout.splitlines()
    column = next(line for line in lines if line.startswith("| rank |")).split(" | ").index("val/acc_best")
    rows = [line.split(" | ") for line in lines if line.startswith("| ") and not line.startswith("| rank")]
    assert [row[0] for row in rows] == ["| 1", "| 2"]
    assert [row[1] for row in rows] == sorted(reached, key=reached.get, reverse=True)
    assert [float(row[column]) for row in rows] == sorted((round(value, 4) for value in reached.values()), reverse=True)
    assert {"simple_cnn", "simple_cnn_bn"} == {row[2] for row in rows}
    # Ranked the other way round, the order turns over: whichever job leads, one of the two orders
    # is not the jobs' own, so a ranking that kept the jobs' order would fail here.
    assert [job.name for job in summarize(sweeps[0], direction="minimize").jobs] == [row[1] for row in reversed(rows)]
    assert len((sweeps[0] / "summary.csv").read_text().splitlines()) == 3
    assert (sweeps[0] / "summary.png").stat().st_size > 0 and (sweeps[0] / "summary.md").is_file()


def test_runs_started_together_get_separate_folders_and_eval_reproduces(tmp_path: Path, cifar_root: Path):
    command = script_command("train.py", tmp_path, *train_overrides(cifar_root))
    processes = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
    runs = sorted((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(runs) == 2 and all((r / "metrics.json").is_file() for r in runs)

    trained = json.loads((runs[0] / "metrics.json").read_text())
    result = run(script_command("eval.py", tmp_path, f"ckpt_path={trained['best_checkpoint']}", "trainer=cpu"))
    assert "test/acc" in result.stdout
    evaluated = json.loads(next((tmp_path / "logs" / "eval" / "runs").glob("*/metrics.json")).read_text())
    assert evaluated["test/acc"] == trained["test/acc"]


def test_a_typo_in_an_override_is_reported_by_name(tmp_path: Path):
    result = subprocess.run(script_command("train.py", tmp_path, "model=simple_cnnn"), capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode != 0
    assert "simple_cnnn" in result.stderr and "simple_cnn_bn" in result.stderr  # Hydra lists the valid options


def test_a_user_error_prints_as_written_not_as_a_repr(tmp_path: Path, cifar_root: Path):
    missing = tmp_path / "resnet18.pth"
    result = subprocess.run(script_command("train.py", tmp_path, *train_overrides(cifar_root), "model=resnet18_ft",
                                           f"model.weights_path={missing}"),
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr
    assert f"WeightsUnavailableError: model weights file {missing} does not exist (model.weights_path)" in result.stderr
    assert not list((tmp_path / "logs" / "train" / "runs").glob("*/checkpoints"))


def test_a_user_error_ends_a_single_run_with_its_message_alone_unless_hydra_full_error_is_set(tmp_path: Path):
    missing = tmp_path / "missing.ckpt"
    message = (f"CheckpointError: checkpoint {missing} does not exist; "
               f"pass ckpt_path=<a .ckpt file from a run's checkpoints/ folder>")
    command = script_command("eval.py", tmp_path, f"ckpt_path={missing}")
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120,
                            env={k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"})
    assert result.returncode == 1
    assert message in result.stderr.splitlines()
    assert "Traceback" not in result.stderr and "HYDRA_FULL_ERROR" not in result.stderr, result.stderr

    # Asked for, the full traceback.
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120,
                            env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and f"cnnlab.errors.{message}" in result.stderr


def test_a_user_error_fails_its_sweep_job_and_the_sweep_goes_on(tmp_path: Path, cifar_root: Path):
    # Hydra's basic launcher runs the jobs in this process: a SystemExit from job 0 would end the sweep.
    missing = tmp_path / "no_cifar"
    result = subprocess.run(script_command("train.py", tmp_path, *FAST, "trainer.max_epochs=1", "data.val_split=20",
                                           "data.download=false", f"data.root={missing},{cifar_root}", multirun=True),
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 1  # as a sweep with a failed job ends, after the other jobs
    assert f"DatasetNotFoundError: CIFAR-10 is not in {missing}" in result.stderr
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    failed_job_log = (sweep / "0" / "train.log").read_text()
    assert "training failed: DatasetNotFoundError" in failed_job_log
    assert failed_job_log.count("DatasetNotFoundError") == 1  # training records its own failure, once
    assert (sweep / "1" / "metrics.json").is_file()
    # The sweep ends with the failed job's message and where to look, not a traceback through cnnlab's frames.
    assert "Traceback" not in result.stderr, result.stderr
    assert f"(job 0 of the sweep, in {sweep / '0'}; every job's result: python scripts/summarize.py {sweep})" in (
        result.stderr.splitlines())


def test_a_failed_sweep_job_of_another_task_records_its_error_in_its_log(tmp_path: Path):
    missing = [tmp_path / "a.ckpt", tmp_path / "b.ckpt"]
    result = subprocess.run(script_command("eval.py", tmp_path, f"ckpt_path={missing[0]},{missing[1]}", multirun=True),
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    (sweep,) = (tmp_path / "logs" / "eval" / "multiruns").iterdir()
    assert f"CheckpointError: checkpoint {missing[0]} does not exist" in result.stderr
    assert f"(job 0 of the sweep, in {sweep / '0'})" in result.stderr.splitlines()
    assert "summarize.py" not in result.stderr  # it reads training runs
    for job, checkpoint in enumerate(missing):  # both jobs ran; each log says why it failed
        assert f"failed: CheckpointError: checkpoint {checkpoint} does not exist" in (sweep / str(job) / "eval.log").read_text()


def test_moving_only_paths_output_dir_is_refused_with_the_override_that_moves_the_run(tmp_path: Path, cifar_root: Path):
    # Hydra writes .hydra/ and the log into its own run folder before the task starts; results
    # elsewhere would split the run (and a sweep's jobs would all write into one folder).
    elsewhere = tmp_path / "elsewhere"
    result = subprocess.run(script_command("train.py", tmp_path, *train_overrides(cifar_root),
                                           f"paths.output_dir={elsewhere}"),
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode != 0
    assert f"ConfigValueError: paths.output_dir={elsewhere} is not this run's folder" in result.stderr
    assert f"hydra.run.dir={elsewhere}" in result.stderr
    assert not elsewhere.exists()
    assert not list((tmp_path / "logs" / "train" / "runs").glob("*/checkpoints"))


def _used_run_folder(folder: Path) -> dict[Path, bytes]:
    """A folder as a finished run leaves it (its record, results and checkpoints); returns each file's bytes."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / "checkpoints").mkdir()
    for name, text in {".hydra/config.yaml": "optimizer:\n  lr: 0.001\n", ".hydra/overrides.yaml": "- optimizer.lr=0.001\n",
                       ".hydra/hydra.yaml": "hydra: {}\n", "metrics.json": '{"test/acc": 0.5}\n',
                       "checkpoints/last.ckpt": "weights"}.items():
        (folder / name).write_text(text)
    return {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_a_run_or_sweep_into_a_used_folder_is_refused_before_hydra_writes_its_record(tmp_path: Path, cifar_root: Path):
    # Hydra writes <run>/.hydra/ (a sweep's multirun.yaml and <job>/.hydra/) before the task
    # starts: the refusal must come first, or the earlier run's record says lr=0.5 afterwards.
    run_dir = tmp_path / "used_run"
    before = _used_run_folder(run_dir)
    result = subprocess.run(script_command("train.py", tmp_path, *train_overrides(cifar_root), "optimizer.lr=0.5",
                                           f"hydra.run.dir={run_dir}"),
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 1
    assert (f"RunDirectoryInUseError: {run_dir} already holds results of another run (metrics.json, checkpoints); "
            f"nothing was overwritten") in result.stderr
    assert f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}" in result.stderr
    assert {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()} == before

    sweep_dir = tmp_path / "used_sweep"
    before = _used_run_folder(sweep_dir / "0")
    (sweep_dir / "multirun.yaml").write_text("earlier sweep\n")
    before[sweep_dir / "multirun.yaml"] = b"earlier sweep\n"
    result = subprocess.run(script_command("train.py", tmp_path, *train_overrides(cifar_root), "optimizer.lr=0.5,0.1",
                                           f"hydra.sweep.dir={sweep_dir}", multirun=True),
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 1
    assert f"RunDirectoryInUseError: {sweep_dir} already holds the results of an earlier sweep (jobs 0)" in result.stderr
    assert {path: path.read_bytes() for path in sweep_dir.rglob("*") if path.is_file()} == before


def test_eval_predict_and_benchmark_refuse_any_used_folder_before_writing(tmp_path: Path):
    # These tasks have no resume: any file in the folder is another run's (a training run's
    # metrics.json, an earlier predictions.csv), and Hydra would replace its .hydra/ record.
    run_dir = tmp_path / "used_run"
    before = _used_run_folder(run_dir)
    for script, overrides in (("eval.py", [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"]),
                              ("predict.py", [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"inputs={tmp_path}"]),
                              ("benchmark.py", [])):
        result = subprocess.run(script_command(script, tmp_path, *overrides, f"hydra.run.dir={run_dir}"),
                                capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert result.returncode == 1, script
        assert f"RunDirectoryInUseError: {run_dir} already holds results of another run (.hydra, checkpoints" in result.stderr
        assert {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()} == before, script


def _photo_folder(folder: Path) -> list[str]:
    """Four images (one in a sub-folder) among the files systems leave and a text file; returns the images."""
    (folder / "trip").mkdir(parents=True)
    (folder / "@eaDir" / "a.jpg").mkdir(parents=True)  # a Synology NAS's thumbnails
    images = ["a.jpg", "b.PNG", "d.bmp", "trip/c.jpeg"]
    for i, name in enumerate(images):
        Image.fromarray(np.full((30, 40, 3), 60 * i, dtype=np.uint8)).save(folder / name)
    for name in ("Thumbs.db", "desktop.ini", ".DS_Store", "trip/._c.jpeg", "@eaDir/a.jpg/SYNOPHOTO_THUMB_S.jpg"):
        (folder / name).write_bytes(b"left by the system")
    (folder / "notes.txt").write_text("not an image\n")
    return images


def test_predict_reads_a_folder_as_training_does_skipping_system_files_and_naming_other_files(tmp_path: Path,
                                                                                              cifar_root: Path):
    # The checkpoint is trained in this process (a subprocess would add seconds of imports); predict runs as a user runs it.
    train(compose_run_config("train", tmp_path, tmp_path / "run", ["trainer.max_epochs=1", "test=false"], cifar_root))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    photos = tmp_path / "photos"
    images = _photo_folder(photos)

    result = run(script_command("predict.py", tmp_path, f"ckpt_path={ckpt}", f"inputs={photos}",
                                f"hydra.run.dir={tmp_path / 'folder'}"))  # exit status 0: nothing failed
    output = result.stdout + result.stderr
    assert "4 classified, 0 failed" in output
    with (tmp_path / "folder" / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [Path(row["file"]).relative_to(photos).as_posix() for row in rows] == images
    assert not any(row["error"] for row in rows)
    # The system's files without a word; the other file counted, as training counts it.
    assert (f"{photos}: 1 file(s) skipped, not of the image types read here (.txt: 1; e.g. notes.txt); images "
            f"among them are classified once converted to JPEG or PNG") in output
    assert not any(name in output for name in ("Thumbs.db", "desktop.ini", "DS_Store", "SYNOPHOTO", "._c"))

    # A file named on the command line is tried whatever its name, and reported when it is no image.
    thumbs = photos / "Thumbs.db"
    result = subprocess.run(script_command("predict.py", tmp_path, f"ckpt_path={ckpt}", f"inputs={thumbs}",
                                           f"hydra.run.dir={tmp_path / 'file'}"),
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "0 classified, 1 failed" in result.stdout
    with (tmp_path / "file" / "predictions.csv").open() as f:
        (row,) = csv.DictReader(f)
    assert row["file"] == str(thumbs) and row["error"].startswith("not a readable image: ")


def test_predict_lists_only_the_folder_itself_without_recursion_and_refuses_a_folder_of_no_images(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    photos = tmp_path / "photos"
    _photo_folder(photos)
    with caplog.at_level(logging.WARNING, logger="cnnlab.tasks.predict"):
        assert [p.name for p in list_input_files(photos, recursive=False)] == ["a.jpg", "b.PNG", "d.bmp"]
    assert [record.getMessage() for record in caplog.records] == [
        f"{photos}: 1 file(s) skipped, not of the image types read here (.txt: 1; e.g. notes.txt); images among "
        f"them are classified once converted to JPEG or PNG"]

    caplog.clear()
    (photos / "trip" / "c.jpeg").unlink()
    with pytest.raises(InputNotFoundError) as refused:
        list_input_files(photos / "trip")  # only ._c.jpeg, a macOS resource fork, is left there
    assert str(refused.value).startswith(f"the folder {photos / 'trip'} holds no image files to classify (.bmp, ")
    assert str(refused.value).endswith("): pass inputs= a folder of images or one image file")
    assert not caplog.records


def test_what_the_scripts_read_before_a_task_runs_imports_neither_torch_nor_lightning():
    # A mistyped override or a used run folder is refused in under a second, not after seconds of imports.
    early = ["cnnlab.errors", "cnnlab.utils.config", "cnnlab.utils.hydra_callbacks", "cnnlab.utils.log_filters",
             "hydra_plugins.cnnlab_launchers.resuming_submitit"]
    check = (f"import importlib, sys\nfor name in {early!r}: importlib.import_module(name)\n"
             "print(sorted(m for m in ('torch', 'lightning', 'torchvision') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
