"""Reusing the folder of a run that failed before writing any output (eval, predict, visualize, convolution, benchmark)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from test_scripts import script_command

from cnnlab.errors import RunDirectoryInUseError
from cnnlab.utils.hydra_callbacks import refuse_used_run_dir, refuse_used_sweep_dir
from conftest import ROOT


def failed_attempt(folder: Path, log: str = "eval.log") -> None:
    """A folder as a run that stopped before writing any output leaves it: Hydra's record and the log."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("ckpt_path: nope.ckpt\n")
    (folder / log).write_text("")


def test_an_eval_that_failed_before_writing_leaves_a_folder_the_corrected_command_may_reuse(tmp_path: Path):
    run_dir = tmp_path / "eval_run"
    missing = tmp_path / "nope.ckpt"
    for attempt in (1, 2):
        result = subprocess.run(script_command("eval.py", tmp_path, f"ckpt_path={missing}", f"hydra.run.dir={run_dir}"),
                                capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert result.returncode == 1, attempt
        # The second attempt runs (and fails on the same checkpoint) instead of calling the folder used.
        assert "RunDirectoryInUseError" not in result.stderr, attempt
        assert f"CheckpointError: checkpoint {missing} does not exist" in result.stderr, attempt
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "eval.log"]


@pytest.mark.parametrize("log", ["eval.log", "predict.log", "train_ddp_process_1.log"])
def test_a_record_and_logs_alone_do_not_make_a_folder_used(tmp_path: Path, log: str):
    failed_attempt(tmp_path / "run", log)
    refuse_used_run_dir(tmp_path / "run", any_content=True)
    failed_attempt(tmp_path / "sweep" / "0", log)
    refuse_used_sweep_dir(tmp_path / "sweep", any_content=True)


@pytest.mark.parametrize("output", ["metrics.json", "predictions.csv", "convolution.png", "benchmark.json"])
def test_any_output_next_to_the_record_still_makes_the_folder_used(tmp_path: Path, output: str):
    failed_attempt(tmp_path)
    (tmp_path / output).write_text("an earlier run's output\n")
    with pytest.raises(RunDirectoryInUseError, match=rf"^{re.escape(str(tmp_path))} already holds results of another "
                                                     rf"run \(\.hydra, .*{re.escape(output)}.*\); nothing was overwritten"):
        refuse_used_run_dir(tmp_path, any_content=True)


def test_a_log_file_is_only_a_log_at_the_top_and_as_a_file(tmp_path: Path):
    # A folder named like a log is some task's output, not Hydra's log.
    failed_attempt(tmp_path)
    (tmp_path / "tensorboard.log").mkdir()
    with pytest.raises(RunDirectoryInUseError, match=r"\(\.hydra, eval\.log, tensorboard\.log\)"):
        refuse_used_run_dir(tmp_path, any_content=True)
