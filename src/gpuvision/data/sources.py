"""One reader per source kind, each returning an ImageSet; decoded images are cached by source fingerprint.

Kinds: `digits` (scikit-learn's bundled set), an ImageFolder tree (`<class>/<image>`, optionally under `train/`
and `test/`) as a directory or a .tar/.tar.gz/.tgz/.zip archive, the official CIFAR-10 python archive (or its
extracted folder), and a folder of MNIST-style IDX files.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import pickletools
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from ..errors import UserError, require
from .imageset import ImageSet, cache_key, load_cached, save_cached
from .safe_archive import is_archive, iter_members

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # a larger image is a decompression bomb here, not a training example
IDX_PARTS = {"train": "train", "t10k": "test"}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def load_images(
    src: str, image_size: int | tuple[int, int] | None = None, channels: int | None = None, strict: bool = False,
    max_decoded_bytes: int | str | None = None,
) -> ImageSet:
    """Decode a source once (then load it from the cache) into an ImageSet.

    image_size: resize every image to this size (an int is square); None keeps the most common size.
    channels: 1 or 3 to force grey or colour; None picks colour if any image is colour.
    strict: a corrupt image is an error instead of being skipped and reported.
    """
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    require(image_size is None or all(1 <= s <= 4096 for s in image_size), f"image size must be 1..4096: {image_size}")
    require(channels in (None, 1, 3), f"channels must be 1 or 3, got {channels}")
    kind, path = _source_kind(src)
    fingerprint = _fingerprint(kind, path)
    settings = {"image_size": list(image_size) if image_size else None, "channels": channels, "kind": kind}
    key = cache_key(fingerprint, settings)
    images = load_cached(key)
    if images is None:
        images = _READERS[kind](path, image_size, channels)
        images.fingerprint, images.source = fingerprint, src if kind == "digits" else str(path.resolve())
        if not images.native_sizes:
            images.native_sizes = {f"{images.images.shape[2]}x{images.images.shape[3]}": len(images)}
        _check(images, src)
        save_cached(key, images)
    if images.skipped:
        names = ", ".join(images.skipped[:5]) + (" ..." if len(images.skipped) > 5 else "")
        require(not strict, f"{src}: {len(images.skipped)} unreadable image(s): {names} (--strict refuses them)")
        log.warning("skipped %d unreadable image(s): %s", len(images.skipped), names)
    return images


def source_fingerprint(src: str) -> str:
    """The fingerprint a source has now (to tell whether it changed since a model was trained on it)."""
    kind, path = _source_kind(src)
    return _fingerprint(kind, path)


def _check(images: ImageSet, src: str) -> None:
    require(len(images) > 0, f"{src}: no readable images found; expected <class>/<image> folders")
    counts = images.class_counts()
    empty = [c for c, n in counts.items() if n == 0]
    require(not empty, f"{src}: class folder(s) with no images: {', '.join(empty)}; remove them or add images")
    require(len(counts) >= 2, f"{src}: only one class ({images.classes[0]}); a classifier needs at least two")


# ---------------------------------------------------------------- what the source is


def _source_kind(src: str) -> tuple[str, Path | None]:
    if src == "digits":
        return "digits", None
    path = Path(src).expanduser()
    require(path.exists(), f"{src}: no such file or directory (give a folder, an archive, or 'digits')")
    if path.is_dir():
        names = {p.name for p in path.iterdir()}
        require(bool(names), f"{src}: the directory is empty; expected <class>/<image> folders")
        if any(n.startswith("train-images-idx3-ubyte") for n in names):
            return "idx", path
        if "data_batch_1" in names and "test_batch" in names:
            return "cifar-python", path
        return "folder", path
    require(is_archive(path), f"{src}: not a folder or a .tar, .tar.gz, .tgz or .zip archive")
    if path.name.startswith("cifar-10-python"):
        return "cifar-python", path
    return "archive", path


def _fingerprint(kind: str, path: Path | None) -> str:
    digest = hashlib.sha256(kind.encode())
    if kind == "digits":
        import sklearn

        digest.update(f"sklearn-digits-{sklearn.__version__}".encode())
    elif path.is_dir():  # cheap: names, sizes and modification times, not contents
        for p in sorted(path.rglob("*")):
            if p.is_file():
                st = p.stat()
                digest.update(f"{p.relative_to(path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    else:  # an archive's bytes: one sequential read
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- decoding


def decode_image(data: bytes | Path) -> np.ndarray | None:
    """One image as H x W x C uint8 (C = 1 grey, 3 colour), or None if it is not a readable image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    return None
                grey = img.mode in ("1", "L", "LA", "I", "I;16", "F")
                arr = np.asarray(img.convert("L" if grey else "RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None
    return arr[:, :, None] if arr.ndim == 2 else arr


def _decode_chunk(items: list) -> list:
    return [decode_image(x) for x in items]


def decode_many(items: list[bytes | Path]) -> list[np.ndarray | None]:
    """Decode images in parallel over the CPU's cores (inline for small sets, where processes cost more)."""
    workers = min(os.cpu_count() or 1, 16)
    if len(items) < 2000 or workers == 1:
        return _decode_chunk(items)
    size = -(-len(items) // (workers * 4))
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    with ProcessPoolExecutor(workers) as pool:
        return [arr for chunk in pool.map(_decode_chunk, chunks) for arr in chunk]


def conform(arrays: list[np.ndarray], image_size: tuple[int, int] | None, channels: int | None) -> np.ndarray:
    """Stack H x W x C images into N x C x H x W uint8, resizing to image_size (or the most common size)."""
    if image_size:
        size = tuple(image_size)
    else:
        size = Counter(a.shape[:2] for a in arrays).most_common(1)[0][0]
    if channels is None:
        channels = 3 if any(a.shape[2] == 3 for a in arrays) else 1
    out = np.empty((len(arrays), channels, *size), dtype=np.uint8)
    for i, a in enumerate(arrays):
        if a.shape[:2] != size:
            img = Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)
            a = np.asarray(img.resize((size[1], size[0]), Image.BILINEAR))
            a = a[:, :, None] if a.ndim == 2 else a
        if a.shape[2] != channels:
            a = np.repeat(a, 3, axis=2) if channels == 3 else np.asarray(Image.fromarray(a).convert("L"))[:, :, None]
        out[i] = a.transpose(2, 0, 1)
    return out


# ---------------------------------------------------------------- ImageFolder trees (directory or archive)


def _read_folder(path: Path, image_size, channels) -> ImageSet:
    files = [p for p in sorted(path.rglob("*")) if p.is_file()]
    entries = [(p.relative_to(path).as_posix(), p) for p in files]
    class_dirs = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_dir()}
    return _image_tree(entries, class_dirs, path, image_size, channels)


def _read_archive(path: Path, image_size, channels) -> ImageSet:
    entries, dirs = [], set()
    for name, data in iter_members(path):
        entries.append((name, data))
        dirs.update(str(parent) for parent in PurePosixPath(name).parents if str(parent) != ".")
    return _image_tree(entries, dirs, path, image_size, channels)


def _strip_common_root(names: list[str]) -> str:
    """The single top folder every member sits in, when the tree is below it (as `tar czf x.tgz mydata/` makes)."""
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) == 1 and all("/" in n for n in names):
        top = tops.pop()
        if top not in ("train", "test") and all(n.count("/") >= 2 for n in names):
            return top + "/"
    return ""


