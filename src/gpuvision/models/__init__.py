"""Model registry: each architecture is a ModelSpec registered by name; the manifest stores name + arguments.

A spec holds the builder and the few hooks that are specific to an architecture, so a new architecture is one file
here and nothing outside `models/` asks which network it has:
  * `data_init(net, sample)`: data-dependent initialisation from normalised training images (fastnet's whitening);
  * `pruning_ignored(net)`: the layers structured pruning must keep whole (None: the net is not prunable);
  * `width_args(net)`: the architecture arguments that rebuild a network whose channels were pruned;
  * `narrower(args, fraction)`: the arguments of the same architecture with every hidden layer narrower;
  * `early_params(net)`: parameters that train only in the first part of a run (fastnet's whitening bias);
  * `head(net)`: the classifier, which fine-tuning replaces and trains faster than the rest (models/pretrained.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data.limits import available_memory
from ..errors import BadInput, UserError, require
from ..registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """One registered architecture: its builder and its hooks (see the module docstring)."""

    build: Callable[..., nn.Module]
    description: str = ""
    data_init: Callable[[nn.Module, torch.Tensor], None] | None = None
    pruning_ignored: Callable[[nn.Module], list[nn.Module]] | None = None
    width_args: Callable[[nn.Module], dict] | None = None
    narrower: Callable[[dict, float], dict] | None = None
    early_params: Callable[[nn.Module], list[nn.Parameter]] | None = None
    head: Callable[[nn.Module], nn.Module] | None = None

    @property
    def prunable(self) -> bool:
        return self.pruning_ignored is not None and self.width_args is not None


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(name: str, build: Callable[..., nn.Module], **hooks) -> ModelSpec:
    spec = ModelSpec(build=build, **hooks)
    MODELS.register(name)(spec)
    return spec


def model_spec(name: str) -> ModelSpec:
    return MODELS.get(name)


def planned_state(name: str, **args: Any) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of network `name` built with `args`, on the meta device: nothing is allocated, so a
    manifest or a config asking for an absurd network costs nothing. Arguments it does not take are a BadInput."""
    spec = MODELS.get(name)
    try:
        with torch.device("meta"):
            net = spec.build(**args)
    except (TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:  # the builder's own checks
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise BadInput(f"model {name} does not take the arguments {args} ({first})") from e
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def create_model(name: str, num_classes: int, in_channels: int, image_size: int, **kwargs: Any) -> nn.Module:
    """Build a registered network for num_classes classes of in_channels x image_size x image_size inputs.

    Every argument is JSON-serialisable and saved in the manifest, so the same call rebuilds the network,
    including networks whose layer widths differ from the defaults. The arguments are checked on the meta device
    first: ones the architecture does not take, or a network whose weights exceed the available memory, are a
    BadInput before anything is allocated.
    """
    args = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size, **kwargs}
    params = sum(math.prod(shape) for shape in planned_state(name, **args).values())
    free = available_memory()
    require(free is None or 4 * params <= free, f"model {name} with {kwargs or 'its default arguments'} has "
            f"{params:,} parameters ({4 * params / (1 << 30):.1f} GiB in fp32), more than the "
            f"{(free or 0) / (1 << 30):.1f} GiB of memory available; give it smaller widths", BadInput)
    return MODELS.get(name).build(**args)


def list_models() -> list[str]:
    return MODELS.names()


def default_model(image_size: int) -> str:
    """The fast small-image net up to 64 pixels; a ResNet-18 above."""
    return "fastnet" if image_size <= 64 else "resnet18"


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_pretrained(model: nn.Module, path: str, partial: bool = False) -> list[str]:
    """Load local safetensors weights for transfer learning; returns the names left at their initial values.

    Every tensor of the model must be given, in its shape, unless `partial` (--pretrained-partial): then the
    tensors that fit are loaded (as timm does for a classifier head of other classes) and what was loaded is
    logged. A partial load that was not asked for is refused: weights of another width would otherwise train
    from mostly random layers without a word.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        weights = load_file(path)
    except (OSError, SafetensorError, ValueError) as e:
        raise UserError(f"--pretrained {path}: not a readable safetensors file ({e})") from e
    own = model.state_dict()
    usable = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise UserError(f"--pretrained {path}: no tensor matches this model's layers; is it for another model?")
    left = sorted(set(own) - set(usable))
    require(partial or not left, f"--pretrained {path}: {len(left)} of this model's {len(own)} tensors are not in it "
            f"or have another shape (e.g. {', '.join(left[:3])}); weights for another width or number of classes? "
            "Add --pretrained-partial to start those from their initial values", BadInput)
    model.load_state_dict(usable, strict=False)
    if left:
        log.info("--pretrained %s: loaded %d of %d tensors; %d left at their initial values: %s", path, len(usable),
                 len(own), len(left), ", ".join(left[:10]) + (" ..." if len(left) > 10 else ""))
    return left


from . import fastnet, resnet  # noqa: E402,F401  (registers the models)

__all__ = ["MODELS", "ModelSpec", "count_params", "create_model", "default_model", "list_models", "load_pretrained",
           "model_spec", "planned_state", "register_model"]
