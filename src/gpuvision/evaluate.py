"""Evaluation: accuracy, balanced accuracy, macro-F1, top-5 (more than 5 classes), per-class precision/recall/F1,
the most confused class pairs and the confusion matrix; the expected calibration error before and after the
model's temperature scaling; PNGs of the confusion matrix, the reliability diagram and the most confident mistakes.
With the recipe's TTA unless told otherwise.

Reports go to their own directory (default `<MODEL_DIR>-eval/`): a model directory is never written after it is
made, so a signed or read-only model evaluates like any other.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from . import plots
from .artifact import MANIFEST, ModelDir, check_outside_models
from .config import Access, AttackConfig, EvaluateConfig, pixel_fraction
from .data import load_images
from .data.split import recorded_split
from .errors import BadInput, NotFound, UserError, require
from .files import OutputLock, write_json
from .runtime import Model, open_runtime
from .runtime.calibration import probabilities, reliability

REPORT_SCHEMA_VERSION = 1
MOST_CONFUSED = 5  # class pairs listed
WORST_MISTAKES = 16  # images in the grid of the most confident wrong predictions


def classification_report(labels: np.ndarray, predictions: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, balanced accuracy (mean recall), macro-F1, per-class precision/recall/F1/support, the most confused
    pairs of classes and the confusion matrix (rows: true class)."""
    k = len(classes)
    confusion = np.bincount(labels * k + predictions, minlength=k * k).reshape(k, k)
    true_positive = np.diag(confusion).astype(float)
    predicted, actual = confusion.sum(0), confusion.sum(1)
    precision = np.divide(true_positive, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(true_positive, actual, out=np.zeros(k), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    per_class = {c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                     "support": int(actual[i])} for i, c in enumerate(classes)}
    present = actual > 0  # classes absent from the split do not count in the means
    off = confusion - np.diag(np.diag(confusion))
    pairs = sorted(((int(off[i, j]), i, j) for i, j in zip(*np.nonzero(off))), key=lambda t: (-t[0], t[1], t[2]))
    return {"accuracy": float(true_positive.sum() / max(len(labels), 1)), "n": int(len(labels)),
            "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
            "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
            "most_confused": [{"true": classes[i], "predicted": classes[j], "count": n} for n, i, j in
                              pairs[:MOST_CONFUSED]],
            "per_class": per_class, "confusion_matrix": confusion.tolist()}


def top_k_accuracy(logits: torch.Tensor, labels: np.ndarray, k: int = 5) -> float:
    hits = (logits.topk(k, dim=1).indices == torch.as_tensor(labels)[:, None]).any(dim=1)
    return int(hits.sum()) / max(len(hits), 1)


def calibration_report(logits: torch.Tensor, labels: np.ndarray, temperature: float) -> dict:
    """Expected calibration error and reliability bins of the plain softmax and of the calibrated probabilities."""
    before = reliability(probabilities(logits), labels)
    after = reliability(probabilities(logits, temperature), labels) if temperature != 1.0 else None
    return {"temperature": temperature, "ece_before": before["ece"], "ece_after": (after or before)["ece"],
            "reliability_before": before, "reliability_after": after}


def worst_mistakes(images: np.ndarray, labels: np.ndarray, probs: torch.Tensor, classes: list[str],
                   n: int = WORST_MISTAKES) -> tuple[np.ndarray, list[str]]:
    """The n wrong predictions made with the highest confidence: their images and captions."""
    confidence, predicted = probs.max(dim=1)
    wrong = np.flatnonzero(predicted.numpy() != labels)
    worst = wrong[np.argsort(-confidence.numpy()[wrong], kind="stable")[:n]]
    captions = [f"true {classes[labels[i]]}\npredicted {classes[predicted[i]]} ({confidence[i]:.2f})" for i in worst]
    return images[worst], captions


def plot_confusion(report: dict, classes: list[str], path: Path, title: str) -> None:
    plots.confusion(np.array(report["confusion_matrix"]), classes, path, title)


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
    tta = bool(tta and model.manifest.tta_level > 0)
    report = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "model_dir": str(model_dir.path),
        "model_version": model_dir.version,
        "runtime": model.runtime.name,
        "data": data,
        "split": config.split,
        "tta": tta,
        **classification_report(labels, logits.argmax(1).numpy(), model.classes),
        "adversarial_training": model.manifest.adversarial,
    }
    if len(model.classes) > 5:
        report["top5_accuracy"] = top_k_accuracy(logits, labels, 5)
    report["calibration"] = calibration_report(logits, labels, model.runtime.temperature(tta))
    try:
        report["report"] = str(out / f"{config.split}.json")
        if config.plot:
            _plot(report, model.classes, images, labels, probabilities(logits, model.runtime.temperature(tta)), out)
        write_json(report["report"], report)
    except OSError as e:
        raise UserError(f"--out {out}: cannot write the report there ({e.strerror}); give a writable --out") from e
    return report


