"""The prediction task: classify image files with a trained checkpoint, write CSV and JSON."""

from __future__ import annotations

import csv
import io
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from cnnlab.data.folder import (
    IMAGE_EXTENSIONS,
    decode_image_file,
    image_files,
    is_image_file,
    is_other_file,
    warn_skipped_files,
)
from cnnlab.errors import InputNotFoundError
from cnnlab.tasks.inference import class_probabilities, load_trained_network, positive_count
from cnnlab.utils.config import ensure_switch, ensure_values_set, run_folder
from cnnlab.utils.io import atomic_write, atomic_write_json

log = logging.getLogger(__name__)

CSV_COLUMNS = ["file", "predicted_class", "probability", "top_k", "error"]


@dataclass
class Prediction:
    """One file's result: the top-k classes with probabilities, or the reason it could not be read."""

    file: str
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str = ""

    def as_json(self) -> dict[str, Any]:
        if self.error:
            return {"file": self.file, "error": self.error}
        return {
            "file": self.file,
            "predicted_class": self.top_k[0][0],
            "probability": self.top_k[0][1],
            "top_k": [{"class": name, "probability": p} for name, p in self.top_k],
        }

    def as_csv_row(self) -> list[str]:
        if self.error:
            return [self.file, "", "", "", self.error]
        top = " ".join(f"{name}:{p:.4f}" for name, p in self.top_k)
        return [self.file, self.top_k[0][0], f"{self.top_k[0][1]:.6f}", top, ""]


def list_input_files(inputs: str | Path, recursive: bool = True) -> list[Path]:
    """The files to classify: ``inputs`` itself, or the image files under the folder ``inputs`` (sorted),
    read as training reads a class folder (:func:`cnnlab.data.folder.image_files`).

    A file named as ``inputs`` is tried whatever its name or extension, and reported if unreadable.
    In a folder, hidden and system files and folders (``Thumbs.db``, ``desktop.ini``, ``.DS_Store``,
    ``@eaDir`` thumbnails, ``.AppleDouble`` resource forks) are skipped without a word; other files
    without an image extension are skipped with one warning that counts them by extension, as
    training warns. A corrupt file with an image extension is still tried and reported as failed.
    """
    path = Path(str(inputs)).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputNotFoundError(f"inputs={inputs} is neither an image file nor a folder of images")
    skipped: list[Path] = []
    if recursive:
        files = image_files(path, skipped)
    else:
        entries = sorted(p for p in path.iterdir() if p.is_file())
        files = [p for p in entries if is_image_file(p)]
        skipped = [p for p in entries if is_other_file(p)]
    warn_skipped_files(path, skipped, "classified")
    if not files:
        where = "" if recursive else " outside its sub-folders (recursive=false)"
        raise InputNotFoundError(
            f"the folder {path} holds no image files to classify{where} ({', '.join(sorted(IMAGE_EXTENSIONS))}): "
            f"pass inputs= a folder of images or one image file"
        )
    return files


def _decode(path: Path, image_size: int) -> torch.Tensor | str:
    try:
        return decode_image_file(path, image_size)
    except Exception as error:  # noqa: BLE001 - whatever is wrong with one file, the others are still classified
        return f"not a readable image: {error}" if str(error) else "not a readable image"


def predict_files(model: torch.nn.Module, class_names: list[str], files: list[Path], image_size: int, top_k: int = 5,
                  batch_size: int = 256, decode_workers: int = 2) -> list[Prediction]:
    """Classify ``files`` in batches with ``model`` (a trained classifier, as ``load_trained_network`` gives it).

    A file that cannot be decoded gets an error instead of classes. At most as many classes
    as the model has are listed per file. ``decode_workers`` threads decode the files (at least 1).
    """
    k = min(positive_count(top_k, "top_k"), len(class_names))
    if k < top_k:
        log.warning("top_k=%d, but the model has %d classes: listing all %d", top_k, len(class_names), k)
    batch_size = positive_count(batch_size, "batch_size")
    results: list[Prediction] = []
    with ThreadPoolExecutor(max_workers=positive_count(decode_workers, "decode_workers")) as pool:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            decoded = list(pool.map(lambda p: _decode(p, image_size), chunk))
            images = [d for d in decoded if isinstance(d, torch.Tensor)]
            probabilities = class_probabilities(model, torch.stack(images)) if images else torch.empty(0)
            top_p, top_i = probabilities.topk(k, dim=1) if images else (None, None)
            row = 0
            for path, item in zip(chunk, decoded, strict=True):
                if isinstance(item, str):
                    results.append(Prediction(str(path), error=item))
                    continue
                assert top_p is not None and top_i is not None
                results.append(Prediction(str(path), [(class_names[i], float(p)) for p, i in
                                                      zip(top_p[row].tolist(), top_i[row].tolist(), strict=True)]))
                row += 1
    return results


def write_predictions(predictions: list[Prediction], csv_path: Path, json_path: Path) -> None:
    """Write the results as CSV (one row per file) and JSON, atomically."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(CSV_COLUMNS)
    writer.writerows(p.as_csv_row() for p in predictions)
    atomic_write(csv_path, lambda f: f.write(text.getvalue().encode()))
    atomic_write_json(json_path, [p.as_json() for p in predictions])


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Classify ``cfg.inputs`` (a file or a folder) with the checkpoint ``cfg.ckpt_path``.

    Writes ``predictions.csv`` and ``predictions.json`` into the run folder. Files that cannot
    be decoded (a corrupt image, or a file named as ``inputs`` that is not one) are reported by
    name and listed with their error; the others are still classified. A folder is read as
    :func:`list_input_files` says. Returns the counts and the output paths.
    """
    ensure_values_set(cfg)
    # Before the checkpoint is read and the run folder made, so a typo costs nothing.
    positive_count(cfg.top_k, "top_k")
    positive_count(cfg.batch_size, "batch_size")
    positive_count(cfg.get("decode_workers", 2), "decode_workers")
    recursive = ensure_switch(cfg.get("recursive", True), "recursive")  # recursive=no would be a truthy string
    output_dir = run_folder(cfg)
    trained = load_trained_network(cfg.ckpt_path, device=cfg.get("device", "cpu"))
    files = list_input_files(cfg.inputs, recursive=recursive)
    log.info("classifying %d file(s) with %s (%d classes, images resized to %d)", len(files), trained.ckpt_path,
             len(trained.class_names), trained.image_size)
    predictions = predict_files(trained.model, trained.class_names, files, trained.image_size, top_k=cfg.top_k,
                                batch_size=cfg.batch_size, decode_workers=cfg.get("decode_workers", 2))
    csv_path, json_path = output_dir / "predictions.csv", output_dir / "predictions.json"
    write_predictions(predictions, csv_path, json_path)
    failed = [p for p in predictions if p.error]
    for p in failed:
        log.error("%s: %s", p.file, p.error)
    for p in predictions[: cfg.get("print_first", 20)]:
        if not p.error:
            log.info("%s: %s (%.1f%%)", p.file, p.top_k[0][0], 100 * p.top_k[0][1])
    log.info("%d classified, %d failed; results in %s and %s", len(predictions) - len(failed), len(failed), csv_path,
             json_path)
    return {"classified": len(predictions) - len(failed), "failed": [p.file for p in failed],
            "csv": str(csv_path), "json": str(json_path)}
