"""Every kind of image file decodes to the pixels a user expects, or is skipped and named; sets stay bounded."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from helpers import (
    animated_bytes,
    cmyk_jpeg_bytes,
    encoded,
    image_bytes,
    make_tree,
    palette_png_bytes,
    png16_bytes,
    png_of_zeros,
    refusal,
)
from PIL import Image

from gpuvision.data import images as decoding
from gpuvision.data import limits, load_images
from gpuvision.errors import UserError


def pixels(images, key: str) -> np.ndarray:
    return images.images[images.keys.index(key)].transpose(1, 2, 0)


def test_16_bit_png_keeps_its_high_byte(tmp_path):
    make_tree(tmp_path, per_class=2, size=(4, 4))
    values = np.arange(16, dtype=np.uint16).reshape(4, 4) * 4096 + 255  # 255 .. 61695: all over 255
    (tmp_path / "cat" / "deep.png").write_bytes(png16_bytes(values))
    (tmp_path / "cat" / "grey.png").write_bytes(image_bytes(3, (4, 4), mode="L"))
    images = load_images(str(tmp_path), channels=1)
    assert np.array_equal(pixels(images, "cat/deep.png")[:, :, 0], (values >> 8).astype(np.uint8))


def test_cmyk_palette_and_animated_images_become_rgb(tmp_path):
    make_tree(tmp_path, per_class=2, size=(8, 8))
    files = {"cmyk.jpg": cmyk_jpeg_bytes(), "palette.png": palette_png_bytes(),
             "anim.gif": animated_bytes("GIF"), "anim.png": animated_bytes("PNG")}
    for name, blob in files.items():
        (tmp_path / "cat" / name).write_bytes(blob)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # library code never prints, Pillow's palette warning included
        images = load_images(str(tmp_path))
    assert not images.skipped
    assert np.abs(pixels(images, "cat/cmyk.jpg")[4, 4].astype(int) - [255, 0, 0]).max() < 8
    palette = pixels(images, "cat/palette.png")  # alpha dropped: each pixel keeps its palette colour
    assert palette[0, 0].tolist() == [0, 255, 0] and palette[0, 1].tolist() == [0, 0, 255]
    assert palette[5, 5].tolist() == [255, 0, 0]
    for name in ("cat/anim.gif", "cat/anim.png"):  # the first frame
        assert pixels(images, name)[4, 4].tolist() == [255, 0, 0]


def test_content_decides_the_format_and_bad_files_are_named(tmp_path):
    make_tree(tmp_path, per_class=3, size=(16, 16))
    jpeg = image_bytes(5, (16, 16), fmt="JPEG")
    (tmp_path / "cat" / "really-a-jpeg.png").write_bytes(jpeg)
    (tmp_path / "cat" / "garbage.png").write_bytes(b"not an image at all")
    png = image_bytes(6, (64, 64))
    (tmp_path / "dog" / "cut.png").write_bytes(png[: len(png) // 2])
    big_jpeg = image_bytes(7, (64, 64), fmt="JPEG")
    (tmp_path / "dog" / "cut.jpg").write_bytes(big_jpeg[: len(big_jpeg) // 2])
    png_of_zeros(tmp_path / "dog" / "bomb.png", 8200, 8192)  # over MAX_IMAGE_PIXELS: never decoded
    images = load_images(str(tmp_path))
    assert "cat/really-a-jpeg.png" in images.keys
    assert sorted(images.skipped) == ["cat/garbage.png", "dog/bomb.png", "dog/cut.jpg", "dog/cut.png"]
    message = refusal(tmp_path, "4 unreadable image(s)", "'dog/cut.png'", strict=True)
    assert "--strict" in message


def test_worker_processes_decode_what_one_process_does(tmp_path, monkeypatch):
    make_tree(tmp_path, per_class=6, size=(12, 12))
    (tmp_path / "dog" / "big.jpg").write_bytes(image_bytes(1, (20, 16), fmt="JPEG"))
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    inline = load_images(str(tmp_path), image_size=10)
    monkeypatch.setattr(decoding, "PARALLEL_MIN", 2)
    monkeypatch.setenv("GPUVISION_CACHE", str(tmp_path.parent / "cache-parallel"))
    parallel = load_images(str(tmp_path), image_size=10)
    assert np.array_equal(parallel.images, inline.images) and parallel.keys == inline.keys
    assert parallel.skipped == inline.skipped == ["dog/broken.png"]


@pytest.mark.parametrize("mode,fmt,options", [
    ("RGB", "PNG", {}), ("L", "PNG", {}), ("LA", "PNG", {}), ("RGBA", "PNG", {}), ("P", "PNG", {}), ("1", "PNG", {}),
    ("I;16", "PNG", {}), ("RGB", "JPEG", {}), ("L", "JPEG", {}), ("CMYK", "JPEG", {}),
    ("RGB", "JPEG", {"progressive": True}), ("RGB", "JPEG", {"exif": b"Exif\0\0" + bytes(3000)}),
    ("RGB", "JPEG", {"icc_profile": bytes(70_000)}), ("RGB", "GIF", {}), ("RGB", "BMP", {}), ("L", "TIFF", {}),
])
def test_header_probe_agrees_with_pillow(mode, fmt, options):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)).convert(mode)
    blob = encoded(img, fmt, **options)
    with Image.open(io.BytesIO(blob)) as opened:
        assert decoding.probe_image(blob) == (30, 40, 1 if decoding._is_grey(opened.mode) else 3)


def test_decoded_set_is_bounded_before_it_is_allocated(tmp_path, monkeypatch):
    make_tree(tmp_path, per_class=3, size=(16, 16))
    assert len(load_images(str(tmp_path), image_size=20)) == 6
    message = refusal(tmp_path, "the decoded images (6 x 3 x 32 x 32) need", "GPUVISION_MAX_DECODED_BYTES",
                      image_size=32, max_decoded_bytes=1000)
    assert "smaller --image-size" in message
    monkeypatch.setenv("GPUVISION_MAX_DECODED_BYTES", "1K")
    refusal(tmp_path, "more than the bound of 0.00 GiB", image_size=24)
    monkeypatch.setenv("GPUVISION_MAX_DECODED_BYTES", "a lot")
    with pytest.raises(UserError, match="GPUVISION_MAX_DECODED_BYTES='a lot' is not a size"):
        load_images(str(tmp_path), image_size=24)
    monkeypatch.delenv("GPUVISION_MAX_DECODED_BYTES")
    monkeypatch.setattr(limits, "available_memory", lambda: 1000)
    refusal(tmp_path, "more than half of the 0.00 GiB of memory available", image_size=28)
    # --image-size 2048 on digits: 7.02 GiB, under the default 8G bound, but training keeps a second copy (issue 22)
    monkeypatch.setattr(limits, "available_memory", lambda: 10 << 30)
    refusal("digits", "(1797 x 1 x 2048 x 2048) need 7.02 GiB, more than half of the 10.00 GiB", image_size=2048)
    refusal("digits", "1797 x 1 x 2048 x 2048", image_size=2048, max_decoded_bytes=1 << 30)


@pytest.mark.parametrize("text,expected", [("123", 123), ("8G", 8 << 30), ("512m", 512 << 20), (" 2 T ", 2 << 40),
                                           ("", limits.DEFAULT_MAX_BYTES)])
def test_sizes_from_the_environment(monkeypatch, text, expected):
    monkeypatch.setenv("GPUVISION_MAX_DECODED_BYTES", text)
    assert limits.env_bytes("GPUVISION_MAX_DECODED_BYTES") == expected
