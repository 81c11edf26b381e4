"""Practical defaults for photos: the image size a run trains at when none is given, and the run's time estimated
from its first steps, with a smaller --image-size suggested when it is long.

The rule (README, "Image size"): images whose most common size is at most 64 px train at that size; larger ones at
224 px on a CUDA GPU and 128 px elsewhere (the CPU, Apple MPS), or at their own size where that is smaller; weights
from the hub (`--pretrained imagenet`) at the size they were trained at. A step's time grows about with the
pixels, so the estimate for another size is the measured one scaled by the ratio of the squared sides.
"""

from __future__ import annotations

import time

import torch

from ..config import TrainConfig
from ..data.sources import native_side
from ..device import synchronize
from ..models.pretrained import Pretrained
from ..models.pretrained import resolve as resolve_pretrained

SMALL = 64  # at or below, images train at their own size
PHOTO_SIDE = {"cuda": 224}  # other devices: OTHER_SIDE
OTHER_SIDE = 128
LONG_SECONDS = 600.0  # a run estimated longer than this gets a hint
HINT_SIDES = (224, 192, 160, 128, 96, 64)


def default_image_size(native_side: int | None, device: torch.device, pretrained_side: int | None = None
                       ) -> tuple[int | None, str | None]:
    """The side images train at when --image-size is not given (None: their own most common size), and why (None
    where that is their own size)."""
    if pretrained_side:
        return pretrained_side, "the size the pretrained weights were trained at"
    side = PHOTO_SIDE.get(device.type, OTHER_SIDE)
    if native_side is None or native_side <= max(SMALL, side):
        return None, None
    return side, f"the default for photos on {device.type} (these are {native_side} px; --image-size sets another)"


def plan_inputs(config: TrainConfig, device: torch.device) -> tuple[Pretrained | None, int | None, str | None]:
    """A run's resolved --pretrained weights, its image size (None: the images' own) and why that size (None: given,
    or the images' own)."""
    pretrained = resolve_pretrained(config.pretrained, config.model) if config.pretrained else None
    if config.image_size is not None:
        return pretrained, config.image_size, None
    size, rule = default_image_size(native_side(config.data), device, pretrained.input_size if pretrained else None)
    return pretrained, size, rule


def duration(seconds: float) -> str:
    """'45 s', '6 min', '1h50m'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


class RunEstimate:
    """Times the steps after the first `warmup` (compilation, allocation) until `measure_steps` steps or
    `measure_seconds` have passed, then gives the estimate of the `steps` this run has to go, once (one device
    sync at each end of the measurement)."""

    def __init__(self, device: torch.device, steps: int, image_side: int, warmup: int = 2, measure_steps: int = 5,
                 measure_seconds: float = 10.0):
        self.device, self.steps, self.side = device, steps, image_side
        self.warmup, self.measure_steps, self.measure_seconds = warmup, measure_steps, measure_seconds
        self.calls, self.first, self.started = 0, 0, None
        self.done = False

    def after_step(self) -> dict | None:
        """Call after each step; returns the estimate once, else None."""
        self.calls += 1
        if self.done or self.calls < self.warmup:
            return None
        if self.started is None:
            synchronize(self.device)
            self.started, self.first = time.perf_counter(), self.calls
            return None
        measured = self.calls - self.first
        if measured < self.measure_steps and time.perf_counter() - self.started < self.measure_seconds:
            return None
        synchronize(self.device)
        self.done = True
        return estimate((time.perf_counter() - self.started) / measured, self.steps, self.side, self.device)


def estimate(per_step: float, total_steps: int, side: int, device: torch.device) -> dict:
    """The run's time at `per_step` seconds a step, and a line saying it, with a smaller size where it is long."""
    seconds = per_step * total_steps
    text = f"about {duration(seconds)} on this {'GPU' if device.type == 'cuda' else device.type.upper()}"
    hint = None
    if seconds > LONG_SECONDS and side > SMALL:
        smaller = [s for s in HINT_SIDES if s < side]
        fits = [s for s in smaller if seconds * (s / side) ** 2 <= LONG_SECONDS]
        pick = fits[0] if fits else smaller[-1]
        hint = f"--image-size {pick} takes about {duration(seconds * (pick / side) ** 2)}"
        text += f"; {hint}"
    return {"seconds": seconds, "seconds_per_step": per_step, "text": text, "hint": hint}
