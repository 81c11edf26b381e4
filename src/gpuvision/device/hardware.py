"""The one description of this machine: CPU model, cores, ISA flags, GPUs. Doctor, compress's report, serving and
the benchmarks all name the machine from here, so a figure and the choice it led to say the same thing."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# The vector and matrix extensions that decide how fast fp32, bf16 and int8 run on an x86 CPU.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class Gpu:
    """One CUDA device: its name, memory and compute capability."""

    index: int
    name: str
    memory_bytes: int
    capability: str  # "9.0" for a Hopper


@dataclass(frozen=True)
class Machine:
    """What a speed figure holds for."""

    cpu: str
    arch: str
    cores: int  # usable by this process (its CPU affinity), not the host's
    isa: tuple[str, ...]  # those of ISA_FLAGS the CPU has
    gpus: tuple[Gpu, ...]
    torch: str
    cuda: str | None  # the CUDA version torch was built with (None: a CPU build)

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def fingerprint(self) -> str:
        """Names the measurements cached for this machine: changes with the CPU, the GPUs or torch."""
        blob = repr((self.cpu, self.arch, self.isa, tuple((g.name, g.capability) for g in self.gpus), self.torch))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


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


@functools.cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def gpus() -> tuple[Gpu, ...]:
    if not torch.cuda.is_available():
        return ()
    found = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        found.append(Gpu(i, props.name, int(props.total_memory), f"{props.major}.{props.minor}"))
    return tuple(found)


@functools.cache
def machine() -> Machine:
    flags = cpu_flags()
    return Machine(cpu=cpu_model(), arch=platform.machine(), cores=usable_cores(),
                   isa=tuple(f for f in ISA_FLAGS if f in flags), gpus=gpus(), torch=torch.__version__,
                   cuda=torch.version.cuda)


def describe_device(device: torch.device) -> str:
    """The machine a speed figure holds for: the GPU's name, or the CPU model with its vector/matrix extensions."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    if device.type == "mps":
        return "mps"
    isa = [f for f in ISA_FLAGS if f in cpu_flags()]
    return f"cpu:{cpu_model()} [{' '.join(isa)}]"