def _image_tree(entries: list, dirs: set[str], path: Path, image_size, channels) -> ImageSet:
    entries = [(n, d) for n, d in entries if not any(part.startswith(".") for part in n.split("/"))]
    root = _strip_common_root([n for n, _ in entries])
    entries = [(n[len(root) :], d) for n, d in entries if n.startswith(root)]
    dirs = {d[len(root) :] for d in dirs if d.startswith(root) and d != root.rstrip("/")}
    split_layout = any(n.startswith("train/") for n, _ in entries)
    depth = 3 if split_layout else 2
    images = [(n, d) for n, d in entries
              if n.count("/") == depth - 1 and PurePosixPath(n).suffix.lower() in IMAGE_SUFFIXES]
    require(images, f"{path}: no images found; expected <class>/<image> (or train/<class>/<image>)")
    class_of = {n: n.split("/")[depth - 2] for n, _ in images}
    classes = sorted(set(class_of.values()) | {d.split("/")[-1] for d in dirs if d.count("/") == depth - 2})
    if split_layout:  # only folders under train/ and test/ are classes
        classes = sorted({d.split("/")[1] for d in dirs if d.count("/") == 1 and d.split("/")[0] in ("train", "test")})
        classes = sorted(set(classes) | set(class_of.values()))
    decoded = decode_many([d for _, d in images])
    kept = [(n, a) for (n, _), a in zip(images, decoded) if a is not None]
    skipped = [n for (n, _), a in zip(images, decoded) if a is None]
    index = {c: i for i, c in enumerate(classes)}
    names = [n for n, _ in kept]
    return ImageSet(
        images=conform([a for _, a in kept], image_size, channels) if kept else np.zeros((0, 1, 1, 1), np.uint8),
        labels=np.array([index[class_of[n]] for n in names], dtype=np.int64),
        classes=classes,
        keys=names,
        given_test=np.array([n.startswith("test/") for n in names], dtype=bool),
        fingerprint="",
        name=_name(path),
        source="",
        skipped=skipped,
        native_sizes={f"{h}x{w}": n for (h, w), n in Counter(a.shape[:2] for _, a in kept).items()},
    )


