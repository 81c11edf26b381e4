"""Device and precision choice, and the capability probes behind them."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from .errors import UserError


def pick_device(request: str = "auto") -> torch.device:
    """auto: CUDA, then Apple MPS, then CPU. An explicit device that is absent is a UserError."""
    if request == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(request)
    except RuntimeError as e:
        raise UserError(f"unknown device {request!r}; use auto, cpu, cuda, cuda:N or mps") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {request} asked for CUDA, but this machine has no CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {request}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps asked for Apple MPS, which this machine lacks; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unsupported device {request!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags (Linux /proc/cpuinfo); empty where unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """True where the CPU has bf16 matrix units (AMX) or AVX-512-BF16 instructions."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def pick_precision(request: str, device: torch.device) -> str:
    """auto: bf16 where the device runs it fast, else fp32. fp16 needs a GPU."""
    if request not in ("auto", "fp32", "bf16", "fp16"):
        raise UserError(f"unknown precision {request!r}; use auto, fp32, bf16 or fp16")
    if request == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "cpu":
            return "bf16" if cpu_has_fast_bf16() else "fp32"
        return "fp32"
    if request == "fp16" and device.type == "cpu":
        raise UserError("--precision fp16 is not supported on the CPU; use bf16 or fp32")
    return request


def autocast(device: torch.device, precision: str):
    """The autocast context for a precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work; for timing at points the caller chose."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