def _plot(report: dict, classes: list[str], images: np.ndarray, labels: np.ndarray, probs: torch.Tensor,
          out: Path) -> None:
    """The report's PNGs: confusion matrix, reliability diagram, worst mistakes (their paths go into the report)."""
    split, n = report["split"], report["n"]
    report["confusion_png"] = str(out / f"{split}-confusion.png")
    plot_confusion(report, classes, Path(report["confusion_png"]),
                   f"{split}: accuracy {report['accuracy']:.4f} (n={n})")
    c = report["calibration"]
    report["reliability_png"] = str(out / f"{split}-reliability.png")
    plots.reliability(c["reliability_before"], c["reliability_after"], Path(report["reliability_png"]),
                      f"{split}: calibration (n={n})")
    worst, captions = worst_mistakes(images, labels, probs, classes)
    if len(worst):
        report["mistakes_png"] = str(out / f"{split}-mistakes.png")
        plots.image_grid(worst, captions, Path(report["mistakes_png"]),
                         f"{split}: the {len(worst)} most confident mistakes")


def attack(config: AttackConfig | str, access: Access | None = None, **settings) -> dict:
    """Attack a model directory on its recorded split (or any labelled source), without TTA: clean and robust
    accuracy, overall and per class; writes attack-<method>-<split>.json and .png into the report directory. Only a
    PyTorch model directory can be attacked (an ONNX or int8 variant is Unsupported: it gives no gradients)."""
    from .attacks import AttackSettings, attack_images
    from .attacks.plot import plot_examples
    from .data.split import stratified_sample

    if isinstance(config, str):
        config = AttackConfig(model_dir=config, **settings)
    config.validate()
    model_dir = ModelDir.open(config.model_dir, access)
    out = report_dir(model_dir.path, config.out)
    eager = model_dir.manifest.format == "safetensors"  # attacked in fp32, eager; any other format is refused below
    backend, precision = ("eager", "fp32") if eager else (None, None)
    model = Model(model_dir, open_runtime(model_dir, config.device, backend, precision))
    net = model.pixel_model()
    data = recorded_data(model_dir, config.data)
    images, labels = select_images(model_dir, data, config.split)
    if config.limit and config.limit < len(labels):
        keep = np.sort(stratified_sample(labels, np.arange(len(labels)), config.limit, config.seed))
        images, labels = images[keep], labels[keep]
    eps = pixel_fraction(config.eps, "--eps")
    step = pixel_fraction(config.step_size, "--step-size") if config.step_size is not None else None
    settings = AttackSettings(config.method, eps, config.steps, step, config.restarts,
                              config.random_start if config.method == "pgd" else None).resolved()
    started = time.perf_counter()
    outcome = attack_images(net, images, labels, settings, model.runtime.device, config.batch_size, config.seed)
    robust, right = outcome.robust(labels), outcome.clean == labels
    support = np.bincount(labels, minlength=len(model.classes))
    per_class = {c: {"clean_accuracy": float(right[labels == i].mean()) if support[i] else 0.0,
                     "robust_accuracy": float(robust[labels == i].mean()) if support[i] else 0.0,
                     "support": int(support[i])} for i, c in enumerate(model.classes)}
    report = {"schema_version": REPORT_SCHEMA_VERSION, "model_dir": str(model_dir.path),
              "model_version": model_dir.version, "data": data, "split": config.split, "n": int(len(labels)),
              "clean_accuracy": float(right.mean()) if len(labels) else 0.0,
              "robust_accuracy": float(robust.mean()) if len(labels) else 0.0, **settings.to_json(),
              "eps_text": str(config.eps), "tta": False, "device": str(model.runtime.device),
              "seconds": round(time.perf_counter() - started, 2), "per_class": per_class,
              "adversarial_training": model.manifest.adversarial}
    name = f"attack-{config.method}-{config.split}"
    with OutputLock(out):
        try:
            report["report"] = str(out / f"{name}.json")
            if config.plot and len(outcome.example_indices):
                report["png"] = str(out / f"{name}.png")
                shown = outcome.example_indices
                plot_examples(images[shown], outcome.examples, labels[shown], outcome.clean[shown],
                              outcome.adversarial[shown], model.classes, eps, Path(report["png"]),
                              f"{config.method} at eps {config.eps}: robust accuracy "
                              f"{report['robust_accuracy']:.4f}, clean {report['clean_accuracy']:.4f} "
                              f"(n={report['n']})")
            write_json(report["report"], report)
        except OSError as e:
            raise UserError(f"--out {out}: cannot write the report there ({e.strerror}); give a writable --out") from e
    return report
