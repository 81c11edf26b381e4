"""The main job on the embedded data: train on digits, evaluate on its held-out test split, predict a few images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .artifact import load
from .data import load_images
from .data.split import load_split
from .evaluate import evaluate
from .train.trainer import Event, train


def demo(out: str = "runs/digits-demo", on_event: Event | None = None, samples: int = 5) -> dict:
    """Train, evaluate, save and predict on scikit-learn's digits; returns where everything went."""
    result = train(data="digits", out=out, overwrite=True, on_event=on_event)
    report = evaluate(str(result.model_dir))
    # A few held-out test images as PNG files, predicted the way a user would predict their own.
    images = load_images("digits")
    test = load_split(result.model_dir / "split.json", images).test[:samples]
    sample_dir = Path(out) / "samples"
    sample_dir.mkdir(exist_ok=True)
    paths = []
    for i in test:
        path = sample_dir / f"{images.keys[i].replace(':', '-')}-label-{images.classes[images.labels[i]]}.png"
        Image.fromarray(images.images[i, 0].astype(np.uint8)).save(path)
        paths.append(str(path))
    predictions = load(result.model_dir).predict(paths, top_k=1)
    return {
        "schema_version": 1,
        "model_dir": str(result.model_dir),
        "train_seconds": round(result.seconds, 2),
        "test_accuracy": report["accuracy"],
        "report": report["report"],
        "confusion_png": report["confusion_png"],
        "predictions": [{"image": p, "predicted": top[0]["class"], "probability": top[0]["probability"]}
                        for p, top in zip(paths, predictions)],
    }
