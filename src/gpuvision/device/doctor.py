"""`gpuvision doctor`: what this machine is, what works and how fast, and what `auto` will pick here, and why.

Everything it reports is the device layer's own (the machine description, the timed probes, the acceleration
settings), so it lives here, below every command, and `gpuvision bench` embeds the same versions in its report.
Each timed probe stops after about half a second, so doctor ends within seconds; `compile_probe` also tries
torch.compile on each device, which takes from seconds (a GPU) to minutes (a CPU). The matmul rates it measures
replace the per-machine cache that `--precision auto` reads, so auto follows the latest measurement.

A CUDA that torch was built with but cannot use (an old driver, no driver, no visible device) is reported with
what to do about it, never raised.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..files import cache_root
from ..version import __version__, commit
from . import acceleration, probes
from .hardware import cpu_model, machine

LOW_DISK = 2 << 30  # below this much free space the decoded-image cache of one CIFAR-size set still fits, barely


@dataclass
class DeviceReport:
    """One device: what it is, what works there (tried), how fast it multiplies and copies, and auto's choices."""

    device: str  # "cpu", "cuda:0"
    name: str
    memory_bytes: int | None
    memory_free_bytes: int | None
    capability: str | None  # CUDA compute capability, "9.0"
    tries: dict  # bf16, fp16, tf32, fp8, channels_last, compile: True, False or why not tried
    matmul_tflops: dict  # precision -> TFLOP/s (None where the dtype fails)
    memory_bandwidth_gbs: float
    auto: dict  # setting -> {"value", "reason"}: what a training run's `auto` resolves to here
    bench: dict = field(default_factory=dict)  # model -> {"rates", "precision", "channels_last"} from gpuvision bench


@dataclass
class DoctorReport:
    """The whole report; `to_json()` is what `gpuvision doctor --json` prints."""

    versions: dict
    machine: dict
    cuda: dict  # built, available, devices, problem, advice
    devices: list[DeviceReport]
    cache: dict  # path, free_bytes
    advice: list[str]
    load_average: float | None
    seconds: float

    def to_json(self) -> dict:
        return {"schema_version": 1, **asdict(self)}

    def text(self) -> str:
        """The human summary the CLI prints."""
        v, m = self.versions, self.machine
        built = f" (commit {v['commit']})" if v["commit"] else ""
        lines = [f"gpuvision {v['gpuvision']}{built}; Python {v['python']}; torch {v['torch']}; CUDA "
                 f"{v['cuda'] or 'not built in'}; cuDNN {v['cudnn'] or '-'}; NVIDIA driver {v['driver'] or '-'}",
                 f"CPU: {m['cpu']} ({m['arch']}), {m['cores']} usable cores; ISA: {' '.join(m['isa']) or '-'}",
                 "CUDA: " + (f"{self.cuda['devices']} device(s)" if self.cuda["available"] else
                             f"not usable: {self.cuda['problem']}")]
        for d in self.devices:
            memory = f"{_gib(d.memory_bytes)} GiB ({_gib(d.memory_free_bytes)} free)" if d.memory_bytes else "?"
            works = ", ".join(f"{k} {_yes(v)}" for k, v in d.tries.items())
            rates = ", ".join(f"{p} {r:.2f}" if r else f"{p} fails" for p, r in d.matmul_tflops.items())
            lines += [f"{d.device}: {d.name}; memory {memory}" + (f"; capability {d.capability}" if d.capability
                                                                   else ""),
                      f"  works: {works}",
                      f"  matmul TFLOP/s: {rates}; memory bandwidth {d.memory_bandwidth_gbs:.1f} GB/s",
                      "  auto picks:"]
            lines += [f"    {k} = {_shown(s['value'])} ({s['reason']})" for k, s in d.auto.items()]
            for model, b in d.bench.items():
                rates = ", ".join(f"{k} {r:.0f}" for k, r in b["rates"].items())
                lines.append(f"  gpuvision bench, {model} (img/s): {rates}; so {model} trains in "
                             f"{b['precision']}, channels_last {_shown(b['channels_last'])}")
        lines.append(f"cache: {self.cache['path']}, {_gib(self.cache['free_bytes'])} GiB free")
        lines += [f"advice: {a}" for a in self.advice]
        load = f"; load average {self.load_average:.2f} (the rates above shared the CPU with it)" \
            if self.load_average is not None else ""
        lines.append(f"measured in {self.seconds:.1f} s{load}")
        return "\n".join(lines)


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**30:.1f}"


def _yes(value) -> str:
    return {True: "yes", False: "no"}.get(value, str(value))


def _shown(value) -> str:
    return {True: "on", False: "off"}.get(value, str(value))


