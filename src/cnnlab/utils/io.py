"""File I/O: atomic writes (a reader never sees a half-written file, and a crash leaves the old one),
and one readable line of why ``torch.load`` refused a file."""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from cnnlab.errors import ConfigValueError


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object], replace: bool = True) -> Path:
    """Write a file through ``write(fileobj)`` into a temporary file, then rename it into place.

    ``write``'s return value is ignored (so ``lambda f: f.write(data)`` will do). With
    ``replace=False`` the file is only created: if ``path`` exists by then (a file made while
    ``write`` ran included), ``FileExistsError`` is raised and the existing file is untouched
    (where the filesystem has hard links; elsewhere it is a check, then the rename, so a file
    made in between those two would still be replaced).

    The file gets the permissions a plain ``open(path, "w")`` would give it: those of the file
    it replaces, else the process's umask applied to 0o666. (``tempfile.mkstemp`` would make
    every result readable by its owner only, e.g. a run's ``metrics.json`` on a shared
    cluster.)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.chmod(tmp_path, stat.S_IMODE(os.stat(path).st_mode))
        except FileNotFoundError:
            pass  # a new file: the umask has already applied
        if replace:
            os.replace(tmp_path, path)
        else:
            _rename_without_replacing(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def _rename_without_replacing(source: Path, target: Path) -> None:
    """Move ``source`` to ``target`` unless ``target`` exists (``FileExistsError``)."""
    try:
        os.link(source, target)  # fails if target exists, where a rename would replace it
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links: a check, then the rename
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "File exists", str(target)) from None
        os.replace(source, target)
    else:
        source.unlink()


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` atomically."""
    import torch  # here, not at the top: the scripts' early checks use this module, and torch takes seconds to import

    return atomic_write(path, lambda f: torch.save(obj, f))


def ensure_cache_folder_usable(folder: str | os.PathLike, setting: str) -> None:
    """Refuse a cache folder that is a file, or lies under one, before the work whose results it would keep.

    A cache is written after its contents are computed (every image decoded, every feature run
    through a backbone): such a path would otherwise fail only then. A folder this process may
    only read is fine (a shared, pre-built cache); a save there is skipped with a warning.
    Nothing is created here.
    """
    path = Path(folder).expanduser()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == path else f"lies under {existing}, which is a file"
        raise ConfigValueError(
            f"{setting}={folder} {where}, not a folder: give a folder for the cache (it is created if missing), "
            f"or {setting}=null to keep no cache on disk"
        )


def torch_load_error_detail(error: Exception) -> str:
    """One short line of why ``torch.load`` refused a file, e.g. ``UnpicklingError: Unsupported operand 255``.

    torch's own text can be a bare key ("101") or a paragraph whose telling part follows
    ``WeightsUnpickler error:``; the rest advises ``weights_only=False`` and filing an issue, no
    advice for a file that is no checkpoint or weights file.
    """
    text = str(error).rpartition("WeightsUnpickler error:")[2].strip()
    line = textwrap.shorten((text.splitlines() or [""])[0], 100, placeholder="...")
    return f"{type(error).__name__}: {line}" if line else type(error).__name__
