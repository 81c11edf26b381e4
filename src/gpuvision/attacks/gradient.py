"""FGSM (Goodfellow et al. 2015; with a random start and a 1.25 eps step, Wong et al. 2020's fast adversarial
training) and PGD (Madry et al. 2018: sign steps from a random start, projected onto the ball), with restarts."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import ATTACKS, AttackSettings, Function
from .threat import Threat


def loss_and_grad(f: Function, x: torch.Tensor, y: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits, per-image cross-entropy and its gradient with respect to x (only: no parameter gradient is computed
    or accumulated, so an attack inside a training step leaves the weights' .grad alone)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = f(x).float()
        loss = F.cross_entropy(logits, y, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return logits.detach(), loss.detach(), grad


def with_restarts(run: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor,
                  y: torch.Tensor, restarts: int) -> torch.Tensor:
    """Runs `run(x, y) -> (x_adv, fooled)` again on the images no run has fooled yet: an image keeps the first
    adversarial found, the others the last run's point."""
    adv, fooled = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        todo = (~fooled).nonzero().squeeze(1)
        if len(todo) == 0:
            break
        found, hit = run(x[todo], y[todo])
        adv[todo] = found
        fooled[todo] = hit
    return adv


@ATTACKS.register("fgsm")
def fgsm(f: Function, x: torch.Tensor, y: torch.Tensor, threat: Threat, settings: AttackSettings,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """One signed-gradient step of step_size (from a random point of the ball with random_start)."""
    start = threat.random_start(x, generator) if settings.random_start else x
    _, _, grad = loss_and_grad(f, start, y)
    return threat.project(start + threat.size(settings.step_size) * grad.sign(), x).detach()


@ATTACKS.register("pgd")
def pgd(f: Function, x: torch.Tensor, y: torch.Tensor, threat: Threat, settings: AttackSettings,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """`steps` signed-gradient steps of step_size, each projected onto the ball; `restarts` runs."""
    alpha = threat.size(settings.step_size)

    def run(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        adv = threat.random_start(x, generator) if settings.random_start else x
        found, fooled = adv.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for _ in range(settings.steps):
            logits, _, grad = loss_and_grad(f, adv, y)
            if settings.early_stop:  # the logits are those of the current point: keep it where it fools
                fooled = _keep_fooled(logits, y, adv, found, fooled)
                if fooled.all():
                    return found, fooled
            adv = threat.project(adv + alpha * grad.sign(), x)
        if settings.early_stop:
            with torch.no_grad():
                fooled = _keep_fooled(f(adv).float(), y, adv, found, fooled)
        found[~fooled] = adv[~fooled]
        return found, fooled

    if not settings.early_stop:  # training: the last iterate of one run
        return run(x, y)[0].detach()
    return with_restarts(run, x, y, settings.restarts)


def _keep_fooled(logits: torch.Tensor, y: torch.Tensor, adv: torch.Tensor, found: torch.Tensor,
                 fooled: torch.Tensor) -> torch.Tensor:
    """Record in `found` the points of `adv` that fool f for the first time; returns the updated fooled mask."""
    newly = (logits.argmax(1) != y) & ~fooled
    found[newly] = adv[newly]
    return fooled | newly
