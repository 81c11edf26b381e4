"""`gpuvision bench`: what each method that makes training and inference fast buys on this machine, measured on
real images, CPU against GPU side by side.

    gpuvision bench                                   # every device here; CIFAR-10-JPEG when present, else digits
    gpuvision bench --device cuda --quick --out runs/bench-gpu
    gpuvision.bench.bench(BenchConfig(device="cpu", quick=True))

Sections, each row adding one method to the row before it (or set against the usual way, for data):
  * data on the host (loading.py): per-image PIL decode against gpuvision's parallel decoder; a cold decode
    against the decoded cache;
  * data to the device: pageable against pinned host-to-device copies; a torch DataLoader with per-image
    transforms against device-resident batches;
  * the training step (training.py): fp32 eager, + channels_last, + TF32, + bf16/fp16 autocast,
    + torch.compile, + CUDA graphs;
  * inference (inference.py): batch-1 latency and batch-256 throughput in fp32, bf16, int8 and ONNX.
A row that does not apply on a device says why instead. The images are the decoded cache of the data source;
--quick measures few steps on a subset. Writes bench.json, bench.md and a PNG chart per section (report.py), and
records the eager training rates per machine so `auto` follows them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from ..compress import flops_of
from ..config import BenchConfig
from ..data import ImageSet, load_images
from ..data.input_spec import InputSpec, normalise
from ..data.split import stratified_sample
from ..device import pick_device
from ..device.acceleration import workload
from ..device.doctor import versions
from ..device.hardware import machine
from ..device.probes import record_training, remeasure
from ..errors import BadInput, UserError, require
from ..models import count_params, create_model, default_model, model_spec
from ..train.recipes import create_recipe, default_recipe
from ..version import CHECKOUT
from . import inference, loading, training
from .measure import FULL, QUICK, Scale, Skipped, Workload
from .report import BenchReport, Row, write

log = logging.getLogger(__name__)
STATS_IMAGES = 10_000  # training images that set the input normalisation (as the Trainer)
DATA_INIT_IMAGES = 5_000

Event = Callable[..., None]


def default_data() -> str:
    """CIFAR-10-JPEG beside the checkout (../shared/data, or the copy benchmarks/gpu.sh carries in .local/) when
    present, else the embedded digits."""
    for path in (CHECKOUT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz",
                 CHECKOUT / ".local" / "cifar10-jpeg.tar.gz"):
        if path.is_file():
            return str(path)
    return "digits"


@dataclass
class _Task:
    section: str
    group: str
    name: str
    device: str
    unit: str
    run: Callable[[], tuple[float, dict, str]]
    skip: str | None = None


def bench(config: BenchConfig, on_event: Event | None = None) -> BenchReport:
    """Measure every row on every device asked for, write the report into `config.out`, and return it."""
    config = BenchConfig(**asdict(config)).validate()
    emit = on_event or (lambda *a, **k: None)
    scale = QUICK if config.quick else FULL
    devices = _devices(config.device)
    src = config.data or default_data()
    out = _out_dir(config.out)
    started, load_start = time.perf_counter(), _load()
    images = load_images(src)
    work = _workload(images, config.model, scale)
    tasks = _plan(src, images, work, devices, scale, out if config.profile else None)
    named = versions()
    report = BenchReport(
        settings={**asdict(config), "data": src, "out": str(out), "threads": torch.get_num_threads(),
                  "command": _command(config, src, out)},
        date=datetime.now().astimezone().isoformat(timespec="seconds"), commit=named["commit"], versions=named,
        machine=machine().to_json(), devices=[str(d) for d in devices],
        data={"source": src, "name": images.name, "images": len(images), "shape": "x".join(map(str,
              images.image_shape)), "train_images": len(work.labels)},
        model={"name": work.model, "args": work.args, "params": work.params, "recipe": work.recipe,
               "forward_mflops": work.forward_flops / 1e6, "batch_size": work.batch_size},
        # measured now, beside the rows (the same load), and cached for `auto` as doctor's measurement is
        peak_tflops={d.type: remeasure(d)["matmul_tflops"] for d in devices}, load_average={"start": load_start})
    emit("bench_start", rows=len(tasks), devices=report.devices, out=str(out))
    for index, task in enumerate(tasks, 1):
        where = "data on the host" if task.device == "host" else f"{task.section} on {task.device}"
        label = f"{where}: {task.name}"
        emit("row_start", index=index, label=label)
        row = _measure(task)
        report.rows.append(row)
        emit("row_end", index=index, label=label, text=f"skipped: {row.skipped}" if row.skipped else
             f"{row.value:,.2f} {row.unit}")
    report.recorded = _record(report, workload(work.model, work.args["image_size"]))
    report.load_average["end"], report.seconds = _load(), time.perf_counter() - started
    if config.profile:
        report.files["profiles"] = [str(p) for p in sorted(out.glob("profile-*.json"))]
    write(report, out)
    return report


def _devices(request: str) -> list[torch.device]:
    if request == "all":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return [pick_device(request)]


def _out_dir(out: str | None) -> Path:
    path = Path(out or f"runs/bench-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    require(not (path / "manifest.json").exists(), f"--out {path} is a model directory; give another directory for "
            "the bench report", BadInput)
    require(not path.exists() or path.is_dir(), f"--out {path} is a file; give a directory", BadInput)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _load() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _command(config: BenchConfig, src: str, out: Path) -> str:
    flags = [f"--device {config.device}", f"--model {config.model}", f"--data {src}", f"--out {out}"]
    return " ".join(["gpuvision bench", *flags, *(["--quick"] if config.quick else []),
                     *(["--profile"] if config.profile else [])])


def _workload(images: ImageSet, model: str, scale: Scale) -> Workload:
    """The training images (a stratified subset with --quick), the input normalisation, the initial network."""
    train = np.flatnonzero(~images.given_test)
    picked = stratified_sample(images.labels, train, scale.train_images, 0) if scale.train_images else train
    pixels, labels = torch.from_numpy(images.images[picked]), torch.from_numpy(images.labels[picked])
    # a sample in proportion to the classes, as the Trainer takes (a class-sorted source's first images are one class)
    sample = torch.from_numpy(images.images[stratified_sample(images.labels, picked, STATS_IMAGES, 0)])
    spec = InputSpec.from_images(sample)
    side = max(spec.size)
    name = default_model(side) if model == "auto" else model
    args = {"num_classes": len(images.classes), "in_channels": spec.channels, "image_size": side}
    with torch.random.fork_rng(devices=[]):  # initialisation draws from the global generator: seeded for this call
        torch.manual_seed(0)
        net = create_model(name, **args)
    hooks = model_spec(name)
    if hooks.data_init:
        hooks.data_init(net, normalise(sample[:DATA_INIT_IMAGES], spec))
    recipe = create_recipe(default_recipe(name), batch_size=scale.batch_size)
    recipe.resolve(len(train), side)
    flops = flops_of(net.eval(), normalise(pixels[:1], spec))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    return Workload(pixels, labels, spec, images.classes, name, args, state, recipe.name, len(train),
                    min(recipe.settings.batch_size, len(picked)), flops, count_params(net))


def _plan(src: str, images: ImageSet, work: Workload, devices: list[torch.device], scale: Scale,
          profile_dir: Path | None) -> list[_Task]:
    """Every row, in the order measured: data on the host, then each section on each device."""
    tasks = [_Task("host", "decode", "per-image PIL decode", "host", "img/s",
                   lambda: loading.per_image_decode(src, scale)),
             _Task("host", "decode", "gpuvision parallel decoder", "host", "img/s",
                   lambda: loading.parallel_decode(src, scale)),
             _Task("host", "load", "cold load (decode, no cache)", "host", "img/s", lambda: loading.cold_load(src)),
             _Task("host", "load", "cached load", "host", "img/s", lambda: loading.cached_load(src))]
    augment = work.augment()
    for d in devices:
        for pinned in (False, True):
            tasks.append(_Task("data", "copy", f"host-to-device, {'pinned' if pinned else 'pageable'}", d.type,
                               "GB/s", lambda d=d, p=pinned: loading.host_to_device(images.images, d, p)))
        for name, measure in (("torch DataLoader, per-image transforms", loading.dataloader_batches),
                              ("device-resident batches (DeviceLoader)", loading.device_batches)):
            tasks.append(_Task("data", "batches", name, d.type, "img/s", lambda d=d, m=measure: m(
                work.images, work.labels, work.spec, augment, work.batch_size, d, scale)))
    for d in devices:
        planned = training.rows(d, scale.quick)
        last = max((i for i, row in enumerate(planned) if row[3] is None), default=-1)
        for i, (name, settings, _, skip) in enumerate(planned):
            profile = profile_dir / f"profile-{d.type}.json" if profile_dir and i == last else None
            tasks.append(_Task("training", "step", name, d.type, "img/s", lambda d=d, s=settings, p=profile:
                               training.measure_step(work, d, s, scale, p), skip))
    models = inference.Models(work, scale.calibration_images)
    for d in devices:
        for name, backend, precision, skip in inference.rows(d):
            tasks.append(_Task("inference", "inference", name, d.type, "img/s", lambda d=d, b=backend, p=precision:
                               inference.measure(models, d, b, p, scale), skip))
    return tasks


def _measure(task: _Task) -> Row:
    row = Row(task.section, task.group, task.name, task.device, unit=task.unit, skipped=task.skip)
    if task.skip:
        return row
    try:
        row.value, row.figures, row.note = task.run()
    except (Skipped, UserError) as e:  # does not apply here; a UserError is a setting this device refuses
        row.skipped = " ".join(str(e).split())
    except ModuleNotFoundError as e:  # a library this machine lacks (onnxruntime on a bare GPU image)
        row.skipped = f"needs {e.name}, which is not installed here"
    except RuntimeError as e:  # e.g. a compiler or kernel this device lacks: the row says so, the others run
        log.warning("bench: %s on %s failed: %s", task.name, task.device, e)
        row.skipped = "failed: " + (" ".join(str(e).split())[:300] or type(e).__name__)
    return row


def _record(report: BenchReport, model: str) -> dict:
    """Keep each device's eager training rates, keyed "precision/layout", where `auto` reads them."""
    keys = {name: key for d in report.devices for name, _, key, _ in training.rows(torch.device(d), True) if key}
    recorded = {}
    for device in dict.fromkeys(r.device for r in report.rows if r.section == "training"):
        rates = {keys[r.name]: r.value for r in report.rows if (r.section, r.device) == ("training", device)
                 and r.value and r.name in keys}
        if rates:
            record_training(torch.device(device), model, rates)
            recorded[device] = {model: rates}
    return recorded


__all__ = ["BenchReport", "Row", "bench", "default_data"]
