"""Archive reading that cannot escape, explode, or end early unnoticed.

Members are read into memory, never extracted to disk, so no path can land outside a target; still, a member
whose name is absolute, climbs with "..", or is not UTF-8, a link, a device (or fifo, socket, sparse file) makes the
whole archive a UserError (it was not made by a tool a user trusts). Bounded: the uncompressed total
(GPUVISION_MAX_ARCHIVE_BYTES), the member count, and how far each member and the archive so far expand (a
decompression bomb). A tar must end with its end-of-archive blocks and a gzip stream with a good checksum: tarfile
stops silently where a copy was cut at a member boundary, which would read as a smaller data set. The stdlib's
extraction filters are not relied on: the Python here predates fixes of their bypasses (CVE-2025-4517).
"""

from __future__ import annotations

import gzip
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, NoReturn

from ..errors import UserError, require
from .limits import env_bytes

MAX_MEMBERS = 2_000_000
MAX_RATIO = 200  # uncompressed / compressed bytes above which a member (or the archive so far) is a bomb, not images
RATIO_SLACK = 4 << 20  # expansion always allowed; covers the buffering that blurs a gzip member's compressed size
CHUNK = 1 << 20
ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def iter_members(archive: Path, wanted: Callable[[str], bool] | None = None) -> Iterator[tuple[str, bytes | None]]:
    """Yield (relative name, bytes) for each regular file of a .tar/.tar.gz/.tgz/.zip archive, in archive order.

    A member for which wanted(name) is false is checked like the others, but its bytes are not read: None instead.
    """
    wanted = wanted or (lambda name: True)
    if archive.name.lower().endswith(".zip"):
        yield from _iter_zip(archive, wanted)
    else:
        yield from _iter_tar(archive, wanted)


