"""What the data rows stand on: encoded images taken from a source as they are, and a cold load that neither
reads nor writes the decoded cache."""

from __future__ import annotations

import tarfile

from gpuvision.data import load_images
from gpuvision.data.sources import encoded_images
from gpuvision.files import cache_root


def test_encoded_images_are_the_files_bytes_unchanged(cifar_subset_tar, tmp_path):
    taken = encoded_images(str(cifar_subset_tar), 7)
    with tarfile.open(cifar_subset_tar) as tar:
        first = [tar.extractfile(m).read() for m in tar if m.isfile()][:7]
    assert taken == first
    folder = tmp_path / "tree"
    for i, data in enumerate(first):
        (folder / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        (folder / f"c{i % 2}" / f"{i}.jpg").write_bytes(data)
    (folder / "c0" / "notes.txt").write_text("not an image")
    paths = encoded_images(str(folder), 100)
    assert len(paths) == 7 and all(p.suffix == ".jpg" for p in paths)
    assert encoded_images("digits", 10) == []  # raw pixels: nothing to decode


def test_a_cold_load_leaves_the_cache_as_it_was(cifar_subset_tar, monkeypatch, tmp_path):
    monkeypatch.setenv("GPUVISION_CACHE", str(tmp_path / "cache"))
    cold = load_images(str(cifar_subset_tar), cached=False)
    assert not cache_root().exists()
    cached = load_images(str(cifar_subset_tar))
    assert len(list(cache_root().glob("*.safetensors"))) == 1
    assert (cold.images == cached.images).all() and cold.keys == cached.keys
