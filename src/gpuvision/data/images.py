"""Image files to uint8 arrays: header probes, one image's pixels, and a whole set decoded in parallel.

Any mode becomes grey (1 channel) or colour (3): alpha is dropped, keeping the colour under it (a palette's
transparent entry too); 16-bit samples keep their high byte; CMYK becomes RGB; an animated GIF or PNG gives its
first frame. The format is read from the content, not the file name. An image over MAX_IMAGE_PIXELS, or one
Pillow cannot decode to the end (truncated, not an image), is unreadable: None, which callers report by name.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from ..progress import Heartbeat
from .limits import allocate

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # a larger image is a decompression bomb here, not a training example
PARALLEL_MIN = 2000  # below this many images, starting processes costs more than it saves
_HEAD = 1 << 16  # bytes read for a header; a JPEG's frame header past this (after big ICC/EXIF) is Pillow's to find
_GREY = {"1", "L", "LA", "I", "F"}
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # frame headers
_UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning)


@contextmanager
def _opened(data: bytes | Path) -> Iterator[Image.Image]:
    """The image with only its header read; past MAX_IMAGE_PIXELS a ValueError (Pillow's bomb warning an error)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise ValueError(f"{img.width} x {img.height} pixels")
            yield img


def _is_grey(mode: str) -> bool:
    return mode in _GREY or mode.startswith("I;16")


def probe_image(data: bytes | Path) -> tuple[int, int, int] | None:
    """(height, width, channels) from an image's header, without decoding it; None if it is not readable."""
    try:
        if isinstance(data, bytes):
            head = data[:_HEAD]
        else:
            with open(data, "rb") as f:
                head = f.read(_HEAD)
        header = _png_or_jpeg_header(head)
        if header is None:
            with _opened(data) as img:
                header = img.height, img.width, 1 if _is_grey(img.mode) else 3
    except _UNREADABLE:
        return None
    return header if header[0] * header[1] <= MAX_IMAGE_PIXELS else None


def _png_or_jpeg_header(head: bytes) -> tuple[int, int, int] | None:
    """(height, width, channels) of a PNG or JPEG from its first bytes; None for anything else (ask Pillow).

    By hand because Image.open costs some 60 us an image, a quarter of decoding a 32 x 32 JPEG; decoding is Pillow's.
    """
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 26:
        width, height = struct.unpack(">2I", head[16:24])
        return height, width, 1 if head[25] in (0, 4) else 3  # colour types 0 grey, 4 grey + alpha
    i = 2 if head.startswith(b"\xff\xd8") else len(head)
    while i + 10 <= len(head) and head[i] == 0xFF:  # segments: FF, marker, 2-byte length (counting itself), body
        if head[i + 1] in _JPEG_SOF:
            height, width = struct.unpack(">2H", head[i + 5 : i + 9])
            return height, width, 1 if head[i + 9] == 1 else 3  # components: 1 grey, 3 YCbCr, 4 CMYK
        i += 1 if head[i + 1] == 0xFF else 2 + struct.unpack(">H", head[i + 2 : i + 4])[0]
    return None


def decode_image(data: bytes | Path, size: tuple[int, int] | None = None, channels: int | None = None
                 ) -> np.ndarray | None:
    """One image as H x W x C uint8 (C = 1 grey, 3 colour), or None if it is not a readable image.

    size (H, W) and channels, where given, resize and convert it as `conform` does.
    """
    try:
        with _opened(data) as img:
            arr = _pixels(img)
    except _UNREADABLE:
        return None
    return fit(arr, size, channels)


def _pixels(img: Image.Image) -> np.ndarray:
    if img.mode == "I" or img.mode.startswith("I;16"):
        # 16-bit grey (Pillow opens some as 32-bit "I"): keep the high byte; convert("L") clips all above 255 to white
        arr = (np.clip(np.asarray(img), 0, 65535) >> 8).astype(np.uint8)
    elif _is_grey(img.mode):
        arr = np.asarray(img.convert("L"))
    else:
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")  # as Pillow asks (it warns otherwise); the alpha then goes, as for any RGBA
        arr = np.asarray(img.convert("RGB"))
    return arr[:, :, None] if arr.ndim == 2 else arr


# How every image becomes the model's input size, in training, evaluation, predict and serving alike (the README
# and exported models' metadata state it): no crop, so nothing at an image's edge is lost to a centre crop.
RESIZE_FILTER = "bilinear"
RESIZE_RULE = ("the whole image is resized to the model's input height x width (the aspect ratio is not kept) with "
               "Pillow's bilinear filter, then made grey (ITU-R 601-2 luma) or colour (grey repeated) as the model "
               "takes")


def fit(a: np.ndarray, size: tuple[int, int] | None, channels: int | None) -> np.ndarray:
    """An H x W x C image resized to size (H, W) and made grey or colour, where those are given (RESIZE_RULE)."""
    if size and a.shape[:2] != tuple(size):
        img = Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)
        a = np.asarray(img.resize((size[1], size[0]), Image.BILINEAR))
        a = a[:, :, None] if a.ndim == 2 else a
    if channels and a.shape[2] != channels:
        a = np.repeat(a, 3, axis=2) if channels == 3 else np.asarray(Image.fromarray(a).convert("L"))[:, :, None]
    return a


