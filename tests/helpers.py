"""Small real fixtures built in the tests: image trees, archives, CIFAR-format batches, IDX files; and crafted bad
files: archives cut short or with a bad checksum, zips with what zipfile will not write, and bombs that are small
on disk and cheap to build (one compressed block written many times); and a real server on 127.0.0.1."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
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


# ---------------------------------------------------------------- crafted images


def encoded(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def png16_bytes(values: np.ndarray) -> bytes:
    """A 16-bit grey PNG of a uint16 array (Pillow opens it in mode "I;16")."""
    return encoded(Image.fromarray(values.astype(np.uint16)), "PNG")


def cmyk_jpeg_bytes(cmyk=(0, 255, 255, 0), size=(8, 8)) -> bytes:
    """A CMYK JPEG of one colour (the default is red)."""
    return encoded(Image.new("CMYK", size, cmyk), "JPEG", quality=95)


def palette_png_bytes() -> bytes:
    """An 8 x 8 palette PNG: red, with green at (0, 0) and blue at (0, 1); the palette has transparency bytes
    (red transparent, green half), the kind Pillow warns about when converted straight to RGB."""
    img = Image.new("P", (8, 8), 0)
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    img.putpixel((0, 0), 1)
    img.putpixel((1, 0), 2)
    return encoded(img, "PNG", transparency=b"\x00\x80\xff")


def animated_bytes(fmt: str, colours=((255, 0, 0), (0, 0, 255)), size=(8, 8)) -> bytes:
    """An animated GIF or PNG whose frames are the given solid colours."""
    frames = [Image.new("RGB", size, c) for c in colours]
    return encoded(frames[0], fmt, save_all=True, append_images=frames[1:])


# ---------------------------------------------------------------- crafted archives


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """An uncompressed tar of (name, bytes) members in order, with its end blocks. Names may hold non-UTF-8 bytes
    as surrogates (as os.listdir gives them); they are written as those bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, errors="surrogateescape") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_tar(path: Path, members: list) -> Path:
    """tar_bytes(members) written to path, gzipped when the name ends in .gz or .tgz."""
    blob = tar_bytes(members)
    path.write_bytes(gzip.compress(blob, mtime=0) if path.name.endswith((".gz", ".tgz")) else blob)
    return path


def tar_cut_at_member(members: list, k: int) -> bytes:
    """tar_bytes(members) cut just before member k's header: a copy that stopped at a member boundary."""
    blob = tar_bytes(members)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        return blob[: tar.getmembers()[k].offset]


def gzip_with_bad_crc(data: bytes, flip_at: float | None = None) -> bytes:
    """A gzip stream whose CRC does not match its content. flip_at None: the content is data, intact, and the CRC
    is wrong; flip_at 0.7: the byte at 70% of data is changed in the content, and the CRC is data's."""
    flipped = bytearray(data)
    flipped[int(len(data) * (flip_at or 0.5))] ^= 0xFF
    stored, checked = (bytes(flipped), data) if flip_at is not None else (data, bytes(flipped))
    blob = bytearray(gzip.compress(stored, mtime=0))
    blob[-8:-4] = zlib.crc32(checked).to_bytes(4, "little")
    return bytes(blob)


def tar_gz_of_zeros(path: Path, name: str, mib: int, before: list = ()) -> Path:
    """A valid .tar.gz whose member `name` holds `mib` MiB of zeros, after the (name, bytes) members `before`.

    Built streaming and in no time: after a full flush, deflating 1 MiB of zeros gives the same block each time, so
    that block is written `mib` times (and only the CRC sees every byte)."""
    def member(name: str, size: int) -> bytes:
        info = tarfile.TarInfo(name)
        info.size = size
        return info.tobuf(tarfile.GNU_FORMAT)

    head = b"".join(member(n, len(d)) + d + bytes(-len(d) % tarfile.BLOCKSIZE) for n, d in before)
    head += member(name, mib << 20)
    tail, zero = bytes(2 * tarfile.BLOCKSIZE), bytes(1 << 20)
    deflate, crc = zlib.compressobj(9, zlib.DEFLATED, -15), zlib.crc32(head)
    with open(path, "wb") as f:
        f.write(b"\x1f\x8b\x08\0\0\0\0\0\0\xff")  # gzip header: deflate, no name, no time
        f.write(deflate.compress(head) + deflate.flush(zlib.Z_FULL_FLUSH))
        block = deflate.compress(zero) + deflate.flush(zlib.Z_FULL_FLUSH)
        for _ in range(mib):
            f.write(block)
            crc = zlib.crc32(zero, crc)
        f.write(deflate.compress(tail) + deflate.flush())
        f.write(struct.pack("<2I", zlib.crc32(tail, crc), (len(head) + (mib << 20) + len(tail)) & 0xFFFFFFFF))
    return path


