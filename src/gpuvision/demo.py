"""The main job on the embedded data: train on digits, evaluate on its held-out test split, predict a few images.

    runs/digits-demo/
      model/          the model directory (never written after training)
      model-eval/     test.json and test-confusion.png
      samples/        a few held-out test images as PNG files, predicted like a user's own
      demo.json       what the demo did (also its marker: --out is replaced only where it is present)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .artifact import ModelDir, check_outside_models
from .data import load_images
from .data.split import recorded_split
from .errors import BadInput, UserError, require
from .evaluate import evaluate
from .files import OutputLock, empty_dir, write_json
from .runtime import load
from .train.trainer import Event, train

MARKER = "demo.json"


def _fresh(out: Path) -> None:
    """Empty the locked `out` for the demo: only a directory an earlier demo made (or an empty one) is replaced."""
    if any(out.iterdir()):
        require((out / MARKER).is_file(), f"--out {out} exists and is not a demo directory; the demo replaces only "
                "its own output: choose another --out", BadInput)
    try:
        empty_dir(out)
        write_json(out / MARKER, {"schema_version": 1, "status": "running"})
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there ({e.strerror}); choose a writable directory") from e


def demo(out: str = "runs/digits-demo", on_event: Event | None = None, samples: int = 5) -> dict:
    """Train, evaluate, save and predict on scikit-learn's digits; returns where everything went."""
    root = Path(out)
    require(not root.is_file(), f"--out {root} is a file; give a directory", BadInput)
    check_outside_models(root)
    with OutputLock(root):
        _fresh(root)
        return _demo(root, on_event, samples)


def _demo(root: Path, on_event: Event | None, samples: int) -> dict:
    result = train(data="digits", out=str(root / "model"), on_event=on_event)
    report = evaluate(str(result.model_dir))
    images = load_images("digits")
    test = recorded_split(ModelDir.open(result.model_dir), images).test[:samples]
    sample_dir = root / "samples"
    sample_dir.mkdir(exist_ok=True)
    paths = []
    for i in test:
        path = sample_dir / f"{images.keys[i].replace(':', '-')}-label-{images.classes[images.labels[i]]}.png"
        Image.fromarray(images.images[i, 0].astype(np.uint8)).save(path)
        paths.append(str(path))
    predictions = load(result.model_dir).predict(paths, top_k=1)
    summary = {
        "schema_version": 1,
        "model_dir": str(result.model_dir),
        "train_seconds": round(result.seconds, 2),
        "test_accuracy": report["accuracy"],
        "report": report["report"],
        "confusion_png": report["confusion_png"],
        "predictions": [{"image": p, "predicted": top[0]["class"], "probability": top[0]["probability"]}
                        for p, top in zip(paths, predictions)],
    }
    write_json(root / MARKER, {**summary, "status": "done"})
    return summary
