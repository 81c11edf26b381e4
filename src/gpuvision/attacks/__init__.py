"""L-infinity adversarial attacks (a registry: fgsm, pgd, apgd), our own implementations over any differentiable
function of a batch: the `attack` command's pixels -> logits path (`Runtime.pixel_model`) and the training step's
network on normalised batches (adversarial training). Sizes are fractions of the pixel range (8/255); `Threat`
turns them into the function's units.

    threat = Threat.pixels(8 / 255, device)
    x_adv = run_attack(model.pixel_model(), pixels, labels, threat, AttackSettings("apgd", 8 / 255))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from ..registry import Registry
from .threat import Threat

ATTACKS: Registry = Registry("attack")
DEFAULT_STEPS = {"fgsm": 1, "pgd": 10, "apgd": 100}


@dataclass(frozen=True)
class AttackSettings:
    """One attack. eps and step_size are fractions of the pixel range; None is the method's own: step_size eps for
    fgsm, 2.5 x eps / steps for pgd (Madry et al. 2018), apgd adapts its own; a random start for pgd (apgd always
    starts at one, fgsm from the image). early_stop: keep, per image, the first adversarial point found
    (evaluation); off, the attack's last iterate (training)."""

    method: str = "pgd"
    eps: float = 8 / 255
    steps: int | None = None  # None: DEFAULT_STEPS[method]
    step_size: float | None = None
    restarts: int = 1
    random_start: bool | None = None
    early_stop: bool = True

    def resolved(self) -> AttackSettings:
        ATTACKS.get(self.method)  # an unknown method is a UserError naming the known ones
        steps = self.steps or DEFAULT_STEPS[self.method]
        step = self.step_size or {"fgsm": self.eps, "pgd": 2.5 * self.eps / steps}.get(self.method)
        start = self.method == "apgd" or (self.method != "fgsm" if self.random_start is None else self.random_start)
        return replace(self, steps=steps, step_size=step, random_start=start)

    def to_json(self) -> dict:
        return {"method": self.method, "eps": self.eps, "steps": self.steps, "step_size": self.step_size,
                "restarts": self.restarts, "random_start": self.random_start}


# f(x) -> logits; an attack: (f, x, labels, threat, settings, generator) -> adversarial x, detached
Function = Callable[[torch.Tensor], torch.Tensor]


def run_attack(f: Function, x: torch.Tensor, y: torch.Tensor, threat: Threat, settings: AttackSettings,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """The adversarial batch for x (in f's input units, labels y) under `settings`."""
    settings = settings.resolved()
    return ATTACKS.get(settings.method)(f, x, y, threat, settings, generator)


from . import apgd, gradient  # noqa: E402,F401  (registers the attacks)
from .evaluation import AttackOutcome, attack_images  # noqa: E402
from .training import AdversarialTraining  # noqa: E402

__all__ = ["ATTACKS", "AdversarialTraining", "AttackOutcome", "AttackSettings", "Threat", "attack_images",
           "run_attack"]
