"""Training-step throughput of fastnet: eager NCHW vs channels_last vs torch.compile, fp32 or bf16, on one device.

    python benchmarks/train_step.py [--device cpu] [--batch-size 256] [--precision fp32] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from gpuvision.device import autocast, pick_device, synchronize
from gpuvision.models import create_model


def measure(device, precision: str, channels_last: bool, compiled: bool, batch: int, steps: int) -> dict:
    torch.manual_seed(0)
    net = create_model("fastnet", num_classes=10, in_channels=3, image_size=32).to(device)
    x, y = torch.randn(batch, 3, 32, 32, device=device), torch.randint(0, 10, (batch,), device=device)
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    forward = torch.compile(net, dynamic=False) if compiled else net

    def step():
        with autocast(device, precision):
            loss = torch.nn.functional.cross_entropy(forward(x).float(), y, reduction="sum")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    started = time.perf_counter()
    step()
    synchronize(device)
    first = time.perf_counter() - started
    step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    per_step = (time.perf_counter() - started) / steps
    return {"channels_last": channels_last, "compiled": compiled, "images_per_s": batch / per_step,
            "first_step_s": first}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out-dir", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    device = pick_device(args.device)
    rows = [measure(device, args.precision, cl, comp, args.batch_size, args.steps)
            for cl, comp in ((False, False), (True, False), (True, True))]
    base = rows[0]["images_per_s"]
    print(f"fastnet training step, {device}, {args.precision}, batch {args.batch_size}")
    print(f"{'layout':<14} {'compiled':<9} {'img/s':>8} {'x eager':>8} {'first step s':>13}")
    for r in rows:
        layout = "channels_last" if r["channels_last"] else "NCHW"
        print(f"{layout:<14} {r['compiled']!s:<9} {r['images_per_s']:>8.1f} {r['images_per_s'] / base:>8.2f} "
              f"{r['first_step_s']:>13.1f}")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"train-step-{device.type}-{args.precision}.json").write_text(json.dumps({"args": vars(args),
                                                                                    "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
