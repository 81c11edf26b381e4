"""The fast recipe: airbench94's training method (Keller Jordan, 2024), rewritten as a gpuvision recipe.

Evidence for the method (airbench94 on one A100, official CIFAR-10): 94.01% mean test accuracy over 1,000 runs
in 3.83 s; with Muon on the convolution filters (airbench94_muon), 94.01% over 200 runs in 8 epochs instead of
9.9, 2.59 s. What makes it fast, each part below in its own section:
  * whitening: the first convolution is set, not learned, from the eigenvectors of 2x2 training patches (the
    model's `data_init` hook, run by the Trainer); its bias trains for the first part of the run only;
  * decoupled hyper-parameters: learning rate and weight decay per 1,024 examples, independent of momentum;
  * Nesterov SGD with batch-norm biases on a 64x larger learning rate; with `optimizer: muon` (the default), the
    convolution filters train with Muon instead (orthogonalised updates, filters kept at a fixed norm);
  * a triangular schedule (SGD: a short warm-up to the peak at 23% of the run, then linear decay; Muon: linear
    decay from the start);
  * label smoothing 0.2; flip (alternating per epoch) and 2-pixel translation; every batch full (drop_last);
  * with SGD, Lookahead: every 5 steps the weights are pulled toward their moving average, harder near the end;
  * test-time augmentation: mirror plus two 1-pixel translations.
Settings scale with the data set: batch size and epochs are chosen from its size when not given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ...config import bounds
from ...data.augment import Augment
from ...models import ModelSpec
from . import (
    OPTIMIZERS,
    RECIPES,
    BaseSettings,
    Recipe,
    WeightAverage,
    auto_batch_size,
    epoch_steps,
    norm_and_bias_params,
    sgd_or_muon,
)


# ------------------------------------------------------------------------------------------ settings
@dataclass
class FastSettings(BaseSettings):
    # None: Muon from scratch, at every size (see BY_OPTIMIZER); SGD to fine-tune given weights (Muon's steps are
    # as large for a trained network as for a new one, so a short fine-tune with it undoes it)
    optimizer: str | None = None
    lr: float | None = None  # SGD learning rate per 1,024 examples (decoupled from momentum); None: by optimizer
    momentum: float = 0.85  # SGD's Nesterov momentum
    weight_decay: float | None = None  # per 1,024 examples, decoupled from the learning rate (SGD's parameters)
    bias_scaler: float = 64.0  # learning-rate multiplier for batch-norm biases (not their weight decay)
    whiten_bias_scaler: float | None = None  # learning-rate multiplier for the whitening layer's bias
    whiten_bias_fraction: float | None = None  # of the steps, the whitening layer's bias trains (then it is frozen)
    whiten_bias_decay: bool | None = None  # its rate decays linearly to zero over those steps (else: the schedule's)
    label_smoothing: float = 0.2
    warmup_fraction: float | None = None  # of all steps, to the peak learning rate
    lr_start: float | None = None  # schedule value at step 0, relative to the peak
    lr_end: float | None = None  # schedule value at the last step
    lookahead_every: int | None = None  # steps between Lookahead updates; 0 is off
    max_batch_size: int | None = None  # images; the batch is the largest power of two giving >= 16 steps an epoch
    min_steps: int | None = None  # small data sets get enough epochs for this many steps
    # Progressive resizing: the first low_res_fraction of the epochs (rounded up to whole ones) see images scaled by
    # low_res_scale (images of 16+ px only; 1 is off, as when fine-tuning given weights).
    low_res_scale: float | None = None
    low_res_fraction: float = 0.5
    translate: int = 2  # pixels of random translation
    brightness: float = 0.0  # per-image shift of the normalised input, uniform in +/- this; 0 is off
    contrast: float = 0.0  # per-image scale of the normalised input, uniform in 1 +/- this; 0 is off
    cutout: int = 0  # pixels; 0 is off
    tta_level: int = 2
    drop_last: bool = True  # every step a full batch (airbench's loader; one compiled shape)

    BOUNDS = {**{k: bounds(0, 1e6) for k in ("weight_decay", "bias_scaler", "whiten_bias_scaler", "lr_start",
                                             "lr_end", "min_steps", "lookahead_every")},
              **{k: bounds(0, 1) for k in ("whiten_bias_fraction", "warmup_fraction", "low_res_fraction")},
              "momentum": bounds(0, 1), "max_batch_size": bounds(1, 1 << 16), "translate": bounds(0, 1024),
              "low_res_scale": bounds(0, 1, low_open=True), "cutout": bounds(0, 4096)}


# Muon is the default from scratch at every size. Measured on CIFAR-10-JPEG (BENCHMARKS.md, issues 10 and 17): on
# 10,000 images, with progressive resizing, it beat airbench94 by 5.3 points at 0.68x its FLOPs; on all 50,000, at
# airbench94_muon's settings, it scored as airbench94_muon did and above airbench94 (same file, seeds alternating).
# Progressive resizing bought more accuracy per FLOP on 10,000 images (83.85% at 0.68x against 83.40% for 7 full-size
# epochs at 0.77x) but cost 0.25 points on 50,000 (against 8 full-size epochs): the default up to RESIZE_MAX_TRAIN.
RESIZE_MAX_TRAIN, RESIZE_SCALE = 10_000, 0.75

# What the settings left None are, by optimizer: airbench94 (SGD) and airbench94_muon, except where noted.
BY_OPTIMIZER = {
    "sgd": dict(lr=11.5, weight_decay=0.0153, epochs=9.9, whiten_bias_scaler=1.0, whiten_bias_fraction=0.3,
                whiten_bias_decay=False, warmup_fraction=0.23, lr_start=0.2, lr_end=0.07, lookahead_every=5,
                max_batch_size=1024, min_steps=400),
    # airbench94_muon: batch 2,000; the whitening bias trains for 3 of the 8 epochs at its own linear decay; weight
    # decay 2e-6 per example (x 1,024 x (1 + 1 / (1 - momentum)) in this unit)
    "muon": dict(lr=6.5, weight_decay=0.0157, epochs=8.0, whiten_bias_scaler=64.0, whiten_bias_fraction=3 / 8,
                 whiten_bias_decay=True, warmup_fraction=0.0, lr_start=1.0, lr_end=0.0, lookahead_every=0,
                 max_batch_size=2000, min_steps=150),
}
assert set(BY_OPTIMIZER) == set(OPTIMIZERS)


@RECIPES.register("fast")
class FastRecipe(Recipe):
    name = "fast"
    loss_reduction = "sum"  # the learning rate is per example
    optimizers = OPTIMIZERS

    def __init__(self, **overrides):
        self.settings = FastSettings()
        super().__init__(**overrides)
        self.average: WeightAverage | None = None

    def resolve(self, n_train: int, image_size: int, fine_tune: bool = False) -> None:
        s, given_epochs = self.settings, self.settings.epochs
        s.optimizer = s.optimizer or ("sgd" if fine_tune else "muon")
        if s.low_res_scale is None:  # SGD's and fine-tuning's epochs all run at the full size
            resize = s.optimizer == "muon" and not fine_tune and n_train <= RESIZE_MAX_TRAIN
            s.low_res_scale = RESIZE_SCALE if resize else 1.0
        for name, value in BY_OPTIMIZER[s.optimizer].items():
            if getattr(s, name) is None:
                setattr(s, name, value)
        s.batch_size = s.batch_size or auto_batch_size(n_train, s.max_batch_size)
        per_epoch = epoch_steps(n_train, s.batch_size, s.drop_last)
        s.epochs = given_epochs or max(s.epochs, min(200.0, math.ceil(s.min_steps / per_epoch)))

    def augment(self, image_size: int) -> Augment:
        s = self.settings
        side = 2 * round(s.low_res_scale * image_size / 2)
        low = image_size >= 16 and side < image_size
        sides = (side,) * math.ceil(s.low_res_fraction * math.ceil(s.epochs)) if low else ()
        return Augment(flip=True, altflip=True, translate=min(s.translate, image_size // 8), cutout=s.cutout,
                       sides=sides, brightness=s.brightness, contrast=s.contrast)

    def prepare(self, model: nn.Module) -> None:
        if self.settings.lookahead_every:
            self.average = WeightAverage(model)

    # ------------------------------------------------------------------------------------- optimiser
    def optimizer(self, model: nn.Module, device: torch.device, spec: ModelSpec, kernel: str = "foreach"
                  ) -> torch.optim.Optimizer:
        s = self.settings
        early = spec.early_params(model) if spec.early_params else []
        if s.whiten_bias_fraction == 0:  # never trained: no gradient computed for it, nor for what it feeds
            for p in early:
                p.requires_grad_(False)
            early = []
        # With Nesterov momentum m, the steady-state step is (1 + 1/(1-m)) times the gradient; dividing by it
        # (per 1,024 examples) keeps the step size independent of m, and wd independent of the learning rate.
        kilostep = 1024 * (1 + 1 / (1 - s.momentum))
        lr, wd = s.lr / kilostep, s.weight_decay * s.batch_size / kilostep
        biases, others = norm_and_bias_params(model)
        biases = [p for p in biases if all(p is not q for q in early)]

        def group(params, scaler, **tags):
            return dict(params=params, lr=lr * scaler, weight_decay=wd / (lr * scaler), **tags)

        # The early parameters have a group of their own with its own rate (group_factor); its tag survives a
        # checkpoint, where a reference to the dict would not.
        groups = [group(biases, s.bias_scaler), group(others, 1.0)] + (
            [group(early, s.whiten_bias_scaler, role="early")] if early else [])
        return sgd_or_muon(s, groups, device, kernel, momentum=s.momentum)

    # ------------------------------------------------------------------------------------- schedule
    def lr_factor(self, step: int, total: int) -> float:
        s, peak = self.settings, int(self.settings.warmup_fraction * total)
        if step < peak:
            return s.lr_start + (1 - s.lr_start) * step / peak
        return 1 + (s.lr_end - 1) * (step - peak) / max(total - peak, 1)

    def group_factor(self, group: dict, step: int, total: int) -> float:
        """The whitening layer's bias trains for the first whiten_bias_fraction of the steps only, at its own
        linear decay to zero where whiten_bias_decay (airbench94_muon), else at the schedule's rate. Then it is
        frozen: no gradient for it, nor for the first block's input (airbench's detach; a compiled step compiles
        once more), decided here, before the step, so a resumed run freezes at the same step as an unbroken one.
        Under DDP it keeps a gradient at a zero rate: DDP's reducer waits for every parameter it was built with."""
        if group.get("role") != "early":
            return 1.0
        if step >= math.ceil(self.settings.whiten_bias_fraction * total):
            if not torch.distributed.is_initialized():
                for p in group["params"]:
                    p.requires_grad_(False)
            return 0.0
        if not self.settings.whiten_bias_decay:
            return 1.0
        factor = self.lr_factor(step, total)  # TrainStep multiplies by it: this group's own rate divides it out
        end = math.ceil(self.settings.whiten_bias_fraction * total)
        return (1 - step / end) / factor if factor > 0 else 0.0

    # ------------------------------------------------------------------------------------- Lookahead
    def after_step(self, model: nn.Module, step: int, total: int) -> None:
        s = self.settings
        if self.average and (step % s.lookahead_every == 0 or step == total):
            # The pull toward the average grows from none to strong (0.95^5 per update at the end, then full).
            decay = 1.0 if step == total else 0.95**5 * (step / total) ** 3
            self.average.update(model, decay)
            self.average.copy_to(model)
