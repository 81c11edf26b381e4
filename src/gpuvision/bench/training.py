"""The training-step rows: fp32 eager in NCHW, then one method added per row: channels_last, TF32 (CUDA), bf16
autocast (fp16 with loss scaling on a GPU without bf16), torch.compile, CUDA graphs.

Each row runs the one training step (train/step.py: the Trainer's) with the recipe's optimizer and schedule, on
augmented batches of real images drawn from the device (the Trainer's DeviceLoader), after untimed warm-up steps
that pay any compile. The phases (data, forward, backward, optimizer) are timed between device syncs by
`PhaseTimer`; on a GPU, where those syncs cost time, images/s come from a run without them. Achieved TFLOP/s are
3 x the forward FLOPs a second (a backward pass does twice a forward's work), set against the matmul probe's rate
in the row's precision. The eager rows' images/s are recorded per machine (`probes.record_training`), so
`--precision auto` and `--channels-last auto` follow them.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..data.loader import DeviceLoader
from ..device import acceleration, synchronize
from ..device.probes import measured
from ..files import atomic_write
from ..models import model_spec
from ..train.step import PhaseTimer, TrainStep
from .measure import PeakMemory, Scale, Skipped, Workload

SCHEDULE_STEPS = 1 << 20  # the schedule's length: every measured step sits where the learning rate is steady
PHASE_STEPS = 5  # synced steps that give the phase shares on a GPU
PROFILE_STEPS = 3
MAX_STEPS = 500


def rows(device: torch.device, quick: bool) -> list[tuple[str, dict, str | None, str | None]]:
    """(name, acceleration settings, the key `auto` reads its rate under, why skipped) per row, in order."""
    cuda = device.type == "cuda"
    half = "fp16" if cuda and not torch.cuda.is_bf16_supported() else "bf16"
    eager = dict(compile="off", cuda_graphs="off", tf32="off", loader="device")
    slow_compile = "--quick: a first compile of the training step takes minutes on a CPU" if quick and not cuda \
        else None
    return [
        ("fp32, NCHW, eager", {**eager, "precision": "fp32", "channels_last": "off"}, "fp32/nchw", None),
        ("+ channels_last", {**eager, "precision": "fp32", "channels_last": "on"}, "fp32/channels_last", None),
        ("+ TF32", {**eager, "precision": "fp32", "channels_last": "on", "tf32": "on"}, None,
         None if cuda else "TF32 is a CUDA tensor-core format"),
        (f"+ {half} autocast", {**eager, "precision": half, "channels_last": "on", "tf32": "auto"},
         f"{half}/channels_last", None),
        ("+ torch.compile", {**eager, "precision": half, "channels_last": "on", "tf32": "auto", "compile": "on"},
         None, slow_compile),
        ("+ CUDA graphs", {"precision": half, "channels_last": "on", "tf32": "auto", "compile": "on",
                           "cuda_graphs": "on", "loader": "device"}, None,
         None if cuda else "CUDA graphs need a CUDA device"),
    ]


def measure_step(work: Workload, device: torch.device, settings: dict, scale: Scale, profile: Path | None = None
                 ) -> tuple[float, dict, str]:
    """One row: images/s of the training step in `settings`, with its phase shares, FLOP rate and peak memory."""
    accel = acceleration.resolve(device, model=work.model, **settings)
    net = work.network(device, accel.memory_format)
    step = TrainStep.create(net, work.new_recipe(), device, accel, model_spec(work.model))
    augment = work.augment()
    loader = DeviceLoader(work.images.to(device), work.labels.to(device), work.batch_size, work.spec, augment,
                          torch.Generator(device=device).manual_seed(0), channels_last=accel.channels_last,
                          drop_last=True)
    if len(loader) == 0:
        raise Skipped(f"fewer than {work.batch_size} training images")
    batches = (b for epoch in range(len(augment.sides), 1 << 30) for b in loader.epoch(epoch))  # full-size epochs
    cuda, done = device.type == "cuda", 0

    def run(steps: int, timer: PhaseTimer | None = None, memory: PeakMemory | None = None) -> None:
        nonlocal done
        for _ in range(steps):
            x, y = next(batches)
            if timer:
                timer.mark("data")
            step(x, y, done, SCHEDULE_STEPS, timer=timer)
            done += 1
            if memory:
                memory.sample()

    with accel.scope(device):
        started = time.perf_counter()
        run(scale.warmup_steps)
        synchronize(device)
        warmup = time.perf_counter() - started
        memory, timer = PeakMemory(device), PhaseTimer(device)
        steps, seconds = _timed(run, device, scale, None if cuda else timer, memory)
        if cuda:
            timer.start()
            run(PHASE_STEPS, timer)
        if profile is not None:
            _profile(run, device, profile)
    images_per_s = steps * work.batch_size / seconds
    total = sum(timer.seconds.values())
    tflops = 3 * work.forward_flops * images_per_s / 1e12
    peak = measured(device)["matmul_tflops"].get(accel.precision)
    figures = {"steps": steps, "seconds": seconds, "first_steps_s": warmup, "batch_size": work.batch_size,
               "phase_share": {k: v / total for k, v in timer.seconds.items()}, "tflops": tflops,
               "peak_tflops": peak, "peak_share": tflops / peak if peak else None,
               "peak_memory_mib": memory.mib(), "acceleration": {k: v for k, v in accel.to_json().items()
                                                                  if k != "reasons"}}
    return images_per_s, figures, (f"{steps} timed steps of {work.batch_size} after {scale.warmup_steps} untimed; "
                                   f"{work.recipe} recipe, optimizer {step.recipe.settings.optimizer} "
                                   f"({accel.optimizer_kernel})")


def _timed(run, device: torch.device, scale: Scale, timer: PhaseTimer | None, memory: PeakMemory
           ) -> tuple[int, float]:
    """Steps run and their seconds: at least `scale.min_steps` and `scale.min_seconds` (a tenth on a GPU)."""
    least = scale.min_seconds / (10 if device.type == "cuda" else 1)
    steps = 0
    synchronize(device)
    if timer:
        timer.start()
    started = time.perf_counter()
    while steps < scale.min_steps or (time.perf_counter() - started < least and steps < MAX_STEPS):
        run(1, timer, memory)
        steps += 1
        if not timer and steps % 10 == 0:  # the clock reads finished work, and the queue stays short
            synchronize(device)
    synchronize(device)
    return steps, time.perf_counter() - started


def _profile(run, device: torch.device, path: Path) -> None:
    """A torch.profiler trace (Chrome format, for chrome://tracing or Perfetto) of a few steps, and its top ops."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run(PROFILE_STEPS)
        synchronize(device)
    atomic_write(path, lambda p: prof.export_chrome_trace(p))
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=25)
    atomic_write(path.with_suffix(".txt"), lambda p: Path(p).write_text(table + "\n"))
