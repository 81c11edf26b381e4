"""The speed switches of a training run, one setting each, resolved from `auto` with the reason for each choice.

    precision        fp32, bf16 or fp16 autocast (fp16 with loss scaling)
    channels_last    NHWC memory layout for the network and its batches
    compile          torch.compile of the network
    cuda_graphs      replay the compiled step as CUDA graphs (torch.compile's "reduce-overhead" mode)
    tf32             TF32 tensor-core maths for fp32 matmuls and convolutions (CUDA)
    cudnn_benchmark  cuDNN picks the fastest convolution algorithm per shape (CUDA)
    optimizer_kernel fused (one kernel for all parameters), foreach (multi-tensor) or loop (one parameter at a time)
    loader           device (the decoded set lives on the device) or stream (from pinned host memory)

`auto` follows what was measured on this machine where a measurement exists (`probes.measured`: the matmul probe,
and the per-model rates `gpuvision bench` records), and otherwise a stated default. The resolved `Acceleration`,
reasons included, is recorded in the manifest's `training`, so a model says how it was trained.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field

import torch

from ..errors import BadInput, require
from .probes import measured

SETTINGS = ("precision", "channels_last", "compile", "cuda_graphs", "tf32", "cudnn_benchmark", "optimizer_kernel",
            "loader")
SWITCH = ("auto", "on", "off")
KERNELS = ("auto", "fused", "foreach", "loop")
LOADERS = ("auto", "device", "stream")
FAST_RATIO = 1.2  # a half precision counts as fast where it measured at least this much faster than fp32


@dataclass(frozen=True)
class Acceleration:
    """Resolved speed switches (see the module docstring) and, per setting, why it has its value."""

    precision: str = "fp32"
    channels_last: bool = True
    compile: bool = False
    cuda_graphs: bool = False
    tf32: bool = False
    cudnn_benchmark: bool = False
    optimizer_kernel: str = "foreach"
    loader: str = "device"
    reasons: dict = field(default_factory=dict, compare=False)

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @contextlib.contextmanager
    def scope(self, device: torch.device):
        """TF32 and cuDNN autotuning switched as resolved around training only, and restored afterwards."""
        if device.type != "cuda":
            yield
            return
        matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        try:
            with torch.backends.cudnn.flags(enabled=True, benchmark=self.cudnn_benchmark, deterministic=False,
                                            allow_tf32=self.tf32):
                yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = matmul_tf32


# ------------------------------------------------------------------------------------------ precision
def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 runs faster than fp32 here: CUDA where supported; on a CPU as measured (AMX: yes, AVX2: no)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    rates = measured(device)["matmul_tflops"]
    return bool(rates.get("bf16") and rates.get("fp32") and rates["bf16"] >= FAST_RATIO * rates["fp32"])


def auto_precision(device: torch.device, model: str | None = None) -> tuple[str, str]:
    """The precision `auto` picks here, and why."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "CUDA device with bf16: tensor cores, no loss scaling"
        return "fp16", "this GPU lacks bf16: fp16 tensor cores with loss scaling"
    if device.type != "cpu":
        return "fp32", f"{device.type}: fp32"
    bench = _bench_rates(device, model)
    by_precision = {p: max(r for k, r in bench.items() if k.startswith(p + "/")) for p in ("fp32", "bf16")
                    if any(k.startswith(p + "/") for k in bench)}
    if len(by_precision) == 2:
        pick = "bf16" if by_precision["bf16"] >= FAST_RATIO * by_precision["fp32"] else "fp32"
        return pick, (f"gpuvision bench measured {model} training here at {by_precision['bf16']:.0f} img/s in bf16, "
                      f"{by_precision['fp32']:.0f} in fp32")
    rates = measured(device)["matmul_tflops"]
    shown = ", ".join(f"{p} {r:.2f}" for p, r in rates.items() if r)
    if bf16_is_fast(device):
        return "bf16", f"bf16 matmul measured at least {FAST_RATIO}x fp32 here (TFLOP/s: {shown})"
    return "fp32", f"bf16 matmul measured no faster than fp32 here (TFLOP/s: {shown})"


def workload(model: str, image_size: int) -> str:
    """The key `gpuvision bench` records a model's rates under, and a training run reads them by: the same network
    can favour bf16 at 32 px and fp32 at 8 px."""
    return f"{model}@{image_size}px"


def _bench_rates(device: torch.device, model: str | None) -> dict[str, float]:
    """images/s per "precision/layout" that `gpuvision bench` recorded for a model on this machine ({} if none)."""
    rates = measured(device).get("training", {}).get(model or "", {})
    return {k: float(v) for k, v in rates.items() if isinstance(v, int | float) and "/" in k}


def fast_precisions(device: torch.device) -> list[str]:
    """The float precisions this device runs at full speed, fp32 first."""
    if device.type == "cuda":
        return ["fp32", "bf16", "fp16"] if torch.cuda.is_bf16_supported() else ["fp32", "fp16"]
    return ["fp32", "bf16"] if bf16_is_fast(device) else ["fp32"]


