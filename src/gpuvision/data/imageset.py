"""ImageSet: decoded images as one uint8 array, with labels, class names and stable sample keys; and its cache."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from ..files import atomic_write

CACHE_VERSION = 1


@dataclass
class ImageSet:
    """Every image of a source, decoded.

    images: uint8 array N x C x H x W (C is 1 for grey, 3 for colour).
    labels: int64 array N, indices into `classes`.
    keys: a stable name per sample (relative path, or "<part>:<index>" for formats without paths).
    given_test: bool array N, True for images the source itself marks as test (empty split: all False).
    fingerprint: a cheap hash of the source's content plus the decode settings.
    skipped: names of files that could not be decoded.
    native_sizes: how many images had each "HxW" size before resizing.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    keys: list[str]
    given_test: np.ndarray
    fingerprint: str
    name: str
    source: str
    skipped: list[str] = field(default_factory=list)
    native_sizes: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def has_given_test(self) -> bool:
        return bool(self.given_test.any())

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}


def cache_dir() -> Path:
    """Where decoded images live: $GPUVISION_CACHE, else ~/.cache/gpuvision."""
    root = os.environ.get("GPUVISION_CACHE") or Path.home() / ".cache" / "gpuvision"
    return Path(root)


def cache_key(fingerprint: str, settings: dict) -> str:
    blob = json.dumps({"v": CACHE_VERSION, "fp": fingerprint, **settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def load_cached(key: str) -> ImageSet | None:
    """The cached ImageSet for key, or None. Arrays are safetensors and metadata JSON: nothing is unpickled."""
    base = cache_dir() / key
    meta_path, arrays_path = base.with_suffix(".json"), base.with_suffix(".safetensors")
    if not (meta_path.exists() and arrays_path.exists()):
        return None
    meta = json.loads(meta_path.read_text())
    arrays = load_file(arrays_path)
    return ImageSet(
        images=arrays["images"],
        labels=arrays["labels"],
        given_test=arrays["given_test"].astype(bool),
        classes=meta["classes"],
        keys=meta["keys"],
        fingerprint=meta["fingerprint"],
        name=meta["name"],
        source=meta["source"],
        skipped=meta["skipped"],
        native_sizes=meta["native_sizes"],
    )


def save_cached(key: str, images: ImageSet) -> None:
    """Write the cache entry atomically; a failure to write (read-only disk) only costs the next load time."""
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {
            "images": np.ascontiguousarray(images.images),
            "labels": images.labels.astype(np.int64),
            "given_test": images.given_test.astype(np.uint8),
        }
        names = ("classes", "keys", "fingerprint", "name", "source", "skipped", "native_sizes")
        meta = {k: getattr(images, k) for k in names}
        # The arrays go first: the JSON is the marker of a complete entry.
        atomic_write(directory / f"{key}.safetensors", lambda p: save_file(arrays, str(p)))
        atomic_write(directory / f"{key}.json", lambda p: Path(p).write_text(json.dumps(meta)))
    except OSError:
        return
