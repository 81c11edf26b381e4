"""Attacking a set of images through a pixels -> logits function, batch by batch on its device: what the `attack`
command and the robustness benchmark report."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import AttackSettings, Function, run_attack
from .threat import Threat


@dataclass
class AttackOutcome:
    """Per image: the clean and the adversarial prediction (an image misclassified clean is not attacked and counts
    as not robust); for the first `keep` images classified correctly, their index and adversarial pixels (float
    0..255, N x C x H x W), for the picture."""

    clean: np.ndarray
    adversarial: np.ndarray
    example_indices: np.ndarray
    examples: np.ndarray

    def robust(self, labels: np.ndarray) -> np.ndarray:
        """Which images the attack failed to fool (and were right to begin with)."""
        return (self.clean == labels) & (self.adversarial == labels)


def attack_images(f: Function, pixels: np.ndarray | torch.Tensor, labels: np.ndarray, settings: AttackSettings,
                  device: torch.device, batch_size: int = 256, seed: int = 0, keep: int = 8) -> AttackOutcome:
    """Attack N x C x H x W uint8 (or 0..255 float) images with their labels; random starts drawn from `seed`.

    Only images classified correctly are attacked (as AutoAttack does): the others are already adversarial."""
    threat = Threat.pixels(settings.eps, device)
    generator = torch.Generator(device=device).manual_seed(seed)
    pixels = torch.as_tensor(pixels)
    clean, adversarial, kept, examples = [], [], [], []
    for start in range(0, len(pixels), batch_size):
        x = pixels[start : start + batch_size].to(device).float()
        y = torch.as_tensor(labels[start : start + batch_size], device=device).long()
        with torch.no_grad():
            predicted = f(x).argmax(1)
        right = (predicted == y).nonzero().squeeze(1)
        x_adv = x.clone()
        if len(right):
            x_adv[right] = run_attack(f, x[right], y[right], threat, settings, generator)
        with torch.no_grad():
            after = f(x_adv).argmax(1)
        clean.append(predicted.cpu())
        adversarial.append(after.cpu())
        for i in right[: keep - len(kept)].tolist():
            kept.append(start + i)
            examples.append(x_adv[i].cpu())
    shape = (0, *pixels.shape[1:])
    return AttackOutcome(torch.cat(clean).numpy() if clean else np.zeros(0, np.int64),
                         torch.cat(adversarial).numpy() if adversarial else np.zeros(0, np.int64),
                         np.array(kept, dtype=np.int64),
                         torch.stack(examples).numpy() if examples else np.zeros(shape, np.float32))
