"""Recipes: each one readable module that sets the optimiser, schedule, loss, augmentation, averaging and TTA.

A recipe is configuration for the Trainer, not a fork of the loop: it implements the hooks of `Recipe`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import torch
from torch import nn

from ...config import bounds, check_value
from ...data.augment import Augment
from ...data.loader import epoch_steps  # noqa: F401  (the recipes' and benchmarks' name for it)
from ...device.acceleration import optimizer_kernel
from ...errors import UserError
from ...models import ModelSpec
from ...registry import Registry
from ..muon import Optimizers, make_muon

RECIPES: Registry = Registry("recipe")
OPTIMIZERS = ("sgd", "muon")


@dataclass
class BaseSettings:
    """Settings every recipe has. None means: chosen from the data set's size by `resolve`."""

    epochs: float | None = None
    batch_size: int | None = None
    lr: float | None = None
    label_smoothing: float = 0.0
    tta_level: int = 1  # test-time augmentation: 0 none, 1 mirror, 2 mirror + 1-pixel translations
    optimizer: str = "sgd"  # sgd or muon (Muon on the convolution filters, the recipe's SGD on the rest)
    drop_last: bool = False  # skip each epoch's last, smaller batch (one compiled shape, fewer wasted steps)
    muon_lr: float = 0.24  # Muon's step per step, relative to each filter bank's size (airbench94_muon's value)
    muon_momentum: float = 0.6  # Muon's Nesterov momentum
    muon_ns_steps: int = 3  # Newton-Schulz iterations per update (torch's default is 5; 3 suffice here)
    muon_fixed_norm: bool = True  # keep each filter bank at norm sqrt(out channels): for convs followed by a norm

    # The values each setting may take (recipe_args come from files): checked with the annotated types before a run
    # writes anything. A subclass adds its own settings' bounds; check_settings merges them along the class tree.
    BOUNDS: ClassVar[dict[str, dict]] = {
        "epochs": bounds(0, 10_000, low_open=True), "batch_size": bounds(1, 1 << 16),
        "lr": bounds(0, 1e6, low_open=True), "label_smoothing": bounds(0, 1), "tta_level": bounds(choices=(0, 1, 2)),
        "optimizer": bounds(choices=OPTIMIZERS), "muon_lr": bounds(0, 1e6, low_open=True),
        "muon_momentum": bounds(0, 1), "muon_ns_steps": bounds(1, 100)}


def check_settings(settings) -> None:
    """A recipe's settings dataclass, every field against its annotated type and its class's BOUNDS."""
    known = {}
    for cls in reversed(type(settings).__mro__):
        known.update(vars(cls).get("BOUNDS", {}))
    for f in fields(settings):
        check_value(settings, f, f"recipe setting {f.name}", known.get(f.name, bounds()))


