"""The attack's picture: a few originals, their perturbations magnified, and the adversarial images, each titled
with its true or predicted class."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import atomic_write


def plot_examples(originals: np.ndarray, adversarial: np.ndarray, labels: np.ndarray, clean: np.ndarray,
                  predicted: np.ndarray, classes: list[str], eps: float, path: Path, title: str) -> None:
    """originals: uint8 N x C x H x W; adversarial: float 0..255; the perturbation is drawn with -eps black, 0 grey
    and +eps white (magnified 1 / (2 eps) times). On a Figure of its own: no pyplot, no backend switch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = max(len(originals), 1)
    fig = Figure(figsize=(1.6 * n + 0.4, 5.4))
    FigureCanvasAgg(fig)
    delta = (adversarial - originals.astype(np.float32)) / 255.0
    rows = [(originals / 255.0, [f"{classes[t]}\n(clean: {classes[c]})" for t, c in zip(labels, clean)]),
            (np.clip(0.5 + delta / (2 * eps), 0, 1), ["perturbation"] * len(originals)),
            (np.clip(adversarial / 255.0, 0, 1), [f"-> {classes[p]}" for p in predicted])]
    for r, (images, titles) in enumerate(rows):
        for i, (image, text) in enumerate(zip(images, titles)):
            ax = fig.add_subplot(3, n, r * n + i + 1)
            hwc = np.moveaxis(image, 0, -1)
            ax.imshow(hwc[:, :, 0] if hwc.shape[-1] == 1 else hwc, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_title(text, fontsize=7, color="black" if r < 2 or predicted[i] == labels[i] else "red")
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
