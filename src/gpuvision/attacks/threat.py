"""The threat model: an L-infinity ball around each image, sized in pixel units, in the units of the function
attacked. The one place where a radius given as a fraction of the pixel range (8/255) becomes a per-channel radius
and valid range for a normalised batch (the training step's input) or for 0..255 pixels (the `attack` command)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.input_spec import InputSpec

PIXEL_RANGE = 255.0


@dataclass(frozen=True)
class Threat:
    """eps: the radius as a fraction of the pixel range; unit: the whole pixel range in the attacked function's input
    units, per channel (1 x C x 1 x 1, or a scalar tensor); low, high: the valid inputs (black and white)."""

    eps: float
    unit: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor

    @classmethod
    def pixels(cls, eps: float, device: torch.device) -> Threat:
        """For functions of 0..255 float pixels (`Runtime.pixel_model`)."""
        full = torch.tensor(PIXEL_RANGE, device=device)
        return cls(eps, full, torch.zeros((), device=device), full)

    @classmethod
    def normalised(cls, eps: float, spec: InputSpec, device: torch.device) -> Threat:
        """For functions of normalised batches, x = (pixels - mean) / std per channel (`data.input_spec.normalise`):
        the pixel range is 255 / std per channel there; black and white are -mean / std and (255 - mean) / std."""
        mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        return cls(eps, PIXEL_RANGE / std, -mean / std, (PIXEL_RANGE - mean) / std)

    def size(self, fraction: float | torch.Tensor) -> torch.Tensor:
        """A length given as a fraction of the pixel range, in input units (per channel)."""
        return self.unit * fraction

    @property
    def radius(self) -> torch.Tensor:
        return self.size(self.eps)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The nearest point to x_adv within the ball around x that is a valid image."""
        r = self.radius
        return torch.clamp(torch.minimum(torch.maximum(x_adv, x - r), x + r), self.low, self.high)

    def random_start(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A point drawn uniformly from the ball around x (then clipped to valid pixels)."""
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return self.project(x + (2 * noise - 1) * self.radius, x)