def _name(path: Path) -> str:
    name = path.name
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# ---------------------------------------------------------------- digits


def _read_digits(_path, image_size, channels) -> ImageSet:
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, :, :, None]  # 0..16 -> 0..255
    n = len(grey)
    return ImageSet(
        images=conform(list(grey), image_size, channels),
        labels=digits.target.astype(np.int64),
        classes=[str(c) for c in digits.target_names],
        keys=[f"digits:{i}" for i in range(n)],
        given_test=np.zeros(n, dtype=bool),
        fingerprint="",
        name="digits",
        source="",
    )


# ---------------------------------------------------------------- CIFAR-10 python archive, read without unpickling


def _pickle_fields(blob: bytes, path: str) -> dict[str, list]:
    """The values after each known string key of a CIFAR batch pickle, found by walking its opcodes.

    The official batches are Python pickles; executing one can run arbitrary code, so we never call pickle.load:
    pickletools.genops only parses. Each key's value is the list of scalar arguments (ints, strings, bytes) that
    follow it, up to the next key or the end of the list that holds them.
    """
    keys = {"labels", "data", "filenames", "label_names", "batch_label"}
    skip = {"BINPUT", "LONG_BINPUT", "BINGET", "LONG_BINGET", "PROTO", "MEMOIZE", "FRAME", "MARK"}
    fields: dict[str, list] = {}
    current, list_done, codec_args = None, False, 0
    try:
        for op, arg, _pos in pickletools.genops(blob):
            text = arg.decode("latin-1") if isinstance(arg, bytes | bytearray) else arg
            if op.name in ("GLOBAL", "STACK_GLOBAL") and arg == "_codecs encode":
                codec_args = 2  # Python 3 protocol-2 bytes: _codecs.encode(text, "latin1"); skip the "latin1"
                continue
            if isinstance(text, str) and codec_args:
                codec_args -= 1
                if codec_args == 0:
                    continue
            if isinstance(text, str) and text in keys:
                current, list_done = text, False
                fields[current] = []
            elif op.name in ("APPENDS", "APPEND"):
                list_done = True
            elif op.name in skip:
                continue
            elif list_done:  # the first other opcode after a list's last APPENDS ends the value
                current, list_done = None, False
            elif current and arg is not None:
                fields[current].append(bytes(arg) if isinstance(arg, bytearray) else arg)
    except ValueError as e:
        raise UserError(f"{path}: not a CIFAR-10 batch ({e})") from e
    return fields


