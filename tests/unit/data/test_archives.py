"""Archives cut short, damaged, unsafe or built as bombs are refused in one line that names them; good ones read."""

from __future__ import annotations

import gzip
import stat
import tarfile

import pytest
from helpers import (
    ZipEntry,
    gzip_with_bad_crc,
    image_bytes,
    raw_zip,
    refusal,
    tar_bytes,
    tar_cut_at_member,
    tar_gz_of_zeros,
    write_tar,
)

from gpuvision.data import load_images, safe_archive
from gpuvision.data.safe_archive import iter_members
from gpuvision.errors import UserError

IMAGES = [(f"{c}/{i}.png", image_bytes(10 * k + i)) for k, c in enumerate(("cat", "dog")) for i in range(3)]


def test_good_tar_gz_and_zip_read_every_member(tmp_path):
    tgz = write_tar(tmp_path / "ok.tar.gz", IMAGES)
    zipped = raw_zip(tmp_path / "ok.zip", [ZipEntry(n, d) for n, d in IMAGES])
    assert list(iter_members(tgz)) == list(iter_members(zipped)) == IMAGES
    assert len(load_images(str(tgz))) == len(load_images(str(zipped))) == 6


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_tar_cut_at_a_member_boundary_is_refused(tmp_path, suffix):
    # tarfile alone reads this as a smaller, valid archive: 4 of 6 images, no warning
    blob = tar_cut_at_member(IMAGES, 4)
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(gzip.compress(blob) if suffix == ".tar.gz" else blob)
    refusal(path, "end-of-archive")


def test_gzip_checksum_error_is_refused(tmp_path):
    intact = tmp_path / "crc.tar.gz"  # every tar block reads fine: only the CRC at the end tells
    intact.write_bytes(gzip_with_bad_crc(tar_bytes(IMAGES)))
    refusal(intact, "CRC check failed", "copy or download it again")
    flipped = tmp_path / "flipped.tar.gz"  # a byte changed at 70% of the data, the CRC of the original kept
    flipped.write_bytes(gzip_with_bad_crc(tar_bytes(IMAGES), flip_at=0.7))
    refusal(flipped, "copy or download it again")


