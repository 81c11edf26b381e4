"""The compression report: parameters, file size, FLOPs, test accuracy and speed of the original and each variant.

Rows: `original` is the parent run the plain way (eager fp32, as `gpuvision.load` runs it); `original-fast` is the
parent on its fastest unquantised runtime (compiled, bf16 where the device runs bf16 fast); then each variant on the
fastest runtime it supports, which its manifest records so predict and serve use it too. Accuracy is top-1 on the
parent's test split without test-time augmentation, computed on the same runtime as the timings. Latency is per
call at batch 1, images/s at batch 64, each after warm-up, median (and p90) of the repeats, on this process's
threads; when a CUDA GPU is present, the PyTorch models are timed there as well.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..artifact import compile_for_inference, read_manifest, runtime_loader
from ..device import autocast, cpu_has_fast_bf16, synchronize
from ..files import atomic_write, write_json
from ..models import count_params
from . import Context, flops_of, write_variant

WARMUP = 3
BATCH = 64


# ------------------------------------------------------------------------------------------ runtimes
def _torch_runtime(net: torch.nn.Module, device: torch.device, precision: str, compiled: bool) -> Callable:
    net = net.to(device=device, memory_format=torch.channels_last).eval()
    forward = compile_for_inference(net) if compiled else net

    @torch.no_grad()
    def run(x: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            return forward(x.to(device).contiguous(memory_format=torch.channels_last)).float()

    return run


def runtimes(directory: Path, manifest: dict, compile: bool, device: torch.device | None = None) -> dict:
    """name -> factory of a callable (normalised fp32 N x C x H x W on the CPU -> logits) for every runtime the
    model supports here."""
    device = device or torch.device("cpu")
    if manifest.get("format") != "safetensors":
        net = runtime_loader(manifest["format"])(directory, manifest, device)
        return {manifest["runtime"]: lambda: net}

    def eager_net():
        return runtime_loader("safetensors")(directory, {**manifest, "runtime": "eager"}, device)

    precisions = ["fp32"] + (["bf16"] if device.type == "cuda" or cpu_has_fast_bf16() else [])
    found = {}
    for precision in precisions:
        found[f"eager-{precision}"] = lambda p=precision: _torch_runtime(eager_net(), device, p, False)
        if compile:
            found[f"inductor-{precision}"] = lambda p=precision: _torch_runtime(eager_net(), device, p, True)
    return found


# ------------------------------------------------------------------------------------------ timing
def time_calls(run: Callable, x: torch.Tensor, repeats: int, device: torch.device) -> list[float]:
    """Seconds per call of run(x), after warm-up (which also triggers any compilation)."""
    for _ in range(WARMUP):
        run(x)
    synchronize(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(x)
        synchronize(device)
        times.append(time.perf_counter() - started)
    return times


def speed(run: Callable, x: torch.Tensor, repeats: int, device: torch.device) -> dict:
    """Median and p90 latency at batch 1 (ms) and images/s at batch 64 (from the median call)."""
    b1 = np.array(time_calls(run, x[:1], repeats, device)) * 1e3
    b64 = np.median(time_calls(run, x[:BATCH], max(5, repeats // 3), device))
    return {"latency_ms_b1": float(np.median(b1)), "latency_ms_b1_p90": float(np.percentile(b1, 90)),
            "images_per_s_b64": BATCH / float(b64)}


@torch.no_grad()
def accuracy(run: Callable, inputs: torch.Tensor, labels: np.ndarray) -> float:
    """Top-1 accuracy, in batches of 64 (the last padded, so a compiled runtime sees only the timed shapes)."""
    correct = 0
    for start in range(0, len(inputs), BATCH):
        x = inputs[start : start + BATCH]
        n = len(x)
        if n < BATCH:
            x = torch.cat([x, x[-1:].expand(BATCH - n, *x.shape[1:])])
        predicted = run(x)[:n].argmax(1).cpu().numpy()
        correct += int((predicted == labels[start : start + n]).sum())
    return correct / max(len(labels), 1)


# ------------------------------------------------------------------------------------------ rows
def _describe(directory: Path, manifest: dict, example: torch.Tensor) -> dict:
    size = sum((directory / name).stat().st_size for name in manifest["files"])
    if manifest.get("format") == "safetensors":
        net = runtime_loader("safetensors")(directory, {**manifest, "runtime": "eager"}, torch.device("cpu"))
        net = net.to(memory_format=torch.contiguous_format)
        return {"params": count_params(net), "flops": flops_of(net, example.contiguous()), "size_bytes": size}
    return {"params": manifest["params"], "flops": manifest["flops"], "size_bytes": size}


def measure(ctx: Context, name: str, directory: Path, candidates: dict) -> dict:
    """One report row: the fastest candidate runtime at batch 64, with its latency and accuracy."""
    manifest = read_manifest(directory)
    inputs = ctx.normalised(ctx.test_images, manifest)
    row = {"name": name, "dir": str(directory), "format": manifest.get("format", "safetensors"),
           **_describe(directory, manifest, inputs[:1])}
    speeds, runs = {}, {}
    for runtime, make in candidates.items():
        ctx.emit("stage", stage=name, text=f"measuring {name} on {runtime}")
        runs[runtime] = make()
        speeds[runtime] = speed(runs[runtime], inputs, ctx.config.latency_repeats, torch.device("cpu"))
    best = max(speeds, key=lambda r: speeds[r]["images_per_s_b64"])
    row.update(runtime=best, **speeds[best], accuracy=accuracy(runs[best], inputs, ctx.test_labels),
               runtimes_tried={r: s for r, s in speeds.items()})
    if torch.cuda.is_available() and row["format"] == "safetensors":
        gpu = torch.device("cuda")
        gpu_candidates = runtimes(directory, manifest, False, gpu)
        runtime = "eager-bf16" if "eager-bf16" in gpu_candidates else "eager-fp32"
        gpu_speed = speed(gpu_candidates[runtime](), inputs, ctx.config.latency_repeats, gpu)
        row.update(gpu_runtime=runtime, **{f"gpu_{k}": v for k, v in gpu_speed.items()})
    return row


def measure_all(ctx: Context, dirs: dict[str, Path], seconds: dict[str, float]) -> list[dict]:
    """The report's rows: original, original-fast, then each variant (whose manifest learns its fastest runtime)."""
    parent = ctx.parent
    plain = runtimes(parent, ctx.manifest, compile=False)
    rows = [measure(ctx, "original", parent, {"eager-fp32": plain["eager-fp32"]})]
    fast = {k: v for k, v in runtimes(parent, ctx.manifest, ctx.config.compile).items() if k != "eager-fp32"}
    rows.append(measure(ctx, "original-fast", parent, fast) if fast else {**rows[0], "name": "original-fast"})
    for name, directory in dirs.items():
        manifest = read_manifest(directory)
        row = measure(ctx, name, directory, runtimes(directory, manifest, ctx.config.compile))
        row["seconds_to_make"] = seconds[name]
        if manifest.get("format") == "safetensors" and manifest.get("runtime") != row["runtime"]:
            base = {k: v for k, v in manifest.items() if k != "compression"}
            record = {**manifest["compression"]}
            write_variant(ctx, Path(record["parent"]), directory, base, {"runtime": row["runtime"]}, record,
                          [name for name in manifest["files"] if name != manifest["split"]["file"]])
        rows.append(row)
    original = rows[0]
    for row in rows:
        row["accuracy_delta"] = row["accuracy"] - original["accuracy"]
        row["speedup_b64"] = row["images_per_s_b64"] / original["images_per_s_b64"]
        row["latency_speedup_b1"] = original["latency_ms_b1"] / row["latency_ms_b1"]
        row["params_fraction"] = row["params"] / original["params"]
    return rows


