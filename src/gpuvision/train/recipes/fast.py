"""The fast recipe: airbench94's training method (Keller Jordan, 2024), rewritten as a gpuvision recipe.

Evidence for the method (airbench94 on one A100, official CIFAR-10): 94.01% mean test accuracy over 1,000 runs
in 3.83 s. What makes it fast, each part below in its own section:
  * whitening: the first convolution is set, not learned, from the eigenvectors of 2x2 training patches (the
    model's `data_init` hook, run by the Trainer);
  * decoupled hyper-parameters: learning rate and weight decay per 1,024 examples, independent of momentum;
  * Nesterov SGD with batch-norm biases on a 64x larger learning rate;
  * a triangular schedule: a short warm-up to the peak at 23% of the run, then linear decay;
  * label smoothing 0.2; flip (alternating per epoch) and 2-pixel translation;
  * Lookahead: every 5 steps the weights are pulled toward their moving average, harder near the end;
  * test-time augmentation: mirror plus two 1-pixel translations.
Settings scale with the data set: batch size and epochs are chosen from its size when not given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ...data.augment import Augment
from ...models import ModelSpec
from . import RECIPES, BaseSettings, Recipe, WeightAverage, auto_batch_size, norm_and_bias_params, step_kernel


# ------------------------------------------------------------------------------------------ settings
@dataclass
class FastSettings(BaseSettings):
    lr: float | None = 11.5  # learning rate per 1,024 examples (decoupled from momentum)
    momentum: float = 0.85  # Nesterov momentum
    weight_decay: float = 0.0153  # per 1,024 examples, decoupled from the learning rate
    bias_scaler: float = 64.0  # learning-rate multiplier for batch-norm biases (not their weight decay)
    label_smoothing: float = 0.2
    whiten_bias_fraction: float = 0.3  # the whitening layer's bias trains for this fraction of the epochs
    warmup_fraction: float = 0.23  # of all steps, to the peak learning rate
    lr_start: float = 0.2  # schedule value at step 0, relative to the peak
    lr_end: float = 0.07  # schedule value at the last step
    lookahead_every: int = 5  # steps between Lookahead updates
    translate: int = 2  # pixels of random translation
    cutout: int = 0  # pixels; 0 is off
    tta_level: int = 2
    min_steps: int = 400  # small data sets get enough epochs for this many steps


@RECIPES.register("fast")
class FastRecipe(Recipe):
    name = "fast"
    loss_reduction = "sum"  # the learning rate is per example

    def __init__(self, **overrides):
        self.settings = FastSettings()
        super().__init__(**overrides)
        self.average: WeightAverage | None = None

    def resolve(self, n_train: int, image_size: int) -> None:
        s = self.settings
        s.batch_size = s.batch_size or auto_batch_size(n_train, 1024)
        steps_per_epoch = math.ceil(n_train / s.batch_size)
        s.epochs = s.epochs or max(9.9, min(200.0, math.ceil(s.min_steps / steps_per_epoch)))

    def augment(self, image_size: int) -> Augment:
        s = self.settings
        return Augment(flip=True, altflip=True, translate=min(s.translate, image_size // 8), cutout=s.cutout)

    def prepare(self, model: nn.Module) -> None:
        self.average = WeightAverage(model)

    # ------------------------------------------------------------------------------------- optimiser
    def optimizer(self, model: nn.Module, device: torch.device, spec: ModelSpec) -> torch.optim.Optimizer:
        s = self.settings
        self.early = spec.early_params(model) if spec.early_params else []
        # With Nesterov momentum m, the steady-state step is (1 + 1/(1-m)) times the gradient; dividing by it
        # (per 1,024 examples) keeps the step size independent of m, and wd independent of the learning rate.
        kilostep = 1024 * (1 + 1 / (1 - s.momentum))
        lr, wd = s.lr / kilostep, s.weight_decay * s.batch_size / kilostep
        biases, others = norm_and_bias_params(model)
        groups = [dict(params=biases, lr=lr * s.bias_scaler, weight_decay=wd / (lr * s.bias_scaler)),
                  dict(params=others, lr=lr, weight_decay=wd / lr)]
        return torch.optim.SGD(groups, momentum=s.momentum, nesterov=True, **step_kernel(device))

    # ------------------------------------------------------------------------------------- schedule
    def lr_factor(self, step: int, total: int) -> float:
        s, peak = self.settings, int(self.settings.warmup_fraction * total)
        if step < peak:
            return s.lr_start + (1 - s.lr_start) * step / peak
        return 1 + (s.lr_end - 1) * (step - peak) / max(total - peak, 1)

    def on_epoch(self, model: nn.Module, epoch: int, epochs: float) -> None:
        for p in self.early:
            p.requires_grad_(epoch < math.ceil(self.settings.whiten_bias_fraction * epochs))

    # ------------------------------------------------------------------------------------- Lookahead
    def after_step(self, model: nn.Module, step: int, total: int) -> None:
        if step % self.settings.lookahead_every == 0 or step == total:
            # The pull toward the average grows from none to strong (0.95^5 per update at the end, then full).
            decay = 1.0 if step == total else 0.95**5 * (step / total) ** 3
            self.average.update(model, decay)
            self.average.copy_to(model)

