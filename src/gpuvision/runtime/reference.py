"""Reference figures: what a model did on its test split, recorded in the manifest when it is made, so that
serving can compare production traffic with them (accuracy, per-class recall and predicted-class counts, and the
distributions of top-1 confidence and of image brightness, each a histogram over 20 equal bins of 0..1)."""

from __future__ import annotations

import numpy as np
import torch

from ..artifact import Reference

BINS = 20


def histogram(values: np.ndarray) -> list[int]:
    """Counts over BINS equal bins of [0, 1] (1.0 falls in the last bin)."""
    clipped = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    return np.bincount(np.minimum((clipped * BINS).astype(np.int64), BINS - 1), minlength=BINS).tolist()


def confidence(logits: torch.Tensor | np.ndarray) -> np.ndarray:
    """Top-1 softmax probability per row: 1 / sum(exp(logits - max)). In numpy: serving calls this on the event
    loop for every batch, where torch's small ops can wait milliseconds on OpenMP threads of a busy machine."""
    array = np.asarray(logits, dtype=np.float64)
    return 1.0 / np.exp(array - array.max(axis=1, keepdims=True)).sum(axis=1)


def brightness(pixels: np.ndarray | torch.Tensor) -> np.ndarray:
    """Mean pixel value per image of uint8 pixels, in 0..1 (an integer sum: faster than a float mean)."""
    array = pixels.numpy() if isinstance(pixels, torch.Tensor) else pixels
    per_image = int(np.prod(array.shape[1:]))
    return array.reshape(len(array), per_image).sum(axis=1, dtype=np.uint64) / (255.0 * max(per_image, 1))


def reference_figures(logits: torch.Tensor, labels: np.ndarray, pixels: np.ndarray, split: str = "test",
                      tta: bool = False, runtime: str | None = None) -> Reference:
    """The manifest's `reference` from a model's logits on its test images (measured with TTA or not, on `runtime`)."""
    labels, k = np.asarray(labels), logits.shape[1]
    predicted = logits.argmax(1).numpy()
    hits = predicted == labels
    support = np.bincount(labels, minlength=k)
    recall = np.divide(np.bincount(labels[hits], minlength=k), support, out=np.zeros(k), where=support > 0)
    return Reference(split=split, n=len(labels), accuracy=float(hits.sum()) / max(len(labels), 1), tta=tta,
                     bins=BINS, confidence_histogram=histogram(confidence(logits)),
                     brightness_histogram=histogram(brightness(pixels)),
                     predicted=np.bincount(predicted, minlength=k).tolist(), recall=recall.tolist(), runtime=runtime)
