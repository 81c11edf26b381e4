"""Small real fixtures built in the tests: image trees, archives, CIFAR-format batches, IDX files."""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def image_bytes(seed: int, size=(16, 16), mode="RGB", fmt="PNG") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, format=fmt)
    return buf.getvalue()


def make_tree(root: Path, classes=("cat", "dog"), per_class=6, prefix="", size=(16, 16), fmt="PNG") -> Path:
    for c_i, c in enumerate(classes):
        (root / prefix / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ext = "png" if fmt == "PNG" else "jpg"
            (root / prefix / c / f"{i:03d}.{ext}").write_bytes(image_bytes(100 * c_i + i, size, fmt=fmt))
    return root


def tar_of(directory: Path, path: Path, arcroot: str = "") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for p in sorted(directory.rglob("*")):
            if p.is_file():
                tar.add(p, arcname=f"{arcroot}{p.relative_to(directory).as_posix()}")
    return path


def cifar_python_archive(path: Path, n_per_batch=20, protocol=2) -> tuple[np.ndarray, np.ndarray]:
    """A cifar-10-python.tar.gz in the official layout; returns (images N x 3 x 32 x 32, labels) in order."""
    rng = np.random.default_rng(0)
    parts = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    all_images, all_labels = [], []
    with tarfile.open(path, "w:gz") as tar:
        def add(name, obj):
            blob = pickle.dumps(obj, protocol=protocol)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))

        for part in parts:
            data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
            labels = [int(x) for x in rng.integers(0, 10, n_per_batch)]
            add(part, {b"batch_label": part.encode(), b"labels": labels, b"data": data,
                       b"filenames": [f"{part}_{i}.png".encode() for i in range(n_per_batch)]})
            all_images.append(data.reshape(-1, 3, 32, 32))
            all_labels += labels
        add("batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072})
    return np.concatenate(all_images), np.array(all_labels)


def idx_folder(root: Path, n_train=30, n_test=10, compress=True) -> Path:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)

    def write(name, array, magic_type):
        header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
        blob = header + array.astype(np.uint8).tobytes()
        if compress:
            (root / f"{name}.gz").write_bytes(gzip.compress(blob))
        else:
            (root / name).write_bytes(blob)

    for part, n in (("train", n_train), ("t10k", n_test)):
        write(f"{part}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 3)
        write(f"{part}-labels-idx1-ubyte", np.arange(n) % 10, 1)
    return root
