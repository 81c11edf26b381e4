"""One training step, the same for the Trainer, `gpuvision bench` and benchmarks/: schedule, an optional perturbation
of the batch, forward and loss under autocast, backward (loss-scaled in fp16), optimizer step, the recipe's
after-step hook; compiled, in channels_last, with CUDA graphs, as the resolved `Acceleration` says; on several
processes (DDP), in `accumulate` micro-batches, and skipping a step whose gradients are not finite.

    step = TrainStep.create(model, recipe, device, acceleration, model_spec("fastnet"))
    loss, logits = step(x, y, step_index, total_steps)

The step never reads a value back to the host: the caller decides when to synchronise.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn

from ..device import Acceleration, autocast, synchronize
from ..errors import BadInput
from ..models import ModelSpec
from . import distributed
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
    """Runs one optimisation step of `model` with `recipe`'s loss, schedule and hooks (see the module docstring).

    world_size: processes whose gradients DDP averages; the loss is scaled so the average is the single-process
    gradient of the whole global batch. accumulate: micro-batches per step (gradients summed before one update).
    `nonfinite` counts the steps skipped for non-finite gradients (a device tensor: read it at a logging point).
    """

    def __init__(self, model: nn.Module, recipe: Recipe, optimizer: torch.optim.Optimizer, device: torch.device,
                 acceleration: Acceleration, perturb: Perturb | None = None, network: nn.Module | None = None,
                 world_size: int = 1, accumulate: int = 1):
        self.model, self.recipe, self.optimizer, self.device = model, recipe, optimizer, device
        self.acceleration, self.perturb = acceleration, perturb
        self.precision, self.world_size, self.accumulate = acceleration.precision, world_size, accumulate
        self.network = network if network is not None else model  # DDP around the model on several processes
        if acceleration.compile:
            mode = "reduce-overhead" if acceleration.cuda_graphs else None
            # dynamic=False on one process: the epoch's last, smaller batch gets its own static graph instead of
            # turning every later step into a slower dynamic-shape one. A process's share of a global batch varies
            # from step to step on several, so there shapes are dynamic after the first recompile.
            self.forward = torch.compile(self.network, dynamic=None if world_size > 1 else False, mode=mode)
        else:
            self.forward = self.network
        self.scaler = torch.amp.GradScaler(device.type) if self.precision == "fp16" else None
        self.nonfinite = torch.zeros((), device=device, dtype=torch.long)
        self._found_inf = torch.zeros((), device=device)
        # A skipped step must not leave what its forward pass did either (batch-norm statistics of a NaN batch).
        self._buffers = list(model.buffers())
        self._saved = [b.detach().clone() for b in self._buffers]
        self._fused = bool(getattr(optimizer, "param_groups", [{}])[0].get("fused")) and not hasattr(
            optimizer, "optimizers")

    @classmethod
    def create(cls, model: nn.Module, recipe: Recipe, device: torch.device, acceleration: Acceleration,
               spec: ModelSpec, perturb: Perturb | None = None, world_size: int = 1, accumulate: int = 1,
               synced_norms: bool = False, ddp: bool = False) -> TrainStep:
        """The step for a model already on `device` in its layout: the recipe's preparation and optimizer; DDP
        around it on several processes (`ddp`: also for one, in a launched run)."""
        recipe.prepare(model)
        try:
            optimizer = recipe.optimizer(model, device, spec, acceleration.optimizer_kernel)
        except RuntimeError as e:  # e.g. fused steps for a device or dtype torch has no fused kernel for
            raise BadInput(f"--optimizer-kernel {acceleration.optimizer_kernel} does not work here ({e}); use "
                           "auto") from e
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        network = distributed.wrap(model, device, synced_norms) if ddp or world_size > 1 else None
        return cls(model, recipe, optimizer, device, acceleration, perturb, network, world_size, accumulate)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, step: int, total: int, global_size: int | None = None, *,
                 timer: PhaseTimer | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One step at schedule position `step` of `total` on this process's `x`, `y` (its part of a global batch
        of `global_size` images; default: all of it). Returns the loss of this process's images, in the recipe's
        reduction (a mean over them, or their sum), and their logits; both on the device."""
        factor = self.recipe.lr_factor(step, total)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor * self.recipe.group_factor(group, step, total)
        if self.perturb is not None:  # not through DDP: the attack's backward passes are not the step's
            x = self.perturb(self.forward if self.network is self.model else self.model, x, y)
        global_size = global_size or len(y)
        if self._buffers and not self.scaler:
            torch._foreach_copy_(self._saved, self._buffers)
        self.optimizer.zero_grad(set_to_none=True)
        chunks = [(xc, yc) for xc, yc in zip(x.chunk(self.accumulate), y.chunk(self.accumulate))] or [(x, y)]
        losses, logits = [], []
        for i, (xc, yc) in enumerate(chunks):
            last = i == len(chunks) - 1
            with self._no_sync(not last):
                loss, out = self._forward_backward(xc, yc, global_size, timer)
            losses.append(loss.detach() * (1 if self.recipe.loss_reduction == "sum" else len(yc)))
            logits.append(out)
        self._update(timer)
        self.recipe.after_step(self.model, step + 1, total)
        if timer:
            timer.mark("optimizer")
        loss = torch.stack(losses).sum()
        return (loss if self.recipe.loss_reduction == "sum" else loss / max(len(y), 1)), torch.cat(logits)

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor, global_size: int, timer: PhaseTimer | None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.acceleration.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs may be overwritten now
        with autocast(self.device, self.precision):
            logits = self.forward(x)
            loss = self.recipe.loss(logits.float(), y, x) if len(y) else logits.float().sum() * 0
        if timer:
            timer.mark("forward")
        # DDP averages gradients over the processes; this makes that average the gradient of the global batch as
        # one process computes it (a sum over its images, or a mean over all of them).
        scale = self.world_size * (1 if self.recipe.loss_reduction == "sum" else len(y) / global_size)
        scaled = loss * scale if scale != 1 else loss
        (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        if timer:
            timer.mark("backward")
        return loss, logits

    def _update(self, timer: PhaseTimer | None) -> None:
        """The optimizer step, skipped (on the device: no host sync) where a gradient is not finite."""
        if self.scaler:  # GradScaler finds and skips non-finite steps itself (and lowers its scale)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return
        grads = [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        self._found_inf.zero_()
        torch._amp_foreach_non_finite_check_and_unscale_(grads, self._found_inf, torch.ones((), device=self.device))
        self.nonfinite += self._found_inf.long()
        skipped = self._found_inf.bool()
        for buffer, saved in zip(self._buffers, self._saved):
            buffer.copy_(torch.where(skipped, saved, buffer))
        if self._fused:  # a fused kernel skips the whole step itself when found_inf is set
            self.optimizer.found_inf = self._found_inf
            self.optimizer.step()
            del self.optimizer.found_inf
            return
        # Other kernels: the gradients of a non-finite step become zero, so they move no weight (momentum and
        # weight decay still advance by one step).
        keep = 1 - self._found_inf
        torch._foreach_mul_([g.nan_to_num_(0.0, 0.0, 0.0) for g in grads], keep)
        self.optimizer.step()

    def _no_sync(self, skip_sync: bool):
        """DDP's no_sync for the micro-batches before the last: gradients are all-reduced once per step."""
        if skip_sync and self.network is not self.model:
            return self.network.no_sync()
        return contextlib.nullcontext()
