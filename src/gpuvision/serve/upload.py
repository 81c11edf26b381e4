"""The upload API, `POST /models/{name}/predict`: image files in, the CLI `predict` JSON out (plus an id per
prediction). Decoding is `Model.prepare`'s, so a served prediction is exactly `gpuvision predict`'s."""

from __future__ import annotations

import uuid

import torch

from ..data.images import MAX_IMAGE_PIXELS, decode_image
from ..data.input_spec import normalise
from ..errors import BadInput, require
from ..runtime import Model
from ..runtime.calibration import probabilities

FIELD = "file"  # the multipart field, repeatable
MAX_TOP_K = 100_000


def decode_request(files: list[tuple[str, bytes]], model: Model, max_batch: int) -> torch.Tensor:
    """Image files (name, bytes) as the model's normalised fp32 N x C x H x W batch."""
    return decode_images(files, model, max_batch)[1]


def decode_images(files: list[tuple[str, bytes]], model: Model, max_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image files (name, bytes) as uint8 N x C x H x W pixels and as the model's normalised fp32 batch."""
    require(bool(files), f"no image: send multipart field {FIELD!r} (repeatable) or one image as the body",
            BadInput)
    require(len(files) <= max_batch, f"{len(files)} images in one request; at most {max_batch} (--max-batch-size)",
            BadInput)
    arrays = []
    for name, data in files:
        array = decode_image(data)  # the pixel bound is checked from the header, before decoding
        require(array is not None, f"{name}: not a readable image (not an image, truncated, or over "
                f"{MAX_IMAGE_PIXELS:,} pixels); send a PNG or JPEG", BadInput)
        arrays.append(array)
    pixels = torch.from_numpy(model.prepare(arrays))
    return pixels, normalise(pixels, model.spec)


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
