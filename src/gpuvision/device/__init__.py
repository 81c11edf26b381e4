"""Devices: which one to run on, what this machine is (`machine`), what runs fast on it (`probes`, measured), and
the speed switches of a training run (`acceleration`)."""

from __future__ import annotations

import contextlib
import logging

import torch

from ..errors import BadInput, NotFound, UserError
from .acceleration import Acceleration, auto_precision, bf16_is_fast, fast_precisions, pick_precision
from .hardware import ISA_FLAGS, Machine, cpu_flags, cpu_model, describe_device, machine
from .probes import synchronize

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


_warned: set[tuple[str, str]] = set()


def inference_precision(recorded: str, device: torch.device) -> str:
    """The precision a model recorded as `recorded` runs at here: never lower; where the recorded half precision
    is slow on this device (bf16 on a CPU where it measured no faster than fp32), fp32, logged once."""
    if recorded in ("fp32", "int8") or recorded in fast_precisions(device):
        return recorded
    if (recorded, device.type) not in _warned:
        _warned.add((recorded, device.type))
        log.warning("this model was recorded to run in %s, which %s does not run fast; running it in fp32",
                    recorded, describe_device(device))
    return "fp32"


def autocast(device: torch.device, precision: str):
    """The autocast context for a precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


__all__ = ["ISA_FLAGS", "Acceleration", "Machine", "auto_precision", "autocast", "bf16_is_fast", "cpu_flags",
           "cpu_model", "describe_device", "fast_precisions", "inference_precision", "machine", "pick_device",
           "pick_precision", "synchronize"]
