"""Calibrated probabilities: temperature scaling (Guo et al., 2017) and the expected calibration error.

A network trained with label smoothing or heavy augmentation is under-confident (a clear image at 0.5), one trained
long is over-confident; dividing the logits by one temperature T, fitted to minimise the negative log-likelihood on
the validation split, fixes most of either without changing any prediction. `probabilities(logits, T)` is the one
place logits become probabilities (predict, serve, evaluate); T is recorded in the manifest's `calibration`, one for
plain logits and one for the recipe's test-time augmentation (averaged logits are less extreme).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..artifact import Calibration

ECE_BINS = 15  # equal-width confidence bins, as in Guo et al.
MIN_IMAGES = 50  # fewer validation images than this fit a temperature to noise
T_RANGE = (0.05, 20.0)


def probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """softmax(logits / T), in fp32."""
    return torch.softmax(logits.float() / temperature, dim=1)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor | np.ndarray) -> float:
    """The T in T_RANGE that minimises the mean negative log-likelihood of softmax(logits / T) (L-BFGS on log T)."""
    logits, labels = logits.detach().float().cpu(), torch.as_tensor(np.asarray(labels), dtype=torch.long)
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return float(np.clip(log_t.exp().item(), *T_RANGE))


def nll(logits: torch.Tensor, labels, temperature: float = 1.0) -> float:
    return float(F.cross_entropy(logits.float() / temperature, torch.as_tensor(np.asarray(labels), dtype=torch.long)))


def reliability(probs: torch.Tensor, labels, bins: int = ECE_BINS) -> dict:
    """Per equal-width bin of top-1 confidence: image count, mean confidence and accuracy; and the expected
    calibration error (their count-weighted mean gap)."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted.numpy() == np.asarray(labels)).astype(float)
    confidence = confidence.numpy().astype(float)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    mean_conf = np.divide(np.bincount(which, confidence, bins), count, out=np.zeros(bins), where=count > 0)
    accuracy = np.divide(np.bincount(which, correct, bins), count, out=np.zeros(bins), where=count > 0)
    ece = float((count * np.abs(accuracy - mean_conf)).sum() / max(len(confidence), 1))
    return {"ece": ece, "count": count.tolist(), "confidence": mean_conf.tolist(), "accuracy": accuracy.tolist()}


def expected_calibration_error(probs: torch.Tensor, labels, bins: int = ECE_BINS) -> float:
    return reliability(probs, labels, bins)["ece"]


def calibrate(logits: dict[str, torch.Tensor], labels) -> Calibration | None:
    """The manifest's `calibration` from validation logits ({"plain": ..., "tta": ...}): a temperature for each,
    with the NLL and ECE before and after; None when there are too few images or no mistake to calibrate against
    (on a perfect validation split the best T is the smallest allowed: certainty the test split would not bear)."""
    plain = logits["plain"]
    if len(plain) < MIN_IMAGES or bool((plain.argmax(1).numpy() == np.asarray(labels)).all()):
        return None
    t = fit_temperature(plain, labels)
    return Calibration(temperature=t, temperature_tta=fit_temperature(logits["tta"], labels) if "tta" in logits
                       else None, n=len(plain), nll_before=nll(plain, labels), nll_after=nll(plain, labels, t),
                       ece_before=expected_calibration_error(probabilities(plain), labels),
                       ece_after=expected_calibration_error(probabilities(plain, t), labels))


def fit_on(runtime, pixels: np.ndarray, labels: np.ndarray) -> Calibration | None:
    """`calibrate` on a Runtime's logits for these uint8 images (the validation split), with its TTA and without."""
    if len(labels) < MIN_IMAGES:
        return None
    logits = {"plain": runtime.logits(pixels)}
    if runtime.tta_level:
        logits["tta"] = runtime.logits(pixels, tta=True)
    return calibrate(logits, labels)


def temperature(calibration: Calibration | None, tta: bool) -> float:
    """The temperature for logits with or without test-time augmentation (1: not calibrated)."""
    return calibration.for_tta(tta) if calibration else 1.0
