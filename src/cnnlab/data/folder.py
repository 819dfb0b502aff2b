"""A folder of the user's own images: ``root/train/<class>/*``, optional ``root/val``, ``root/test``.

A folder with ``root/test/<class>/*`` alone is a test set for a checkpoint: its labels follow the
checkpoint's class list (see :meth:`ImageFolderDataModule.label_with`).

Every image is decoded once, turned as its EXIF orientation says (as image viewers show it),
resized to ``image_size`` x ``image_size`` and kept as uint8. The decoded tensors are cached on
disk under a key made of the files' paths, sizes, modification and change times and inode numbers
and the decode settings, so an edited folder is decoded afresh and never served stale.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from cnnlab.data.augment import RandomBatchAugment
from cnnlab.data.base import ImageSplit, InMemoryImageDataModule, held_out_sizes, seeded_split
from cnnlab.errors import CorruptImageError, DatasetNotFoundError
from cnnlab.utils.io import atomic_torch_save, ensure_cache_folder_usable

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
SPLIT_NAMES = ("train", "val", "test")
# Files that systems leave in image folders (besides hidden ones, whose names start with a dot):
# skipped without a word, unlike other files that are not images this reads.
SYSTEM_FILES = {"thumbs.db", "desktop.ini"}
# Folders that systems leave among images, holding thumbnails or resource forks under the photos'
# own names (Synology's @eaDir, macOS's __MACOSX in zip files); skipped, as are hidden folders
# (.AppleDouble, .thumbnails), which would otherwise add low-resolution copies or undecodable files.
SYSTEM_FOLDERS = {"@eadir", "__macosx"}
# Bump when the decoded output for the same files would change.
CACHE_FORMAT_VERSION = 4  # 3: 16-bit and float greyscale scaled to 8 bits, no longer clipped; 4: EXIF orientation


def is_skipped_folder(name: str) -> bool:
    """Whether a folder holds what systems leave beside images (hidden, or a system folder), not images."""
    return name.startswith(".") or name.lower() in SYSTEM_FOLDERS


def list_class_dirs(split_dir: Path) -> list[str]:
    """Class names of a split folder: its sub-folders that are not hidden or system folders, sorted.

    Raises :class:`DatasetNotFoundError` naming any link in it whose target does not exist: a
    linked class folder with a mistyped target would otherwise drop out of the classes in silence.
    """
    entries = [p for p in split_dir.iterdir() if not is_skipped_folder(p.name)]
    dangling = [p for p in entries if p.is_symlink() and not p.exists()]
    if dangling:
        raise DatasetNotFoundError(
            f"{split_dir} has {len(dangling)} link(s) whose target does not exist: "
            f"{', '.join(f'{p.name} -> {os.readlink(p)}' for p in dangling[:5])}{' ...' if len(dangling) > 5 else ''}. "
            f"Point them at existing folders (ln -sfn TARGET LINK) or remove them."
        )
    return sorted(p.name for p in entries if p.is_dir())


def missing_root_advice(root: Path) -> str:
    """A sentence for when ``root`` (``data.root``) is not a folder at all: it is a file, or does not exist
    (naming folders beside it with a similar name), or the empty string when it is a folder."""
    if root.is_dir():
        return ""
    if root.exists():
        return f". data.root={root} is a file, not a folder"
    parent = root.parent
    similar = difflib.get_close_matches(root.name, [p.name for p in parent.iterdir() if p.is_dir()]) if parent.is_dir() else []
    hint = f" (did you mean {', '.join(str(parent / name) for name in similar)}?)" if similar else ""
    return f". data.root={root} does not exist{hint}"


def split_folder_advice(root: Path) -> str:
    """A sentence for when ``root`` (``data.root``) looks like one split folder rather than the
    folder that holds them: it is named train/val/test, or holds class folders of images itself."""
    if not root.is_dir():
        return ""
    if root.name.lower() in SPLIT_NAMES:
        reason = f"it is named {root.name}/"
    elif any(any(has_image_name(f) for f in (root / name).iterdir()) for name in list_class_dirs(root)):
        reason = "it holds class folders of images"
    else:
        return ""
    if (root.parent / "train").is_dir():
        fix = f"pass data.root={root.parent}, the folder that holds train/ (and val/, test/)"
    else:
        fix = f"data.root is the folder that holds train/<class>/: move the class folders into {root / 'train'}/"
    return f". {root} looks like a split folder itself ({reason}): {fix}"


def has_image_name(path: Path) -> bool:
    """Whether a name is one the data module reads: visible, with an image extension (any case)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def is_image_file(path: Path | str) -> bool:
    """Whether a file is one the data module reads: a visible file with an image extension."""
    path = Path(path)
    return has_image_name(path) and path.is_file()


