"""One reader per source kind, each returning an ImageSet; decoded images are cached by source fingerprint.

Kinds: `digits` (scikit-learn's bundled set), an ImageFolder tree as a directory or a .tar/.tar.gz/.tgz/.zip
archive, the official CIFAR-10 python archive (or its extracted folder), and a folder of MNIST-style IDX files.
A tree is `<class>/<image>`, or split into parts given as given: `train/<class>/<image>` beside `val/` (or `valid/`,
`validation/`) and/or `test/`. Every image's key is its path in the tree; a key may not repeat.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import logging
import pickletools
import zlib
from collections import Counter
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import UserError, require
from .images import IMAGE_SUFFIXES, conform, decode_image, decode_set, probe_image
from .imageset import ImageSet, cache_key, load_cached, save_cached
from .limits import allocate, env_bytes, parse_bytes
from .safe_archive import is_archive, iter_members

__all__ = ["conform", "decode_image", "load_images", "source_fingerprint"]  # decoding lives in images.py

log = logging.getLogger(__name__)

PART_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
IDX_PARTS = {"train": "train", "t10k": "test"}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_FILES = {*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"}


def load_images(
    src: str, image_size: int | tuple[int, int] | None = None, channels: int | None = None, strict: bool = False,
    max_decoded_bytes: int | str | None = None, cached: bool = True,
) -> ImageSet:
    """Decode a source once (then load it from the cache) into an ImageSet.

    image_size: resize every image to this size (an int is square); None keeps the most common size.
    channels: 1 or 3 to force grey or colour; None picks colour if any image is colour.
    strict: a corrupt image is an error instead of being skipped and reported.
    max_decoded_bytes: refuse to decode a set larger than this (N x C x H x W bytes); None reads
        GPUVISION_MAX_DECODED_BYTES (bytes, or a number with K, M, G or T), default 8 GiB.
    cached: False decodes the source without reading or writing the cache (a cold load, for `gpuvision bench`).
    """
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    require(image_size is None or all(1 <= s <= 4096 for s in image_size), f"image size must be 1..4096: {image_size}")
    require(channels in (None, 1, 3), f"channels must be 1 or 3, got {channels}")
    bound = env_bytes("GPUVISION_MAX_DECODED_BYTES") if max_decoded_bytes is None else \
        parse_bytes(max_decoded_bytes, "--max-decoded-bytes")
    kind, path = _source_kind(src)
    fingerprint = _fingerprint(kind, path)
    settings = {"image_size": list(image_size) if image_size else None, "channels": channels, "kind": kind}
    if path is not None and path.is_file():  # an archive: a cache entry stands for it under the bound it was read
        settings["max_archive_bytes"] = env_bytes("GPUVISION_MAX_ARCHIVE_BYTES")  # with, never a looser one
    key = cache_key(fingerprint, settings)
    images = load_cached(key) if cached else None
    if images is None:
        images = _READERS[kind](path, image_size, channels, bound)
        images.fingerprint, images.source = fingerprint, src if kind == "digits" else str(path.resolve())
        if not images.native_sizes:
            images.native_sizes = {f"{images.images.shape[2]}x{images.images.shape[3]}": len(images)}
        _check(images, src)
        if cached:
            save_cached(key, images)
    if images.skipped:
        names = ", ".join(repr(n) for n in images.skipped[:5]) + (" ..." if len(images.skipped) > 5 else "")
        require(not strict, f"{src}: {len(images.skipped)} unreadable image(s): {names} (--strict refuses them)")
        log.warning("skipped %d unreadable image(s): %s", len(images.skipped), names)
    return images


def native_side(src: str, sample: int = 256) -> int | None:
    """The longer side of the most common size among a source's first `sample` images, read from their headers
    (nothing is decoded); None for digits, CIFAR-10 and IDX files, whose images are small. The Trainer's default
    size for photos starts from it."""
    kind, path = _source_kind(src)
    if kind == "folder":
        blobs = (p for p in _walk(path) if p.is_file() and _is_image_name(p.relative_to(path).as_posix()))
    elif kind == "archive":
        blobs = (data for _, data in iter_members(path, wanted=_is_image_name) if data is not None)
    else:
        return None
    sizes = Counter(h[:2] for h in map(probe_image, itertools.islice(blobs, sample)) if h)
    return max(sizes.most_common(1)[0][0]) if sizes else None


def source_fingerprint(src: str) -> str:
    """The fingerprint a source has now (to tell whether it changed since a model was trained on it)."""
    kind, path = _source_kind(src)
    return _fingerprint(kind, path)


def encoded_images(src: str, limit: int) -> list[bytes | Path]:
    """Up to `limit` of a folder's or an archive's image files, undecoded (bytes or paths), in name order; none
    for sources that hold raw pixels (digits, CIFAR python batches, IDX). For timing decoders side by side."""
    kind, path = _source_kind(src)
    if kind == "folder":
        return [p for p in _walk(path) if p.is_file() and _is_image_name(p.relative_to(path).as_posix())][:limit]
    if kind != "archive":
        return []
    found = []
    for _, data in iter_members(path, wanted=_is_image_name):
        if data is not None:
            found.append(data)
            if len(found) >= limit:
                break
    return found


def _check(images: ImageSet, src: str) -> None:
    require(len(images) > 0, f"{src}: no readable images found; expected <class>/<image> folders")
    counts = images.class_counts()
    empty = [c for c, n in counts.items() if n == 0]
    require(not empty, f"{src}: class folder(s) with no images: {', '.join(empty)}; remove them or add images")
    require(len(counts) >= 2, f"{src}: only one class ({images.classes[0]}); a classifier needs at least two")


def _refuse_duplicates(names: list[str], src: Path) -> None:
    """Two samples under one key would let evaluation score a trained image as a held-out one."""
    seen = set()
    for name in names:
        require(name not in seen, f"{src}: {name!r} appears more than once; keep one (sample keys must be unique)")
        seen.add(name)


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


def _walk(path: Path) -> list[Path]:
    """Everything under a folder, sorted; a name that is not UTF-8 is refused (a key must survive JSON)."""
    found = sorted(path.rglob("*"))
    for p in found:
        rel = p.relative_to(path).as_posix()
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:  # os.listdir decodes other bytes with surrogateescape
            raise UserError(f"{path}: the name {rel!r} is not UTF-8; rename it (e.g. with convmv)") from None
    return found


def _fingerprint(kind: str, path: Path | None) -> str:
    digest = hashlib.sha256(kind.encode())
    if kind == "digits":
        import sklearn

        digest.update(f"sklearn-digits-{sklearn.__version__}".encode())
    elif path.is_dir():  # cheap: names, sizes and modification times, not contents
        for p in _walk(path):
            if p.is_file():
                st = p.stat()
                digest.update(f"{p.relative_to(path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    else:  # an archive's bytes: one sequential read
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- ImageFolder trees (directory or archive)


def _visible(name: str) -> bool:
    return not any(part.startswith(".") or part == "__MACOSX" for part in name.split("/"))


def _is_image_name(name: str) -> bool:
    return _visible(name) and PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def _read_folder(path: Path, image_size, channels, max_bytes: int) -> ImageSet:
    found = _walk(path)
    entries = [(p.relative_to(path).as_posix(), p) for p in found if p.is_file()]
    dirs = {p.relative_to(path).as_posix() for p in found if p.is_dir()}
    return _image_tree(entries, dirs, path, image_size, channels, max_bytes)


def _read_archive(path: Path, image_size, channels, max_bytes: int) -> ImageSet:
    entries, dirs = [], set()
    for name, data in iter_members(path, wanted=_is_image_name):  # other members' bytes are never read
        if data is not None:
            entries.append((name, data))
        dirs.update(str(parent) for parent in PurePosixPath(name).parents if str(parent) != ".")
    return _image_tree(entries, dirs, path, image_size, channels, max_bytes)


def _strip_common_root(names: list[str]) -> str:
    """The single top folder every member sits in, when the tree is below it (as `tar czf x.tgz mydata/` makes)."""
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) == 1 and all("/" in n for n in names):
        top = tops.pop()
        if top not in ("train", "test") and all(n.count("/") >= 2 for n in names):
            return top + "/"
    return ""


def _depth(names: list[str], path: Path) -> int:
    """2 for <class>/<image>; 3 for <part>/<class>/<image>, where train/ and the other part folders are checked."""
    tops = {n.split("/", 1)[0] for n in names if n.count("/") == 2}
    if "train" not in tops:
        return 2
    unknown = sorted(tops - PART_FOLDERS.keys())
    if unknown:
        raise UserError(f"{path}: folder {unknown[0]!r} beside train/ is not a part; use train/, val/ (or valid/, "
                        "validation/) and test/, and move the rest away")
    vals = sorted(tops - {"train", "test"})
    if len(vals) > 1:
        raise UserError(f"{path}: both {vals[0]}/ and {vals[1]}/ hold images; keep one validation folder")
    return 3


def _image_tree(entries: list, dirs: set[str], path: Path, image_size, channels, max_bytes: int) -> ImageSet:
    entries = [(n, d) for n, d in entries if _is_image_name(n)]
    root = _strip_common_root([n for n, _ in entries])
    entries = [(n[len(root) :], d) for n, d in entries]
    dirs = {d[len(root) :] for d in dirs if d.startswith(root) and d != root.rstrip("/") and _visible(d)}
    depth = _depth([n for n, _ in entries], path)
    images = [(n, d) for n, d in entries if n.count("/") == depth - 1]
    require(images, f"{path}: no images found; expected <class>/<image> (or train/<class>/<image>)")
    _refuse_duplicates([n for n, _ in images], path)
    class_of = {n: n.split("/")[depth - 2] for n, _ in images}
    if depth == 3:  # only folders inside the parts are classes
        class_dirs = {d.split("/")[1] for d in dirs if d.count("/") == 1 and d.split("/")[0] in PART_FOLDERS}
    else:
        class_dirs = {d for d in dirs if "/" not in d}
    classes = sorted(set(class_of.values()) | class_dirs)
    array, kept, native = decode_set([d for _, d in images], image_size, channels, max_bytes, str(path))
    names = [images[i][0] for i in kept]
    kept_set = set(kept)
    index = {c: i for i, c in enumerate(classes)}
    return ImageSet(
        images=array,
        labels=np.array([index[class_of[n]] for n in names], dtype=np.int64),
        classes=classes,
        keys=names,
        given_part=[PART_FOLDERS[n.split("/", 1)[0]] if depth == 3 else "" for n in names],
        fingerprint="",
        name=_name(path),
        source="",
        skipped=[n for i, (n, _) in enumerate(images) if i not in kept_set],
        native_sizes=native,
    )


def _name(path: Path) -> str:
    name = path.name
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# ---------------------------------------------------------------- digits


def _read_digits(_path, image_size, channels, max_bytes: int) -> ImageSet:
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, :, :, None]  # 0..16 -> 0..255
    n = len(grey)
    return ImageSet(
        images=conform(list(grey), image_size, channels, max_bytes, "digits"),
        labels=digits.target.astype(np.int64),
        classes=[str(c) for c in digits.target_names],
        keys=[f"digits:{i}" for i in range(n)],
        given_part=np.full(n, ""),
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


def _is_cifar_file(name: str) -> bool:
    return PurePosixPath(name).name in CIFAR_FILES


def _read_cifar_python(path: Path, image_size, channels, max_bytes: int) -> ImageSet:
    if path.is_dir():
        files = {p.name: p.read_bytes() for p in path.iterdir() if p.name in CIFAR_FILES and p.is_file()}
    else:
        members = [(PurePosixPath(n).name, d) for n, d in iter_members(path, _is_cifar_file) if d is not None]
        _refuse_duplicates([n for n, _ in members], path)
        files = dict(members)
    parts = [f"data_batch_{i}" for i in range(1, 6) if f"data_batch_{i}" in files] + ["test_batch"]
    require(all(p in files for p in parts), f"{path}: missing CIFAR-10 batches (need data_batch_1..5, test_batch)")
    classes = CIFAR10_CLASSES
    if "batches.meta" in files:
        names = _pickle_fields(files["batches.meta"], str(path)).get("label_names", [])
        names = [n.decode() if isinstance(n, bytes) else n for n in names if isinstance(n, str | bytes)]
        classes = names or classes
    batches = [_cifar_batch(files[part], f"{path}:{part}") for part in parts]
    images = np.concatenate([x for x, _ in batches], out=allocate((sum(len(y) for _, y in batches), 3, 32, 32),
                                                                   max_bytes, str(path)))
    if image_size not in (None, (32, 32)) or channels == 1:
        images = conform(list(images.transpose(0, 2, 3, 1)), image_size, channels, max_bytes, str(path))
    return ImageSet(images=images, labels=np.concatenate([y for _, y in batches]), classes=list(classes),
                    keys=[f"{part}:{i}" for part, (_, y) in zip(parts, batches) for i in range(len(y))],
                    given_part=[("test" if part == "test_batch" else "train") for part, (_, y) in zip(parts, batches)
                                for _ in range(len(y))],
                    fingerprint="", name="cifar10", source="")


# ---------------------------------------------------------------- MNIST-style IDX files


def _read_idx_file(path: Path, max_bytes: int) -> np.ndarray:
    """An IDX array, its size checked before it is read, and a .gz read to its end (where gzip checks its CRC)."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            head = f.read(4)
            is_idx = len(head) == 4 and head[:3] == b"\0\0\x08" and head[3] > 0
            require(is_idx, f"{path}: not an unsigned-byte IDX file")
            dims = tuple(int.from_bytes(f.read(4), "big") for _ in range(head[3]))
            out = allocate(dims, max_bytes, str(path))
            complete = f.readinto(out.data) == out.size and not f.read(1)
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path}: not a readable IDX file ({e}); copy or download it again") from e
    require(complete, f"{path}: IDX size does not match its header {list(dims)}")
    return out


