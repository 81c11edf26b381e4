"""One training step, the same for the Trainer, `gpuvision bench` and benchmarks/: schedule, an optional perturbation
of the batch, forward and loss under autocast, backward (loss-scaled in fp16), optimizer step, the recipe's
after-step hook; compiled, in channels_last, with CUDA graphs, as the resolved `Acceleration` says.

    step = TrainStep.create(model, recipe, device, acceleration, model_spec("fastnet"))
    loss, logits = step(x, y, step_index, total_steps)

The step never reads a value back to the host: the caller decides when to synchronise.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn

from ..device import Acceleration, autocast, synchronize
from ..errors import BadInput
from ..models import ModelSpec
from .recipes import Recipe

# x' = perturb(forward, x, y): a batch changed before the step sees it (adversarial training); `forward` is the
# network the step trains (compiled where it is), in training mode, under no autocast.
Perturb = Callable[[Callable[[torch.Tensor], torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]


class PhaseTimer:
    """Seconds spent in each phase of the steps it watches, each phase ended by a device sync (for `bench`: the
    syncs slow a GPU step, so the Trainer never passes one)."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self._last = device, defaultdict(float), 0.0

    def start(self) -> None:
        synchronize(self.device)
        self._last = time.perf_counter()

    def mark(self, phase: str) -> None:
        synchronize(self.device)
        now = time.perf_counter()
        self.seconds[phase] += now - self._last
        self._last = now


class TrainStep:
    """Runs one optimisation step of `model` with `recipe`'s loss, schedule and hooks (see the module docstring)."""

    def __init__(self, model: nn.Module, recipe: Recipe, optimizer: torch.optim.Optimizer, device: torch.device,
                 acceleration: Acceleration, perturb: Perturb | None = None):
        self.model, self.recipe, self.optimizer, self.device = model, recipe, optimizer, device
        self.acceleration, self.perturb = acceleration, perturb
        self.precision = acceleration.precision
        if acceleration.compile:
            mode = "reduce-overhead" if acceleration.cuda_graphs else None
            # dynamic=False: the epoch's last, smaller batch gets its own static graph instead of turning every
            # later step into a slower dynamic-shape one.
            self.forward = torch.compile(model, dynamic=False, mode=mode)
        else:
            self.forward = model
        self.scaler = torch.amp.GradScaler(device.type) if self.precision == "fp16" else None

    @classmethod
    def create(cls, model: nn.Module, recipe: Recipe, device: torch.device, acceleration: Acceleration,
               spec: ModelSpec, perturb: Perturb | None = None) -> TrainStep:
        """The step for a model already on `device` in its layout: the recipe's preparation and optimizer."""
        recipe.prepare(model)
        try:
            optimizer = recipe.optimizer(model, device, spec, acceleration.optimizer_kernel)
        except RuntimeError as e:  # e.g. fused steps for a device or dtype torch has no fused kernel for
            raise BadInput(f"--optimizer-kernel {acceleration.optimizer_kernel} does not work here ({e}); use "
                           "auto") from e
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        return cls(model, recipe, optimizer, device, acceleration, perturb)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, step: int, total: int, timer: PhaseTimer | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step at schedule position `step` of `total`; returns the (device) loss and logits."""
        factor = self.recipe.lr_factor(step, total)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        if self.perturb is not None:
            x = self.perturb(self.forward, x, y)
        if self.acceleration.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs may be overwritten now
        with autocast(self.device, self.precision):
            logits = self.forward(x)
            loss = self.recipe.loss(logits.float(), y, x)
        if timer:
            timer.mark("forward")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler:
            self.scaler.scale(loss).backward()
            if timer:
                timer.mark("backward")
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if timer:
                timer.mark("backward")
            self.optimizer.step()
        self.recipe.after_step(self.model, step + 1, total)
        if timer:
            timer.mark("optimizer")
        return loss, logits
