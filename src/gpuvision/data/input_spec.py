"""InputSpec: what a model takes, and the one place where uint8 pixels become its normalised input.

Every path that feeds a model (the training loaders, the runtimes, compression, export, attacks, serving) calls
`normalise` or wraps `Normalise`, so one formula holds everywhere: x = (pixels - mean) / std per channel, with
pixels in 0..255.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import BadInput, require

MAX_SIDE = 4096


@dataclass(frozen=True)
class InputSpec:
    """size: (height, width) in pixels; channels: 1 (grey) or 3 (colour); mean, std: per channel, in 0..255 units."""

    size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self):
        require(len(self.size) == 2 and all(isinstance(s, int) and 1 <= s <= MAX_SIDE for s in self.size),
                f"input size must be two integers in 1..{MAX_SIDE}, got {self.size}", BadInput)
        require(self.channels in (1, 3), f"input channels must be 1 or 3, got {self.channels}", BadInput)
        for name, values in (("mean", self.mean), ("std", self.std)):
            require(len(values) == self.channels and all(isinstance(v, int | float) and math.isfinite(v)
                                                         for v in values),
                    f"input {name} must be {self.channels} finite numbers, got {values}", BadInput)
        require(all(v > 0 for v in self.std), f"input std must be positive, got {self.std}", BadInput)

    @classmethod
    def from_images(cls, images: torch.Tensor, chunk: int = 1 << 26) -> InputSpec:
        """The spec of N x C x H x W uint8 images, with their per-channel mean and std (std at least 1), summed in
        float64 over chunks of about `chunk` pixels: a float copy of large images (10,000 at 2048 px) would not fit."""
        n, c, h, w = images.shape
        step = max(1, chunk // max(c * h * w, 1))
        total, squares = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
        for start in range(0, n, step):
            x = images[start : start + step].to(torch.float64)
            total += x.sum(dim=(0, 2, 3))
            squares += (x * x).sum(dim=(0, 2, 3))
        count = max(n * h * w, 1)
        mean = total / count
        std = ((squares - count * mean * mean).clamp_min(0) / max(count - 1, 1)).sqrt()
        return cls(size=(h, w), channels=c, mean=tuple(mean.float().tolist()),
                   std=tuple(std.float().clamp_min(1.0).tolist()))

    def to_dict(self) -> dict:
        return {"size": list(self.size), "channels": self.channels, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> InputSpec:
        require(isinstance(d, dict) and {"size", "channels", "mean", "std"} <= set(d),
                "input spec must have size, channels, mean and std", BadInput)
        require(all(isinstance(d[k], list) for k in ("size", "mean", "std")), "input spec lists are not lists",
                BadInput)
        return cls(size=tuple(d["size"]), channels=d["channels"], mean=tuple(d["mean"]), std=tuple(d["std"]))

    @property
    def shape(self) -> tuple[int, int, int]:
        """C x H x W."""
        return (self.channels, *self.size)

    def module(self, layout: str = "NCHW") -> Normalise:
        return Normalise(self, layout)


@functools.lru_cache(maxsize=64)  # one copy per (spec, device): no host-to-device copy per batch
def _stats(spec: InputSpec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return mean, std


def normalise(pixels: torch.Tensor | np.ndarray, spec: InputSpec, dtype: torch.dtype = torch.float32,
              channels_last: bool = False) -> torch.Tensor:
    """uint8 (or 0..255 float) N x C x H x W pixels -> the model's input, on the pixels' device."""
    if isinstance(pixels, np.ndarray):
        pixels = torch.from_numpy(np.ascontiguousarray(pixels))
    mean, std = _stats(spec, pixels.device)
    x = (pixels.float() - mean) / std
    x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return x.to(dtype)


class Normalise(nn.Module):
    """`normalise` as a module (for graphs that take pixels: `export --uint8-input`, attacks).

    layout "NCHW" takes N x C x H x W; "NHWC" takes N x H x W x C (the usual image layout of a client)."""

    def __init__(self, spec: InputSpec, layout: str = "NCHW"):
        super().__init__()
        require(layout in ("NCHW", "NHWC"), f"layout must be NCHW or NHWC, got {layout}", BadInput)
        self.layout = layout
        mean, std = _stats(spec, torch.device("cpu"))
        self.register_buffer("mean", mean.clone(), persistent=False)
        self.register_buffer("std", std.clone(), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.layout == "NHWC":
            pixels = pixels.permute(0, 3, 1, 2)
        return (pixels.float() - self.mean) / self.std
