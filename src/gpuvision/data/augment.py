"""Batched augmentation on device tensors: flip and translate folded into one gather, then cutout.

Written by hand rather than with torchvision.transforms.v2 because v2 draws one random crop per call (per batch),
while training wants one per image; a single indexed gather does crop, reflect-padding and flip for a whole batch
with no per-image Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Augment:
    """flip: mirror half the images (alternating per epoch when altflip); translate: max shift in pixels
    (reflect-padded); cutout: side of a zeroed square in pixels (0 = off); sides: the image side per epoch
    (progressive resizing: images are scaled down to it; epochs past the tuple's end keep the native size);
    brightness, contrast: per-image jitter of the normalised input, x -> (x + b) * c with b uniform in
    +/-brightness and c in 1 +/- contrast (0 = off)."""

    flip: bool = True
    altflip: bool = True
    translate: int = 2
    cutout: int = 0
    sides: tuple[int, ...] = ()
    brightness: float = 0.0
    contrast: float = 0.0

    def side(self, epoch: int, native: int) -> int:
        return self.sides[epoch] if epoch < len(self.sides) else native


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map indices in [-size+1, 2*size-2] into [0, size) by mirroring at the edges (like reflect padding)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def flip_translate(images: torch.Tensor, flip: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Crop each image shifted by shifts[n] = (dy, dx) with reflected borders, mirrored where flip[n].

    images: N x C x H x W (any dtype); flip: N bool; shifts: N x 2 int. Returns N x C x H x W in channels_last
    memory order, which the convolutions want anyway.
    """
    n, _, h, w = images.shape
    rows = _reflect(torch.arange(h, device=images.device) + shifts[:, :1], h)  # N x H
    cols = torch.arange(w, device=images.device).expand(n, w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols)
    cols = _reflect(cols + shifts[:, 1:], w)  # N x W
    batch = torch.arange(n, device=images.device)[:, None, None]
    return images.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def resize(images: torch.Tensor, side: int) -> torch.Tensor:
    """Float images scaled to side x side (antialiased bilinear), in the memory layout they came in."""
    if images.shape[-1] == side and images.shape[-2] == side:
        return images
    nhwc = images.is_contiguous(memory_format=torch.channels_last)
    out = torch.nn.functional.interpolate(images, size=(side, side), mode="bilinear", antialias=True,
                                          align_corners=False)
    return out.contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)


def jitter(images: torch.Tensor, brightness: float, contrast: float, draws: torch.Tensor) -> torch.Tensor:
    """Shift each normalised image by one offset in +/-brightness, then scale it by one in 1 +/- contrast, from
    `draws` (N x 2 uniform draws in [0, 1), drawn by the caller)."""
    shape = (len(images), 1, 1, 1)
    shift = ((draws[:, 0] * 2 - 1) * brightness).view(shape)
    scale = (1 + (draws[:, 1] * 2 - 1) * contrast).view(shape)
    return (images + shift.to(images.dtype)) * scale.to(images.dtype)


def cutout(images: torch.Tensor, size: int, generator: torch.Generator | None = None,
           corner: torch.Tensor | None = None) -> torch.Tensor:
    """Zero one size x size square per image, placed uniformly inside it: at `corner` (N x 2 uniform draws in
    [0, 1), drawn by the caller) or drawn here from `generator`."""
    n, _, h, w = images.shape
    if corner is None:
        corner = torch.rand(n, 2, device=images.device, generator=generator)
    top = (corner[:, 0] * (h - size + 1)).long().view(n, 1, 1, 1)
    left = (corner[:, 1] * (w - size + 1)).long().view(n, 1, 1, 1)
    ys = torch.arange(h, device=images.device).view(1, 1, h, 1)
    xs = torch.arange(w, device=images.device).view(1, 1, 1, w)
    mask = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return images.masked_fill(mask, 0)
