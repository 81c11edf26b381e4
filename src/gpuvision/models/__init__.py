"""Model registry: each architecture is a factory registered by name; the manifest stores name + arguments."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..registry import Registry

MODELS: Registry = Registry("model")


def create_model(name: str, num_classes: int, in_channels: int, image_size: int, **kwargs: Any) -> nn.Module:
    """Build a registered network for num_classes classes of in_channels x image_size x image_size inputs.

    Every argument is JSON-serialisable and saved in the manifest, so the same call rebuilds the network,
    including networks whose layer widths differ from the defaults.
    """
    return MODELS.get(name)(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)


def list_models() -> list[str]:
    return MODELS.names()


def default_model(image_size: int) -> str:
    """The fast small-image net up to 64 pixels; a ResNet-18 above."""
    return "fastnet" if image_size <= 64 else "resnet18"


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_pretrained(model: nn.Module, path: str) -> list[str]:
    """Load local safetensors weights for transfer learning; returns the names left at their initial values.

    Tensors whose shape differs (a classifier head for other classes) are skipped, as timm does.
    """
    from safetensors.torch import load_file

    from ..errors import UserError

    try:
        weights = load_file(path)
    except (OSError, Exception) as e:  # safetensors raises its own error type for a malformed file
        raise UserError(f"--pretrained {path}: not a readable safetensors file ({e})") from e
    own = model.state_dict()
    usable = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise UserError(f"--pretrained {path}: no tensor matches this model's layers; is it for another model?")
    model.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))


from . import fastnet, resnet  # noqa: E402,F401  (registers the models)

__all__ = ["MODELS", "create_model", "list_models", "default_model", "count_params", "load_pretrained", "torch"]