def _find_idx(path: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (path / name).exists():
            return path / name
    return None


def _read_idx(path: Path, image_size, channels, max_bytes: int) -> ImageSet:
    images, labels, keys, given = [], [], [], []
    for part, split in IDX_PARTS.items():
        img_file, lab_file = _find_idx(path, f"{part}-images-idx3-ubyte"), _find_idx(path, f"{part}-labels-idx1-ubyte")
        if img_file is None:
            continue
        require(lab_file is not None, f"{path}: {img_file.name} has no matching {part}-labels-idx1-ubyte file")
        x, y = _read_idx_file(img_file, max_bytes), _read_idx_file(lab_file, max_bytes).astype(np.int64)
        require(x.ndim == 3 and len(x) == len(y), f"{path}: {part} images and labels do not match")
        require(not images or x.shape[1:] == images[0].shape[2:], f"{path}: train and test images differ in size")
        images.append(x[:, None])
        labels.append(y)
        keys += [f"{part}:{i}" for i in range(len(y))]
        given += [split] * len(y)
    images = np.concatenate(images, out=allocate((len(keys), 1, *images[0].shape[2:]), max_bytes, str(path)))
    if image_size not in (None, images.shape[-2:]) or channels == 3:
        images = conform(list(images.transpose(0, 2, 3, 1)), image_size, channels, max_bytes, str(path))
    labels = np.concatenate(labels)
    values = np.unique(labels)
    return ImageSet(images=images, labels=np.searchsorted(values, labels).astype(np.int64),
                    classes=[str(v) for v in values], keys=keys, given_part=given, fingerprint="",
                    name=path.name, source="")


_READERS = {
    "digits": _read_digits,
    "folder": _read_folder,
    "archive": _read_archive,
    "cifar-python": _read_cifar_python,
    "idx": _read_idx,
}