def image_files(class_dir: Path, skipped: list[Path] | None = None) -> list[Path]:
    """The image files under ``class_dir`` (any depth, through linked folders too), sorted.

    Sub-folders are walked as torchvision's ImageFolder walks them (``os.walk(followlinks=True)``),
    so a linked sub-folder counts like a real one, except hidden and system folders (``@eaDir``
    thumbnails, ``.AppleDouble`` resource forks), which ImageFolder would read. Raises
    :class:`DatasetNotFoundError` naming links to image files that no longer exist, rather than
    training on fewer images unawares.
    Other visible files (not hidden or system files) are appended to ``skipped`` when given.
    """
    paths = []
    for folder, sub_folders, names in os.walk(class_dir, followlinks=True):
        sub_folders[:] = [name for name in sub_folders if not is_skipped_folder(name)]  # os.walk does not enter these
        paths += [Path(folder) / name for name in names]
    paths.sort()
    dangling = [path for path in paths if has_image_name(path) and path.is_symlink() and not path.exists()]
    if dangling:
        raise DatasetNotFoundError(
            f"{len(dangling)} link(s) under {class_dir} point to files that do not exist: "
            f"{', '.join(str(path) for path in dangling[:5])}{' ...' if len(dangling) > 5 else ''}. "
            f"Restore their targets or remove the links."
        )
    if skipped is not None:
        skipped += [path for path in paths if is_other_file(path)]
    return [path for path in paths if is_image_file(path)]


def is_other_file(path: Path) -> bool:
    """Whether a file is neither an image this reads nor one that systems leave (hidden, ``Thumbs.db``):
    skipped, but said (:func:`warn_skipped_files`)."""
    return not has_image_name(path) and not path.name.startswith(".") and path.name.lower() not in SYSTEM_FILES


def warn_skipped_files(folder: Path, skipped: list[Path], used_as: str) -> None:
    """Warn once that the files ``skipped`` under ``folder`` are not read, counted by extension.

    Said, not dropped in silence: a phone's .heic photos would otherwise just be missing.
    ``used_as`` ends the line: images among them are ``used_as`` once converted.
    """
    if not skipped:
        return
    kinds = Counter(path.suffix.lower() or "(no extension)" for path in skipped)
    log.warning(
        "%s: %d file(s) skipped, not of the image types read here (%s; e.g. %s); images among them are %s once "
        "converted to JPEG or PNG", folder, len(skipped), ", ".join(f"{kind}: {n}" for kind, n in kinds.most_common()),
        skipped[0].relative_to(folder), used_as,
    )


def scan_split(split_dir: Path, class_names: list[str]) -> list[tuple[Path, int]]:
    """List ``(file, label)`` for every image file under ``split_dir/<class>/``, sorted."""
    unknown = sorted(set(list_class_dirs(split_dir)) - set(class_names))
    if unknown:
        raise DatasetNotFoundError(
            f"{split_dir} has class folders {unknown} that train/ does not have; "
            f"every class in val/ or test/ needs a folder in train/ too"
        )
    # Said, not dropped in silence: an image outside every class folder has no label.
    stray = sorted(p.name for p in split_dir.iterdir() if is_image_file(p))
    if stray:
        log.warning("%s: %d image file(s) directly in it, in no class folder, are not used (e.g. %s); move them "
                    "into their class's folder", split_dir, len(stray), stray[0])
    samples = []
    skipped: list[Path] = []
    for label, name in enumerate(class_names):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue
        samples += [(path, label) for path in image_files(class_dir, skipped)]
    warn_skipped_files(split_dir, skipped, "used")
    # Said, as it is easy to miss: sub-folders of a class folder are read too, with its label.
    nested = [path for path, label in samples if path.parent != split_dir / class_names[label]]
    if nested:
        log.info(
            "%s: %d of the %d images are in sub-folders of their class folder (e.g. %s) and are read "
            "with that class folder's label", split_dir, len(nested), len(samples), nested[0].relative_to(split_dir),
        )
    return samples


