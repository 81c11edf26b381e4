"""Evaluation: accuracy, per-class precision/recall/F1, confusion matrix (JSON and PNG), with optional TTA.

Reports go to their own directory (default `<MODEL_DIR>-eval/`): a model directory is never written after it is
made, so a signed or read-only model evaluates like any other.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from .artifact import MANIFEST, ModelDir, check_outside_models
from .config import Access, EvaluateConfig
from .data import load_images
from .data.split import recorded_split
from .errors import BadInput, NotFound, UserError, require
from .files import OutputLock, atomic_write, write_json
from .runtime import Model, open_runtime

REPORT_SCHEMA_VERSION = 1


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
    """Draw on a Figure of its own (no pyplot, no backend switch: a notebook's backend stays as it was)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matrix = np.array(report["confusion_matrix"])
    size = max(4.0, 0.45 * len(classes) + 2)
    fig = Figure(figsize=(size + 1, size))
    FigureCanvasAgg(fig)
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
    # Class names in scripts the default font lacks (CJK, emoji) draw as boxes; say nothing about each glyph.
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


def select_images(model_dir: ModelDir, data: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels (in the model's class indices) of one split, or of every image for split 'all'."""
    m = model_dir.manifest
    # Decode with the settings training used, so the cache entry training made is found; data of another size or
    # colour (--split all on new images) is conformed to the model's input instead.
    images = load_images(data, m.settings.get("image_size"))
    if images.image_shape != m.input.shape:
        images = load_images(data, m.input.size, channels=m.input.channels)
    if split == "all":
        unknown = sorted(set(images.classes) - set(m.classes))
        require(not unknown, f"{data}: class(es) {', '.join(unknown)} are not among the model's classes", BadInput)
        mapping = np.array([m.classes.index(c) for c in images.classes])
        return images.images, mapping[images.labels]
    require(split in ("test", "val"), f"unknown split {split!r}; use test, val or all", BadInput)
    indices = recorded_split(model_dir, images).part(split)
    require(len(indices) > 0, f"the {split} split is empty (trained with --val-fraction 0?); use --split test",
            BadInput)
    require(images.classes == m.classes, f"{data}: its classes differ from the model's", BadInput)
    return images.images[indices], images.labels[indices]


def recorded_data(model_dir: ModelDir, data: str | None) -> str:
    """The source to evaluate on: the given one, or the one recorded in the manifest if it is still there."""
    source = data or model_dir.manifest.split.source
    if data is None and not (source == "digits" or Path(source).exists()):
        raise NotFound(f"the model's training data {source} is gone; give --data SRC")
    return source


def report_dir(model_dir: Path, out: str | None) -> Path:
    """Where reports go: --out, else MODEL_DIR-eval; never into a model directory."""
    target = Path(out) if out else model_dir.parent / f"{model_dir.name}-eval"
    require(not (target / MANIFEST).exists(), f"--out {target} is a model directory; model directories are never "
            "written after they are made: choose another --out", BadInput)
    require(not target.is_file(), f"--out {target} is a file; give a directory", BadInput)
    check_outside_models(target)
    return target


def evaluate(config: EvaluateConfig | str, access: Access | None = None, **settings) -> dict:
    """Evaluate a model directory on its recorded split (or any labelled source); writes <split>.json + PNG into
    the report directory. `access`: the signature and data key options (see `ModelDir.open`)."""
    if isinstance(config, str):
        config = EvaluateConfig(model_dir=config, **settings)
    config.validate()
    model_dir = ModelDir.open(config.model_dir, access)
    out = report_dir(model_dir.path, config.out)
    with OutputLock(out):
        return _evaluate(config, model_dir, out)


def _evaluate(config: EvaluateConfig, model_dir: ModelDir, out: Path) -> dict:
    model = Model(model_dir, open_runtime(model_dir, config.device))
    data = recorded_data(model_dir, config.data)
    images, labels = select_images(model_dir, data, config.split)
    tta = model.manifest.tta_level > 0 if config.tta is None else config.tta
    logits = model.logits(images, tta=tta)
    report = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "model_dir": str(model_dir.path),
        "model_version": model_dir.version,
        "runtime": model.runtime.name,
        "data": data,
        "split": config.split,
        "tta": bool(tta and model.manifest.tta_level > 0),
        **classification_report(labels, logits.argmax(1).numpy(), model.classes),
    }
    try:
        report["report"] = str(out / f"{config.split}.json")
        if config.plot:
            report["confusion_png"] = str(out / f"{config.split}-confusion.png")
            plot_confusion(report, model.classes, Path(report["confusion_png"]),
                           f"{config.split}: accuracy {report['accuracy']:.4f} (n={report['n']})")
        write_json(report["report"], report)
    except OSError as e:
        raise UserError(f"--out {out}: cannot write the report there ({e.strerror}); give a writable --out") from e
    return report
