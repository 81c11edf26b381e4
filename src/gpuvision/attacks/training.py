"""Adversarial training: the training step's `perturb` hook (each normalised batch replaced by its adversarial
version before the step) and the validation robust accuracy the Trainer records per validation pass, on which it
selects the best epoch (the remedy for robust overfitting, Rice et al. 2020).

    fgsm-rs   one FGSM step of 1.25 eps from a uniform random start (Wong et al. 2020, "Fast is better than free")
    pgd       `steps` PGD steps of 2.5 eps / steps from a random start (Madry et al. 2018; 7 by default)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..config import TrainConfig, pixel_fraction
from ..data.imageset import ImageSet
from ..data.input_spec import InputSpec, normalise
from ..data.split import Split, stratified_sample
from ..device import Acceleration, autocast
from . import AttackSettings, run_attack
from .threat import Threat

METHODS = ("fgsm-rs", "pgd")
PGD_TRAIN_STEPS = 7  # Madry et al.'s CIFAR-10 setting
VAL_IMAGES = 1000  # a class-stratified draw of the val split (the Trainer's)
VAL_STEPS = 5  # a short PGD: a selection signal, not the final score (`gpuvision attack` is that)
VAL_BATCH = 500


class AdversarialTraining:
    """The perturbation (call it as `perturb(forward, x, y)`) and the robust validation of one training run.

    eps is a fraction of the pixel range; the batches are normalised by `spec`, so the ball and the valid range are
    converted with it (`Threat.normalised`). The attack runs in the step's precision (autocast), with the network
    in training mode, as the papers do; its random starts come from a generator seeded with `seed`."""

    def __init__(self, method: str, eps: float, steps: int | None, spec: InputSpec, device: torch.device,
                 precision: str, seed: int, channels_last: bool = False, step_size: float | None = None):
        if method == "fgsm-rs":
            self.settings = AttackSettings("fgsm", eps, 1, step_size or 1.25 * eps, random_start=True,
                                           early_stop=False)
        else:
            steps = steps or PGD_TRAIN_STEPS
            # Madry et al.'s 2.5 eps / steps, at most eps / 2: with 2 steps of 1.25 eps, fastnet's robustness
            # collapsed within two epochs here (catastrophic overfitting), with steps of eps / 2 it grew (BENCHMARKS.md)
            self.settings = AttackSettings("pgd", eps, steps, step_size or min(2.5 * eps / steps, eps / 2),
                                           early_stop=False)
        self.settings = self.settings.resolved()
        self.method, self.spec, self.device, self.precision = method, spec, device, precision
        self.threat = Threat.normalised(eps, spec, device)
        self.validation = AttackSettings("pgd", eps, VAL_STEPS).resolved()
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.channels_last = channels_last
        self.val_pixels: torch.Tensor | None = None
        self.val_labels: torch.Tensor | None = None

    @classmethod
    def for_run(cls, config: TrainConfig, images: ImageSet, split: Split, spec: InputSpec, device: torch.device,
                acceleration: Acceleration) -> AdversarialTraining:
        """The Trainer's: its settings (--adversarial, --eps, --adv-steps, --seed), its step's precision and layout,
        and a fixed class-stratified draw of its val split to validate on."""
        step = config.adv_step_size
        adversarial = cls(config.adversarial, pixel_fraction(config.eps, "--eps"), config.adv_steps, spec, device,
                          acceleration.precision, config.seed, acceleration.channels_last,
                          pixel_fraction(step, "--adv-step-size") if step is not None else None)
        sample = np.sort(stratified_sample(images.labels, split.val, VAL_IMAGES, config.seed))
        adversarial.set_validation(images.images[sample], images.labels[sample])
        return adversarial

    def _in_precision(self, forward):
        def f(x: torch.Tensor) -> torch.Tensor:
            with autocast(self.device, self.precision):
                return forward(x).float()

        return f

    def __call__(self, forward, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return run_attack(self._in_precision(forward), x, y, self.threat, self.settings, self.generator)

    def set_validation(self, pixels: np.ndarray, labels: np.ndarray) -> None:
        """The uint8 images the robust validation attacks (a fixed draw of the val split), kept on the device."""
        self.val_pixels = torch.from_numpy(pixels).to(self.device)
        self.val_labels = torch.from_numpy(labels).to(self.device).long()

    def robust_accuracy(self, model: nn.Module) -> float:
        """Accuracy under a short PGD on the validation images, the model in eval mode (left in training mode)."""
        model.eval()
        f = self._in_precision(model)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        for start in range(0, len(self.val_labels), VAL_BATCH):
            x = normalise(self.val_pixels[start : start + VAL_BATCH], self.spec, channels_last=self.channels_last)
            y = self.val_labels[start : start + VAL_BATCH]
            adv = run_attack(f, x, y, self.threat, self.validation, self.generator)
            with torch.no_grad():
                correct += (f(adv).argmax(1) == y).sum()
        model.train()
        return correct.item() / max(len(self.val_labels), 1)

    def record(self) -> dict:
        """What the manifest records: the training attack, and the validation attack the best epoch is chosen by."""
        return {"method": self.method, **{k: v for k, v in self.settings.to_json().items() if k != "method"},
                "validation": {**self.validation.to_json(), "images": len(self.val_labels)
                               if self.val_labels is not None else 0}}

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
