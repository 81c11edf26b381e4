"""The compression report: parameters, file size, FLOPs, test accuracy and speed of the original and each variant.

Rows: `original` is the parent run the plain way (eager fp32); `original-fast` is the parent on its fastest
unquantised runtime (compiled, bf16 where the device runs bf16 fast); then each variant on the fastest runtime it
supports here, which its manifest records (measured before the manifest is written) so predict and serve use it
too. Runtimes are named `backend-precision`. Accuracy is top-1 on the parent's test split without test-time
augmentation, computed on the same runtime as the timings. Latency is per call at batch 1, images/s at batch 64,
each after warm-up, median (and p90) of the repeats, on this process's threads; when a CUDA GPU is present, the
PyTorch models are timed there as well.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..artifact import Inference, ModelDir
from ..device import describe_device, fast_precisions
from ..device import machine as this_machine
from ..files import atomic_write, write_json
from ..models import count_params
from ..runtime import Runtime, build_network, choice, open_runtime
from ..runtime.timing import speed
from . import Context, flops_of

BATCH = 64


def candidates(model_dir: ModelDir, compile: bool, device: torch.device) -> dict[str, Callable[[], Runtime]]:
    """name -> factory of each PyTorch runtime the model supports on this device, in every precision it runs fast
    (the onnxruntime variants are rows of their own: int8)."""
    precisions = [p for p in fast_precisions(device) if p != "fp16"]
    return choice.candidates(model_dir, device, precisions, compile, onnx=False)


@torch.no_grad()
def accuracy(runtime: Runtime, inputs: torch.Tensor, labels: np.ndarray) -> float:
    """Top-1 accuracy, in batches of BATCH (compiled runtimes pad the last to its bucket)."""
    correct = 0
    for start in range(0, len(inputs), BATCH):
        predicted = runtime.logits_normalised(inputs[start : start + BATCH]).argmax(1).numpy()
        correct += int((predicted == labels[start : start + len(predicted)]).sum())
    return correct / max(len(labels), 1)


def _describe(model_dir: ModelDir, example: torch.Tensor) -> dict:
    m = model_dir.manifest
    size = sum((model_dir.path / name).stat().st_size for name in m.files)
    if m.format == "safetensors":
        net = build_network(model_dir)
        return {"params": count_params(net), "flops": flops_of(net, example.contiguous()), "size_bytes": size}
    return {"params": m.params, "flops": m.flops, "size_bytes": size}


def measure(ctx: Context, name: str, model_dir: ModelDir, only: list[str] | None = None
            ) -> tuple[dict, Inference, Runtime]:
    """One report row: the fastest candidate runtime (runtime/choice.py's policy: batch 1 and batch 64 weigh
    alike), with its latency and accuracy; that runtime as the manifest's inference setting; and the runtime
    itself."""
    cpu = torch.device("cpu")
    inputs = ctx.inputs(ctx.test_images, model_dir.manifest)
    row = {"name": name, "dir": str(model_dir.path), "format": model_dir.manifest.format,
           **_describe(model_dir, inputs[:1])}
    speeds, runtimes = {}, {}
    for runtime_name, make in candidates(model_dir, ctx.config.compile, cpu).items():
        if only and runtime_name not in only:
            continue
        ctx.emit("stage", stage=name, text=f"measuring {name} on {runtime_name}")
        runtimes[runtime_name] = make()
        speeds[runtime_name] = speed(runtimes[runtime_name].run, inputs, ctx.config.latency_repeats, cpu, BATCH)
    best = choice.fastest({r: {"b1": s["latency_ms_b1"], f"b{BATCH}": BATCH * 1e3 / s[f"images_per_s_b{BATCH}"]}
                           for r, s in speeds.items()})
    row.update(runtime=best, **speeds[best], accuracy=accuracy(runtimes[best], inputs, ctx.test_labels),
               runtimes_tried=speeds)
    if torch.cuda.is_available() and row["format"] == "safetensors":
        gpu = torch.device("cuda")
        precision = "bf16" if "bf16" in fast_precisions(gpu) else "fp32"
        gpu_runtime = open_runtime(model_dir, gpu, "eager", precision)
        gpu_speed = speed(gpu_runtime.run, inputs.to(gpu), ctx.config.latency_repeats, gpu, BATCH)
        row.update(gpu_runtime=gpu_runtime.name, **{f"gpu_{k}": v for k, v in gpu_speed.items()})
    backend, precision = best.split("-")
    return row, Inference(backend, precision, describe_device(cpu)), runtimes[best]


def measure_originals(ctx: Context) -> list[dict]:
    """The parent's two rows: eager fp32, and its fastest other runtime here."""
    original = measure(ctx, "original", ctx.parent, only=["eager-fp32"])[0]
    others = [n for n in candidates(ctx.parent, ctx.config.compile, torch.device("cpu")) if n != "eager-fp32"]
    fast = measure(ctx, "original-fast", ctx.parent, only=others)[0] if others else {**original,
                                                                                      "name": "original-fast"}
    rows = [original, fast]
    for row in [*rows, *ctx.rows.values()]:
        row["accuracy_delta"] = row["accuracy"] - original["accuracy"]
        row["speedup_b64"] = row["images_per_s_b64"] / original["images_per_s_b64"]
        row["latency_speedup_b1"] = original["latency_ms_b1"] / row["latency_ms_b1"]
        row["params_fraction"] = row["params"] / original["params"]
    return rows


# ------------------------------------------------------------------------------------------ writing
def machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None  # timings on a shared machine need this context
    return {**this_machine().to_json(), "cpu": describe_device(torch.device("cpu")),
            "threads": torch.get_num_threads(), "load_average_1min": round(load[0], 2) if load else None}


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
    """Accuracy against batch-1 latency, one point per variant (a Figure of its own: no backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
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


def write_report(out: Path, report: dict) -> None:
    report["machine"] = machine()
    report["report_md"], report["plot_png"] = str(out / "report.md"), str(out / "report.png")
    plot(report, out / "report.png")
    atomic_write(out / "report.md", lambda p: Path(p).write_text(markdown(report)))
    write_json(out / "report.json", report)