def eight_bit(pil_image: Image.Image) -> Image.Image:
    """A greyscale image of more than 8 bits per pixel as 8-bit greyscale (mode ``L``); others as they are.

    Pillow's own conversion clips such values to 255 (a 16-bit image comes out solid white), so
    they are scaled here:

    - ``I;16`` (16-bit PNG, TIFF): ``value >> 8``, so 0..65535 maps to 0..255 and an 8-bit value
      ``v`` stored as 16 bits (``v * 257``) comes back as ``v``;
    - ``I`` (32-bit integer: what Pillow makes of a 16-bit PGM): the same, taken as 16-bit data;
      values outside 0..65535 are clipped;
    - ``F`` (32-bit float): values in [0, 1] when the image's largest value is at most 1 (the
      usual float convention), times 255; otherwise taken as 0..255. Clipped, then rounded.
    """
    values: np.ndarray
    if pil_image.mode.startswith("I;16") or pil_image.mode == "I":
        values = np.clip(np.asarray(pil_image, dtype=np.int64), 0, 65535) >> 8
    elif pil_image.mode == "F":
        values = np.nan_to_num(np.asarray(pil_image, dtype=np.float64))
        if values.max(initial=0.0) <= 1.0:
            values = values * 255.0
        values = np.rint(np.clip(values, 0.0, 255.0))
    else:
        return pil_image
    return Image.fromarray(values.astype(np.uint8))


def decode_image_file(path: Path, image_size: int) -> Tensor:
    """Decode one image file as RGB uint8 (3, S, S): shorter side resized to S, centre crop.

    A photo is first turned as its EXIF orientation tag says, as image viewers (and labelling tools)
    show it; Pillow and torchvision's own loaders leave it as stored, often on its side.
    Pillow reads every common format (and releases the GIL while decoding, so threads help).
    16-bit, 32-bit integer and float greyscale images are scaled to 8 bits (see :func:`eight_bit`).
    Raises ``ValueError`` for a file it cannot decode, including one larger than Pillow's
    ``Image.MAX_IMAGE_PIXELS`` (its guard against decompression bombs, left as it is).
    """
    try:
        with Image.open(path) as pil_image:
            ImageOps.exif_transpose(pil_image, in_place=True)
            pixels = np.array(eight_bit(pil_image).convert("RGB"))
    except Image.DecompressionBombError as error:
        raise ValueError(
            f"{error} (Pillow's Image.MAX_IMAGE_PIXELS guards against decompression bombs): "
            f"shrink this image or remove it"
        ) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(str(error)) from error
    image = torch.from_numpy(pixels).permute(2, 0, 1)
    if image.shape[-2:] != (image_size, image_size):
        image = TF.resize(image, image_size, antialias=True)
        image = TF.center_crop(image, [image_size, image_size])
    return image.contiguous()


def decode_files(paths: list[Path], image_size: int, workers: int) -> Tensor:
    """Decode many files in a thread pool (the decoders release the GIL).

    Raises :class:`CorruptImageError` naming every file that could not be decoded.
    """

    def decode(path: Path) -> Tensor | str:
        try:
            return decode_image_file(path, image_size)
        except ValueError as error:
            return f"{path}: {error}"

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        decoded = list(pool.map(decode, paths, chunksize=256))
    failures = [d for d in decoded if isinstance(d, str)]
    if failures:
        shown = "\n  ".join(failures[:20])
        more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
        raise CorruptImageError(
            f"{len(failures)} image file(s) could not be decoded:\n  {shown}{more}\n"
            f"Remove or replace these files, then run again."
        )
    if not decoded:
        return torch.empty(0, 3, image_size, image_size, dtype=torch.uint8)
    return torch.stack(cast(list[Tensor], decoded))  # no failures: every entry is a Tensor


def cache_key(samples: list[tuple[Path, int]], root: Path, image_size: int) -> str:
    """A digest that changes whenever a file, its label, or the decode settings change.

    Size and modification time alone miss files swapped or copied over with their times kept
    (``mv``, ``cp -p``, ``rsync -a``) when sizes match, as they do for same-sized BMP or PPM
    files extracted from one archive; the inode number and change time (which no tool sets
    back) catch those. A folder copied elsewhere is decoded again.
    """
    digest = hashlib.sha256(f"v{CACHE_FORMAT_VERSION}|size={image_size}".encode())
    for path, label in samples:
        stat = path.stat()
        digest.update(
            f"|{path.relative_to(root)}|{label}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}|{stat.st_ino}".encode()
        )
    return digest.hexdigest()


def cache_lineage(split_dir: Path, image_size: int) -> str:
    """Names every cache ever made of one split folder at one size, whatever its contents were.

    A newer cache of the same lineage replaces the older ones: those hold the folder as it was
    before a file changed, or an older cache format, and would never be read again.
    """
    return hashlib.sha256(f"{split_dir.resolve()}|size={image_size}".encode()).hexdigest()[:8]


