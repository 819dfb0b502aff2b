"""Atomic writes: the file appears whole or not at all, with the permissions a plain write gives."""

from __future__ import annotations

import os
import stat
import sys

import pytest
import torch

from cnnlab.utils.io import atomic_torch_save, atomic_write, atomic_write_json

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"acc": 0.5})

    def fail_halfway(f):
        f.write(b'{"acc": 0.')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, fail_halfway)
    assert target.read_text() == '{\n  "acc": 0.5\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_writes_into_a_new_folder_and_round_trips_tensors(tmp_path):
    target = tmp_path / "cache" / "features" / "train.pt"
    atomic_torch_save(target, {"features": torch.arange(6.0).reshape(2, 3)})
    loaded = torch.load(target, weights_only=True)
    assert torch.equal(loaded["features"], torch.arange(6.0).reshape(2, 3))
    assert [p.name for p in target.parent.iterdir()] == ["train.pt"]


@posix_only
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_a_new_file_gets_the_umask_permissions_as_open_would(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "metrics.json", {})
        with open(tmp_path / "plain.json", "w"):
            pass
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE((tmp_path / "plain.json").stat().st_mode)


@posix_only
def test_a_replaced_file_keeps_its_permissions(tmp_path):
    target = tmp_path / "summary.csv"
    target.write_text("old\n")
    target.chmod(0o640)
    atomic_write(target, lambda f: f.write(b"new\n"))
    assert target.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_a_write_that_must_not_replace_leaves_a_file_made_meanwhile_and_no_temporary_file(tmp_path):
    target = tmp_path / "pooled.md"

    def someone_else_writes_first(f):
        f.write(b"ours\n")
        target.write_text("theirs\n")  # e.g. another process, after the caller checked the path was free

    with pytest.raises(FileExistsError):
        atomic_write(target, someone_else_writes_first, replace=False)
    assert target.read_text() == "theirs\n"
    assert [p.name for p in tmp_path.iterdir()] == ["pooled.md"]
    new = tmp_path / "new.md"
    atomic_write(new, lambda f: f.write(b"ours\n"), replace=False)
    assert new.read_text() == "ours\n" and sorted(p.name for p in tmp_path.iterdir()) == ["new.md", "pooled.md"]


def test_without_hard_links_a_write_that_must_not_replace_still_refuses_an_existing_file(tmp_path, monkeypatch):
    def no_links(source, target):
        raise PermissionError(1, "Operation not permitted")  # as a filesystem without hard links answers

    monkeypatch.setattr(os, "link", no_links)
    (tmp_path / "taken.md").write_text("theirs\n")
    with pytest.raises(FileExistsError):
        atomic_write(tmp_path / "taken.md", lambda f: f.write(b"ours\n"), replace=False)
    atomic_write(tmp_path / "free.md", lambda f: f.write(b"ours\n"), replace=False)
    assert [(p.name, p.read_text()) for p in sorted(tmp_path.iterdir())] == [("free.md", "ours\n"), ("taken.md", "theirs\n")]
