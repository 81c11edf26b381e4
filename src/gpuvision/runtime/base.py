"""The interface every backend implements: normalised batch in, logits out; TTA and batch buckets on top."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.input_spec import InputSpec, normalise
from ..errors import Unsupported

MAX_BUCKET = 1024


def bucket(n: int, largest: int = MAX_BUCKET) -> int:
    """The power of two a batch of n is padded to (n itself above `largest`)."""
    return n if n > largest else 1 << max(0, (n - 1).bit_length())


class Runtime:
    """A model ready to run on one device in one precision.

    Subclasses implement `forward` (normalised fp32 N x C x H x W on `device` -> fp32 logits); this class adds
    uint8 input, test-time augmentation and, for compiled backends (`pads = True`), padding each batch to a
    power-of-two bucket so a new batch size never triggers a compile while serving.
    """

    backend = "?"
    calibration = None  # the manifest's Calibration (set by open_runtime), or None
    pads = False  # compiled backends compile once per input shape: pad batches to buckets
    channels_last = False

    def __init__(self, spec: InputSpec, classes: list[str], tta_level: int, device: torch.device, precision: str):
        self.spec, self.classes, self.tta_level = spec, list(classes), tta_level
        self.device, self.precision = device, precision

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.precision}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def temperature(self, tta: bool = False) -> float:
        """What this model's logits (with the recipe's TTA or without) are divided by before the softmax: the
        manifest's calibration, or 1 (see runtime/calibration.py)."""
        return self.calibration.for_tta(tta and self.tta_level > 0) if self.calibration else 1.0
    def pixel_model(self) -> nn.Module:
        """A differentiable fp32 module from 0..255 float pixels (N x C x H x W, on `device`) to logits, for attacks:
        `logits` and `run` compute no gradients. Only the PyTorch backends have one."""
        raise Unsupported(f"the {self.name} runtime computes no gradients, which attacks need; run a PyTorch "
                          "(safetensors) model directory eager")

    @torch.no_grad()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        """forward on a normalised batch, padded to its bucket where the backend compiles per shape."""
        n = len(x)
        size = bucket(n) if self.pads else n
        if size != n:
            x = torch.cat([x, x[-1:].expand(size - n, *x.shape[1:])])
        return self.forward(x)[:n]

    @torch.no_grad()
    def logits_normalised(self, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """fp32 logits on the CPU for an already normalised fp32 batch."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return tta_logits(self.run, x, self.tta_level if tta else 0).float().cpu()

    @torch.no_grad()
    def logits(self, pixels: torch.Tensor | np.ndarray, tta: bool = False, batch_size: int = 256) -> torch.Tensor:
        """fp32 logits on the CPU for N x C x H x W uint8 pixels in the model's input size, batch by batch."""
        if isinstance(pixels, np.ndarray):
            pixels = torch.from_numpy(np.ascontiguousarray(pixels))
        out = [self.logits_normalised(normalise(pixels[i : i + batch_size].to(self.device), self.spec), tta)
               for i in range(0, len(pixels), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))

    def warmup(self, batch_sizes: list[int]) -> None:
        """Run every bucket these batch sizes fall in once (compiles them, warms caches)."""
        for size in sorted({bucket(n) if self.pads else n for n in batch_sizes}):
            self.logits_normalised(torch.zeros(size, *self.spec.shape))


def tta_logits(run, x: torch.Tensor, level: int) -> torch.Tensor:
    """Logits averaged over test-time augmentations: 0 none, 1 mirror, 2 mirror and two 1-pixel translations."""
    if level == 0:
        return run(x).float()
    mirrored = 0.5 * (run(x).float() + run(x.flip(-1)).float())
    if level == 1:
        return mirrored
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[:, :, :h, :w], padded[:, :, 2:, 2:]]
    translated = sum(0.5 * (run(s).float() + run(s.flip(-1)).float()) for s in shifted) / len(shifted)
    return 0.5 * mirrored + 0.5 * translated