def _checked_name(archive: Path, name: str) -> str:
    """The member's name, normalised like a POSIX path ("a//b/./c" is "a/b/c"), after refusing unsafe ones."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
        raise UserError(f"{archive}: unsafe member {name!r} (absolute path or '..'); refusing the whole archive")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # tarfile decodes other bytes with surrogateescape
        raise UserError(f"{archive}: member name {name!r} is not UTF-8; re-create the archive with UTF-8 "
                        "names") from None
    return "/".join(p for p in parts if p not in ("", "."))


def _refuse(archive: Path, name: str, what: str) -> NoReturn:
    raise UserError(f"{archive}: member {name!r} is {what}; refusing the whole archive")


def _check_ratio(archive: Path, name: str, size: int, packed: int) -> None:
    if size > MAX_RATIO * packed + RATIO_SLACK:
        raise UserError(f"{archive}: member {name!r} expands over {MAX_RATIO} times; a decompression bomb, so the "
                        "archive is refused (if you trust it, extract it yourself and give the folder)")


def _reason(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__  # one line, whatever the library put in its message


class _Budget:
    """Counts members and uncompressed bytes, refusing an archive past the bounds."""

    def __init__(self, archive: Path):
        self.archive, self.limit = archive, env_bytes("GPUVISION_MAX_ARCHIVE_BYTES")
        self.total = self.count = 0

    def take(self, size: int) -> None:
        self.total += size
        self.count += 1
        require(self.count <= MAX_MEMBERS, f"{self.archive}: more than {MAX_MEMBERS} members; split it")
        require(self.total <= self.limit, f"{self.archive}: more than {self.limit >> 20} MiB uncompressed; "
                "raise GPUVISION_MAX_ARCHIVE_BYTES (e.g. 16G) if you trust it")


class _MeteredGzip:
    """A .tar.gz's decompressed stream that refuses it as soon as it expands like a bomb.

    Every read is counted, tarfile's own included (long names, pax headers, skipping members), against the
    compressed bytes consumed: the raw file's position, ahead by at most a buffer, which RATIO_SLACK covers, as it
    covers checking only once per CHECK_EVERY bytes.
    """

    CHECK_EVERY = 256 << 10

    def __init__(self, archive: Path, raw: BinaryIO):
        self.archive, self.raw, self.gz = archive, raw, gzip.GzipFile(fileobj=raw)
        self.pos = self.checked = 0
        self.name, self.start = "", (0, 0)

    def member(self, name: str) -> None:
        """Measure from here as the member `name`."""
        self.name, self.start = name, (self.pos, self.raw.tell())

    def read(self, size: int = -1) -> bytes:
        if 0 <= size <= CHUNK:  # gzip returns all of a short read, short only at the end
            return self._pull(size)
        parts = []
        while size and (part := self._pull(CHUNK if size < 0 else min(size, CHUNK))):
            parts.append(part)
            size -= len(part) if size > 0 else 0
        return b"".join(parts)

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0 and offset >= self.pos:  # forward, as tarfile skips a member: read through, counted
            while self.pos < offset and self._pull(min(offset - self.pos, CHUNK)):
                pass
        else:
            self.pos = self.checked = self.gz.seek(offset, whence)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def _pull(self, size: int) -> bytes:
        part = self.gz.read(size)
        self.pos += len(part)
        if self.pos - self.checked >= self.CHECK_EVERY or not part:
            self.checked, packed = self.pos, self.raw.tell()
            _check_ratio(self.archive, self.name, self.pos - self.start[0], packed - self.start[1])
            _check_ratio(self.archive, self.name, self.pos, packed)
        return part


def _read_exactly(f: BinaryIO, size: int) -> bytes:
    """Up to `size` bytes in chunks: no buffer is sized from a header before the bytes exist."""
    parts = []
    while size > 0 and (part := f.read(min(size, CHUNK))):
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def _iter_tar(archive: Path, wanted: Callable[[str], bool]) -> Iterator[tuple[str, bytes | None]]:
    budget = _Budget(archive)
    try:
        with open(archive, "rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            stream = _MeteredGzip(archive, raw) if gzipped else raw
            with tarfile.open(fileobj=stream, mode="r:") as tar:
                for member in tar:
                    name = _checked_name(archive, member.name)
                    budget.take(member.size if member.isfile() else 0)
                    if gzipped:
                        stream.member(member.name)
                    if not _is_tar_file(archive, member):
                        continue
                    if not wanted(name):
                        yield name, None
                        continue
                    data = _read_exactly(tar.extractfile(member), member.size)
                    if len(data) != member.size:
                        _refuse(archive, member.name, "cut short")
                    yield name, data
                _check_tar_end(archive, tar, stream)
    except (tarfile.TarError, EOFError, OSError, zlib.error, UnicodeError) as e:
        raise UserError(f"{archive}: not a readable tar archive ({_reason(e)}); it may be damaged: copy or "
                        "download it again") from e


def _is_tar_file(archive: Path, member: tarfile.TarInfo) -> bool:
    """True for a regular file, False for a folder; anything else refuses the archive."""
    if member.issym() or member.islnk():
        _refuse(archive, member.name, "a link")
    if member.isdir():
        return False
    if not member.isfile() or member.issparse():
        _refuse(archive, member.name, "not a regular file (a device, fifo or sparse file)")
    return True


def _check_tar_end(archive: Path, tar: tarfile.TarFile, stream: BinaryIO) -> None:
    """Two zero blocks end a tar; then the gzip stream is read to its end, the only place gzip checks its CRC."""
    stream.seek(tar.offset)
    if stream.read(2 * tarfile.BLOCKSIZE) != bytes(2 * tarfile.BLOCKSIZE):
        raise UserError(f"{archive}: ends without the end-of-archive blocks after {len(tar.members)} members, so it "
                        "is truncated or damaged; copy or download it again")
    while stream.read(CHUNK):
        pass


def _iter_zip(archive: Path, wanted: Callable[[str], bool]) -> Iterator[tuple[str, bytes | None]]:
    budget, expanded, packed = _Budget(archive), 0, 0
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                name = _checked_name(archive, info.filename)
                budget.take(info.file_size)
                kind = stat.S_IFMT(info.external_attr >> 16)  # the Unix mode, where the zip records one
                if kind == stat.S_IFLNK:
                    _refuse(archive, info.filename, "a link")
                if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                    _refuse(archive, info.filename, "a device, fifo or socket")
                if info.is_dir():
                    continue
                expanded, packed = expanded + info.file_size, packed + info.compress_size  # as declared
                _check_ratio(archive, info.filename, info.file_size, info.compress_size)
                _check_ratio(archive, info.filename, expanded, packed)
                if not wanted(name):
                    yield name, None
                    continue
                yield name, _read_zip_member(archive, zf, info)
    except UnicodeDecodeError as e:  # the zip flags its names as UTF-8, but one is not
        raise UserError(f"{archive}: a member name is not UTF-8 ({_reason(e)}); re-create the archive with UTF-8 "
                        "names") from e
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
        raise UserError(f"{archive}: not a readable zip archive ({_reason(e)}); it may be damaged: copy or "
                        "download it again") from e


def _read_zip_member(archive: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    require(not info.flag_bits & 0x1,
            f"{archive}: member {info.filename!r} is encrypted; unzip it yourself and give the folder")
    require(info.compress_type in ZIP_METHODS, f"{archive}: member {info.filename!r} uses compression method "
            f"{info.compress_type}, which Python cannot read; re-create the archive with deflate (zip's default)")
    with zf.open(info) as f:  # at most the declared size: a lying header cannot expand further; CRC checked at the end
        data = f.read(info.file_size + 1)
    if len(data) != info.file_size:
        _refuse(archive, info.filename, "not the size its header declares")
    return data
