"""Running a model directory: one `Runtime` interface over the eager, inductor and onnxruntime backends.

    model = gpuvision.load("runs/cifar")               # verified files, the manifest's backend and precision
    model.predict(["cat.png"], top_k=3)
    runtime = open_runtime(ModelDir.open("runs/cifar"), device="cuda", backend="inductor")
    runtime.logits(uint8_batch, tta=True)              # N x C x H x W uint8 -> fp32 logits

The precision is the recorded one, never lower; where it is slow on this device (bf16 on a CPU without AMX or
AVX-512-BF16) it runs in fp32, logged once. Compiled backends pad batches to power-of-two buckets. An encrypted
model runs eager instead of inductor: inductor writes the code it generates, with the frozen weights as constants,
into its cache on disk.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..artifact import BACKENDS, ModelDir
from ..config import Access
from ..device import inference_precision, pick_device, pick_precision
from ..errors import BadInput, NotFound, Unsupported, require
from .base import Runtime, bucket, tta_logits
from .calibration import probabilities
from .onnx import OnnxRuntime, export_metadata, onnx_model, serialize
from .torch_backends import EagerRuntime, InductorRuntime, build_network

log = logging.getLogger(__name__)


def open_runtime(model_dir: ModelDir, device: str | torch.device = "auto", backend: str | None = None,
                 precision: str | None = None) -> Runtime:
    """A Runtime for a model directory: the manifest's backend and precision unless others are asked for."""
    m = model_dir.manifest
    dev = pick_device(device) if isinstance(device, str) else device
    backend = backend or m.inference.backend
    require(backend in BACKENDS, f"unknown runtime {backend!r}; use {', '.join(BACKENDS)}", BadInput)
    runtime = _runtime(model_dir, dev, backend, precision)
    runtime.calibration = m.calibration
    return runtime


def _runtime(model_dir: ModelDir, dev: torch.device, backend: str, precision: str | None) -> Runtime:
    m = model_dir.manifest
    args = (m.input, m.classes, m.tta_level, dev)
    if m.format == "onnx":
        require(backend == "onnxruntime", f"{model_dir.path} is an ONNX model ({m.inference.name}); it runs only "
                "in onnxruntime", Unsupported)
        return OnnxRuntime(model_dir.read(m.weights), *args, m.inference.precision)
    if precision in (None, "auto"):
        precision = inference_precision(m.inference.precision, dev)
    else:
        precision = pick_precision(precision, dev)
    net = build_network(model_dir)
    if backend == "inductor" and model_dir.encrypted:
        log.info("%s is encrypted: running it eager, since inductor would cache its decrypted weights on disk",
                 model_dir.path)
        backend = "eager"
    if backend == "onnxruntime":
        require(precision == "fp32", "the onnxruntime backend runs a PyTorch model in fp32 only", Unsupported)
        meta = export_metadata(m.input, m.classes, m.tta_level, m.architecture["name"])
        proto = onnx_model(net, torch.zeros(2, *m.input.shape), meta)
        return OnnxRuntime(serialize(proto), *args, precision)
    return (InductorRuntime if backend == "inductor" else EagerRuntime)(net, *args, precision)


class Model:
    """A loaded model directory: `predict` on image files or arrays, `logits` on uint8 batches, `pixel_model` for
    attacks."""

    def __init__(self, model_dir: ModelDir, runtime: Runtime):
        self.model_dir, self.runtime = model_dir, runtime
        self.manifest = model_dir.manifest
        self.directory: Path = model_dir.path
        self.classes: list[str] = list(self.manifest.classes)
        self.spec = self.manifest.input

    def logits(self, images: torch.Tensor | np.ndarray, tta: bool | None = None, batch_size: int = 256
               ) -> torch.Tensor:
        """fp32 logits on the CPU for N x C x H x W uint8 images in the model's input size (tta None: the recipe's
        choice)."""
        return self.runtime.logits(images, self.manifest.tta_level > 0 if tta is None else tta, batch_size)

    def pixel_model(self) -> torch.nn.Module:
        """The differentiable pixels -> logits path (see `Runtime.pixel_model`): 0..255 float N x C x H x W on
        `runtime.device` to fp32 logits, for attacks. An ONNX model (an export, an int8 variant) has none."""
        m = self.manifest
        require(m.format == "safetensors", f"{self.directory} is an {m.format} model ({m.inference.name}), which "
                "computes no gradients: attacks need a PyTorch (safetensors) model directory, e.g. the one it was "
                "made from", Unsupported)
        return self.runtime.pixel_model()

    def predict(self, images: list, top_k: int = 1, tta: bool | None = None) -> list[list[dict]]:
        """Top-k classes for each image (a path, PIL image, H x W (x C) uint8 array); each {class, probability},
        the probabilities calibrated by the manifest's temperature (runtime/calibration.py)."""
        require(top_k >= 1, f"--top-k must be at least 1, got {top_k}", BadInput)
        tta = self.manifest.tta_level > 0 if tta is None else tta
        probs = probabilities(self.logits(self.prepare(images), tta), self.runtime.temperature(tta))
        values, indices = probs.topk(min(top_k, len(self.classes)), dim=1)
        return [[{"class": self.classes[i], "probability": float(v)} for v, i in zip(vs, ix)]
                for vs, ix in zip(values.tolist(), indices.tolist())]

    def prepare(self, images: list) -> np.ndarray:
        """Decode and conform images to the model's input: N x C x H x W uint8."""
        from PIL import Image

        from ..data.sources import conform, decode_image

        arrays = []
        for item in images:
            if isinstance(item, str | Path):
                require(Path(item).is_file(), f"{item}: no such image file", NotFound)
                arr = decode_image(Path(item).read_bytes())
                require(arr is not None, f"{item}: not an image (or an unreadable one); give a PNG or JPEG file",
                        BadInput)
            elif isinstance(item, Image.Image):
                arr = np.asarray(item.convert("L" if item.mode in ("1", "L", "LA") else "RGB"))
            else:
                arr = np.asarray(item, dtype=np.uint8)
            arrays.append(arr[:, :, None] if arr.ndim == 2 else arr)
        return conform(arrays, self.spec.size, self.spec.channels)


def load(directory: str | Path, device: str = "auto", backend: str | None = None, precision: str | None = None,
         access: Access | None = None) -> Model:
    """Load a model directory after verifying it: `gpuvision.load("runs/x").predict(["cat.png"])`; `access` says
    which key it must be signed with and which data key decrypts it (see `ModelDir.open`)."""
    model_dir = ModelDir.open(directory, access)
    return Model(model_dir, open_runtime(model_dir, device, backend, precision))


__all__ = ["EagerRuntime", "InductorRuntime", "Model", "OnnxRuntime", "Runtime", "bucket", "build_network", "load",
           "open_runtime", "tta_logits"]