class Recipe:
    """The hooks the Trainer calls; defaults do nothing."""

    settings: BaseSettings
    loss_reduction = "mean"  # "sum" when the learning rate is per example (the loss scales with the batch)
    access = None  # config.Access: how a model directory the recipe reads (a teacher) is opened; set by the Trainer
    optimizers: tuple[str, ...] = ("sgd",)  # the `optimizer` settings this recipe implements

    def __init__(self, **overrides):
        names = {f.name for f in fields(self.settings)}
        unknown = set(overrides) - names
        if unknown:
            known = ", ".join(sorted(names))
            raise UserError(f"unknown recipe setting(s) {', '.join(sorted(unknown))}; known: {known}")
        for k, v in overrides.items():
            if v is not None:
                setattr(self.settings, k, v)
        check_settings(self.settings)
        if self.settings.optimizer is not None and self.settings.optimizer not in self.optimizers:
            raise UserError(f"the {self.name} recipe trains with {' or '.join(self.optimizers)}, "
                            f"not {self.settings.optimizer!r}")

    def resolve(self, n_train: int, image_size: int, fine_tune: bool = False) -> None:
        """Fill the settings left as None from the data set's size (and whether given weights are fine-tuned)."""

    def augment(self, image_size: int) -> Augment:
        return Augment()

    def prepare(self, model: nn.Module) -> None:
        """Before the first step, after the model's own data-dependent initialisation (e.g. start weight averages)."""

    def optimizer(self, model: nn.Module, device: torch.device, spec: ModelSpec, kernel: str = "foreach"
                  ) -> torch.optim.Optimizer:
        """The optimiser; `spec` carries the architecture's hooks (e.g. parameters that train only early); `kernel`
        is the resolved acceleration's optimizer kernel (fused, foreach or loop)."""
        raise NotImplementedError

    def lr_factor(self, step: int, total: int) -> float:
        return 1.0

    def group_factor(self, group: dict, step: int, total: int) -> float:
        """A parameter group's own factor on top of lr_factor (e.g. a group that trains only early); groups are
        told apart by keys the recipe put in them, which checkpoints keep."""
        return 1.0

    def on_epoch(self, model: nn.Module, epoch: int, epochs: float) -> None:
        pass

    def after_step(self, model: nn.Module, step: int, total: int) -> None:
        pass

    def finish(self, model: nn.Module) -> None:
        """Last change to the weights (e.g. copy in the averaged weights)."""

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch (inputs are there for recipes that need them, e.g. distillation)."""
        return nn.functional.cross_entropy(logits, labels, label_smoothing=self.settings.label_smoothing,
                                           reduction=self.loss_reduction)

    average: WeightAverage | None = None  # the recipe's weight average, if it keeps one (saved in checkpoints)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.average.avg) if self.average else {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for k, v in tensors.items():
            self.average.avg[k].copy_(v)

    def describe(self) -> dict:
        return {"name": self.name, **asdict(self.settings)}


def norm_and_bias_params(model: nn.Module) -> tuple[list, list]:
    """Split trainable parameters into (normalisation and bias parameters, the rest)."""
    special, rest = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_norm = isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm)
            (special if is_norm or name == "bias" else rest).append(p)
    return special, rest


def sgd_or_muon(settings: BaseSettings, groups: list[dict], device: torch.device, kernel: str, **sgd
                ) -> torch.optim.Optimizer:
    """Nesterov SGD over the parameter groups; with `optimizer: muon`, their convolution filters go to Muon instead.

    Muon (see train/muon.py) follows the same learning-rate schedule: the Trainer scales every group's lr alike.
    """
    if settings.optimizer == "sgd":
        return torch.optim.SGD(groups, nesterov=True, **sgd, **optimizer_kernel(kernel))
    filters = [p for g in groups for p in g["params"] if p.ndim > 2]
    rest = [{**g, "params": [p for p in g["params"] if p.ndim <= 2]} for g in groups]
    muon = make_muon(filters, device, lr=settings.muon_lr, momentum=settings.muon_momentum,
                     ns_steps=settings.muon_ns_steps, fixed_norm=settings.muon_fixed_norm)
    sgd_part = torch.optim.SGD([g for g in rest if g["params"]], nesterov=True, **sgd, **optimizer_kernel(kernel))
    return Optimizers(sgd_part, muon)


def auto_batch_size(n_train: int, largest: int) -> int:
    """The largest power of two up to `largest` that still gives about 16 steps per epoch (at least 16)."""
    return int(min(largest, max(16, 2 ** math.floor(math.log2(max(n_train // 16, 1))))))


class WeightAverage:
    """Exponential moving average of a model's floating-point state (parameters and batch-norm statistics).

    The tensor lists are built once: `state_dict()` walks every module, too slow to call on every update."""

    def __init__(self, model: nn.Module):
        self.avg = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
        self._averages = list(self.avg.values())
        self._model, self._live = None, []

    def _tensors(self, model: nn.Module) -> list[torch.Tensor]:
        """The model's own tensors (state_dict's share their storage), in the order of `avg`."""
        if model is not self._model:
            state = model.state_dict()
            self._model, self._live = model, [state[k] for k in self.avg]
        return self._live

    def update(self, model: nn.Module, decay: float) -> None:
        with torch.no_grad():
            torch._foreach_lerp_(self._averages, self._tensors(model), 1.0 - decay)

    def copy_to(self, model: nn.Module) -> None:
        with torch.no_grad():
            torch._foreach_copy_(self._tensors(model), self._averages)


def create_recipe(name: str, **overrides) -> Recipe:
    return RECIPES.get(name)(**overrides)


def default_recipe(model_name: str) -> str:
    return "fast" if model_name == "fastnet" else "standard"


from . import distill, fast, standard  # noqa: E402,F401  (registers the recipes)
