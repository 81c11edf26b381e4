"""Each source format decodes into the right ImageSet; each bad source is a clear UserError."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import zipfile

import numpy as np
import pytest
from helpers import cifar_python_archive, gzip_with_bad_crc, idx_folder, image_bytes, make_tree, refusal, tar_of

from gpuvision.data import load_images
from gpuvision.errors import UserError


def test_digits_is_the_embedded_default():
    images = load_images("digits")
    assert len(images) == 1797 and images.images.shape == (1797, 1, 8, 8)
    assert images.classes == [str(i) for i in range(10)]
    assert images.images.dtype == np.uint8 and images.images.max() == 255
    assert not images.has_given_test


def test_image_folder_mixed_grey_colour_sizes_and_corrupt(tmp_path):
    make_tree(tmp_path, per_class=4)
    (tmp_path / "cat" / "grey.png").write_bytes(image_bytes(7, (16, 16), mode="L"))
    (tmp_path / "dog" / "big.jpg").write_bytes(image_bytes(8, (40, 30), fmt="JPEG"))
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "dog" / "notes.txt").write_text("ignored: not an image suffix")
    images = load_images(str(tmp_path))
    assert images.classes == ["cat", "dog"]
    assert images.images.shape == (10, 3, 16, 16)  # colour wins; most common size wins
    assert images.skipped == ["dog/broken.jpg"]
    assert images.native_sizes == {"16x16": 9, "30x40": 1}
    assert "cat/grey.png" in images.keys
    with pytest.raises(UserError, match="unreadable"):
        load_images(str(tmp_path), strict=True)


def test_image_size_resizes_everything(tmp_path):
    make_tree(tmp_path, per_class=3)
    assert load_images(str(tmp_path), image_size=8).images.shape == (6, 3, 8, 8)


def test_train_test_layout_is_the_given_split(tmp_path):
    make_tree(tmp_path, prefix="train", per_class=5)
    make_tree(tmp_path, prefix="test", per_class=2)
    images = load_images(str(tmp_path))
    assert images.given_test.sum() == 4 and len(images) == 14
    assert all(k.startswith("test/") for k, t in zip(images.keys, images.given_test) if t)


@pytest.mark.parametrize("root", ["", "mydata/"])
def test_tar_gz_archive_with_or_without_a_top_folder(tmp_path, root):
    tree = make_tree(tmp_path / "tree", prefix="train", per_class=4)
    make_tree(tree, prefix="test", per_class=2)
    archive = tar_of(tree, tmp_path / "data.tar.gz", arcroot=root)
    from_dir, from_tar = load_images(str(tree)), load_images(str(archive))
    assert from_tar.keys == from_dir.keys
    assert np.array_equal(from_tar.images, from_dir.images)
    assert from_tar.given_test.sum() == 4


def test_zip_archive(tmp_path):
    tree = make_tree(tmp_path / "tree", per_class=3)
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(tree.rglob("*.png")):
            zf.write(p, p.relative_to(tree).as_posix())
    assert np.array_equal(load_images(str(archive)).images, load_images(str(tree)).images)


def _tar_with(path, name, kind=tarfile.REGTYPE, data=b"x", linkname=""):
    with tarfile.open(path, "w") as tar:
        ok = image_bytes(0)
        for i in range(2):
            info = tarfile.TarInfo(f"a/{i}.png")
            info.size = len(ok)
            tar.addfile(info, io.BytesIO(ok))
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, linkname
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return path


@pytest.mark.parametrize("name,kind,linkname", [
    ("../escape.png", tarfile.REGTYPE, ""),
    ("/etc/evil.png", tarfile.REGTYPE, ""),
    ("b/link.png", tarfile.SYMTYPE, "/etc/passwd"),
    ("b/hard.png", tarfile.LNKTYPE, "a/0.png"),
    ("b/dev", tarfile.CHRTYPE, ""),
    ("b/blk", tarfile.BLKTYPE, ""),
    ("b/fifo", tarfile.FIFOTYPE, ""),
    ("b/sparse.png", tarfile.GNUTYPE_SPARSE, ""),
])
def test_unsafe_tar_members_refuse_the_archive(tmp_path, name, kind, linkname):
    archive = _tar_with(tmp_path / "bad.tar", name, kind, linkname=linkname)
    with pytest.raises(UserError, match="refusing"):
        load_images(str(archive))
    assert not (tmp_path.parent / "escape.png").exists()


def test_zip_bomb_and_escape_are_refused(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/big.png", b"\0" * (8 << 20))
    with pytest.raises(UserError, match="bomb"):
        load_images(str(bomb))
    escape = tmp_path / "escape.zip"
    with zipfile.ZipFile(escape, "w") as zf:
        zf.writestr("../../x.png", image_bytes(0))
    with pytest.raises(UserError, match="unsafe member"):
        load_images(str(escape))


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_python_archive_read_without_unpickling(tmp_path, monkeypatch, protocol):
    expected_images, expected_labels = cifar_python_archive(tmp_path / "cifar-10-python.tar.gz", protocol=protocol)
    import pickle

    def refuse(*a, **k):
        raise AssertionError("the loader must never unpickle")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    images = load_images(str(tmp_path / "cifar-10-python.tar.gz"))
    assert images.classes == [f"c{i}" for i in range(10)]
    assert np.array_equal(images.images, expected_images)
    assert np.array_equal(images.labels, expected_labels)
    assert images.given_test.sum() == 20 and images.keys[0] == "data_batch_1:0"


@pytest.mark.parametrize("compress", [True, False])
def test_idx_folder(tmp_path, compress):
    idx_folder(tmp_path / "mnist", compress=compress)
    images = load_images(str(tmp_path / "mnist"))
    assert images.images.shape == (40, 1, 28, 28)
    assert images.classes == [str(i) for i in range(10)]
    assert images.given_test.sum() == 10 and images.keys[-1] == "t10k:9"


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_images(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty"):
        load_images(str(tmp_path / "empty"))
    make_tree(tmp_path / "one", classes=("only",))
    with pytest.raises(UserError, match="only one class"):
        load_images(str(tmp_path / "one"))
    make_tree(tmp_path / "hollow")
    (tmp_path / "hollow" / "bird").mkdir()
    with pytest.raises(UserError, match="no images: bird"):
        load_images(str(tmp_path / "hollow"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(UserError, match="archive"):
        load_images(str(tmp_path / "x.txt"))


def test_cache_second_load_skips_decoding_and_notices_changes(tmp_path, monkeypatch):
    tree = make_tree(tmp_path / "tree", per_class=3)
    first = load_images(str(tree))
    from gpuvision.data import sources

    def no_decode(*a, **k):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setitem(sources._READERS, "folder", no_decode)
    again = load_images(str(tree))
    assert np.array_equal(again.images, first.images) and again.keys == first.keys
    monkeypatch.undo()
    target = tree / "cat" / "000.png"
    target.write_bytes(image_bytes(999))
    os.utime(target, ns=(1, 1))
    changed = load_images(str(tree))
    assert changed.fingerprint != first.fingerprint
    assert not np.array_equal(changed.images, first.images)
    cache_root = os.environ["GPUVISION_CACHE"]
    assert any(name.endswith(".safetensors") for name in os.listdir(cache_root))


@pytest.mark.parametrize("name,shown", [("cat/caf\udce9.png", "cat/caf\udce9.png"),
                                        ("notes-\udce9.txt", "notes-\udce9.txt"), ("b\udcffd/x.png", "b\udcffd")])
def test_non_utf8_names_in_a_folder_are_refused(tmp_path, name, shown):
    make_tree(tmp_path, per_class=2)
    (tmp_path / name).parent.mkdir(exist_ok=True)
    (tmp_path / name).write_bytes(image_bytes(1))  # the surrogate is written as the byte it stands for
    refusal(tmp_path, f"the name {shown!r} is not UTF-8", "rename it")


def test_hidden_and_macos_folders_are_not_classes(tmp_path):
    make_tree(tmp_path, per_class=2)
    (tmp_path / ".git" / "objects").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "cat").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "cat" / "._000.png").write_bytes(b"resource fork")
    assert load_images(str(tmp_path)).classes == ["cat", "dog"]


def test_cifar_archive_with_a_batch_twice_is_refused(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    cifar_python_archive(archive)
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(archive, "w:gz") as tar:
        for m, data in members + [members[0]]:
            tar.addfile(m, io.BytesIO(data))
    refusal(archive, "'data_batch_1' appears more than once")


def test_damaged_or_oversized_idx_files_are_refused(tmp_path):
    root = idx_folder(tmp_path / "crc")
    path = root / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip_with_bad_crc(gzip.decompress(path.read_bytes())))
    refusal(root, "train-images-idx3-ubyte.gz: not a readable IDX file (CRC check failed")
    root = idx_folder(tmp_path / "huge", compress=False)
    path = root / "train-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (1 << 20, 1 << 10, 1 << 10)))
    refusal(root, "the decoded images (1048576 x 1024 x 1024) need 1024.00 GiB")