class ImageFolderDataModule(InMemoryImageDataModule):
    """The user's own labelled images.

    Args:
        root: folder with ``train/<class>/*`` and optionally ``val/<class>/*`` and ``test/<class>/*``;
            or with ``test/<class>/*`` alone, to evaluate a checkpoint on (see :meth:`label_with`).
        image_size: every image is resized (shorter side) and centre-cropped to this square size.
        val_split: where ``val/`` is missing, this many training images (count or fraction) are held out.
        test_split: where ``test/`` is missing, this many training images are held out for test.
        split_seed: seed of those held-out splits, independent of the training seed.
        cache_dir: where decoded tensors are cached; None disables the disk cache.
        decode_workers: threads used for decoding.
        **kwargs: batch sizes and augmentation (see InMemoryImageDataModule).
    """

    def __init__(
        self,
        root: str,
        augment: RandomBatchAugment | None = None,
        image_size: int = 32,
        val_split: float | int = 0.1,
        test_split: float | int = 0.1,
        split_seed: int = 0,
        cache_dir: str | None = None,
        decode_workers: int = 2,
        **kwargs,
    ) -> None:
        super().__init__(augment=augment, **kwargs)
        if root is None:
            raise DatasetNotFoundError("data=folder needs data.root=DIR, a folder with DIR/train/<class>/*.jpg")
        if cache_dir:
            ensure_cache_folder_usable(cache_dir, "data.cache_dir")
        self.root = Path(root).expanduser()
        self.image_size = image_size
        self.val_held_out = val_split  # self.val_split is the loaded split (InMemoryImageDataModule)
        self.test_held_out = test_split
        self.split_seed = split_seed
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.decode_workers = decode_workers
        self._class_names: list[str] | None = None

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def test_dir(self) -> Path:
        return self.root / "test"

    @property
    def is_test_set(self) -> bool:
        """Whether the folder is a test set alone: ``test/`` without ``train/``."""
        return self.test_dir.is_dir() and not self.train_dir.is_dir()

    def label_with(self, class_names: list[str]) -> None:
        """Label a test set alone (:attr:`is_test_set`) by ``class_names``, a checkpoint's classes in order.

        Without ``train/`` the class folders of ``test/`` cannot give the label order: a class with
        no test images would shift every later label. ``test/`` may lack classes; a class folder
        not in ``class_names`` is refused when the images are read.
        """
        if not self.is_test_set:
            raise ValueError(f"{self.root} has train/ (or no test/): its classes are train/'s class folders")
        self._class_names = list(class_names)

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            if not self.train_dir.is_dir():
                raise DatasetNotFoundError(
                    f"no training images: {self.train_dir} does not exist. data=folder expects "
                    f"data.root=DIR with DIR/train/<class>/<image files> (and optionally DIR/val/, DIR/test/); "
                    f"scripts/eval.py and visualize.py also take DIR/test/<class>/<image files> alone"
                    f"{missing_root_advice(self.root) or split_folder_advice(self.root)}"
                )
            names = list_class_dirs(self.train_dir)
            # A class without training images would be a class the model never sees, reported as 0% accurate.
            empty = [name for name in names if not image_files(self.train_dir / name)]
            if empty:
                raise DatasetNotFoundError(
                    f"{self.train_dir} has class folder(s) with no image files: {', '.join(empty)}. Every class "
                    f"needs training images: remove these folders or add images to them "
                    f"({', '.join(sorted(IMAGE_EXTENSIONS))})."
                )
            if len(names) < 2:
                raise DatasetNotFoundError(
                    f"{self.train_dir} has {len(names)} class folder(s); a classifier needs at least two "
                    f"(DIR/train/<class>/<image files>)"
                )
            self._class_names = names
        return self._class_names

    def _scan_split_dir(self, split_dir: Path) -> list[tuple[Path, int]]:
        samples = scan_split(split_dir, self.class_names)
        if not samples:
            raise DatasetNotFoundError(f"{split_dir} has no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        return samples

    def _load_split_dir(self, split_dir: Path, samples: list[tuple[Path, int]] | None = None) -> ImageSplit:
        if samples is None:
            samples = self._scan_split_dir(split_dir)
        cache_file = None
        if self.cache_dir is not None:
            key = cache_key(samples, self.root, self.image_size)
            lineage = f"folder-{split_dir.name}-{cache_lineage(split_dir, self.image_size)}"
            cache_file = self.cache_dir / f"{lineage}-{key[:24]}.pt"
            cached = self._read_cache(cache_file, len(samples))
            if cached is not None:
                return cached
        log.info("decoding %d images from %s", len(samples), split_dir)
        images = decode_files([path for path, _ in samples], self.image_size, self.decode_workers)
        split = ImageSplit(images, torch.tensor([label for _, label in samples]))
        if cache_file is not None:
            try:
                atomic_torch_save(cache_file, {"images": split.images, "labels": split.labels})
            except OSError as error:  # a read-only shared cache, a full disk: the images are decoded all the same
                log.warning("could not cache the decoded images in %s (%s); the next run decodes them again",
                            cache_file, error)
                return split
            log.info("cached decoded images in %s", cache_file)
            self._remove_stale_caches(cache_file, lineage)
        return split

    @staticmethod
    def _remove_stale_caches(current: Path, lineage: str) -> None:
        """Delete the caches that ``current`` supersedes (same split folder and size, older contents).

        Without this every edit of a data folder would leave a full decoded copy of it behind.
        A run still reading one of them has it open, which on POSIX keeps its data readable.
        """
        for stale in current.parent.glob(f"{lineage}-*.pt"):
            if stale != current:
                try:
                    stale.unlink()
                except OSError as error:  # another run removed it first, or a read-only cache folder
                    log.debug("could not remove stale cache %s: %s", stale, error)
                    continue
                log.info("removed %s, a cache of an earlier state of this folder", stale)

    @staticmethod
    def _read_cache(cache_file: Path, expected: int) -> ImageSplit | None:
        if not cache_file.is_file():
            return None
        try:
            data = torch.load(cache_file, map_location="cpu", weights_only=True)
            split = ImageSplit(data["images"], data["labels"])
        except Exception as error:  # noqa: BLE001 - an unreadable cache is rebuilt, never trusted
            log.warning("ignoring unreadable cache %s (%s); decoding again", cache_file, error)
            return None
        if len(split) != expected:
            log.warning("ignoring cache %s with %d images (expected %d)", cache_file, len(split), expected)
            return None
        log.info("loaded %d decoded images from cache %s", len(split), cache_file)
        return split

    def load_splits(self) -> tuple[ImageSplit, ImageSplit, ImageSplit]:
        if self.is_test_set:
            test_only = self._load_split_dir(self.test_dir)
            log.info("testing on the %d images of %s (%s has no train/)", len(test_only), self.test_dir, self.root)
            nothing = test_only.subset(torch.arange(0))
            return nothing, nothing, test_only
        train_samples = self._scan_split_dir(self.train_dir)
        val_dir, test_dir = self.root / "val", self.test_dir
        # Scanned before anything is decoded: a class that train/ lacks fails in seconds, not after the decode.
        held_samples = {folder: self._scan_split_dir(folder) for folder in (val_dir, test_dir) if folder.is_dir()}
        specs = {"val": ("data.val_split", self.val_held_out), "test": ("data.test_split", self.test_held_out)}
        missing = [name for name, folder in (("val", val_dir), ("test", test_dir)) if not folder.is_dir()]
        # Checked before decoding anything: a held-out split too large fails in seconds, not after the decode.
        sizes = held_out_sizes(dict(specs[name] for name in missing), len(train_samples)) if missing else []
        train = self._load_split_dir(self.train_dir, train_samples)
        val = self._load_split_dir(val_dir, held_samples[val_dir]) if val_dir in held_samples else None
        test = self._load_split_dir(test_dir, held_samples[test_dir]) if test_dir in held_samples else None
        if missing:
            parts = seeded_split(len(train), sizes, self.split_seed)
            taken = {name: train.subset(index) for name, index in zip(missing, parts[:-1], strict=True)}
            train = train.subset(parts[-1])
            val = taken.get("val", val)
            test = taken.get("test", test)
            # Said plainly: an evaluation of a train/-only folder tests this share, not a test set of its own.
            for name, size in zip(missing, sizes, strict=True):
                log.warning(
                    "%s has no %s/: %s on the %d images (%.3g%%) held out of the %d in %s (%s=%s, seed %d), "
                    "not on a separate %s set",
                    self.root, name, {"val": "validating", "test": "testing"}[name], size,
                    100 * size / len(train_samples), len(train_samples), self.train_dir, *specs[name],
                    self.split_seed, name,
                )
        assert val is not None and test is not None
        return train, val, test
