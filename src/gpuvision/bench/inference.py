"""The inference rows: batch-1 latency and batch-256 throughput of the network in eager fp32, eager bf16 (fp16 on a
GPU without bf16), onnxruntime int8 (what `compress --method int8` saves: static QDQ, calibrated on training
images) and onnxruntime fp32 (what `export` writes), each through the `Runtime` that predict and serve use.

The ONNX export and the int8 quantisation run once per bench and serve every device.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..compress.quantize import quantize_onnx
from ..data.input_spec import normalise
from ..runtime import EagerRuntime, Runtime
from ..runtime.onnx import OnnxRuntime, export_metadata, onnx_model, serialize
from ..runtime.timing import time_calls
from .measure import PeakMemory, Scale, Skipped, Workload

BATCH = 256


class Models:
    """The workload's network as each runtime needs it, made once: eager weights, the ONNX graph, its int8 form."""

    def __init__(self, work: Workload, calibration_images: int):
        self.work, self.calibration_images = work, calibration_images
        self.meta = export_metadata(work.spec, work.classes, 0, work.model)

    @functools.cached_property
    def onnx(self) -> bytes:
        return serialize(onnx_model(self.work.network(torch.device("cpu")).eval(), self.inputs(2), self.meta))

    @functools.cached_property
    def int8(self) -> bytes:
        with tempfile.TemporaryDirectory(prefix="gpuvision-bench-") as tmp:
            fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            fp32.write_bytes(self.onnx)
            quantize_onnx(fp32, int8, self.inputs(self.calibration_images), self.meta)
            return int8.read_bytes()

    def inputs(self, n: int) -> torch.Tensor:
        """n normalised training images, a seeded draw (repeated where the set is smaller), fp32 NCHW on the host."""
        order = torch.randperm(len(self.work.images), generator=torch.Generator().manual_seed(0))
        return normalise(self.work.images[order[torch.arange(n) % len(order)]], self.work.spec)


def rows(device: torch.device) -> list[tuple[str, str, str, str | None]]:
    """(name, backend, precision, why skipped) per row, in order."""
    half = "fp16" if device.type == "cuda" and not torch.cuda.is_bf16_supported() else "bf16"
    return [("eager fp32", "eager", "fp32", None),
            (f"eager {half} autocast", "eager", half, "no half precision on MPS" if device.type == "mps" else None),
            ("int8 (onnxruntime, static QDQ)", "onnxruntime", "int8", None),
            ("ONNX fp32 (onnxruntime)", "onnxruntime", "fp32", None)]


def runtime(models: Models, device: torch.device, backend: str, precision: str) -> Runtime:
    work = models.work
    args = (work.spec, work.classes, 0, device, precision)
    if backend == "eager":
        return EagerRuntime(work.network(device).eval(), *args)
    made = OnnxRuntime(models.int8 if precision == "int8" else models.onnx, *args)
    provider = made.session.get_providers()[0]
    if device.type == "cuda" and provider != "CUDAExecutionProvider":
        raise Skipped("onnxruntime has no CUDA provider here (onnxruntime-gpu is not installed)")
    return made


def measure(models: Models, device: torch.device, backend: str, precision: str, scale: Scale
            ) -> tuple[float, dict, str]:
    """Images/s at batch 256 (median call), and the median and p90 batch-1 latency, through the runtime."""
    memory = PeakMemory(device)
    run = runtime(models, device, backend, precision)
    one, full = models.inputs(1).to(device), models.inputs(BATCH).to(device)
    latency = np.array(time_calls(run.logits_normalised, one, scale.latency_repeats, device)) * 1e3
    memory.sample()
    per_batch = float(np.median(time_calls(run.logits_normalised, full, scale.throughput_repeats, device, warmup=1)))
    memory.sample()
    figures = {"latency_ms_b1": float(np.median(latency)), "latency_ms_b1_p90": float(np.percentile(latency, 90)),
               "images_per_s_b256": BATCH / per_batch, "peak_memory_mib": memory.mib()}
    where = f" on {run.session.get_providers()[0]}" if isinstance(run, OnnxRuntime) else ""
    return BATCH / per_batch, figures, (f"{run.name}{where}: median of {scale.latency_repeats} batch-1 calls and "
                                        f"{scale.throughput_repeats} batch-{BATCH} calls, after warm-up, logits back "
                                        "on the host")
