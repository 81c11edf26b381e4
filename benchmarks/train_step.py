"""Training-step throughput of fastnet: eager NCHW vs channels_last vs torch.compile, fp32 or bf16, on one device.

    python benchmarks/train_step.py [--device cpu] [--batch-size 256] [--precision fp32] [--steps 4]
    python benchmarks/train_step.py --optimizer muon --batch-size 512 --steps 10    # the optimizer step's share

The step is the one gpuvision trains with (train/step.py) in the fast recipe (its loss and its optimizer: Nesterov
SGD, or Muon on the filters with SGD on the rest); its phases (forward, backward, optimizer) are timed between
device syncs, and the optimizer's is reported as a share of the step.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import benchlib
import torch

from gpuvision.device import acceleration, pick_device, synchronize
from gpuvision.models import create_model, model_spec
from gpuvision.train.recipes import create_recipe
from gpuvision.train.step import PhaseTimer, TrainStep


def measure(device, precision: str, channels_last: bool, compiled: bool, batch: int, steps: int,
            optimizer: str = "sgd") -> dict:
    """The training step gpuvision trains with (train/step.py), in the given acceleration settings."""
    accel = acceleration.resolve(device, precision=precision, channels_last="on" if channels_last else "off",
                                 compile="on" if compiled else "off")
    torch.manual_seed(0)
    net = create_model("fastnet", num_classes=10, in_channels=3, image_size=32).to(device,
                                                                                    memory_format=accel.memory_format)
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=accel.memory_format)
    y = torch.randint(0, 10, (batch,), device=device)
    recipe = create_recipe("fast", optimizer=optimizer, batch_size=batch)
    recipe.resolve(50_000, 32)
    step = TrainStep.create(net, recipe, device, accel, model_spec("fastnet"))
    total = 10_000  # a schedule position far from its ends: a steady learning rate

    started = time.perf_counter()
    step(x, y, 0, total)
    synchronize(device)
    first = time.perf_counter() - started
    step(x, y, 1, total)
    timer = PhaseTimer(device)
    timer.start()
    for i in range(steps):
        step(x, y, 2 + i, total, timer=timer)
    per_step = sum(timer.seconds.values()) / steps
    return {"channels_last": channels_last, "compiled": compiled, "images_per_s": batch / per_step,
            "first_step_s": first, "step_s": per_step, "optimizer_s": timer.seconds["optimizer"] / steps,
            "optimizer_share": timer.seconds["optimizer"] / steps / per_step,
            "phase_share": {k: v / steps / per_step for k, v in timer.seconds.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "muon"])
    parser.add_argument("--layouts", default="all", choices=["all", "channels_last"],
                        help="channels_last: only the eager channels_last step (the Trainer's on the CPU)")
    parser.add_argument("--out-dir", default=str(benchlib.default_results_dir()))
    args = parser.parse_args()
    device = pick_device(args.device)
    layouts = ((True, False),) if args.layouts == "channels_last" else ((False, False), (True, False), (True, True))
    rows = [measure(device, args.precision, cl, comp, args.batch_size, args.steps, args.optimizer)
            for cl, comp in layouts]
    base = rows[0]["images_per_s"]
    print(f"fastnet training step, {device}, {args.precision}, batch {args.batch_size}, optimizer {args.optimizer}")
    print(f"{'layout':<14} {'compiled':<9} {'img/s':>8} {'x first':>8} {'first step s':>13} {'optimizer %':>12}")
    for r in rows:
        layout = "channels_last" if r["channels_last"] else "NCHW"
        print(f"{layout:<14} {r['compiled']!s:<9} {r['images_per_s']:>8.1f} {r['images_per_s'] / base:>8.2f} "
              f"{r['first_step_s']:>13.1f} {100 * r['optimizer_share']:>12.2f}")
    result = {**benchlib.header("train_step", str(device)), "args": vars(args), "rows": rows}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = f"train-step-{device.type}-{args.precision}-{args.optimizer}-b{args.batch_size}.json"
    (out / name).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
