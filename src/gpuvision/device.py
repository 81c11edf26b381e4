"""Device and precision choice, and the capability probes behind them."""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
from pathlib import Path

import torch

from .errors import BadInput, NotFound, UserError

log = logging.getLogger(__name__)


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
        raise BadInput(f"unknown device {request!r}; use auto, cpu, cuda, cuda:N or mps") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise NotFound(f"--device {request} asked for CUDA, but this machine has no CUDA GPU; use --device cpu")
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


def cpu_has_fast_bf16(flags: frozenset[str] | None = None) -> bool:
    """True where the CPU has bf16 matrix units (AMX) or AVX-512-BF16 instructions."""
    return bool({"amx_bf16", "avx512_bf16"} & (cpu_flags() if flags is None else flags))


@functools.cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")


def describe_device(device: torch.device) -> str:
    """The machine a speed figure holds for: the GPU's name, or the CPU model with its vector/matrix extensions."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    if device.type == "mps":
        return "mps"
    isa = [f for f in ISA_FLAGS if f in cpu_flags()]
    return f"cpu:{cpu_model()} [{' '.join(isa)}]"


def fast_precisions(device: torch.device) -> list[str]:
    """The float precisions this device runs at full speed, fp32 first."""
    if device.type == "cuda":
        return ["fp32", "bf16", "fp16"] if torch.cuda.is_bf16_supported() else ["fp32", "fp16"]
    if device.type == "cpu" and cpu_has_fast_bf16():
        return ["fp32", "bf16"]
    return ["fp32"]


_warned: set[tuple[str, str]] = set()


def inference_precision(recorded: str, device: torch.device) -> str:
    """The precision a model recorded as `recorded` runs at here: never lower; where the recorded half precision
    is slow on this device (bf16 on a CPU without AMX or AVX-512-BF16), fp32, logged once."""
    if recorded in ("fp32", "int8") or recorded in fast_precisions(device):
        return recorded
    if (recorded, device.type) not in _warned:
        _warned.add((recorded, device.type))
        log.warning("this model was recorded to run in %s, which %s does not run fast; running it in fp32",
                    recorded, describe_device(device))
    return "fp32"


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


@contextlib.contextmanager
def fast_cuda_math(device: torch.device):
    """cuDNN autotuning and TF32 matrix maths for fixed-shape training on CUDA, restored afterwards."""
    if device.type != "cuda":
        yield
        return
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False, allow_tf32=True):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32


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