def test_cut_gzip_stream_and_bad_header_are_one_line(tmp_path):
    blob = gzip.compress(tar_bytes(IMAGES))
    (tmp_path / "cut.tar.gz").write_bytes(blob[: len(blob) * 7 // 10])
    refusal(tmp_path / "cut.tar.gz", "not a readable tar archive")
    plain = bytearray(tar_bytes(IMAGES))
    plain[100:150] = b"x" * 50  # the first header (tarfile.open("r:*") used to list every method it tried)
    (tmp_path / "header.tar").write_bytes(plain)
    refusal(tmp_path / "header.tar", "not a readable tar archive (invalid header)")
    at = len(tar_cut_at_member(IMAGES, 3))  # a later header: there tarfile stops without a word
    second = bytearray(tar_bytes(IMAGES))
    second[at + 100 : at + 150] = b"x" * 50
    (tmp_path / "later.tar").write_bytes(second)
    refusal(tmp_path / "later.tar", "end-of-archive")


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_duplicate_member_names_are_refused(tmp_path, kind):
    members = IMAGES + [("cat/./0.png", image_bytes(99))]  # the same key once the name is normalised
    if kind == "tar":
        path = write_tar(tmp_path / "dup.tar", members)
    else:
        path = raw_zip(tmp_path / "dup.zip", [ZipEntry(n, d) for n, d in members])
    refusal(path, "'cat/0.png' appears more than once")


def test_non_utf8_member_names_are_refused(tmp_path):
    refusal(write_tar(tmp_path / "names.tar", IMAGES + [("cat/caf\udce9.png", image_bytes(5))]),
            "not UTF-8", "re-create the archive")
    flagged = ZipEntry(b"cat/caf\xe9.png", image_bytes(5), flags=0x800)  # says UTF-8, is Latin-1
    refusal(raw_zip(tmp_path / "names.zip", [ZipEntry(n, d) for n, d in IMAGES] + [flagged]), "not UTF-8")


@pytest.mark.parametrize("entry,words", [
    (ZipEntry("cat/secret.png", image_bytes(5), flags=0x1), "encrypted"),
    (ZipEntry("cat/aes.png", image_bytes(5), method=99), "compression method 99"),
    (ZipEntry("cat/dev.png", mode=stat.S_IFCHR | 0o644), "a device, fifo or socket"),
    (ZipEntry("cat/blk.png", mode=stat.S_IFBLK | 0o644), "a device, fifo or socket"),
    (ZipEntry("cat/fifo.png", mode=stat.S_IFIFO | 0o644), "a device, fifo or socket"),
    (ZipEntry("cat/sock.png", mode=stat.S_IFSOCK | 0o644), "a device, fifo or socket"),
    (ZipEntry("cat/link.png", b"/etc/passwd", mode=stat.S_IFLNK | 0o777), "a link"),
    (ZipEntry("/abs/x.png", image_bytes(5)), "unsafe member"),
])
def test_zip_members_that_refuse_the_archive(tmp_path, entry, words):
    refusal(raw_zip(tmp_path / "bad.zip", [ZipEntry(n, d) for n, d in IMAGES] + [entry]), words)


def test_members_that_are_not_images_are_never_read(tmp_path, monkeypatch):
    # a zip member with a wrong CRC would fail if read; a tar member is never handed to extractfile
    broken = ZipEntry("cat/readme.txt", b"hello")
    path = raw_zip(tmp_path / "x.zip", [ZipEntry(n, d) for n, d in IMAGES] + [broken])
    blob = path.read_bytes().replace(b"hello", b"jello")
    path.write_bytes(blob)
    assert len(load_images(str(path))) == 6
    read = []
    real = tarfile.TarFile.extractfile
    monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda self, m: read.append(m.name) or real(self, m))
    tgz = write_tar(tmp_path / "x.tar.gz", IMAGES + [("cat/labels.csv", b"a,b\n" * 1000)])
    assert [n for n, d in iter_members(tgz, lambda n: n.endswith(".png")) if d is None] == ["cat/labels.csv"]
    assert read == [n for n, _ in IMAGES]


@pytest.mark.parametrize("name", ["cat/big.png", "cat/zeros.bin"])
def test_tar_gz_member_that_expands_like_a_bomb_is_refused(tmp_path, name):
    path = tar_gz_of_zeros(tmp_path / "bomb.tar.gz", name, 16, before=IMAGES)
    refusal(path, "decompression bomb", repr(name))


def test_zip_bombs_one_member_or_many_are_refused(tmp_path):
    zeros = bytes(8 << 20)
    refusal(raw_zip(tmp_path / "one.zip", [ZipEntry(n, d) for n, d in IMAGES] + [ZipEntry("cat/z.png", zeros)]),
            "decompression bomb")
    mib = bytes(1 << 20)  # each member under the slack; all of them together are a bomb
    many = [ZipEntry(f"cat/{i:03d}.png", mib) for i in range(16)]
    refusal(raw_zip(tmp_path / "many.zip", [ZipEntry(n, d) for n, d in IMAGES] + many), "decompression bomb")


def test_member_count_and_size_bounds(tmp_path, monkeypatch):
    path = write_tar(tmp_path / "x.tar.gz", IMAGES)  # read with iter_members: load_images would hit the cache
    monkeypatch.setattr(safe_archive, "MAX_MEMBERS", 3)
    with pytest.raises(UserError, match="more than 3 members"):
        list(iter_members(path))
    monkeypatch.undo()
    monkeypatch.setenv("GPUVISION_MAX_ARCHIVE_BYTES", "1K")
    with pytest.raises(UserError, match="more than 0 MiB uncompressed; raise GPUVISION_MAX_ARCHIVE_BYTES"):
        list(iter_members(path))
    monkeypatch.setenv("GPUVISION_MAX_ARCHIVE_BYTES", "8G")
    assert len(list(iter_members(path))) == 6


@pytest.mark.parametrize("value", ["lots", "8 GiB", "-1", "0", "1.5G"])
def test_bad_size_in_the_environment_is_a_user_error(tmp_path, monkeypatch, value):
    monkeypatch.setenv("GPUVISION_MAX_ARCHIVE_BYTES", value)
    with pytest.raises(UserError, match="GPUVISION_MAX_ARCHIVE_BYTES=.* is not a size") as caught:
        list(iter_members(write_tar(tmp_path / "x.tar", IMAGES)))
    assert "\n" not in str(caught.value)
