"""The main job on the embedded data: train on digits, evaluate on its held-out test split, predict a few images.

Each run writes a new directory, so an earlier result stays whole until a new one is complete; then `latest`
points to the new one and the earlier runs go. A run that stops early (Ctrl-C, an error) says so in its run.json;
one killed outright is marked interrupted by the next demo.

    runs/digits-demo/
      demo.json             marks the demo's directory (--out is only ever written where it is) and names the latest
      latest -> 20261105-142233      a link to the last complete run
      20261105-142233/
        model/              the model directory (never written after training)
        model-eval/         test.json and the PNGs (confusion matrix, reliability diagram, worst mistakes)
        samples/            a few held-out test images as PNG files, predicted like a user's own
        run.json            status (running, interrupted or done) and what the run did
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image

from .artifact import ModelDir, check_outside_models
from .data import load_images
from .data.split import recorded_split
from .errors import BadInput, require
from .evaluate import evaluate
from .files import OutputLock, write_json
from .runtime import load
from .train.trainer import Event, train

MARKER, RUN, LATEST = "demo.json", "run.json", "latest"


def _status(run: Path) -> dict:
    try:
        return json.loads((run / RUN).read_text())
    except (OSError, ValueError):
        return {}


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _prepare(root: Path) -> list[Path]:
    """Make `root` the demo's directory (only an empty one or a demo's is used) and return its earlier runs; a
    run whose process is gone while it says it is running is marked interrupted."""
    if root.is_dir() and any(root.iterdir()):
        require((root / MARKER).is_file(), f"--out {root} exists and is not a demo directory; the demo writes only "
                "into its own: choose another --out", BadInput)
        if (root / "model").is_dir() and not (root / LATEST).exists():  # an older gpuvision's single-run layout
            shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    if not (root / MARKER).is_file():
        write_json(root / MARKER, {"schema_version": 2})
    runs = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and (p / RUN).is_file())
    for run in runs:
        state = _status(run)
        if state.get("status") == "running" and not _alive(state.get("pid")):
            write_json(run / RUN, {**state, "status": "interrupted", "error": "the process ended before the run did"})
    return runs


def _new_run(root: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run, n = root / stamp, 1
    while run.exists():
        n += 1
        run = root / f"{stamp}-{n}"
    run.mkdir()
    write_json(run / RUN, {"schema_version": 1, "status": "running", "pid": os.getpid(),
                           "started": datetime.now().astimezone().isoformat(timespec="seconds")})
    return run


def _publish(root: Path, run: Path, earlier: list[Path]) -> None:
    """Point `latest` at the complete run (replaced atomically), then remove the earlier runs no process runs."""
    link = root / f".{LATEST}.tmp"
    link.unlink(missing_ok=True)
    try:
        os.symlink(run.name, link, target_is_directory=True)
        os.replace(link, root / LATEST)
    except OSError:  # no symbolic links here (some Windows setups): demo.json still names the latest run
        link.unlink(missing_ok=True)
    write_json(root / MARKER, {"schema_version": 2, "latest": run.name})
    for old in earlier:
        if _status(old).get("status") != "running" or not _alive(_status(old).get("pid")):
            shutil.rmtree(old, ignore_errors=True)


def demo(out: str = "runs/digits-demo", on_event: Event | None = None, samples: int = 5) -> dict:
    """Train, evaluate, save and predict on scikit-learn's digits in a new run directory; returns where everything
    went (`run_dir`; `<out>/latest` points to it once it is complete)."""
    root = Path(out)
    require(not root.is_file(), f"--out {root} is a file; give a directory", BadInput)
    check_outside_models(root)
    with OutputLock(root):
        earlier = _prepare(root)
        run = _new_run(root)
        try:
            summary = _run(run, on_event, samples)
        except BaseException as e:  # Ctrl-C included: the run says it did not finish, then the error goes on
            write_json(run / RUN, {**_status(run), "status": "interrupted", "error": str(e) or type(e).__name__})
            raise
        write_json(run / RUN, {**_status(run), **summary, "status": "done"})
        _publish(root, run, earlier)
    return {**summary, "latest": str(root / LATEST)}


def _run(run: Path, on_event: Event | None, samples: int) -> dict:
    result = train(data="digits", out=str(run / "model"), on_event=on_event, verbose=False)
    report = evaluate(str(result.model_dir))
    images = load_images("digits")
    test = recorded_split(ModelDir.open(result.model_dir), images).test[:samples]
    sample_dir = run / "samples"
    sample_dir.mkdir()
    paths, truth = [], []
    for i in test:
        truth.append(images.classes[images.labels[i]])
        path = sample_dir / f"{images.keys[i].replace(':', '-')}-label-{truth[-1]}.png"
        Image.fromarray(images.images[i, 0].astype(np.uint8)).save(path)
        paths.append(str(path))
    predictions = load(result.model_dir).predict(paths, top_k=1)
    return {
        "schema_version": 1,
        "run_dir": str(run),
        "model_dir": str(result.model_dir),
        "train_seconds": round(result.seconds, 2),
        "test_accuracy": report["accuracy"],
        "report": report["report"],
        "confusion_png": report["confusion_png"],
        "predictions": [{"image": p, "label": label, "predicted": top[0]["class"], "probability": top[0]["probability"],
                         "correct": top[0]["class"] == label} for p, label, top in zip(paths, truth, predictions)],
    }
