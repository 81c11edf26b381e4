"""Timing helpers shared by the compression report, `benchmarks/` and the coming `bench` command."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from ..device import synchronize

WARMUP = 3


def time_calls(run: Callable, x: torch.Tensor, repeats: int, device: torch.device, warmup: int = WARMUP
               ) -> list[float]:
    """Seconds per call of run(x), after warm-up calls (which also trigger any compilation)."""
    for _ in range(warmup):
        run(x)
    synchronize(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(x)
        synchronize(device)
        times.append(time.perf_counter() - started)
    return times


def speed(run: Callable, x: torch.Tensor, repeats: int, device: torch.device, batch: int = 64) -> dict:
    """Median and p90 latency at batch 1 (ms) and images/s at `batch` (from the median call)."""
    b1 = np.array(time_calls(run, x[:1], repeats, device)) * 1e3
    bn = np.median(time_calls(run, x[:batch], max(5, repeats // 3), device))
    return {"latency_ms_b1": float(np.median(b1)), "latency_ms_b1_p90": float(np.percentile(b1, 90)),
            f"images_per_s_b{batch}": batch / float(bn)}
