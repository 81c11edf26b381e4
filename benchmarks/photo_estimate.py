"""The run-time estimate on a photo folder shaped like the issue's ants/bees (issue 21), at the default size and near
the native one, side by side.

    python benchmarks/photo_estimate.py                     # 246 train + 154 val JPEGs of 500 x 333 px
    python benchmarks/photo_estimate.py --sizes default 408 --data ~/hymenoptera_data

Without --data it builds a stand-in: random-content JPEGs of the ants/bees folder's size and counts (only the run's
size and speed are looked at, not what it learns). Each size runs `gpuvision train` until its "estimated training
time" line (a few steps), then stops it; the lines it printed are the result.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib

sys.path.insert(0, str(benchlib.REPO / "tests"))


def stand_in(root: Path) -> Path:
    from helpers import make_tree

    make_tree(root, classes=("ants", "bees"), per_class=123, prefix="train", size=(500, 333), fmt="JPEG")
    make_tree(root, classes=("ants", "bees"), per_class=77, prefix="val", size=(500, 333), fmt="JPEG")
    return root


def until_estimate(data: Path, out: Path, size: str) -> dict:
    extra = [] if size == "default" else ["--image-size", size]
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "gpuvision", "train", "--data", str(data), "--out", str(out),
                             "--overwrite", *extra], stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line.rstrip())
        if line.startswith("estimated training time"):
            break
    proc.kill()
    proc.wait()
    kept = [line for line in lines if line.startswith(("training ", "images at", "estimated"))]
    return {"size": size, "seconds_to_estimate": time.perf_counter() - started, "lines": kept}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="a train/ + val/ photo folder (default: a stand-in)")
    parser.add_argument("--sizes", nargs="+", default=["default", "408"], help="'default' or a side in px")
    parser.add_argument("--out", default=None, help="results directory")
    args = parser.parse_args()
    result = {**benchlib.header("photo_estimate", "auto"), "data": args.data or "stand-in, 500 x 333 JPEGs"}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else stand_in(Path(tmp) / "photos")
        result["rows"] = [until_estimate(data, Path(tmp) / "run", size) for size in args.sizes]
    path = benchlib.write_result(result, benchlib.result_path(result, args.out))
    for row in result["rows"]:
        print(f"{row['size']}: ({row['seconds_to_estimate']:.0f} s to the estimate)", *row["lines"], sep="\n  ")
    print(path)


if __name__ == "__main__":
    main()
