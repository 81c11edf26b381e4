"""The upload API, `POST /models/{name}/predict`: image files in, the CLI `predict` JSON out (plus an id per
prediction). Images are decoded and fitted to the model's input as `Model.prepare` does, so a served prediction
is exactly `gpuvision predict`'s.

Pixels are bounded from the image headers before anything is decoded (`check_pixels`): an image may hold far more
pixels than the model needs, but not without bound, nor may a request; images are then decoded one at a time and
resized at once, so at most one full-size image per decoding thread is ever in memory.
"""

from __future__ import annotations

import uuid

import numpy as np
import torch

from ..data.images import MAX_IMAGE_PIXELS, decode_image, probe_image
from ..data.input_spec import InputSpec, normalise
from ..errors import BadInput, require
from ..runtime.calibration import probabilities
from .transport import TooLarge

FIELD = "file"  # the multipart field, repeatable
MAX_TOP_K = 100_000
REQUEST_PIXELS = 64 << 20  # decoded pixels one request may carry, all its images together
ANY_PHOTO = 16 << 20  # an image up to this many pixels is taken for any model (a phone photo)
PLENTY = 256  # above ANY_PHOTO, an image may have this many times the model's input pixels


def pixel_limit(spec: InputSpec) -> int:
    """The most pixels one uploaded image may have: far more than the model uses (it is resized to the model's
    input), at least a phone photo's, never over MAX_IMAGE_PIXELS."""
    return min(MAX_IMAGE_PIXELS, max(ANY_PHOTO, PLENTY * spec.size[0] * spec.size[1]))


def check_pixels(files: list[tuple[str, bytes]], spec: InputSpec, max_batch: int) -> None:
    """Refuse, from the image headers alone (microseconds each, nothing decoded), a request that is empty, holds
    more than max_batch images, an unreadable one, one far larger than the model needs, or too many pixels."""
    require(bool(files), f"no image: send multipart field {FIELD!r} (repeatable) or one image as the body",
            BadInput)
    require(len(files) <= max_batch, f"{len(files)} images in one request; at most {max_batch} (--max-batch-size)",
            BadInput)
    limit, total = pixel_limit(spec), 0
    for name, data in files:
        header = probe_image(data)
        require(header is not None, f"{name}: not a readable image (not an image, truncated, or over "
                f"{MAX_IMAGE_PIXELS:,} pixels); send a PNG or JPEG", BadInput)
        height, width, _ = header
        if height * width > limit:
            raise TooLarge(f"{name}: {width} x {height} pixels, far more than this model's {spec.size[1]} x "
                           f"{spec.size[0]} input needs; at most {limit:,} pixels an image: resize it first")
        total += height * width
    if total > REQUEST_PIXELS:
        raise TooLarge(f"the request's images hold {total:,} pixels; at most {REQUEST_PIXELS:,} a request: send "
                       "fewer or smaller images")


def decode_images(files: list[tuple[str, bytes]], spec: InputSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Image files (name, bytes), checked by `check_pixels`, as uint8 N x C x H x W pixels (what the monitor sees)
    and as the model's normalised fp32 batch."""
    pixels = np.empty((len(files), spec.channels, *spec.size), np.uint8)
    for i, (name, data) in enumerate(files):
        array = decode_image(data, spec.size, spec.channels)  # decoded, then resized: one full-size image at a time
        require(array is not None, f"{name}: not a readable image (truncated or damaged); send a PNG or JPEG",
                BadInput)
        pixels[i] = array.transpose(2, 0, 1)
    pixels = torch.from_numpy(pixels)
    return pixels, normalise(pixels, spec)


def encode_response(names: list[str], logits: torch.Tensor, classes: list[str], top_k: int, model: str,
                    version: str, ids: list[str] | None = None, temperature: float = 1.0) -> dict:
    """The CLI `predict` JSON for these images, each prediction with an id (new ones unless given: feedback names
    a prediction by it); the model by name and version; probabilities calibrated by `temperature` (the manifest's,
    as predict uses)."""
    values, indices = probabilities(logits, temperature).topk(min(top_k, len(classes)), dim=1)
    ids = ids or [uuid.uuid4().hex for _ in names]
    predictions = [{"id": i, "image": name,
                    "top": [{"class": classes[c], "probability": float(v)} for v, c in zip(vs, ix)]}
                   for i, name, vs, ix in zip(ids, names, values.tolist(), indices.tolist())]
    return {"schema_version": 1, "model": model, "model_version": version, "predictions": predictions}
