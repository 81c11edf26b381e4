"""The model directory: the one contract between training and everything downstream.

    manifest.json       what the directory holds (below); written last, so its presence marks a complete model
    model.safetensors   the weights (first file the manifest vouches for)
    split.json          the sample keys of the train/val/test split, with the source fingerprint
    metrics.jsonl, checkpoints/, eval/   beside them, not covered by the manifest

Loading verifies the sha256 of every file the manifest lists and never unpickles anything.
"""

from __future__ import annotations

import importlib
import json
import platform
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .errors import UserError, require
from .files import atomic_write, sha256_file, write_json
from .registry import Registry

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"

# format -> function(model_dir, manifest, device) returning a callable nn.Module-like network
RUNTIMES: Registry[Callable] = Registry("model format")
# Formats whose loader lives in a module with heavy imports (onnxruntime): imported on first use.
LAZY_RUNTIMES = {"onnx": ".export"}


def runtime_loader(fmt: str) -> Callable:
    """The loader registered for a manifest's format, importing the module that registers it if need be."""
    if fmt not in RUNTIMES and fmt in LAZY_RUNTIMES:
        importlib.import_module(LAZY_RUNTIMES[fmt], __package__)
    return RUNTIMES.get(fmt)


def compile_for_inference(net: torch.nn.Module) -> Callable:
    """torch.compile for inference with inductor's freezing, which folds the weights in as constants: without it
    compiled bf16 and int8 are no faster than eager fp32. The first call of each input shape compiles (seconds)."""
    import torch._inductor.config as inductor_config

    # Set globally, not through torch.compile(options=...): the quantised graphs' weight pre-packing needs the
    # freezing passes, which the per-call options did not switch on (measured: onednn.qconv_prepack unsupported).
    # Freezing only touches graphs compiled without autograd, so compiled training is unaffected.
    inductor_config.freezing = True
    return torch.compile(net)


def library_versions() -> dict[str, str]:
    import numpy
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": numpy.__version__, "gpuvision": _own_version()}


def _own_version() -> str:
    from . import __version__

    return __version__


def save_weights(path: Path, model: torch.nn.Module) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda p: save_file(state, p))


def write_manifest(directory: Path, manifest: dict, files: list[str]) -> dict:
    """Record the sha256 of `files` (in order) and write manifest.json atomically, last."""
    manifest = {"schema_version": SCHEMA_VERSION, **manifest,
                "files": {name: sha256_file(directory / name) for name in files}}
    write_json(directory / MANIFEST, manifest)
    return manifest


def read_manifest(directory: str | Path) -> dict:
    """The verified manifest: every file it lists is present and unchanged, or a UserError says which is not."""
    directory = Path(directory)
    require(directory.is_dir(), f"{directory}: no such model directory")
    path = directory / MANIFEST
    require(path.is_file(), f"{directory}: not a model directory (no {MANIFEST}); give a directory `train` wrote")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e}); the model directory is damaged") from e
    require(manifest.get("schema_version") == SCHEMA_VERSION,
            f"{path}: schema_version {manifest.get('schema_version')} is not {SCHEMA_VERSION}; upgrade gpuvision")
    for name, digest in manifest.get("files", {}).items():
        file = directory / name
        require(file.is_file(), f"{directory}: file {name} is missing; the model directory is incomplete")
        require(sha256_file(file) == digest, f"{directory}: file {name} was altered (sha256 mismatch); refusing it")
    return manifest


@RUNTIMES.register("safetensors")
def _load_eager(directory: Path, manifest: dict, device: torch.device) -> torch.nn.Module:
    from .models import create_model

    arch = manifest["architecture"]
    net = create_model(arch["name"], **arch["args"])
    net.load_state_dict(load_file(str(directory / WEIGHTS)))
    memory_format = torch.channels_last if device.type != "mps" else torch.preserve_format
    net = net.to(device=device, memory_format=memory_format).eval()
    # `compress` records an inductor runtime where it measured it fastest; predict and serve then run it too.
    return compile_for_inference(net) if manifest.get("runtime", "eager").startswith("inductor") else net


class Model:
    """A loaded model directory: `predict` on images, `logits` on uint8 batches."""

    def __init__(self, directory: Path, manifest: dict, device: torch.device, precision: str):
        self.directory, self.manifest, self.device, self.precision = directory, manifest, device, precision
        self.net = runtime_loader(manifest.get("format", "safetensors"))(directory, manifest, device)
        inp = manifest["input"]
        self.classes: list[str] = manifest["classes"]
        self.image_size: tuple[int, int] = tuple(inp["size"])
        self.channels: int = inp["channels"]
        self.mean = torch.tensor(inp["mean"], device=device).view(1, -1, 1, 1)
        self.inv_std = 1.0 / torch.tensor(inp["std"], device=device).view(1, -1, 1, 1)
        self.tta_level: int = manifest.get("tta_level", 0)

    def logits(self, images: torch.Tensor, tta: bool | None = None, batch_size: int = 500) -> torch.Tensor:
        """Logits (float32, on the CPU) for N x C x H x W uint8 images in the model's input size."""
        from .evaluate import tta_logits

        level = self.tta_level if tta is None or tta else 0
        out = []
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(self.device, non_blocking=True).float()
            x = ((x - self.mean) * self.inv_std).contiguous(memory_format=torch.channels_last)
            out.append(tta_logits(self.net, x, level, self.device, self.precision).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))

    def predict(self, images: list, top_k: int = 1, tta: bool | None = None) -> list[list[dict]]:
        """Top-k classes for each image (a path, PIL image, H x W (x C) uint8 array); each {class, probability}."""
        require(top_k >= 1, f"--top-k must be at least 1, got {top_k}")
        batch = torch.from_numpy(self.prepare(images))
        probs = torch.softmax(self.logits(batch, tta), dim=1)
        values, indices = probs.topk(min(top_k, len(self.classes)), dim=1)
        return [[{"class": self.classes[i], "probability": float(v)} for v, i in zip(vs, ix)]
                for vs, ix in zip(values.tolist(), indices.tolist())]

    def prepare(self, images: list) -> np.ndarray:
        """Decode and conform images to the model's input: N x C x H x W uint8."""
        from PIL import Image

        from .data.sources import conform, decode_image

        arrays = []
        for item in images:
            if isinstance(item, str | Path):
                require(Path(item).is_file(), f"{item}: no such image file")
                arr = decode_image(Path(item).read_bytes())
                require(arr is not None, f"{item}: not an image (or an unreadable one); give a PNG or JPEG file")
            elif isinstance(item, Image.Image):
                arr = np.asarray(item.convert("L" if item.mode in ("1", "L", "LA") else "RGB"))
            else:
                arr = np.asarray(item, dtype=np.uint8)
            arrays.append(arr[:, :, None] if arr.ndim == 2 else arr)
        return conform(arrays, self.image_size, self.channels)


def load(directory: str | Path, device: str = "auto", precision: str = "auto") -> Model:
    """Load a model directory after verifying it: `gpuvision.load("runs/x").predict(["cat.png"])`."""
    from .device import pick_device, pick_precision

    manifest = read_manifest(directory)
    dev = pick_device(device)
    return Model(Path(directory), manifest, dev, pick_precision(precision, dev))
