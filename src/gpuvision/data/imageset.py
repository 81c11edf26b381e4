"""ImageSet: decoded images as one uint8 array, with labels, class names and stable sample keys; and its cache."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from ..errors import UserError
from ..files import atomic_write, cache_root, parse_json

log = logging.getLogger(__name__)

CACHE_VERSION = 2
MAX_HEADER = 100 << 20  # safetensors' own bound on a header
PARTS = ("", "train", "val", "test")  # given_part values; "" where the source has no parts


@dataclass
class ImageSet:
    """Every image of a source, decoded.

    images: uint8 array N x C x H x W (C is 1 for grey, 3 for colour).
    labels: int64 array N, indices into `classes`.
    keys: a stable name per sample (relative path, or "<part>:<index>" for formats without paths).
    given_part: str array N, the part the source itself puts each image in: "train", "val", "test", or "" where
        it has no parts (any sequence of those strings is accepted).
    fingerprint: a cheap hash of the source's content plus the decode settings.
    skipped: names of files that could not be decoded.
    native_sizes: how many images had each "HxW" size before resizing.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    keys: list[str]
    given_part: np.ndarray
    fingerprint: str
    name: str
    source: str
    skipped: list[str] = field(default_factory=list)
    native_sizes: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        self.given_part = np.asarray(self.given_part, dtype="<U5")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def given_test(self) -> np.ndarray:
        """bool array N, True for images the source itself marks as test."""
        return self.given_part == "test"

    @property
    def has_given_test(self) -> bool:
        return bool(self.given_test.any())

    @property
    def layout(self) -> str:
        """The parts the source gives, e.g. "train+val+test", or "flat" for a source without parts."""
        present = set(np.unique(self.given_part)) - {""}
        return "+".join(p for p in PARTS if p in present) or "flat"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}


def cache_dir() -> Path:
    """Where decoded images live: $GPUVISION_CACHE, else ~/.cache/gpuvision."""
    return cache_root()


def cache_key(fingerprint: str, settings: dict) -> str:
    blob = json.dumps({"v": CACHE_VERSION, "fp": fingerprint, **settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def load_cached(key: str) -> ImageSet | None:
    """The cached ImageSet for key, or None. Arrays are safetensors and metadata JSON: nothing is unpickled.

    An entry that cannot be read or fails validation (truncated, edited, from a bug) is logged and ignored, so
    the source is decoded again and the entry overwritten, instead of breaking every later command.
    """
    base = cache_dir() / key
    meta_path, arrays_path = base.with_suffix(".json"), base.with_suffix(".safetensors")
    if not (meta_path.exists() and arrays_path.exists()):
        return None
    try:
        return _validated(parse_json(meta_path.read_bytes(), str(meta_path)), read_arrays(arrays_path))
    except (OSError, ValueError, KeyError, TypeError, SafetensorError, UserError) as e:
        log.warning("ignoring the damaged cache entry %s (%s); decoding again", arrays_path, e)
        return None


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """A cache entry's arrays; the images memory-mapped (copy-on-write), so a set larger than memory costs only the
    pages a process reads (its shard, its batches) and a cached load takes no time whatever its size. ValueError
    (or KeyError) for a file that is not such an entry."""
    with open(path, "rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        if header_size > MAX_HEADER:
            raise ValueError(f"a safetensors header of {header_size} bytes")
        entry = json.loads(f.read(header_size))["images"]
    with safe_open(path, framework="numpy") as f:  # validates the header; the small arrays are read whole
        arrays = {k: f.get_tensor(k) for k in f.keys() if k != "images"}  # noqa: SIM118 (a safe_open handle)
    begin, end = entry["data_offsets"]
    shape = tuple(int(d) for d in entry["shape"])
    if entry["dtype"] != "U8" or end - begin != math.prod(shape) or 8 + header_size + end > path.stat().st_size:
        raise ValueError("the images array does not match its header")
    arrays["images"] = np.memmap(path, dtype=np.uint8, mode="c", offset=8 + header_size + begin, shape=shape)
    return arrays


def _validated(meta: dict, arrays: dict) -> ImageSet:
    """An ImageSet from a cache entry, or ValueError/KeyError/TypeError where a value has the wrong type or range."""
    images, labels, parts = arrays["images"], arrays["labels"], arrays["given_part"]
    classes, keys, sizes = meta["classes"], meta["keys"], meta["native_sizes"]
    n = len(labels)
    checks = {
        "images": images.dtype == np.uint8 and images.ndim == 4 and len(images) == n and images.shape[1] in (1, 3),
        "labels": labels.dtype == np.int64 and labels.ndim == 1 and _within(labels, len(classes)),
        "given_part": parts.dtype == np.uint8 and parts.shape == (n,) and _within(parts, len(PARTS)),
        "classes": _strings(classes),
        "keys": _strings(keys) and len(keys) == n and len(set(keys)) == n,  # a key names one sample
        "skipped": _strings(meta["skipped"]),
        "native_sizes": isinstance(sizes, dict) and all(isinstance(v, int) and v >= 0 for v in sizes.values()),
        "names": all(isinstance(meta[k], str) for k in ("fingerprint", "name", "source")),
    }
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise ValueError(f"bad {', '.join(bad)}")
    return ImageSet(images=images, labels=labels, classes=classes, keys=keys, given_part=np.array(PARTS)[parts],
                    fingerprint=meta["fingerprint"], name=meta["name"], source=meta["source"],
                    skipped=meta["skipped"], native_sizes=sizes)


def _within(a: np.ndarray, end: int) -> bool:
    return len(a) == 0 or (int(a.min()) >= 0 and int(a.max()) < end)


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def save_cached(key: str, images: ImageSet) -> None:
    """Write the cache entry atomically; a failure to write (read-only disk) only costs the next load time."""
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {
            "images": np.ascontiguousarray(images.images),
            "labels": images.labels.astype(np.int64),
            "given_part": np.array([PARTS.index(p) for p in images.given_part], dtype=np.uint8),
        }
        names = ("classes", "keys", "fingerprint", "name", "source", "skipped", "native_sizes")
        meta = {k: getattr(images, k) for k in names}
        # The arrays go first: the JSON is the marker of a complete entry.
        atomic_write(directory / f"{key}.safetensors", lambda p: save_file(arrays, str(p)))
        atomic_write(directory / f"{key}.json", lambda p: Path(p).write_text(json.dumps(meta)))
    except OSError:
        return
