"""The benchmark's small-data mode: every path runs and the report is written."""

from __future__ import annotations

import json

from cnnlab.tasks.benchmark import benchmark


def test_benchmark_on_synthetic_data_measures_every_path(make_config, tmp_path):
    cfg = make_config("benchmark", [
        "data.num_images=400", "data.val_split=40", "data.test_split=40", "data.batch_size=16",
        "benchmark.warmup_steps=2", "benchmark.steps=4", "benchmark.plain_loop_workers=0",
        "~callbacks.progress_bar", "logger=csv",
    ])
    results = benchmark(cfg)
    names = [row["name"] for row in results["rows"]]
    assert names == [
        "compute only (batch already on the device)",
        "cnnlab data path, bare loop",
        "cnnlab data path, Lightning Trainer",
        "plain loop (in-memory PIL, like CIFAR10)",
    ]
    assert all(row["images_per_s"] > 0 and row["peak_host_mb"] > 0 for row in results["rows"])
    # Every path, the plain loop too, takes its turn in each of the 3 rounds: 3 x 3 windows.
    assert [len(row["extra"]["window_seconds"]) for row in results["rows"]] == [9, 9, 9, 9]
    assert results["header"]["optimizer"] == "Adam (fused)"
    assert "one epoch through the Trainer (320 train + 40 val images)" in results["summary"]
    written = json.loads((tmp_path / "run" / "benchmark.json").read_text())
    assert written["rows"] == results["rows"]
    report = (tmp_path / "run" / "benchmark.md").read_text()
    assert "| cnnlab data path, Lightning Trainer |" in report and "Lightning overhead" in report


def test_benchmark_uses_the_files_for_the_plain_loop_on_folder_data(make_config, image_folder):
    cfg = make_config("benchmark", [
        "data=folder", f"data.root={image_folder}", "data.batch_size=4", "data.image_size=16",
        "benchmark.warmup_steps=1", "benchmark.steps=2", "benchmark.plain_loop_workers=0", "benchmark.epoch=false",
        "~callbacks.progress_bar", "logger=csv",
    ])
    names = [row["name"] for row in benchmark(cfg)["rows"]]
    assert "plain loop (ImageFolder, JPEG decode per image)" in names
