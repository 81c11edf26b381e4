"""The one runtime-choice policy: which backend and precision run a model fastest on this machine, measured.

Compress's report (which records the winner in each variant's manifest) and `serve --runtime auto` both use it:
every candidate (eager and inductor in each precision asked for, onnxruntime in fp32) is timed at batch 1 and at
a full batch, and the winner is the one with the smallest sum of its times relative to the fastest at each batch
size: a lone request and a full batch weigh alike, as between an idle and a busy server.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ..artifact import ModelDir
from .base import Runtime, bucket
from .timing import time_calls

MEASURE_SECONDS = 1.5  # per candidate and batch size


def candidates(model_dir: ModelDir, device: torch.device, precisions: list[str], compile: bool = True,
               onnx: bool = True) -> dict[str, Callable[[], Runtime]]:
    """name -> factory of each runtime the model supports here in `precisions` (an ONNX model: its own only).
    Inductor is left out for an encrypted model: it would cache the decrypted weights on disk."""
    from . import open_runtime

    m = model_dir.manifest
    if m.format != "safetensors":
        return {m.inference.name: lambda: open_runtime(model_dir, device)}
    backends = ("eager", "inductor") if compile and not model_dir.encrypted else ("eager",)
    found = {f"{b}-{p}": (lambda b=b, p=p: open_runtime(model_dir, device, b, p)) for p in precisions
             for b in backends}
    if onnx and "fp32" in precisions:
        found["onnxruntime-fp32"] = lambda: open_runtime(model_dir, device, "onnxruntime", "fp32")
    return found


def measure(runtime: Runtime, max_batch: int, seconds: float = MEASURE_SECONDS) -> dict[str, float]:
    """Median ms of a call at batch 1 and at the largest batch (its bucket where the runtime pads), within about
    `seconds` each; keys "b1" and "b<N>"."""
    out = {}
    for size in (1, bucket(max_batch) if runtime.pads else max_batch):
        x = torch.zeros(size, *runtime.spec.shape)
        started = time.perf_counter()
        runtime.logits_normalised(x)  # also the first call, which compiles where the runtime compiles
        once = max(time.perf_counter() - started, 1e-4)
        repeats = int(min(max(seconds / once, 3), 50))
        times = sorted(time_calls(runtime.logits_normalised, x, repeats, runtime.device, warmup=1))
        out[f"b{size}"] = round(times[len(times) // 2] * 1e3, 3)
    return out


def fastest(timings: dict[str, dict[str, float]]) -> str:
    """The policy: the candidate whose times, each relative to the fastest at its batch size, sum lowest.
    `timings` maps a runtime name to {"b1": ms, "b<N>": ms}, a lone call then a full batch (padding runtimes
    may report a larger N: compared per image)."""
    per_image = {name: [ms / int(size[1:]) for size, ms in t.items()] for name, t in timings.items()}
    best = [min(costs[i] for costs in per_image.values()) for i in range(2)]
    return min(per_image, key=lambda name: sum(c / b for c, b in zip(per_image[name], best)))


def choose(model_dir: ModelDir, device: torch.device, precisions: list[str], max_batch: int, compile: bool = True
           ) -> tuple[Runtime, dict[str, dict[str, float]]]:
    """Measure every candidate (see `candidates`) and return the fastest, with every candidate's timings."""
    runtimes, timings = {}, {}
    for name, make in candidates(model_dir, device, precisions, compile).items():
        runtimes[name] = make()
        timings[name] = measure(runtimes[name], max_batch)
    return runtimes[fastest(timings)], timings
