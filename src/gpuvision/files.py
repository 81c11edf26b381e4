"""File writes that never leave a half-written file, and content hashes."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import BadInput, Unsupported, UserError, require

MEMORY_FS = "/dev/shm"
MAX_JSON_DEPTH = 64  # far above any file gpuvision writes (a manifest nests 4 deep), far below Python's recursion
_STEP = np.zeros(256, np.int8)  # how each byte changes the nesting of JSON text
_STEP[[ord("["), ord("{")]], _STEP[[ord("]"), ord("}")]] = 1, -1


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
class OutputLock:
    """An exclusive OS lock on an output directory for as long as a command writes it (released when the process
    ends, however it ends): a second writer into the same place gets a clear error instead of mixing or deleting
    the first one's files. Every writer takes it: train, compress, encrypt, decrypt, evaluate, demo, sign.

    `what` names the directory in errors (default `--out DIR`). The directory is made if missing; one this lock
    made and nothing was written into (a refused command) goes again on release."""

    def __init__(self, out: Path, what: str | None = None):
        self.out, self.what, self.fd, self.created = Path(out), what or f"--out {out}", None, False

    def acquire(self) -> OutputLock:
        try:
            self.created = not self.out.exists()
            self.out.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.out, os.O_RDONLY)
        except OSError as e:
            raise UserError(f"{self.what}: cannot create or open it ({e.strerror}); choose a writable "
                            "directory") from e
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            self.release()
            raise UserError(f"{self.what} is in use by another gpuvision run; wait for it or choose another "
                            "directory") from e
        return self

    def release(self) -> None:
        """Unlock; a directory this lock created and nothing was written into goes again."""
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None
            if self.created and self.out.is_dir() and not any(self.out.iterdir()):
                self.out.rmdir()

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def empty_dir(path: Path) -> None:
    """Remove everything inside a directory (links as links), keeping the directory itself (and its lock)."""
    for child in Path(path).iterdir():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj) -> None:
    """Write obj as indented JSON, atomically."""
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(obj, indent=2) + "\n"))


def parse_json(raw: bytes | str, where: str, kind: type[UserError] = BadInput, max_depth: int = MAX_JSON_DEPTH):
    """JSON from a file or body someone else may have written: its nesting is bounded before parsing (Python's
    parser recurses, so 100,000 '[' is a RecursionError) and an object that repeats a key is refused (json keeps
    the last value silently, so two readers could see two different files). Any problem is one `kind` error."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    openers = raw.count(b"[") + raw.count(b"{")  # C-speed; no deeper than this many, so most text needs no scan
    require(openers <= max_depth or json_depth(raw, max_depth) <= max_depth,
            f"{where}: JSON nested more than {max_depth} deep; refusing it", kind)
    try:
        return json.loads(raw, object_pairs_hook=_unique_keys)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError, as is a repeated key
        raise kind(f"{where}: not valid JSON ({str(e)[:200]})") from e


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        repeated = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"the key {repeated!r} appears twice in one object")
    return obj


def json_depth(raw: bytes, stop_above: int | None = None, chunk: int = 1 << 22) -> int:
    """The deepest nesting of [ and { in JSON text, outside strings (or a depth over `stop_above`, as soon as one is
    seen): vectorised, in chunks of bounded memory, linear in the text (a regular expression over hostile strings
    can be made quadratic)."""
    # Escapes first, pair by pair from the left (as JSON reads them): what remains of a quote then delimits a string.
    text = np.frombuffer(raw.replace(b"\\\\", b"__").replace(b'\\"', b"__"), np.uint8)
    depth = deepest = odd = 0
    for start in range(0, len(text), chunk):
        part = text[start : start + chunk]
        steps, quotes = _STEP[part], part == ord('"')
        if quotes.any():  # a bracket between an odd and an even quote is inside a string
            seen = np.cumsum(quotes, dtype=np.int32) + odd  # parity survives int32 overflow
            steps, odd = steps * (seen % 2 == 0), int(seen[-1]) % 2
        if steps.any():
            levels = np.cumsum(steps, dtype=np.int32) + depth
            deepest, depth = max(deepest, int(levels.max())), int(levels[-1])
            if stop_above is not None and deepest > stop_above:
                break
    return deepest


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Waits for its stdin to close, which happens when the process that started it ends, however it ends (SIGKILL
# included), then removes the directory it was given. Its own session: a signal to the caller's group spares it.
_REAPER = "import shutil, sys; sys.stdin.buffer.read(); shutil.rmtree(sys.argv[1], ignore_errors=True)"


@contextmanager
def memory_workspace() -> Iterator[Path]:
    """A fresh owner-only directory in memory (the tmpfs at /dev/shm), with `tempfile`'s directory pointed into it
    meanwhile; both are undone afterwards. For work on decrypted weights by libraries that insist on files
    (onnxruntime's quantisation, the Trainer's output): the plaintext then never reaches a disk, and does not
    outlive the process: a reaper process removes the directory as soon as this one ends, even by SIGKILL."""
    require(_is_tmpfs(MEMORY_FS), f"this needs a memory file system at {MEMORY_FS} (Linux) to keep decrypted "
            "weights off the disk; run it on Linux, or decrypt the model first", Unsupported)
    path, saved = tempfile.mkdtemp(prefix="gpuvision-", dir=MEMORY_FS), tempfile.tempdir
    try:
        reaper = subprocess.Popen([sys.executable, "-I", "-c", _REAPER, path], stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
        raise
    tempfile.tempdir = path
    try:
        yield Path(path)
    finally:
        tempfile.tempdir = saved
        shutil.rmtree(path, ignore_errors=True)
        reaper.stdin.close()
        reaper.wait()


def _is_tmpfs(path: str) -> bool:
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return False
    return any(line.split()[1:3] == [path, "tmpfs"] for line in mounts)