# ------------------------------------------------------------------------------------------ versions and CUDA
def nvidia_driver() -> str | None:
    """The NVIDIA kernel driver's version, where one is installed (read from /proc, else nvidia-smi)."""
    try:
        found = re.search(r"Kernel Module\s+(?:for\s+\S+\s+)?([\d.]+)", Path("/proc/driver/nvidia/version").read_text())
        if found:
            return found[1]
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def versions() -> dict:
    """Python, gpuvision (and its commit, run from a checkout), torch, the CUDA torch was built with, cuDNN and the
    NVIDIA driver (None where absent)."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"python": platform.python_version(), "gpuvision": __version__, "commit": commit(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": cudnn, "driver": nvidia_driver()}


def cuda_status() -> dict:
    """Whether CUDA works here, and if torch was built with it but cannot use it, why and what to do."""
    built, driver = torch.version.cuda, nvidia_driver()
    status = {"built": built, "available": False, "devices": 0, "problem": None, "advice": None}
    if built is None:
        status["problem"] = "this torch is a CPU-only build"
        if driver:
            status["advice"] = (f"an NVIDIA driver ({driver}) is installed but torch cannot use it: install a CUDA "
                                "build of torch (see https://pytorch.org/get-started/locally/)")
        return status
    with warnings.catch_warnings():  # torch warns the reason once; it is reported below instead
        warnings.simplefilter("ignore")
        if torch.cuda.is_available():
            return {**status, "available": True, "devices": torch.cuda.device_count()}
        try:
            torch.cuda.init()
            message = "no CUDA device"
        except (RuntimeError, AssertionError) as e:
            message = " ".join(str(e).split()) or type(e).__name__
    status["problem"], status["advice"] = _diagnose(message, built, driver)
    return status


def _diagnose(message: str, built: str, driver: str | None) -> tuple[str, str]:
    text = message.lower()
    if "too old" in text or "insufficient" in text:
        return (f"driver mismatch: {message}",
                f"the NVIDIA driver ({driver or 'its version unknown'}) is older than CUDA {built}, which this torch "
                "was built with, needs: update the driver, or install a torch built for the CUDA this driver "
                "supports (nvidia-smi shows it)")
    if "no nvidia driver" in text:
        return (f"no NVIDIA driver: {message}",
                "torch was built with CUDA but no NVIDIA driver is installed: if this machine has an NVIDIA GPU, "
                "install its driver (then nvidia-smi lists it); until then gpuvision runs on the CPU")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if "no cuda" in text or "no device" in text or "not available" in text:
        return (f"no CUDA device: {message}",
                f"no GPU is visible to this process (CUDA_VISIBLE_DEVICES is "
                f"{'unset' if visible is None else repr(visible)}): check nvidia-smi and that variable, or run on "
                "the CPU (--device cpu)")
    return (f"CUDA unusable: {message}", "check nvidia-smi and the driver; meanwhile run on the CPU (--device cpu)")


# ------------------------------------------------------------------------------------------ devices
def _memory(device: torch.device) -> tuple[int | None, int | None]:
    """(total, free) bytes: the GPU's, or the host's (Linux /proc/meminfo) for the CPU."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return int(total), int(free)
    try:
        info = Path("/proc/meminfo").read_text()
    except OSError:
        return None, None
    kib = {k: int(v) for k, v in re.findall(r"^(MemTotal|MemAvailable):\s+(\d+) kB", info, re.MULTILINE)}
    return (kib["MemTotal"] << 10 if "MemTotal" in kib else None,
            kib["MemAvailable"] << 10 if "MemAvailable" in kib else None)


def _settings(resolved: acceleration.Acceleration) -> dict:
    values = resolved.to_json()
    reasons = values.pop("reasons")
    return {k: {"value": v, "reason": reasons.get(k, "")} for k, v in values.items()}


def device_report(device: torch.device, compile_probe: bool = False) -> DeviceReport:
    first = device.index in (None, 0)  # the per-machine cache holds one figure per device type
    rates = probes.remeasure(device)["matmul_tflops"] if first else \
        {p: probes.matmul_tflops(device, p) for p in ("fp32", "bf16", "fp16")}
    total, free = _memory(device)
    cuda = device.type == "cuda"
    bench = {}
    for model, recorded in (probes.measured(device).get("training", {}) if first else {}).items():
        resolved = acceleration.resolve(device, model=model)
        bench[model] = {"rates": recorded, "precision": resolved.precision,
                        "channels_last": resolved.channels_last}
    return DeviceReport(
        device=str(device), name=torch.cuda.get_device_name(device) if cuda else cpu_model(), memory_bytes=total,
        memory_free_bytes=free, capability="{}.{}".format(*torch.cuda.get_device_capability(device)) if cuda else None,
        tries=probes.tries(device, compile_probe), matmul_tflops=rates,
        memory_bandwidth_gbs=probes.memory_bandwidth(device), auto=_settings(acceleration.resolve(device)),
        bench=bench)


def _free_disk(path: Path) -> int:
    while not path.exists() and path != path.parent:  # the cache directory may not exist yet
        path = path.parent
    return shutil.disk_usage(path).free


def doctor(compile_probe: bool = False) -> DoctorReport:
    """Measure and describe this machine (see the module docstring)."""
    started = time.perf_counter()
    cuda = cuda_status()
    devices = [torch.device("cpu")] + [torch.device("cuda", i) for i in range(cuda["devices"])]
    reports = [device_report(d, compile_probe) for d in devices]
    cache = {"path": str(cache_root()), "free_bytes": _free_disk(cache_root())}
    advice = [cuda["advice"]] if cuda["advice"] else []
    if cache["free_bytes"] < LOW_DISK:
        advice.append(f"only {_gib(cache['free_bytes'])} GiB free at {cache['path']}, where decoded images are "
                      "cached: free some space or point GPUVISION_CACHE elsewhere")
    cpu = reports[0].matmul_tflops
    if cpu.get("bf16") and cpu.get("fp32") and cpu["bf16"] < cpu["fp32"]:
        advice.append(f"bf16 runs slower than fp32 on this CPU ({cpu['bf16']:.2f} against {cpu['fp32']:.2f} "
                      "TFLOP/s: no AMX or AVX-512-BF16), so auto trains here in fp32")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return DoctorReport(versions=versions(), machine=machine().to_json(), cuda=cuda, devices=reports, cache=cache,
                        advice=advice, load_average=load, seconds=time.perf_counter() - started)
