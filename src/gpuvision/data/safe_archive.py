"""Archive reading that cannot escape or explode.

Members are read into memory, never extracted to disk, so no path can land outside a target; still, a member
whose name is absolute or climbs with "..", a link, or a device file makes the whole archive a UserError (it was
not made by a tool a user trusts), and the total uncompressed size and member count are bounded. The stdlib's
extraction filters are not relied on: the Python here predates fixes of their bypasses (CVE-2025-4517).
"""

from __future__ import annotations

import os
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from ..errors import UserError

MAX_TOTAL_BYTES = int(os.environ.get("GPUVISION_MAX_ARCHIVE_BYTES", 8 << 30))
MAX_MEMBERS = 2_000_000
MAX_ZIP_RATIO = 200  # compressed-to-uncompressed ratio above which a zip member is a bomb, not an image

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _checked_name(archive: Path, name: str) -> str:
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or (posix.parts and ":" in posix.parts[0]):
        raise UserError(f"{archive}: unsafe member {name!r} (absolute path or '..'); refusing the whole archive")
    return str(posix)


class _Budget:
    def __init__(self, archive: Path):
        self.archive, self.total, self.count = archive, 0, 0

    def take(self, size: int) -> None:
        self.total += size
        self.count += 1
        if self.total > MAX_TOTAL_BYTES or self.count > MAX_MEMBERS:
            raise UserError(
                f"{self.archive}: more than {MAX_TOTAL_BYTES >> 20} MiB or {MAX_MEMBERS} files uncompressed; "
                "raise GPUVISION_MAX_ARCHIVE_BYTES if you trust it"
            )


def iter_members(archive: Path) -> Iterator[tuple[str, bytes]]:
    """Yield (relative name, bytes) for each regular file of a .tar/.tar.gz/.tgz/.zip archive."""
    if archive.name.lower().endswith(".zip"):
        yield from _iter_zip(archive)
    else:
        yield from _iter_tar(archive)


def _iter_tar(archive: Path) -> Iterator[tuple[str, bytes]]:
    budget = _Budget(archive)
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar:  # streaming: members are read in order, once
                name = _checked_name(archive, member.name)
                if member.issym() or member.islnk():
                    raise UserError(f"{archive}: member {member.name!r} is a link; refusing the whole archive")
                if member.isdir():
                    continue
                if not member.isfile():
                    raise UserError(f"{archive}: member {member.name!r} is not a regular file; refusing the archive")
                budget.take(member.size)
                f = tar.extractfile(member)
                yield name, f.read(member.size + 1)[: member.size]
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UserError(f"{archive}: not a readable tar archive ({e})") from e


def _iter_zip(archive: Path) -> Iterator[tuple[str, bytes]]:
    budget = _Budget(archive)
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                name = _checked_name(archive, info.filename)
                mode = info.external_attr >> 16
                if (mode & 0o170000) == 0o120000:
                    raise UserError(f"{archive}: member {info.filename!r} is a link; refusing the whole archive")
                if info.is_dir():
                    continue
                if info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1) and info.file_size > 1 << 20:
                    raise UserError(f"{archive}: member {info.filename!r} expands {info.file_size} bytes; a zip bomb")
                budget.take(info.file_size)
                with zf.open(info) as f:  # read at most the declared size: a lying header cannot expand further
                    data = f.read(info.file_size + 1)
                if len(data) != info.file_size:
                    raise UserError(f"{archive}: member {info.filename!r} is not the size its header declares")
                yield name, data
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{archive}: not a readable zip archive ({e})") from e