def conform(arrays: list[np.ndarray], image_size: tuple[int, int] | None, channels: int | None,
            max_bytes: int | None = None, what: str = "images") -> np.ndarray:
    """Stack H x W x C images into N x C x H x W uint8, resizing to image_size (or the most common size).

    max_bytes bounds the result (None: GPUVISION_MAX_DECODED_BYTES); `what` names the source in the error.
    """
    size = tuple(image_size) if image_size else Counter(a.shape[:2] for a in arrays).most_common(1)[0][0]
    channels = channels or (3 if any(a.shape[2] == 3 for a in arrays) else 1)
    out = allocate((len(arrays), channels, *size), max_bytes, what)
    for i, a in enumerate(arrays):
        out[i] = fit(a, size, channels).transpose(2, 0, 1)
    return out


def decode_set(items: list[bytes | Path], image_size: tuple[int, int] | None, channels: int | None,
               max_bytes: int, what: str) -> tuple[np.ndarray, list[int], dict[str, int]]:
    """Decode images (bytes or files) into one N x C x H x W uint8 array, in parallel over the CPU's cores.

    Headers are read first, so the set's size is checked against max_bytes and the free memory before anything
    is decoded; each image is then resized to image_size (or the most common size) and made colour if any image
    is colour, else grey, in the worker. Returns the array, the indices of the items in it (the rest are
    unreadable) and the count of each native "HxW" size among them.
    """
    headers = [probe_image(x) for x in items]  # here: a header takes microseconds, less than sending it to a worker
    readable = [i for i, h in enumerate(headers) if h]
    if not readable:
        return np.zeros((0, 1, 1, 1), np.uint8), [], {}
    size = tuple(image_size) if image_size else Counter(headers[i][:2] for i in readable).most_common(1)[0][0]
    channels = channels or (3 if any(headers[i][2] == 3 for i in readable) else 1)
    out = allocate((len(readable), channels, *size), max_bytes, what)
    kept = []
    decode = partial(_decode_all, size=size, channels=channels)
    heartbeat = Heartbeat(f"decoding {what}", len(readable), "images")
    for n, (i, arr) in enumerate(zip(readable, _parallel_map(decode, [items[i] for i in readable])), 1):
        if arr is not None:
            out[len(kept)] = arr.transpose(2, 0, 1)
            kept.append(i)
        heartbeat(n)
    native = Counter(f"{headers[i][0]}x{headers[i][1]}" for i in kept)
    return out[: len(kept)], kept, dict(native)


def _decode_all(items: list, size: tuple[int, int], channels: int) -> list:
    return [decode_image(x, size, channels) for x in items]


def _parallel_map(fn: Callable[[list], list], items: list) -> Iterator:
    """fn (a list in, a list out) over items, in about four chunks per core when there are many; results in order."""
    workers = min(os.cpu_count() or 1, 16)
    if len(items) < PARALLEL_MIN or workers == 1:
        yield from fn(items)
        return
    size = -(-len(items) // (workers * 4))
    with ProcessPoolExecutor(workers) as pool:
        for results in pool.map(fn, [items[i : i + size] for i in range(0, len(items), size)]):
            yield from results
