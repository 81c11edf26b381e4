"""APGD-CE (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks"), L-infinity: PGD with momentum whose step size starts at 2 eps and halves, per image, at
checkpoints where the loss stopped rising, restarting from the best point. Follows the authors' reference code
(auto-attack's autopgd_base.py); written here because it is short and runs on our differentiable path directly.
"""

from __future__ import annotations

import torch

from . import ATTACKS, AttackSettings, Function
from .gradient import _keep_fooled, loss_and_grad, with_restarts
from .threat import Threat

MOMENTUM = 0.75  # weight of the new gradient step against the last move
RHO = 0.75  # a step size is halved when the loss rose in fewer than this share of the steps since the last check


def _check_lengths(steps: int) -> tuple[int, int, int]:
    """Steps to the first check (22% of the run), the shrink of that interval per check (3%) and its floor (6%)."""
    return max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)


def _run(f: Function, x: torch.Tensor, y: torch.Tensor, threat: Threat, steps: int, early_stop: bool,
         generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One APGD-CE run: per image, the first adversarial point found, else the highest-loss point; and fooled."""
    eps = threat.radius
    adv = threat.random_start(x, generator)
    logits, loss, grad = loss_and_grad(f, adv, y)
    found, fooled = adv.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
    fooled = _keep_fooled(logits, y, adv, found, fooled)
    best, best_loss, best_grad = adv.clone(), loss.clone(), grad.clone()
    step = torch.full((len(x),) + (1,) * (x.ndim - 1), 2.0, device=x.device)  # in units of eps
    previous, previous_loss = adv.clone(), loss
    length, shrink, floor = _check_lengths(steps)
    since, rises = 0, torch.zeros(len(x), device=x.device)
    best_at_check, halved_at_check = best_loss.clone(), torch.ones(len(x), dtype=torch.bool, device=x.device)
    for i in range(steps):
        with torch.no_grad():
            a = MOMENTUM if i > 0 else 1.0
            z = threat.project(adv + step * eps * grad.sign(), x)
            adv, previous = threat.project(adv + a * (z - adv) + (1 - a) * (adv - previous), x), adv
        logits, loss, grad = loss_and_grad(f, adv, y)
        fooled = _keep_fooled(logits, y, adv, found, fooled)
        if early_stop and fooled.all():
            break  # every image is decided
        rises += loss > previous_loss
        previous_loss = loss
        better = loss > best_loss
        best[better], best_grad[better] = adv[better], grad[better]
        best_loss = torch.where(better, loss, best_loss)
        since += 1
        if since == length:  # a checkpoint: halve the step where the loss oscillates or stalled
            halve = (rises <= RHO * length) | (~halved_at_check & (best_at_check >= best_loss))
            step[halve] /= 2
            adv[halve], grad[halve] = best[halve], best_grad[halve]
            halved_at_check, best_at_check = halve, best_loss.clone()
            since, length = 0, max(length - shrink, floor)
            rises.zero_()
    found[~fooled] = best[~fooled]
    return found, fooled


@ATTACKS.register("apgd")
def apgd(f: Function, x: torch.Tensor, y: torch.Tensor, threat: Threat, settings: AttackSettings,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """APGD-CE with `steps` iterations per run, `restarts` runs from random starts."""
    return with_restarts(lambda x, y: _run(f, x, y, threat, settings.steps, settings.early_stop, generator), x, y,
                         settings.restarts)
