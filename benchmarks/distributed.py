"""Scaling of the training step over processes (DDP, gloo on the CPU; NCCL on GPUs), at equal per-process batch.

    python benchmarks/distributed.py [--model fastnet] [--batch-size 128] [--steps 10] [--procs 1 2]

Each process count runs under a real torchrun (one thread per process on the CPU), the step gpuvision trains with
(train/step.py, DDP around the model), on synthetic 32 px images. Reported: images/s of all processes, the
efficiency throughput(N) / (N x throughput(1)), the step's seconds, and the all-reduce milliseconds of the model's
gradient volume (timed on its own, the same bytes DDP sends per step). Then a projection on paper, assumptions
printed: ring all-reduce time 2 (N-1)/N x bytes / bandwidth added to each step (no overlap with backward: a bound).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import benchlib

WORKER = Path(__file__).with_name("ddp_step.py")  # what each process runs


def run(procs: int, args) -> dict:
    out = Path(args.out_dir) / f".distributed-{procs}.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}", str(WORKER),
           args.model, str(args.batch_size), str(args.steps), str(out)]
    subprocess.run(cmd, env=env, check=True, timeout=3600)
    return json.loads(out.read_text())


def project(row: dict, gpus: int, bandwidth_gbs: float, step_s: float) -> float:
    """Efficiency on `gpus` devices when each step adds a ring all-reduce at `bandwidth_gbs` (no overlap)."""
    comm = 2 * (gpus - 1) / gpus * row["grad_bytes"] / (bandwidth_gbs * 1e9)
    return step_s / (step_s + comm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fastnet")
    parser.add_argument("--batch-size", type=int, default=128, help="images per process")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=1, help="threads per process")
    parser.add_argument("--gpu-step-ms", type=float, default=8.0,
                        help="assumed GPU step time at this per-device batch for the projection (an assumption)")
    parser.add_argument("--out-dir", default=str(benchlib.default_results_dir()))
    args = parser.parse_args()
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = [run(n, args) for n in args.procs]
    base = rows[0]["images_per_s"] / rows[0]["world_size"]
    for r in rows:
        r["efficiency"] = r["images_per_s"] / (r["world_size"] * base)
    print(benchlib.markdown_table(
        ["processes", "images/s (all)", "step s", "efficiency", "all-reduce ms", "gradient MB"],
        [[r["world_size"], f"{r['images_per_s']:.1f}", f"{r['step_s']:.3f}", f"{r['efficiency']:.3f}",
          f"{r['allreduce_ms']:.2f}", f"{r['grad_bytes'] / 1e6:.1f}"] for r in rows]))
    step_s = args.gpu_step_ms / 1e3
    projections = {"8 GPUs, one node, NVLink (NCCL bus bandwidth ~350 GB/s)": project(rows[0], 8, 350, step_s),
                   "4 nodes x 8 GPUs, 100 Gb/s between nodes (12.5 GB/s, the slowest link)":
                       project(rows[0], 32, 12.5, step_s)}
    print(f"\nprojection (assumed GPU step {args.gpu_step_ms} ms, all-reduce not overlapped with backward):")
    for name, eff in projections.items():
        print(f"  {name}: efficiency {eff:.3f}")
    result = {**benchlib.header("distributed", rows[0]["device"]), "args": vars(args), "rows": rows,
              "projections": projections, "wall_s": time.perf_counter() - started}
    path = benchlib.write_result(result, benchlib.result_path(result, Path(args.out_dir)))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
