"""Evaluation: accuracy, per-class precision/recall/F1, confusion matrix (JSON and PNG), with optional TTA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .artifact import Model, load
from .config import EvaluateConfig
from .data import load_images
from .data.split import load_split
from .device import autocast
from .errors import UserError, require
from .files import write_json

REPORT_SCHEMA_VERSION = 1


@torch.no_grad()
def tta_logits(net, x: torch.Tensor, level: int, device: torch.device, precision: str) -> torch.Tensor:
    """Logits averaged over test-time augmentations: 0 none, 1 mirror, 2 mirror and two 1-pixel translations."""
    with autocast(device, precision):
        if level == 0:
            return net(x).float()
        mirrored = 0.5 * (net(x).float() + net(x.flip(-1)).float())
        if level == 1:
            return mirrored
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = [padded[:, :, :h, :w], padded[:, :, 2:, 2:]]
        translated = sum(0.5 * (net(s).float() + net(s.flip(-1)).float()) for s in shifted) / len(shifted)
        return 0.5 * mirrored + 0.5 * translated


def classification_report(labels: np.ndarray, predictions: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix (rows: true class)."""
    k = len(classes)
    confusion = np.bincount(labels * k + predictions, minlength=k * k).reshape(k, k)
    true_positive = np.diag(confusion).astype(float)
    predicted, actual = confusion.sum(0), confusion.sum(1)
    precision = np.divide(true_positive, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(true_positive, actual, out=np.zeros(k), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    per_class = {c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                     "support": int(actual[i])} for i, c in enumerate(classes)}
    return {"accuracy": float(true_positive.sum() / max(len(labels), 1)), "n": int(len(labels)),
            "per_class": per_class, "confusion_matrix": confusion.tolist()}


def plot_confusion(report: dict, classes: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .files import atomic_write

    matrix = np.array(report["confusion_matrix"])
    size = max(4.0, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
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
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)


def select_images(model: Model, data: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels (in the model's class indices) of one split, or of every image for split 'all'."""
    # Decode with the settings training used, so the cache entry training made is found; data of another size or
    # colour (--split all on new images) is conformed to the model's input instead.
    images = load_images(data, model.manifest.get("settings", {}).get("image_size"))
    if images.image_shape != (model.channels, *model.image_size):
        images = load_images(data, tuple(model.image_size), channels=model.channels)
    if split == "all":
        unknown = sorted(set(images.classes) - set(model.classes))
        require(not unknown, f"{data}: class(es) {', '.join(unknown)} are not among the model's classes")
        mapping = np.array([model.classes.index(c) for c in images.classes])
        return images.images, mapping[images.labels]
    require(split in ("test", "val"), f"unknown split {split!r}; use test, val or all")
    saved = model.directory / model.manifest["split"]["file"]
    indices = load_split(saved, images).part(split)
    require(len(indices) > 0, f"the {split} split is empty (trained with --val-fraction 0?); use --split test")
    require(images.classes == model.classes, f"{data}: its classes differ from the model's")
    return images.images[indices], images.labels[indices]


def evaluate(config: EvaluateConfig | str, **settings) -> dict:
    """Evaluate a model directory on its recorded split (or any labelled source); writes eval/<split>.json + PNG."""
    if isinstance(config, str):
        config = EvaluateConfig(model_dir=config, **settings)
    model = load(config.model_dir)
    data = config.data or model.manifest["split"]["source"]
    if config.data is None and not (data == "digits" or Path(data).exists()):
        raise UserError(f"the training data {data} is gone; give --data SRC")
    images, labels = select_images(model, data, config.split)
    tta = model.tta_level > 0 if config.tta is None else config.tta
    logits = model.logits(torch.from_numpy(np.ascontiguousarray(images)), tta=tta)
    report = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "model_dir": str(model.directory),
        "data": data,
        "split": config.split,
        "tta": bool(tta and model.tta_level > 0),
        **classification_report(labels, logits.argmax(1).numpy(), model.classes),
    }
    out = model.directory / "eval"
    out.mkdir(exist_ok=True)
    report["report"] = str(out / f"{config.split}.json")
    if config.plot:
        report["confusion_png"] = str(out / f"{config.split}-confusion.png")
        plot_confusion(report, model.classes, Path(report["confusion_png"]),
                       f"{config.split}: accuracy {report['accuracy']:.4f} (n={report['n']})")
    write_json(report["report"], report)
    return report
