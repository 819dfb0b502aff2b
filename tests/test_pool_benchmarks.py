"""scripts/pool_benchmarks.py on benchmark runs as the benchmark leaves them."""

from __future__ import annotations

import importlib.util
import json
import random
import re
import shutil
import statistics
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from cnnlab.benchmark.pooling import canonical_order, load_run, pool, to_markdown
from cnnlab.benchmark.rounds import REPORT_ORDER
from cnnlab.errors import ConfigValueError, InputNotFoundError
from cnnlab.tasks.benchmark import benchmark
from conftest import ROOT, compose_run_config

OVERHEAD = "Lightning overhead, Trainer vs bare loop"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two small benchmark runs of one setup: 3 and 2 rounds."""
    folder = tmp_path_factory.mktemp("bench")
    runs = []
    for name, rounds in (("a", 3), ("b", 2)):
        cfg = compose_run_config("benchmark", folder, folder / name, [
            "~callbacks.progress_bar", "logger=csv", "data.num_images=200", "data.val_split=20", "data.test_split=20",
            "data.batch_size=16", "benchmark.warmup_steps=1", "benchmark.window_warmup_steps=0", "benchmark.steps=2",
            f"benchmark.rounds={rounds}", "benchmark.plain_loop=false", "benchmark.epoch=false",
        ])
        runs.append((folder / name, benchmark(cfg)))
    return runs


def test_pooling_puts_every_runs_rounds_together(two_runs):
    (path_a, results_a), (path_b, results_b) = two_runs
    runs = [load_run(path_a), load_run(path_b)]
    pooled = {ratio.name: ratio for ratio in pool(runs)}
    assert set(pooled) == set(results_a["ratios_per_round"])  # no plain loop: no speed-up ratio
    overhead = pooled[OVERHEAD]
    rounds = results_a["ratios_per_round"][OVERHEAD] + results_b["ratios_per_round"][OVERHEAD]
    assert overhead.rounds == 5 and overhead.median == pytest.approx(statistics.median(rounds))
    assert overhead.interval[0] <= overhead.median <= overhead.interval[1]
    # Each run's own figures are those its report gave, interval included (the runs in pool's order).
    results_of = {runs[0].file: results_a, runs[1].file: results_b}
    in_order = [results_of[run.file] for run in canonical_order(runs)]
    for (median, interval, count), results in zip(overhead.per_run, in_order, strict=True):
        assert median == pytest.approx(statistics.median(results["ratios_per_round"][OVERHEAD]))
        assert list(interval) == pytest.approx(results["median_intervals_95"][OVERHEAD])
        assert count == len(results["ratios_per_round"][OVERHEAD])


def test_the_script_prints_and_writes_the_pooled_table(two_runs, tmp_path):
    (path_a, _), (path_b, _) = two_runs
    out = tmp_path / "pooled.md"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "pool_benchmarks.py"), str(path_a), str(path_b),
                           "--out", str(out)], capture_output=True, text=True, check=True)
    assert "# 2 benchmark runs pooled: SimpleCNN on SyntheticDataModule, batch 16, 32-true" in done.stdout
    row = next(line for line in done.stdout.splitlines() if line.startswith(f"| {OVERHEAD} |"))
    assert row.endswith("| 5 |") and row.count("[") == 3  # two runs and the pool, each with its interval
    assert out.read_text() in done.stdout


def test_runs_of_different_setups_or_no_runs_are_refused(two_runs, tmp_path):
    (path_a, _), (path_b, _) = two_runs
    other = tmp_path / "other"
    shutil.copytree(path_b, other)
    results = json.loads((other / "benchmark.json").read_text())
    results["header"]["precision"] = "bf16-mixed"
    (other / "benchmark.json").write_text(json.dumps(results))
    with pytest.raises(ConfigValueError, match="ran different setups \\(precision: 'bf16-mixed' against '32-true'\\)"):
        pool([load_run(path_a), load_run(other)])
    results["header"]["precision"] = "32-true"
    results["header"]["windows"] = "2 rounds; in each, every path runs 50 timed steps in turn"
    (other / "benchmark.json").write_text(json.dumps(results))
    with pytest.raises(ConfigValueError, match="timed different windows"):
        pool([load_run(path_a), load_run(other)])
    # The sentence's wording before 45de7a8, with the same numbers: the same windows.
    first = load_run(path_a)
    older = re.sub(r"\(the Trainer \d+: .*; (\d+) before a path's first window\)", r"(\1 before its first window)",
                   first.header["windows"])
    assert older != first.header["windows"]
    results["header"]["windows"] = older
    (other / "benchmark.json").write_text(json.dumps(results))
    assert load_run(other).window_setup == first.window_setup
    results["header"]["windows"] = older.replace("after 0 untimed", "after 2 untimed")
    (other / "benchmark.json").write_text(json.dumps(results))
    with pytest.raises(ConfigValueError, match="timed different windows"):
        pool([first, load_run(other)])

    with pytest.raises(ConfigValueError, match="no benchmark runs to pool"):
        pool([])
    with pytest.raises(InputNotFoundError, match="no benchmark.json at"):
        load_run(tmp_path / "missing")
    (other / "benchmark.json").write_text('{"header": {')  # a run cut off mid-write by hand
    with pytest.raises(ConfigValueError, match="is not a benchmark report"):
        load_run(other)
    failed = subprocess.run([sys.executable, str(ROOT / "scripts" / "pool_benchmarks.py"), str(path_a), str(other)],
                            capture_output=True, text=True)
    assert failed.returncode == 1 and "is not a benchmark report" in failed.stderr and not failed.stdout


def test_a_run_given_twice_is_refused(two_runs, tmp_path):
    (path_a, _), _ = two_runs
    with pytest.raises(ConfigValueError, match=f"{path_a} and {path_a} are the same run \\(one benchmark.json\\): "
                                               f"its rounds would count twice; give each run once"):
        pool([load_run(path_a), load_run(path_a / "benchmark.json")])
    copy = tmp_path / "copy"
    shutil.copytree(path_a, copy)
    with pytest.raises(ConfigValueError, match="are the same run \\(identical benchmark.json files\\)"):
        pool([load_run(path_a), load_run(copy)])
    failed = subprocess.run([sys.executable, str(ROOT / "scripts" / "pool_benchmarks.py"), str(path_a), str(path_a)],
                            capture_output=True, text=True)
    assert failed.returncode == 1 and "are the same run (one benchmark.json)" in failed.stderr and not failed.stdout


def test_runs_of_different_image_sizes_are_refused(two_runs, tmp_path):
    # benchmark.json does not hold the image size: the run's Hydra record (.hydra/config.yaml) does.
    copies = {}
    for (path, _), name, size in zip(two_runs, "ab", (32, 48), strict=True):
        copies[name] = tmp_path / name
        shutil.copytree(path, copies[name])
        (copies[name] / ".hydra").mkdir()
        (copies[name] / ".hydra" / "config.yaml").write_text(f"data:\n  image_size: {size}\n")
    with pytest.raises(ConfigValueError, match="ran different setups \\(image_size: 48 against 32\\)"):
        pool([load_run(copies["a"]), load_run(copies["b"])])

    (copies["b"] / ".hydra" / "config.yaml").write_text("data:\n  image_size: 32\n")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "pool_benchmarks.py"), str(copies["a"]),
                           str(copies["b"])], capture_output=True, text=True, check=True)
    assert "# 2 benchmark runs pooled: SimpleCNN on SyntheticDataModule at 32x32, batch 16, 32-true" in done.stdout


def test_runs_of_different_settings_in_their_hydra_records_are_refused(two_runs, tmp_path):
    # Both headers say 'SimpleCNN': simple_cnn and simple_cnn_bn differ only in their settings,
    # which the runs' Hydra records (.hydra/config.yaml) hold.
    def record(batch_norm="true", root="/data/a", workers=0, clip="null", lr=0.001, momentum=0.9) -> str:
        return (f"model:\n  _target_: cnnlab.models.simple_cnn.SimpleCNN\n  input_size: ${{data.image_size}}\n"
                f"  batch_norm: {batch_norm}\nclassifier:\n  label_smoothing: 0.0\n"
                f"optimizer:\n  _target_: torch.optim.SGD\n  lr: {lr}\n  momentum: {momentum}\n"
                f"data:\n  root: {root}\n  image_size: 32\n  num_workers: {workers}\n"
                f"  cache_dir: /cache/{workers}\n  decode_workers: {workers}\n"
                f"trainer:\n  precision: 32-true\n  gradient_clip_val: {clip}\n  max_epochs: {workers}\n"
                f"session: ${{resume_session:${{ckpt_path}},${{paths.output_dir}}}}\n")

    copies = []
    for (path, _), name in zip(two_runs, "ab", strict=True):
        copies.append(tmp_path / name)
        shutil.copytree(path, copies[-1])
        (copies[-1] / ".hydra").mkdir()
    first, second = (run / ".hydra" / "config.yaml" for run in copies)
    first.write_text(record())

    def refusal(**settings) -> str:
        second.write_text(record(**settings))
        with pytest.raises(ConfigValueError) as refused:
            pool([load_run(copies[0]), load_run(copies[1])])
        return str(refused.value)

    assert (f"{copies[1]} and {copies[0]} ran different setups (model.batch_norm: False against True); "
            f"pool only runs of one command on one machine") in refusal(batch_norm="false")
    assert "(data.root: '/data/b' against '/data/a')" in refusal(root="/data/b")  # another folder is other data
    assert ("(optimizer.lr: 0.1 against 0.001; optimizer.momentum: 0.0 against 0.9; data.root: '/b' against "
            "'/data/a'; and 1 more)") in refusal(clip=1.0, lr=0.1, momentum=0.0, root="/b")
    # Where and how fast the data loads, and settings outside the compared ones, may differ.
    second.write_text(record(workers=4))
    assert pool([load_run(copies[0]), load_run(copies[1])])[0].rounds == 5
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "pool_benchmarks.py"), *map(str, copies)],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "# 2 benchmark runs pooled: SimpleCNN" in done.stdout
    # Runs without records are compared by their headers alone, as before.
    first.unlink()
    second.unlink()
    assert pool([load_run(copies[0]), load_run(copies[1])])[0].rounds == 5


def test_runs_of_different_benchmark_trainer_callback_or_logger_settings_are_refused(two_runs, tmp_path):
    # Each of these changes what a round's windows time (the plain loop's workers, the Trainer's
    # logging, its callbacks and logger), so runs differing in one measured different things.
    record = OmegaConf.create({
        "data": {"image_size": 32},
        "trainer": {"precision": "32-true", "log_every_n_steps": 50, "max_epochs": 10,
                    "default_root_dir": "${paths.output_dir}"},
        "logger": {"csv": {"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": "${paths.output_dir}"}},
        "callbacks": {"progress_bar": {"_target_": "lightning.pytorch.callbacks.TQDMProgressBar", "refresh_rate": 20},
                      "lr_monitor": {"_target_": "lightning.pytorch.callbacks.LearningRateMonitor"}},
        "benchmark": {"rounds": 3, "steps": 2, "plain_loop": False, "plain_loop_workers": 2, "paired_steps": 0,
                      "command": None},
    })
    copies = []
    for (path, _), name in zip(two_runs, "ab", strict=True):
        copies.append(tmp_path / name)
        shutil.copytree(path, copies[-1])
        (copies[-1] / ".hydra").mkdir()
    OmegaConf.save(record, copies[0] / ".hydra" / "config.yaml")

    def pool_with(**changes):
        changed = record.copy()
        for key, value in changes.items():
            OmegaConf.update(changed, key.replace("__", "."), value, merge=False)
        OmegaConf.save(changed, copies[1] / ".hydra" / "config.yaml")
        return pool([load_run(copies[0]), load_run(copies[1])])

    def refusal(**changes) -> str:
        with pytest.raises(ConfigValueError) as refused:
            pool_with(**changes)
        return str(refused.value)

    assert (f"{copies[1]} and {copies[0]} ran different setups (benchmark.plain_loop_workers: 0 against 2); pool "
            f"only runs of one command on one machine") in refusal(benchmark__plain_loop_workers=0)
    assert "(benchmark.plain_loop: True against False)" in refusal(benchmark__plain_loop=True)
    assert "(trainer.log_every_n_steps: 10 against 50)" in refusal(trainer__log_every_n_steps=10)
    tensorboard = {"tensorboard": {"_target_": "lightning.pytorch.loggers.TensorBoardLogger"}}
    assert ("(logger.csv._target_: not set against 'lightning.pytorch.loggers.CSVLogger'; logger.csv.save_dir: not "
            "set against '${paths.output_dir}'; logger.tensorboard._target_: "
            "'lightning.pytorch.loggers.TensorBoardLogger' against not set)") in refusal(logger=tensorboard)
    assert "logger: None against not set)" in refusal(logger=None)  # logger=null: no logger at all
    assert ("(callbacks.progress_bar._target_: not set against 'lightning.pytorch.callbacks.TQDMProgressBar'; "
            "callbacks.progress_bar.refresh_rate: not set against 20)") in refusal(
        callbacks={"lr_monitor": record.callbacks.lr_monitor})  # ~callbacks.progress_bar
    # How many rounds, the report's label, the diagnostic run after the rounds, and the Trainer
    # settings the benchmark replaces may differ: pooling is for adding rounds.
    pooled = pool_with(benchmark__rounds=48, benchmark__command="python scripts/benchmark.py benchmark.rounds=48",
                       benchmark__paired_steps=1000, trainer__max_epochs=1, trainer__default_root_dir="/elsewhere")
    assert pooled[0].rounds == 5


def test_runs_recorded_before_a_class_moved_or_a_setting_was_added_pool_with_later_ones(two_runs, tmp_path):
    # The s27 runs' records name cnnlab.data.augment.NormalizeBatch and have no model.channels,
    # model.hidden or data.drop_last; a run of the same command today has them at these values.
    earlier = {"model": {"_target_": "cnnlab.models.simple_cnn.SimpleCNN", "dropout": 0.5,
                         "normalize": {"_target_": "cnnlab.data.augment.NormalizeBatch", "mean": [0.5], "std": [0.5]}},
               "data": {"image_size": 32, "batch_size": 64}}
    later = OmegaConf.merge(earlier, {"model": {"normalize": {"_target_": "cnnlab.models.normalize.NormalizeBatch"},
                                                "channels": [32, 64, 128], "hidden": 512},
                                      "data": {"drop_last": False}})
    copies = []
    for (path, _), name, record in zip(two_runs, "ab", (earlier, later), strict=True):
        copies.append(tmp_path / name)
        shutil.copytree(path, copies[-1])
        (copies[-1] / ".hydra").mkdir()
        OmegaConf.save(OmegaConf.create(record), copies[-1] / ".hydra" / "config.yaml")
    assert pool([load_run(copies[0]), load_run(copies[1])])[0].rounds == 5
    # A value other than the one the earlier run ran with is another setup.
    OmegaConf.save(OmegaConf.merge(later, {"model": {"hidden": 256}}), copies[1] / ".hydra" / "config.yaml")
    with pytest.raises(ConfigValueError, match=r"\(model.hidden: 256 against not set\)"):
        pool([load_run(copies[0]), load_run(copies[1])])


def _fabricated_run(folder, date: str, seed: int, rounds: int = 12, **header):
    """A benchmark.json as the benchmark writes it (keys sorted), its ratios drawn at random."""
    rng = random.Random(seed)
    ratios = {name: [rng.gauss(0.05, 0.03) for _ in range(rounds)] for name in sorted(REPORT_ORDER)}
    results = {"header": {"model": "SimpleCNN", "data": "SyntheticDataModule", "batch_size": 64,
                          "device": "CPU (x86_64)", "host": "vm, 2 torch threads", "torch": "2", "precision": "bf16-mixed",
                          "date": date, "command": "python scripts/benchmark.py", "windows": WINDOWS, **header},
               "ratios_per_round": ratios}
    folder.mkdir(parents=True)
    (folder / "benchmark.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    return folder


WINDOWS = ("48 rounds; in each, every path runs 50 timed steps in turn, after 5 untimed ones (the Trainer 6: the step "
           "that closes its window before runs untimed too; 30 before a path's first window)")


def _main(argv: list[str]) -> int:
    script = importlib.util.spec_from_file_location("pool_benchmarks", ROOT / "scripts" / "pool_benchmarks.py")
    module = importlib.util.module_from_spec(script)
    script.loader.exec_module(module)
    return module.main(argv)


def test_the_figures_do_not_depend_on_the_order_the_runs_are_given_in(tmp_path):
    runs = [_fabricated_run(tmp_path / f"run{i}", f"2026-11-25 1{i}:00", seed=i) for i in range(6)]
    runs.append(_fabricated_run(tmp_path / "same_minute", "2026-11-25 13:00", seed=9))  # a tie on the date
    shuffled = [runs[i] for i in (5, 2, 6, 0, 4, 1, 3)]
    tables = [to_markdown(loaded, pool(loaded)) for loaded in ([load_run(run) for run in order]
                                                               for order in (runs, shuffled, runs[::-1]))]
    assert tables[0] == tables[1] == tables[2]
    # Taken by date: the earliest run is run 1.
    assert f"- run 1: {runs[0]} (2026-11-25 10:00)" in tables[0]


def test_the_pooled_ratios_come_in_the_reports_order_and_one_run_is_one(tmp_path):
    run = _fabricated_run(tmp_path / "run", "2026-11-25 10:00", seed=1)
    loaded = load_run(run)
    assert list(loaded.ratios_per_round) == sorted(REPORT_ORDER)  # benchmark.json's keys are sorted
    assert [ratio.name for ratio in pool([loaded])] == list(REPORT_ORDER)
    table = to_markdown([loaded], pool([loaded]))
    assert table.startswith("# 1 benchmark run pooled: SimpleCNN on SyntheticDataModule, batch 64, bf16-mixed\n")
    assert [line.split(" | ")[0][2:] for line in table.splitlines()[-len(REPORT_ORDER):]] == list(REPORT_ORDER)


def test_runs_on_different_cpu_models_are_refused_and_unrecorded_ones_pool(tmp_path):
    epyc = _fabricated_run(tmp_path / "epyc", "2026-11-25 10:00", seed=1, cpu_model="AMD EPYC")
    xeon = _fabricated_run(tmp_path / "xeon", "2026-11-25 11:00", seed=2, cpu_model="Intel(R) Xeon(R) Platinum 8480+")
    with pytest.raises(ConfigValueError, match=re.escape(
            f"{xeon} and {epyc} ran on different CPUs (cpu_model: 'Intel(R) Xeon(R) Platinum 8480+' against "
            f"'AMD EPYC'); pool only runs of one command on one machine")):
        pool([load_run(epyc), load_run(xeon)])
    # Runs from before the CPU model was recorded (logs/s27, logs/s34): of an unknown CPU, they pool with any.
    older = _fabricated_run(tmp_path / "older", "2026-11-25 09:00", seed=3)
    loaded = [load_run(older), load_run(epyc)]
    assert pool(loaded)[0].rounds == 24
    assert "- device: CPU (x86_64); CPU model: AMD EPYC (not recorded by run 1); host: vm" in to_markdown(loaded, pool(loaded))
    with pytest.raises(ConfigValueError, match=re.escape(f"{xeon} and {epyc} ran on different CPUs")):
        pool([load_run(older), load_run(epyc), load_run(xeon)])  # not only each against the first
    # The benchmark's singular wording of one untimed step reads as the same windows as the plural.
    singular = _fabricated_run(tmp_path / "singular", "2026-11-25 12:00", seed=4,
                               windows="2 rounds; in each, every path runs 5 timed steps in turn, after 1 untimed one "
                                       "(the Trainer 2: the step that closes its window before runs untimed too; 3 "
                                       "before a path's first window)")
    plural = _fabricated_run(tmp_path / "plural", "2026-11-25 13:00", seed=5,
                             windows="2 rounds; in each, every path runs 5 timed steps in turn, after 1 untimed ones "
                                     "(the Trainer 2: the step that closes its window before runs untimed too; 3 "
                                     "before a path's first window)")
    assert load_run(singular).window_setup == load_run(plural).window_setup == \
        "5 timed steps after 1 untimed ones, 3 before a path's first window"


def test_out_never_replaces_a_file_nor_takes_a_folder(tmp_path, capsys):
    run = _fabricated_run(tmp_path / "run", "2026-11-25 10:00", seed=1)
    results = (run / "benchmark.json").read_text()
    (run / "benchmark.md").write_text("the run's own report\n")
    for taken in ("benchmark.json", "benchmark.md"):
        assert _main([str(run), "--out", str(run / taken)]) == 1
        assert capsys.readouterr().err == (f"ConfigValueError: --out {run / taken} already exists; pick another path "
                                           f"or remove it\n")
    assert (run / "benchmark.json").read_text() == results and (run / "benchmark.md").read_text() == "the run's own report\n"
    assert _main([str(run), "--out", str(run)]) == 1
    assert capsys.readouterr().err == (f"ConfigValueError: --out {run} is a folder; give a new file's path, e.g. "
                                       f"{run / 'pooled.md'}\n")
    assert _main([str(run), "--out", str(tmp_path / "pooled.md")]) == 0
    assert (tmp_path / "pooled.md").read_text() in capsys.readouterr().out


def test_a_runs_other_file_is_refused_with_a_hint_to_pass_its_folder(tmp_path):
    run = _fabricated_run(tmp_path / "run", "2026-11-25 10:00", seed=1)
    (run / "benchmark.md").write_text("# cnnlab benchmark: SimpleCNN on SyntheticDataModule, batch 64\n")
    with pytest.raises(ConfigValueError, match=re.escape(f"{run / 'benchmark.md'} is not a benchmark report "
                                                         f"(JSONDecodeError: ") + r".*\); " + re.escape(
                                                             f"pass the run's folder ({run})")):
        load_run(run / "benchmark.md")


def test_out_in_a_missing_folder_is_refused_and_nothing_is_made(tmp_path, capsys):
    run = _fabricated_run(tmp_path / "run", "2026-11-25 10:00", seed=1)
    out = tmp_path / "reprots" / "pooled.md"  # a typo of an existing folder
    (tmp_path / "reports").mkdir()
    assert _main([str(run), "--out", str(out)]) == 1
    assert capsys.readouterr().err == (f"ConfigValueError: --out {out}: there is no folder {out.parent}; make it first, "
                                       f"or give a path in an existing folder\n")
    assert not out.parent.exists()


def test_a_run_with_a_corrupt_record_or_no_rounds_is_named_not_a_traceback(tmp_path, capsys):
    good = _fabricated_run(tmp_path / "good", "2026-11-25 10:00", seed=1)
    corrupt = _fabricated_run(tmp_path / "corrupt", "2026-11-25 11:00", seed=2)
    (corrupt / ".hydra").mkdir()
    (corrupt / ".hydra" / "config.yaml").write_text("model: {_target_: cnnlab.models.SimpleCNN\ndata: [\n")
    assert _main([str(good), str(corrupt)]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"ConfigValueError: {corrupt / '.hydra' / 'config.yaml'} is not a readable Hydra record (")
    assert error.endswith("restore it from a copy of the run, or leave this run out\n")
    (corrupt / ".hydra" / "config.yaml").write_text("- a list, not settings\n")
    assert _main([str(good), str(corrupt)]) == 1
    assert "is not a readable Hydra record (ListConfig: " in capsys.readouterr().err

    for name, ratios, problem in (("empty", {OVERHEAD: []}, f"ratios_per_round[{OVERHEAD!r}] holds no rounds"),
                                  ("none", {}, "ratios_per_round holds no ratios"),
                                  ("text", {OVERHEAD: ["4.6%"]}, "holds a value that is not a number")):
        run = _fabricated_run(tmp_path / name, "2026-11-25 12:00", seed=3)
        results = json.loads((run / "benchmark.json").read_text())
        (run / "benchmark.json").write_text(json.dumps({**results, "ratios_per_round": ratios}))
        assert _main([str(good), str(run)]) == 1
        error = capsys.readouterr().err
        assert error.startswith(f"ConfigValueError: {run / 'benchmark.json'} is not a benchmark report (ValueError: ")
        assert problem in error and error.endswith("was the run interrupted before it wrote its results?\n")


def test_a_one_round_run_shows_no_interval_of_its_own(tmp_path):
    runs = [load_run(_fabricated_run(tmp_path / "one", "2026-11-25 10:00", seed=1, rounds=1)),
            load_run(_fabricated_run(tmp_path / "many", "2026-11-25 11:00", seed=2))]
    overhead = next(ratio for ratio in pool(runs) if ratio.name == OVERHEAD)
    assert [interval is None for _, interval, _ in overhead.per_run] == [True, False]
    assert overhead.interval is not None and overhead.rounds == 13
    row = next(line for line in to_markdown(runs, pool(runs)).splitlines() if line.startswith(f"| {OVERHEAD} |"))
    assert row.split(" | ")[1].endswith(" [none from one round]")
