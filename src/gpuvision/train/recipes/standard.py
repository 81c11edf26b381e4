"""The standard recipe, for ResNets and larger images: Nesterov SGD, warm-up then cosine decay, label smoothing,
flip and translation, weight EMA for the final weights, and mirror TTA. The classic ResNet-on-CIFAR settings
(learning rate 0.1 per 256 examples, weight decay 5e-4 on weights only), scaled by the batch size.

Fine-tuning given weights (`--pretrained`): the new classifier trains at the full learning rate and the pretrained
body at `body_lr` of it (a tenth), so the first steps' large gradients from a random head do not wreck the features;
fewer steps suffice (`fine_tune_min_steps`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ...config import bounds
from ...data.augment import Augment
from ...device.acceleration import optimizer_kernel
from ...models import ModelSpec
from . import RECIPES, BaseSettings, Recipe, WeightAverage, auto_batch_size, norm_and_bias_params


@dataclass
class StandardSettings(BaseSettings):
    lr: float | None = 0.2  # peak learning rate per 256 examples
    momentum: float = 0.9
    weight_decay: float = 5e-4  # on weights only, not on biases and normalisation parameters
    label_smoothing: float = 0.1
    warmup_fraction: float = 0.05  # of all steps
    ema_half_life: float = 0.25  # epochs over which the average forgets half of its past
    ema_every: int = 4  # steps between EMA updates
    translate_fraction: float = 0.125  # random translation, as a fraction of the image side
    cutout: int = 0
    tta_level: int = 1
    min_steps: int = 600
    body_lr: float = 0.1  # fine-tuning: the pretrained body's learning rate, relative to the new classifier's
    fine_tune_min_steps: int = 300

    BOUNDS = {"momentum": bounds(0, 1), "weight_decay": bounds(0, 1e6), "warmup_fraction": bounds(0, 1),
              "ema_half_life": bounds(0, 1e6, low_open=True), "ema_every": bounds(1, 1e6),
              "translate_fraction": bounds(0, 1), "cutout": bounds(0, 4096), "min_steps": bounds(0, 1e9)}


@RECIPES.register("standard")
class StandardRecipe(Recipe):
    name = "standard"

    def __init__(self, **overrides):
        self.settings = StandardSettings()
        super().__init__(**overrides)
        self.average: WeightAverage | None = None
        self.steps_per_epoch = 1
        self.fine_tune = False

    def resolve(self, n_train: int, image_size: int, fine_tune: bool = False) -> None:
        s = self.settings
        self.fine_tune = fine_tune
        s.batch_size = s.batch_size or auto_batch_size(n_train, 256)
        self.steps_per_epoch = math.ceil(n_train / s.batch_size)
        min_steps = s.fine_tune_min_steps if fine_tune else s.min_steps
        s.epochs = s.epochs or max(10.0, min(200.0, math.ceil(min_steps / self.steps_per_epoch)))

    def augment(self, image_size: int) -> Augment:
        s = self.settings
        return Augment(flip=True, altflip=False, translate=int(image_size * s.translate_fraction), cutout=s.cutout)

    def prepare(self, model: nn.Module) -> None:
        self.average = WeightAverage(model)

    def optimizer(self, model: nn.Module, device: torch.device, spec: ModelSpec, kernel: str = "foreach"
                  ) -> torch.optim.Optimizer:
        s = self.settings
        lr = s.lr * s.batch_size / 256
        no_decay, decay = norm_and_bias_params(model)
        head = {id(p) for p in spec.head(model).parameters()} if self.fine_tune and spec.head else set()
        groups = []
        for params, wd in ((no_decay, 0.0), (decay, s.weight_decay)):
            for in_head, scale in ((False, s.body_lr if head else 1.0), (True, 1.0)):
                chosen = [p for p in params if (id(p) in head) == in_head]
                if chosen:
                    groups.append(dict(params=chosen, weight_decay=wd, lr=lr * scale))
        return torch.optim.SGD(groups, lr=lr, momentum=s.momentum, nesterov=True, **optimizer_kernel(kernel))

    def lr_factor(self, step: int, total: int) -> float:
        warmup = max(1, int(self.settings.warmup_fraction * total))
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

    def after_step(self, model: nn.Module, step: int, total: int) -> None:
        s = self.settings
        if step % s.ema_every == 0:
            updates_per_half_life = max(s.ema_half_life * self.steps_per_epoch / s.ema_every, 1.0)
            self.average.update(model, 0.5 ** (1 / updates_per_half_life))

    def finish(self, model: nn.Module) -> None:
        self.average.copy_to(model)
