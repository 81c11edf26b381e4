"""File writes that never leave a half-written file, and content hashes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import Unsupported, require

MEMORY_FS = "/dev/shm"


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """Call write(tmp_path) for a temporary file beside path, then move it into place with os.replace."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; the result should read like any other new file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cache_root() -> Path:
    """Where gpuvision keeps what it can recompute (decoded images, machine measurements): $GPUVISION_CACHE, else
    ~/.cache/gpuvision."""
    return Path(os.environ.get("GPUVISION_CACHE") or Path.home() / ".cache" / "gpuvision")


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj) -> None:
    """Write obj as indented JSON, atomically."""
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(obj, indent=2) + "\n"))


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def memory_workspace() -> Iterator[Path]:
    """A fresh owner-only directory in memory (the tmpfs at /dev/shm), with `tempfile`'s directory pointed into it
    meanwhile; both are undone afterwards. For work on decrypted weights by libraries that insist on files
    (onnxruntime's quantisation, the Trainer's output): the plaintext then never reaches a disk."""
    require(_is_tmpfs(MEMORY_FS), f"this needs a memory file system at {MEMORY_FS} (Linux) to keep decrypted "
            "weights off the disk; run it on Linux, or decrypt the model first", Unsupported)
    path, saved = tempfile.mkdtemp(prefix="gpuvision-", dir=MEMORY_FS), tempfile.tempdir
    tempfile.tempdir = path
    try:
        yield Path(path)
    finally:
        tempfile.tempdir = saved
        shutil.rmtree(path, ignore_errors=True)


def _is_tmpfs(path: str) -> bool:
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return False
    return any(line.split()[1:3] == [path, "tmpfs"] for line in mounts)