# ------------------------------------------------------------------------------------------ writing
def machine() -> dict:
    from ..device import cpu_flags

    flags = cpu_flags()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None  # timings on a shared machine need this context
    return {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "load_average_1min": round(load[0], 2) if load else None,
            "isa": [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16") if f in flags],
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "torch": torch.__version__}


def markdown(report: dict) -> str:
    lines = [f"# Compression report: {report['model_dir']}", "",
             f"Data: {report['data']}; method: {report['method']}; machine: {report['machine']}.",
             "Accuracy: top-1 on the parent's test split, no TTA. Latency: batch 1, median (p90). "
             "Throughput: batch 64.", "",
             "| variant | runtime | params | size (MB) | MFLOPs | accuracy | Δ points | latency b1 ms | "
             "images/s b64 | × b64 | × b1 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["variants"]:
        lines.append(f"| {r['name']} | {r['runtime']} | {r['params']:,} | {r['size_bytes'] / 1e6:.2f} | "
                     f"{r['flops'] / 1e6:.1f} | {r['accuracy']:.4f} | {100 * r['accuracy_delta']:+.2f} | "
                     f"{r['latency_ms_b1']:.2f} ({r['latency_ms_b1_p90']:.2f}) | {r['images_per_s_b64']:,.0f} | "
                     f"{r['speedup_b64']:.2f} | {r['latency_speedup_b1']:.2f} |")
    if any("gpu_runtime" in r for r in report["variants"]):
        lines += ["", "| variant | GPU runtime | GPU latency b1 ms | GPU images/s b64 |", "|---|---|---:|---:|"]
        lines += [f"| {r['name']} | {r['gpu_runtime']} | {r['gpu_latency_ms_b1']:.2f} | "
                  f"{r['gpu_images_per_s_b64']:,.0f} |" for r in report["variants"] if "gpu_runtime" in r]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in report["variants"]:
        ax.scatter(r["latency_ms_b1"], 100 * r["accuracy"], s=40)
        ax.annotate(f"{r['name']}\n{r['runtime']}", (r["latency_ms_b1"], 100 * r["accuracy"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("CPU latency at batch 1, median (ms, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy against latency, one point per variant")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)


def write_report(out: Path, report: dict) -> None:
    report["machine"] = machine()
    report["report_md"], report["plot_png"] = str(out / "report.md"), str(out / "report.png")
    plot(report, out / "report.png")
    atomic_write(out / "report.md", lambda p: Path(p).write_text(markdown(report)))
    write_json(out / "report.json", report)