@dataclass
class ZipEntry:
    """One member of raw_zip: its name (bytes are written as they are), data, and header fields."""

    name: str | bytes
    data: bytes = b""
    method: int = 8  # 8 deflate, 0 stored; others are written stored
    flags: int = 0  # 0x1 encrypted, 0x800 UTF-8 names
    mode: int = 0o100644  # Unix mode, in the high 16 bits of the external attributes


def raw_zip(path: Path, entries: list[ZipEntry]) -> Path:
    """A zip written byte by byte, to hold what zipfile will not write: any name bytes, flags, compression method
    or mode bits. Entries with the same data object share one compression (a bomb of many members is cheap)."""
    packed_of: dict[int, tuple[bytes, int]] = {}
    central = []
    with open(path, "wb") as f:
        for e in entries:
            name = e.name if isinstance(e.name, bytes) else e.name.encode()
            if id(e.data) not in packed_of:
                deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
                packed = deflate.compress(e.data) + deflate.flush() if e.method == 8 else e.data
                packed_of[id(e.data)] = packed, zlib.crc32(e.data)
            packed, crc = packed_of[id(e.data)]
            fields = (e.flags, e.method, 0, 0x21, crc, len(packed), len(e.data), len(name))
            offset = f.tell()
            f.write(struct.pack("<4s5H3I2H", b"PK\3\4", 20, *fields, 0) + name + packed)
            central.append(struct.pack("<4s6H3I5H2I", b"PK\1\2", 0x314, 20, *fields, 0, 0, 0, 0, e.mode << 16,
                                       offset) + name)
        start, directory = f.tell(), b"".join(central)
        f.write(directory + struct.pack("<4s4H2IH", b"PK\5\6", 0, 0, len(entries), len(entries), len(directory),
                                        start, 0))
    return path


def png_of_zeros(path: Path, width: int, height: int) -> Path:
    """A valid black grey PNG of width x height (height a multiple of 256), some 70 kB for 8000 x 8000, built from
    one deflate block of 256 rows written height / 256 times."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = bytes(256 * (1 + width))  # each row: filter byte 0, then its samples
    deflate, adler = zlib.compressobj(9, zlib.DEFLATED, -15), 1
    block = deflate.compress(rows) + deflate.flush(zlib.Z_FULL_FLUSH)
    for _ in range(height // 256):
        adler = zlib.adler32(rows, adler)
    stream = b"\x78\xda" + block * (height // 256) + deflate.flush() + struct.pack(">I", adler)
    header = struct.pack(">2I5B", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", stream) + chunk(b"IEND", b""))
    return path


def refusal(src, *words: str, **kwargs) -> str:
    """load_images(src) must raise a one-line UserError naming src and holding words; returns its message."""
    import pytest

    from gpuvision.data import load_images
    from gpuvision.errors import UserError

    with pytest.raises(UserError) as caught:
        load_images(str(src), **kwargs)
    message = str(caught.value)
    assert "\n" not in message and str(src) in message, message
    assert all(w in message for w in words), message
    return message


@contextmanager
def serving(config, api_key: str | None = None, models=None):
    """A real uvicorn on 127.0.0.1 (a free port) in a thread, serving config's models (or `models`, already
    loaded); yields (url, models) and stops it gracefully (the app's shutdown runs) on leaving."""
    import threading
    import time

    from gpuvision.serve.app import build_app
    from gpuvision.serve.repository import open_models
    from gpuvision.serve.transport import listen, make_server

    models = models or open_models(config)
    sock = listen("127.0.0.1", 0)
    server = make_server(build_app(models, config, api_key))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.05)
    try:
        assert server.started, "the server did not start within 30 s"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", models
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def read_line(stream, seconds: float) -> str:
    """The next line of a pipe, waiting at most `seconds`."""
    import threading

    line = []
    reader = threading.Thread(target=lambda: line.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(seconds)
    return line[0] if line else ""


@contextmanager
def serve_process(args: list[str], log: Path):
    """`gpuvision serve ARGS --port 0 --json` as a user runs it, in its own process (stderr to `log`, not an
    unread pipe that could fill and stall it); yields (process, its ready line) and kills it if still running."""
    import json
    import os
    import subprocess
    import sys

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    with open(log, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "gpuvision", "serve", *args, "--port", "0", "--json"],
                                   stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    try:
        line = read_line(process.stdout, 180)
        assert line, f"gpuvision serve printed no ready line (exit code {process.poll()}): {log.read_text()[-2000:]}"
        yield process, json.loads(line)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)
