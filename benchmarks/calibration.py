"""Calibration: expected calibration error on CIFAR-10-JPEG's test images before and after temperature scaling.

    python benchmarks/calibration.py --per-class 1000 --device cpu      # 10,000 training images, the full test set

Trains with gpuvision's defaults (the fast recipe) on the first `per-class` training JPEGs of each class (10% of them
held out as the validation split, on which the temperature is fitted), then evaluates on the archive's 10,000 test
images with and without TTA: accuracy, NLL and ECE (15 bins) of the plain softmax and of the calibrated
probabilities.
"""

from __future__ import annotations

import argparse
import tarfile
import tempfile
import time
from pathlib import Path

import benchlib

import gpuvision
from gpuvision.evaluate import select_images
from gpuvision.runtime.calibration import nll


def subset(archive: Path, per_class: int, root: Path) -> Path:
    """train/<class>/ with the first `per_class` training JPEGs of each class; test/ with every test JPEG."""
    taken: dict[str, int] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3:
                continue
            if parts[0] == "train":
                if taken.get(parts[1], 0) >= per_class:
                    continue
                taken[parts[1]] = taken.get(parts[1], 0) + 1
            path = root / member.name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(tar.extractfile(member).read())
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(benchlib.DEFAULT_DATA))
    parser.add_argument("--per-class", type=int, default=1000, help="training images per class")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="results directory")
    args = parser.parse_args()
    result = {**benchlib.header("calibration", args.device), "per_class": args.per_class}
    with tempfile.TemporaryDirectory() as tmp:
        data = subset(Path(args.data), args.per_class, Path(tmp) / "cifar")
        started = time.perf_counter()
        run = gpuvision.train(data=str(data), out=str(Path(tmp) / "model"), device=args.device, verbose=True)
        result["train_seconds"] = time.perf_counter() - started
        m = run.manifest
        result["model"] = {"architecture": m.architecture["name"], "recipe": m.recipe["name"],
                           "label_smoothing": m.recipe.get("label_smoothing"), "epochs": m.recipe["epochs"],
                           "split": m.split.sizes, "calibration": m.calibration and m.calibration.__dict__}
        rows = []
        model = gpuvision.load(run.model_dir, device=args.device)
        for tta in (False, True):
            report = gpuvision.evaluate(str(run.model_dir), tta=tta, plot=False, device=args.device,
                                        out=str(Path(tmp) / f"eval-{tta}"))
            c = report["calibration"]
            images, labels = select_images(model.model_dir, str(data), "test")
            logits = model.logits(images, tta=tta)
            rows.append({"tta": tta, "n": report["n"], "accuracy": report["accuracy"], "temperature": c["temperature"],
                         "nll_before": nll(logits, labels), "nll_after": nll(logits, labels, c["temperature"]),
                         "ece_before": c["ece_before"], "ece_after": c["ece_after"]})
    result["rows"] = rows
    path = benchlib.write_result(result, benchlib.result_path(result, args.out))
    print("| test split | accuracy | temperature | NLL before -> after | ECE before -> after |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} images, {'TTA' if r['tta'] else 'no TTA'} | {r['accuracy']:.4f} | {r['temperature']:.3f} "
              f"| {r['nll_before']:.3f} -> {r['nll_after']:.3f} | {r['ece_before']:.4f} -> {r['ece_after']:.4f} |")
    print(path)


if __name__ == "__main__":
    main()