def pick_precision(request: str, device: torch.device, model: str | None = None) -> str:
    """auto: the precision measured fastest here (see `auto_precision`). fp16 needs a GPU."""
    require(request in ("auto", "fp32", "bf16", "fp16"), f"unknown precision {request!r}; use auto, fp32, bf16 "
            "or fp16", BadInput)
    if request == "auto":
        return auto_precision(device, model)[0]
    require(not (request == "fp16" and device.type == "cpu"), "--precision fp16 is not supported on the CPU; use "
            "bf16 or fp32", BadInput)
    return request


# ------------------------------------------------------------------------------------------ everything else
def resolve(device: torch.device, *, model: str | None = None, data_bytes: int = 0, resident_bytes: int | None = None,
            **requested: str) -> Acceleration:
    """Resolve each setting (`auto`, `on`/`off`, or a named choice) for a run of `model` on `device` whose
    training images take `data_bytes` (this process's share), of which at most `resident_bytes` may be held in
    memory; unnamed settings are `auto`. Explicit requests that cannot apply here are a clear error, never
    silently dropped."""
    unknown = set(requested) - set(SETTINGS)
    require(not unknown, f"unknown acceleration setting(s) {', '.join(sorted(unknown))}", BadInput)
    ask = {name: requested.get(name) or "auto" for name in SETTINGS}
    cuda, reasons, values = device.type == "cuda", {}, {}

    def choose(name: str, auto_value, auto_reason: str, allowed: bool = True, why_not: str = ""):
        asked = ask[name]
        if asked == "auto":
            values[name], reasons[name] = auto_value, auto_reason
            return
        value = {"on": True, "off": False}.get(asked, asked)
        require(allowed or value is False, f"--{name.replace('_', '-')} {asked}: {why_not}", BadInput)
        values[name], reasons[name] = value, "asked"

    precision = pick_precision(ask["precision"], device, model)
    values["precision"] = precision
    reasons["precision"] = auto_precision(device, model)[1] if ask["precision"] == "auto" else "asked"
    choose("channels_last", *_auto_layout(device, model, precision))
    choose("compile", cuda, "on for CUDA: fused kernels" if cuda else
           "off on the CPU: compiled training measured no faster here and the first compile takes minutes")
    choose("cuda_graphs", False, "off until measured on a GPU (gpuvision bench --device cuda)", cuda,
           "CUDA graphs need a CUDA device")
    require(not (values["cuda_graphs"] and ask["compile"] == "off"), "--cuda-graphs on needs torch.compile (they "
            "come from its reduce-overhead mode); drop --compile off", BadInput)
    if values["cuda_graphs"] and not values["compile"]:
        values["compile"], reasons["compile"] = True, "on: --cuda-graphs on needs it"
    tf32_ok = cuda and torch.cuda.get_device_capability(device) >= (8, 0)
    choose("tf32", tf32_ok, "on: fp32 maths on tensor cores" if tf32_ok else "off: needs a CUDA GPU of compute "
           "capability 8.0+", tf32_ok, "TF32 needs a CUDA GPU of compute capability 8.0 or newer")
    choose("cudnn_benchmark", cuda, "on for CUDA: fixed shapes, the fastest algorithm found once" if cuda else
           "off: cuDNN is CUDA only", cuda, "cuDNN autotuning needs a CUDA device")
    choose("optimizer_kernel", "fused" if cuda else "foreach", "fused on CUDA: one kernel for all parameters" if cuda
           else "foreach: multi-tensor steps (fused steps are a CUDA speed-up)")
    choose("loader", *_auto_loader(device, data_bytes, resident_bytes), ask["loader"] != "stream" or device.type !=
           "mps", "streaming needs a CPU or CUDA device")
    return Acceleration(**values, reasons=reasons)


def _auto_loader(device: torch.device, data_bytes: int, resident_bytes: int | None) -> tuple[str, str]:
    if resident_bytes is not None and data_bytes > resident_bytes:
        return "stream", (f"stream: the training images ({data_bytes / 2**30:.2f} GiB) exceed the bound on what is "
                          f"held in memory ({resident_bytes / 2**30:.2f} GiB): batches are read from the cache")
    if device.type == "cuda" and data_bytes > torch.cuda.mem_get_info(device)[0] // 2:
        return "stream", "stream: the training images would fill more than half the free device memory"
    return "device", "device: the decoded training images fit on the device"


def _auto_layout(device: torch.device, model: str | None, precision: str) -> tuple[bool, str]:
    if device.type == "mps":
        return False, "off on MPS"
    bench = _bench_rates(device, model)
    nhwc, nchw = bench.get(f"{precision}/channels_last"), bench.get(f"{precision}/nchw")
    if nhwc and nchw:
        return nhwc >= nchw, (f"gpuvision bench measured {model} here in {precision} at {nhwc:.0f} img/s "
                              f"channels_last, {nchw:.0f} NCHW")
    return True, "on: cuDNN and oneDNN convolutions run faster in NHWC"


def optimizer_kernel(kernel: str) -> dict:
    """The keyword torch.optim takes for a resolved optimizer kernel."""
    return {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}[kernel]
