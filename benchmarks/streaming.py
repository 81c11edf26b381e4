"""Data larger than device memory: ResNet-18 at 128 px on CIFAR-10-JPEG, streamed from (pinned) host memory.

Trains a bounded number of steps with the streaming loader and with the device-resident loader, each after an
untimed warm-up run of a few steps (which pays torch.compile and cuDNN's autotuning), and reports images/s and the
share of step time the loop waited for data (goal: under 10%). 50,000 x 3 x 128 x 128 uint8 is
2.4 GB: it fits host memory, not necessarily a small GPU's.

    python benchmarks/streaming.py                      # whichever device is present
    python benchmarks/streaming.py --device cuda --steps 200 --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import benchlib

import gpuvision
from gpuvision.data import load_images


def run(data: str, loader: str, args, steps: int) -> dict:
    epochs = steps * args.batch_size / args.train_images
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = gpuvision.train(data=data, out=out, overwrite=True, model=args.model, image_size=args.image_size,
                                 epochs=epochs, batch_size=args.batch_size, device=args.device, loader=loader,
                                 val_fraction=args.val_fraction, eval_every=0, checkpoint_every=0,
                                 compile=args.compile)
        wall = time.perf_counter() - started
        record = json.loads((Path(out) / "metrics.jsonl").read_text().splitlines()[-1])
    return {"loader": loader, "device": result.manifest.training.device,
            "precision": result.manifest.training.precision,
            "steps": record["step"], "images_per_s": record["images_per_s"],
            "data_wait_share": record.get("data_wait_share"), "train_seconds": record["seconds"], "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(benchlib.DEFAULT_DATA))
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per loader (bounded run)")
    parser.add_argument("--warmup-steps", type=int, default=5, help="untimed steps per loader before")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", default="auto")
    parser.add_argument("--val-fraction", type=float, default=0.0)
    parser.add_argument("--train-images", type=int, default=None, help="training images in the data (for epochs)")
    parser.add_argument("--out-dir", default=str(benchlib.default_results_dir()))
    args = parser.parse_args()

    started = time.perf_counter()
    images = load_images(args.data, args.image_size)  # decode (or read the cache) once, outside the timings
    decode_s = time.perf_counter() - started
    args.train_images = args.train_images or int((~images.given_test).sum() * (1 - args.val_fraction))
    rows = []
    for loader in ("stream", "device"):
        run(args.data, loader, args, args.warmup_steps)
        rows.append(run(args.data, loader, args, args.steps))
    print(f"\n{args.model} at {args.image_size} px, batch {args.batch_size}, {args.steps} steps; data "
          f"{images.images.nbytes / 2**30:.2f} GiB uint8 (decode/cache load {decode_s:.1f} s)")
    print(f"{'loader':<8} {'device':<8} {'precision':<9} {'img/s':>8} {'data wait':>10}")
    for r in rows:
        wait = "-" if r["data_wait_share"] is None else f"{100 * r['data_wait_share']:.1f}%"
        print(f"{r['loader']:<8} {r['device']:<8} {r['precision']:<9} {r['images_per_s']:>8.1f} {wait:>10}")
    report = {**benchlib.header("streaming", rows[0]["device"]), "args": vars(args),
              "data_gib": images.images.nbytes / 2**30, "decode_s": decode_s, "rows": rows}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"streaming-{rows[0]['device'].split(':')[0]}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
