"""Atomic writes: all or nothing, the usual file mode, and a link at the target is replaced, not followed."""

from __future__ import annotations

import os

import pytest

from gpuvision.files import atomic_write, sha256_file, write_json


def test_new_files_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")

    def fail(path):
        open(path, "w").write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_a_link_at_the_target_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.symlink(victim, tmp_path / "out.json")
    write_json(tmp_path / "out.json", {"x": 1})
    assert victim.read_text() == "keep me" and not (tmp_path / "out.json").is_symlink()
    assert len(sha256_file(tmp_path / "out.json")) == 64
