"""Timed probes of what a device does fast, and tries of what works there; measured, not guessed from flags.

Each timed probe stops after about PROBE_SECONDS. The measurements `auto` choices need (matmul rate per precision,
memory bandwidth, and the training-step rates `gpuvision bench` records per model) are cached per machine in the
cache directory, keyed by `Machine.fingerprint`, so a process measures once per machine, not once per run.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from datetime import datetime
from pathlib import Path

import torch

from ..files import atomic_write, cache_root
from .hardware import machine

log = logging.getLogger(__name__)

PROBE_SECONDS = 0.5
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def synchronize(device: torch.device) -> None:
    """Wait for queued device work; for timing at points the caller chose."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed_rate(work, device: torch.device, seconds: float = PROBE_SECONDS) -> float:
    """Calls of `work` per second, after one untimed call, over about `seconds` (at least one timed call)."""
    work()
    synchronize(device)
    calls, started = 0, time.perf_counter()
    while True:
        work()
        calls += 1
        synchronize(device)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return calls / elapsed


def matmul_tflops(device: torch.device, precision: str, seconds: float = PROBE_SECONDS) -> float | None:
    """The dense matmul rate in TFLOP/s (square, 1024 on a CPU so an emulated bf16 still ends in time, 8192 on a
    GPU); None where the dtype fails."""
    n = 1024 if device.type == "cpu" else 8192
    try:
        a = torch.randn(n, n, device=device).to(DTYPES[precision])
        b = torch.randn(n, n, device=device).to(DTYPES[precision])
        return 2 * n**3 * timed_rate(lambda: a @ b, device, seconds) / 1e12
    except (RuntimeError, TypeError) as e:  # not implemented for this dtype here
        log.debug("matmul in %s on %s failed: %s", precision, device, e)
        return None


def memory_bandwidth(device: torch.device, seconds: float = PROBE_SECONDS) -> float:
    """Copy bandwidth in GB/s (bytes read plus bytes written) over a buffer far larger than the caches."""
    numel = (64 << 20) if device.type == "cpu" else (256 << 20)  # 256 MiB / 1 GiB of fp32
    src = torch.ones(numel, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * src.element_size() * timed_rate(lambda: dst.copy_(src), device, seconds) / 1e9


def tries(device: torch.device, compile_probe: bool = False) -> dict[str, bool | str]:
    """What works on this device, each tried on a tiny input: bf16, fp16, TF32, FP8, channels_last, torch.compile."""
    found: dict[str, bool | str] = {}
    x = torch.randn(8, 8, device=device)
    for name in ("bf16", "fp16"):
        found[name] = _works(lambda d=DTYPES[name]: (x.to(d) @ x.to(d)).float().sum().item())
    found["tf32"] = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
    found["fp8"] = _works(lambda: _fp8_matmul(device)) if device.type == "cuda" else False
    conv = torch.nn.Conv2d(3, 4, 3).to(device, memory_format=torch.channels_last)
    image = torch.randn(2, 3, 8, 8, device=device).contiguous(memory_format=torch.channels_last)
    found["channels_last"] = _works(lambda: conv(image).sum().item())
    found["compile"] = _works(lambda: torch.compile(conv)(image).sum().item()) if compile_probe \
        else "not tried (--compile-probe)"
    return found


def _fp8_matmul(device: torch.device) -> None:
    a = torch.randn(16, 16, device=device).to(torch.float8_e4m3fn)
    b = torch.randn(16, 16, device=device).to(torch.float8_e4m3fn).t()
    one = torch.ones((), device=device)
    torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)


def _works(call) -> bool:
    try:
        call()
        return True
    except Exception as e:  # a capability try: whatever it raises means "does not work here"; logged, not hidden
        log.debug("capability try failed: %s", e)
        return False


# ------------------------------------------------------------------------------------------ the per-machine cache
def _cache_file(device: torch.device) -> Path:
    return cache_root() / "machine" / f"{machine().fingerprint}-{device.type}.json"


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda p: Path(p).write_text(json.dumps(data, indent=1)))
    except OSError as e:  # a read-only cache: measure again next time rather than fail
        log.debug("could not cache machine measurements in %s: %s", path, e)


def _matmul_figures(device: torch.device) -> dict:
    precisions = ("fp32", "bf16") if device.type == "cpu" else ("fp32", "bf16", "fp16")
    return {"matmul_tflops": {p: matmul_tflops(device, p) for p in precisions}, "threads": torch.get_num_threads(),
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "measured": datetime.now().astimezone().isoformat(timespec="seconds")}


@functools.cache
def _measured(device: torch.device) -> dict:
    path = _cache_file(device)
    data = _read(path)
    if "matmul_tflops" not in data:
        data.update(_matmul_figures(device))
        _write(path, data)
    return data


def measured(device: torch.device) -> dict:
    """This machine's cached measurements for a device type (measured now if absent): matmul_tflops per precision,
    and `training` rates per model that `gpuvision bench` recorded."""
    return _measured(torch.device(device.type))


def remeasure(device: torch.device) -> dict:
    """Measure the matmul rates again and cache them (what `gpuvision doctor` does), keeping bench's rates."""
    device = torch.device(device.type)
    data = {**_read(_cache_file(device)), **_matmul_figures(device)}
    _write(_cache_file(device), data)
    _measured.cache_clear()
    return data


def record_training(device: torch.device, model: str, rates: dict[str, float]) -> None:
    """Keep `gpuvision bench`'s images/s per precision for a model, so `--precision auto` follows them there."""
    device = torch.device(device.type)
    data = dict(measured(device))
    data["training"] = {**data.get("training", {}), model: rates}
    _write(_cache_file(device), data)
    _measured.cache_clear()
