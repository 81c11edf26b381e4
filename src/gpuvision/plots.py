"""The PNG figures: training curves, confusion matrix, reliability diagram, and a grid of images (worst mistakes).

Each draws on a Figure of its own (no pyplot, no backend switch: a notebook's backend stays as it was) and is
written atomically; matplotlib is imported only here, when a figure is drawn.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from .files import atomic_write


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    """tight_layout and write; class names in scripts the default font lacks (CJK, emoji) draw as boxes without a
    warning about each glyph."""
    font_log = logging.getLogger("matplotlib.font_manager")
    level = font_log.level
    font_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Glyph .* missing from")
            warnings.filterwarnings("ignore", message="Matplotlib currently does not support")
            fig.tight_layout()
            atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    finally:
        font_log.setLevel(level)


def training_curves(history: list[dict], path: Path, kept_epoch: int | None = None, title: str = "") -> None:
    """Loss and accuracy per epoch, training and validation (where validated), side by side; `kept_epoch` marks
    the epoch whose weights were kept (--keep-best, --early-stop)."""
    fig = _figure(10, 4)
    for i, metric in enumerate(("loss", "accuracy")):
        ax = fig.add_subplot(1, 2, i + 1)
        for part, style in (("train", "-o"), ("val", "-s")):
            points = [(r["epoch"], r[f"{part}_{metric}"]) for r in history if r.get(f"{part}_{metric}") is not None]
            if points:
                ax.plot(*zip(*points), style, markersize=3, label=part)
        if kept_epoch is not None:
            ax.axvline(kept_epoch, color="grey", linestyle=":", label=f"kept (epoch {kept_epoch})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    _save(fig, path)


def confusion(matrix: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    """The confusion matrix (rows: true class), with counts in the cells up to 20 classes."""
    size = max(4.0, 0.45 * len(classes) + 2)
    fig = _figure(size + 1, size)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if len(classes) <= 20:
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                    color="white" if v > matrix.max() / 2 else "black")
    fig.colorbar(image, ax=ax)
    _save(fig, path)


def reliability(before: dict, after: dict | None, path: Path, title: str) -> None:
    """Accuracy against confidence per bin (runtime.calibration.reliability), before and after calibration; a
    calibrated model lies on the diagonal."""
    fig = _figure(5, 5)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="calibrated")
    for name, rel, style in (("softmax", before, "-o"), ("temperature-scaled", after, "-s")):
        if rel is None:
            continue
        kept = [(c, a) for c, a, n in zip(rel["confidence"], rel["accuracy"], rel["count"]) if n > 0]
        ax.plot(*zip(*kept), style, markersize=4, label=f"{name} (ECE {rel['ece']:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="upper left")
    _save(fig, path)


def image_grid(images: np.ndarray, captions: list[str], path: Path, title: str, columns: int = 4) -> None:
    """uint8 N x C x H x W images in a grid, each with its caption."""
    rows = max(1, -(-len(images) // columns))
    fig = _figure(2.6 * columns, 2.8 * rows + 0.4)
    for i, (image, caption) in enumerate(zip(images, captions)):
        ax = fig.add_subplot(rows, columns, i + 1)
        pixels = image.transpose(1, 2, 0)
        ax.imshow(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels, cmap="gray", vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_title(caption, fontsize=8)
        ax.axis("off")
    fig.suptitle(title)
    _save(fig, path)