def _cifar_batch(blob: bytes, path: str) -> tuple[np.ndarray, np.ndarray]:
    fields = _pickle_fields(blob, path)
    data = [a for a in fields.get("data", []) if isinstance(a, str | bytes) and len(a) % 3072 == 0 and len(a) > 0]
    require(data, f"{path}: no image data in CIFAR-10 batch")
    raw = data[0].encode("latin-1") if isinstance(data[0], str) else data[0]
    images = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3, 32, 32)
    labels = np.array([v for v in fields.get("labels", []) if isinstance(v, int)], dtype=np.int64)
    require(len(labels) == len(images), f"{path}: {len(labels)} labels for {len(images)} images")
    return images, labels


def _read_cifar_python(path: Path, image_size, channels) -> ImageSet:
    if path.is_dir():
        files = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    else:
        files = {PurePosixPath(n).name: d for n, d in iter_members(path)}
    parts = [f"data_batch_{i}" for i in range(1, 6) if f"data_batch_{i}" in files] + ["test_batch"]
    require(all(p in files for p in parts), f"{path}: missing CIFAR-10 batches (need data_batch_1..5, test_batch)")
    classes = CIFAR10_CLASSES
    if "batches.meta" in files:
        names = _pickle_fields(files["batches.meta"], str(path)).get("label_names", [])
        names = [n.decode() if isinstance(n, bytes) else n for n in names if isinstance(n, str | bytes)]
        classes = names or classes
    images, labels, keys, test = [], [], [], []
    for part in parts:
        x, y = _cifar_batch(files[part], f"{path}:{part}")
        images.append(x)
        labels.append(y)
        keys += [f"{part}:{i}" for i in range(len(y))]
        test.append(np.full(len(y), part == "test_batch"))
    images = np.concatenate(images)
    if image_size not in (None, (32, 32)) or channels == 1:
        images = conform(list(images.transpose(0, 2, 3, 1)), image_size, channels)
    return ImageSet(images=np.ascontiguousarray(images), labels=np.concatenate(labels), classes=list(classes),
                    keys=keys, given_test=np.concatenate(test), fingerprint="", name="cifar10", source="")


# ---------------------------------------------------------------- MNIST-style IDX files


def _read_idx_file(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    require(len(raw) >= 4 and raw[:2] == b"\0\0" and raw[2] == 0x08, f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = raw[4 + 4 * ndim :]
    require(len(body) == int(np.prod(dims)), f"{path}: IDX size does not match its header {dims}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _find_idx(path: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (path / name).exists():
            return path / name
    return None


def _read_idx(path: Path, image_size, channels) -> ImageSet:
    images, labels, keys, test = [], [], [], []
    for part, split in IDX_PARTS.items():
        img_file, lab_file = _find_idx(path, f"{part}-images-idx3-ubyte"), _find_idx(path, f"{part}-labels-idx1-ubyte")
        if img_file is None:
            continue
        require(lab_file is not None, f"{path}: {img_file.name} has no matching {part}-labels-idx1-ubyte file")
        x, y = _read_idx_file(img_file), _read_idx_file(lab_file).astype(np.int64)
        require(x.ndim == 3 and len(x) == len(y), f"{path}: {part} images and labels do not match")
        images.append(x[:, None])
        labels.append(y)
        keys += [f"{part}:{i}" for i in range(len(y))]
        test.append(np.full(len(y), split == "test"))
    images = np.concatenate(images)
    if image_size not in (None, images.shape[-2:]) or channels == 3:
        images = conform(list(images.transpose(0, 2, 3, 1)), image_size, channels)
    labels = np.concatenate(labels)
    values = np.unique(labels)
    return ImageSet(images=np.ascontiguousarray(images), labels=np.searchsorted(values, labels).astype(np.int64),
                    classes=[str(v) for v in values], keys=keys, given_test=np.concatenate(test), fingerprint="",
                    name=path.name, source="")


_READERS = {
    "digits": _read_digits,
    "folder": _read_folder,
    "archive": _read_archive,
    "cifar-python": _read_cifar_python,
    "idx": _read_idx,
}
