"""The hostile corpus: real crafted files for every reader of untrusted input, each with the words its refusal says.

    image_cases()                      -> [(name, bytes, words)]   uploads / `predict` images
    data_source_cases(root)            -> [(name, path, words)]    `train --data`, `data inspect`
    model_dir_cases(model, root)       -> [(name, path, words)]    a damaged copy of a model directory each
    signature_cases(model, keys, root) -> [(name, path, words)]    read with --pubkey keys/signing.pub
    encryption_cases(encrypted, root)  -> [(name, path, words)]    an encrypted model's copies, read with its key

Every case must be refused in one line (exit 2 on the command line; a 4xx status when served) with nothing written.
A pickled payload, if it were ever unpickled, would create the file `evil_marker(root)`: tests check it never does.
The server's tests reuse `image_cases()` (its words are what `predict` says; a server may say its own).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

from helpers import (
    ZipEntry,
    cifar_python_archive,
    gzip_with_bad_crc,
    image_bytes,
    raw_zip,
    tar_bytes,
    tar_cut_at_member,
    tar_gz_of_zeros,
    write_tar,
)

NOT_AN_IMAGE = ("not an image",)
IMAGES = [(f"{c}/{i}.png", image_bytes(10 * k + i)) for k, c in enumerate(("cat", "dog")) for i in range(3)]


def evil_marker(root: Path) -> Path:
    return Path(root) / "PWNED"


def evil_pickle(root: Path, wrapped_in: str | None = None) -> bytes:
    """A pickle that, if unpickled, runs `touch root/PWNED` (under `wrapped_in`, a key a reader looks for)."""
    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {evil_marker(root)}",)

    return pickle.dumps({wrapped_in.encode(): Payload()} if wrapped_in else Payload(), protocol=2)


# ---------------------------------------------------------------- images


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def image_cases() -> list[tuple[str, bytes, tuple[str, ...]]]:
    """Image uploads that must be refused: not images, cut short, damaged, or pixel bombs."""
    from helpers import png_of_zeros

    png, jpeg = image_bytes(1, (32, 32)), image_bytes(2, (32, 32), fmt="JPEG")
    bad_crc = bytearray(png)
    bad_crc[30] ^= 0xFF  # inside IHDR: its CRC no longer matches
    with tempfile.TemporaryDirectory() as tmp:
        bomb = png_of_zeros(Path(tmp) / "bomb.png", 8448, 8192).read_bytes()  # 69 Mpx from ~70 kB: over the bound
    huge_header = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">2I5B", 1 << 30, 1 << 30, 8, 2, 0, 0, 0))
    return [
        ("empty.png", b"", NOT_AN_IMAGE),
        ("text.png", b"hello, I am not a picture\n", NOT_AN_IMAGE),
        ("truncated.png", png[: len(png) // 2], NOT_AN_IMAGE),
        ("truncated.jpg", jpeg[: len(jpeg) // 2], NOT_AN_IMAGE),
        ("bad-crc.png", bytes(bad_crc), NOT_AN_IMAGE),
        ("pixel-bomb.png", bomb, NOT_AN_IMAGE),
        ("header-claims-2^60-pixels.png", huge_header + _png_chunk(b"IEND", b""), NOT_AN_IMAGE),
        ("zip-named.png", tar_bytes(IMAGES[:1]), NOT_AN_IMAGE),
        ("svg-script.png", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', NOT_AN_IMAGE),
    ]


# ---------------------------------------------------------------- data sources


def data_source_cases(root: Path) -> list[tuple[str, Path, tuple[str, ...]]]:
    """Archives and folders `train --data` and `data inspect` must refuse (built in `root`)."""
    root.mkdir(parents=True, exist_ok=True)
    zipped = [ZipEntry(n, d) for n, d in IMAGES]
    cifar = root / "cifar-evil" / "cifar-10-python.tar.gz"
    cifar.parent.mkdir()
    cifar_python_archive(cifar, n_per_batch=4)
    import tarfile

    with tarfile.open(cifar) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
    evil = evil_pickle(root, "data")
    write_tar(cifar, [(n, evil if n.endswith("data_batch_1") else d) for n, d in members])
    (root / "empty").mkdir()
    crc = root / "crc.tar.gz"
    crc.write_bytes(gzip_with_bad_crc(tar_bytes(IMAGES)))
    cut = root / "cut.tar"
    cut.write_bytes(tar_cut_at_member(IMAGES, 4))
    return [
        ("climbs-out.tar", write_tar(root / "climbs-out.tar", IMAGES + [("../evil.png", image_bytes(7))]),
         ("unsafe member",)),
        ("absolute.zip", raw_zip(root / "absolute.zip", zipped + [ZipEntry("/abs/x.png", image_bytes(5))]),
         ("unsafe member",)),
        ("link.zip", raw_zip(root / "link.zip", zipped + [ZipEntry("cat/l.png", b"/etc/passwd", mode=0o120777)]),
         ("a link",)),
        ("device.zip", raw_zip(root / "device.zip", zipped + [ZipEntry("cat/d.png", mode=0o020644)]),
         ("a device, fifo or socket",)),
        ("encrypted.zip", raw_zip(root / "encrypted.zip", zipped + [ZipEntry("cat/s.png", image_bytes(5), flags=1)]),
         ("encrypted",)),
        ("bad-crc.tar.gz", crc, ("CRC check failed",)),
        ("cut-short.tar", cut, ("end-of-archive",)),
        ("bomb.tar.gz", tar_gz_of_zeros(root / "bomb.tar.gz", "cat/big.png", 16, before=IMAGES),
         ("decompression bomb",)),
        ("bomb.zip", raw_zip(root / "bomb.zip", zipped + [ZipEntry("cat/z.png", bytes(8 << 20))]),
         ("decompression bomb",)),
        ("duplicate.tar", write_tar(root / "duplicate.tar", IMAGES + [("cat/./0.png", image_bytes(9))]),
         ("appears more than once",)),
        ("latin-1.tar", write_tar(root / "latin-1.tar", IMAGES + [("cat/caf\udce9.png", image_bytes(5))]),
         ("not UTF-8",)),
        ("cifar-pickle-payload", cifar, ("no image data",)),
        ("empty-folder", root / "empty", ("empty",)),
        ("missing", root / "no-such-source", ("no such file",)),
    ]


# ---------------------------------------------------------------- model directories


def _copy(model: Path, root: Path, name: str) -> Path:
    target = root / name
    shutil.copytree(model, target)
    return target


def _rewrite_manifest(directory: Path, change) -> None:
    path = directory / "manifest.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _replace_file(directory: Path, name: str, blob: bytes) -> None:
    """Replace a listed file and its sha256 in the manifest, as a careful attacker without any key would."""
    (directory / name).write_bytes(blob)
    digest = hashlib.sha256(blob).hexdigest()
    _rewrite_manifest(directory, lambda m: {**m, "files": {**m["files"], name: digest}})


def _safetensors(header: dict, data: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + data


def model_dir_cases(model: Path, root: Path) -> list[tuple[str, Path, tuple[str, ...]]]:
    """Damaged copies of a safetensors model directory (built in `root`); read without access options."""
    root.mkdir(parents=True, exist_ok=True)
    cases = []

    def case(name, words, damage):
        directory = _copy(model, root, name)
        damage(directory)
        cases.append((name, directory, words))

    def altered(d):
        blob = bytearray((d / "model.safetensors").read_bytes())
        blob[len(blob) // 2] ^= 1
        (d / "model.safetensors").write_bytes(bytes(blob))

    def outside(d):
        (root / "outside.bin").write_bytes(b"secret")
        digest = hashlib.sha256(b"secret").hexdigest()
        _rewrite_manifest(d, lambda m: {**m, "files": {**m["files"], "../outside.bin": digest}})

    def linked(d):
        shutil.move(d / "metrics.jsonl", root / f"{d.name}-metrics.jsonl")
        os.symlink(root / f"{d.name}-metrics.jsonl", d / "metrics.jsonl")

    case("missing-file", ("missing",), lambda d: (d / "split.json").unlink())
    case("extra-file", ("not listed",), lambda d: (d / "notes.txt").write_text("hello"))
    case("altered-file", ("altered",), altered)
    case("manifest-points-outside", ("malformed manifest",), outside)
    case("weights-outside", ("malformed manifest",), lambda d: _rewrite_manifest(
        d, lambda m: {**m, "weights": "../model.safetensors"}))
    case("symlinked-file", ("link",), linked)
    case("manifest-not-json", ("not valid JSON",), lambda d: (d / "manifest.json").write_text("{\"files\": "))
    case("header-claims-2^62-bytes", ("safetensors",), lambda d: _replace_file(
        d, "model.safetensors", struct.pack("<Q", 1 << 62) + b"{}"))
    case("tensor-claims-4-TiB", ("safetensors",), lambda d: _replace_file(d, "model.safetensors", _safetensors(
        {"w": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 4 << 40]}}, bytes(16))))
    case("pickle-in-place-of-safetensors", ("safetensors",), lambda d: _replace_file(
        d, "model.safetensors", evil_pickle(root)))
    # issue 22: Python's JSON parser recurses (a RecursionError, even with --pubkey); json keeps a repeated key's
    # last value, so two readers could disagree about what a manifest says
    case("manifest-nested-100000-deep", ("nested more than",), lambda d: (d / "manifest.json").write_text(
        "[" * 100_000 + "]" * 100_000))
    case("manifest-repeats-a-key", ("appears twice",), lambda d: (d / "manifest.json").write_text(
        (d / "manifest.json").read_text().rstrip()[:-1] + ', "classes": ["a", "b"]}'))
    return cases


def signature_cases(model: Path, keys: dict[str, Path], other_key: Path, root: Path
                    ) -> list[tuple[str, Path, tuple[str, ...]]]:
    """Copies of a model signed with keys["signing.key"] that `--pubkey keys["signing.pub"]` must refuse."""
    root.mkdir(parents=True, exist_ok=True)
    cases = []

    def case(name, words, damage):
        directory = _copy(model, root, name)
        damage(directory)
        cases.append((name, directory, words))

    def resigned(d):
        from gpuvision.protect import sign_model

        sign_model(str(d), str(other_key), overwrite=True)

    case("unsigned", ("not signed",), lambda d: (d / "model.sig").unlink())
    case("signature-garbage", ("does not verify",), lambda d: (d / "model.sig").write_text("{\"not\": \"a bundle\"}"))
    case("signed-by-another-key", ("does not verify",), resigned)
    case("changed-after-signing", ("signs other contents",), lambda d: _rewrite_manifest(
        d, lambda m: {**m, "classes": list(reversed(m["classes"]))}))
    case("weights-swapped-after-signing", ("signs other contents",), lambda d: _replace_file(
        d, "model.safetensors", (d / "model.safetensors").read_bytes()[:-4] + bytes(4)))
    case("signature-nested-100000-deep", ("nested more than",), lambda d: (d / "model.sig").write_text(
        "[" * 100_000 + "]" * 100_000))
    return cases


def encryption_cases(encrypted: Path, root: Path) -> list[tuple[str, Path, tuple[str, ...]]]:
    """Copies of an encrypted model that its own data key must refuse to decrypt (no garbage weights, ever)."""
    root.mkdir(parents=True, exist_ok=True)
    cases = []

    def case(name, words, damage):
        directory = _copy(encrypted, root, name)
        damage(directory)
        cases.append((name, directory, words))

    def flipped(d):
        blob = bytearray((d / "model.safetensors").read_bytes())
        blob[len(blob) // 2] ^= 1
        _replace_file(d, "model.safetensors", bytes(blob))

    def swapped(d):  # two files' ciphertexts exchanged, hashes made to match: each is bound to its own name
        a, b = (d / "model.safetensors").read_bytes(), (d / "split.json").read_bytes()
        _replace_file(d, "model.safetensors", b)
        _replace_file(d, "split.json", a)

    case("bit-flipped-ciphertext", ("does not decrypt",), flipped)
    case("files-swapped", ("does not decrypt",), swapped)
    case("manifest-classes-changed", ("does not decrypt",), lambda d: _rewrite_manifest(
        d, lambda m: {**m, "classes": list(reversed(m["classes"]))}))
    case("plaintext-in-place", ("not encrypted by gpuvision",), lambda d: _replace_file(
        d, "model.safetensors", _safetensors({})))
    return cases


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under root (files with size and modification time): two equal snapshots mean nothing
    was left there."""
    return {p.relative_to(root).as_posix(): (0, 0) if p.is_dir() and not p.is_symlink()
            else (p.lstat().st_size, p.lstat().st_mtime_ns) for p in Path(root).rglob("*")}


__all__ = ["data_source_cases", "encryption_cases", "evil_marker", "image_cases", "model_dir_cases",
           "signature_cases", "snapshot"]
