"""The airbench94 peer: `train94` from the PyPI package `airbench==0.1.8`, run unchanged on our decoded data.

The package reads `cifar10/train.pt` and `cifar10/test.pt` (dicts of NHWC uint8 images, labels, classes) relative to
the working directory, so `write_cifar_folder` writes them from the shared decoded arrays and `run_train94` runs
inside that folder's parent. The arrays are shuffled once with a fixed seed, as the official CIFAR-10 files are:
the JPEG archive is sorted by class, and airbench whitens from the first 5,000 training images. Its timer (CUDA
events) covers the whitening init, the training epochs and the final TTA evaluation, not the model's construction,
the loaders or the per-epoch evaluations: we report that timer as airbench's time, and the wall time of the whole
call beside it.

On the CPU the package's CUDA-only calls are patched from here, never edited: `.cuda()` and `.half()` become no-ops
(so inputs stay float32), both loaders load onto the CPU, its CUDA events become a wall clock and
`torch.cuda.synchronize` a no-op. The network stays in channels_last (the package puts it there) and runs under
bf16 autocast where the CPU has fast bf16 (AMX or AVX-512-BF16), else in float32. That autocast region spans the
whole call, so its cast cache is off (with it, the bf16 copies of the weights made at the first step served every
later step: the network never learned), and the whitening initialisation runs in float32 all the same (`in_fp32`:
under autocast its covariance came out in bf16, its smallest eigenvalues negative and the filters NaN).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

PACKAGE = "airbench==0.1.8"


def load_package():
    """The airbench modules, or a clear message on how to get them."""
    try:
        import airbench
        import airbench.lib_airbench94 as lib94
        import airbench.utils as utils
    except ImportError as e:
        raise SystemExit(f"the airbench peer needs the PyPI package: pip install {PACKAGE} ({e})") from e
    return airbench, lib94, utils


SHUFFLE_SEED = 0  # fixed: every run and every tool invocation sees the same order


def write_cifar_folder(root: Path, images: np.ndarray, labels: np.ndarray, classes: list[str],
                       train_idx: np.ndarray, test_idx: np.ndarray) -> Path:
    """Write root/cifar10/{train,test}.pt in airbench's format from N x C x H x W uint8 arrays; returns root.

    Each split is written in one fixed random order (see the module docstring)."""
    folder = root / "cifar10"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SHUFFLE_SEED)
    for name, idx in (("train.pt", train_idx), ("test.pt", test_idx)):
        idx = rng.permutation(np.asarray(idx))
        nhwc = np.ascontiguousarray(images[idx].transpose(0, 2, 3, 1))
        torch.save({"images": torch.from_numpy(nhwc), "labels": torch.from_numpy(labels[idx].astype(np.int64)),
                    "classes": list(classes)}, folder / name)
    return root


class WallClockEvent:
    """Stands in for torch.cuda.Event on the CPU, where work is synchronous: elapsed_time in milliseconds."""

    def __init__(self, enable_timing: bool = False, **_):
        self.at = None

    def record(self, stream=None) -> None:
        self.at = time.perf_counter()

    def elapsed_time(self, end: WallClockEvent) -> float:
        return 1000.0 * (end.at - self.at)


@contextlib.contextmanager
def replaced(obj, name: str, value) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def _same_module(self, *args, **kwargs):
    return self


def _float_tensor(self, *args, **kwargs):
    return self.float()


def _no_sync(*args, **kwargs) -> None:
    return None


@contextlib.contextmanager
def cpu_patches(extra: list[tuple] = (), bf16: bool = False) -> Iterator[None]:
    """For the block: `.cuda()` and `.half()` no-ops (inputs stay float32), CUDA events a wall clock,
    `torch.cuda.synchronize` a no-op, plus the peer's own (object, name, value) patches; bf16 autocast if asked."""
    patches = [(torch.nn.Module, "cuda", _same_module), (torch.nn.Module, "half", _same_module),
               (torch.Tensor, "half", _float_tensor), (torch.cuda, "Event", WallClockEvent),
               (torch.cuda, "synchronize", _no_sync), *extra]
    with contextlib.ExitStack() as stack:
        for obj, name, value in patches:
            stack.enter_context(replaced(obj, name, value))
        if bf16:  # no cast cache: one region spans all steps, and cached weight casts would go stale
            stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False))
        yield


def in_fp32(fn):
    """fn with CPU autocast off: a peer's whitening must not compute its patch covariance in bf16 (its smallest
    eigenvalues then come out negative and the filters NaN), as it does not on CUDA, where no autocast is on."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with torch.autocast("cpu", enabled=False):
            return fn(*args, **kwargs)

    return wrapped


def cpu_mode(utils, bf16: bool):
    """Patch airbench's CUDA-only calls for the CPU for the duration of the block (see the module docstring)."""
    original_loader = utils.CifarLoader

    class CpuCifarLoader(original_loader):
        def __init__(self, path, train=True, batch_size=500, aug=None, drop_last=None, shuffle=None, altflip=False,
                     gpu="cpu"):
            super().__init__(path, train, batch_size, aug, drop_last, shuffle, altflip, gpu="cpu")

    return cpu_patches([(utils, "CifarLoader", CpuCifarLoader),
                        (utils, "init_whitening_conv", in_fp32(utils.init_whitening_conv))], bf16)


@contextlib.contextmanager
def in_directory(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def no_epoch_eval(evaluate):
    """airbench's evaluate, except the untimed per-epoch test pass (tta_level 0), which only feeds its table."""

    def wrapped(model, loader, tta_level=0):
        return evaluate(model, loader, tta_level) if tta_level else float("nan")

    return wrapped


def run_train94(root: Path, device: str, seed: int, epochs: float | None = None, batch_size: int | None = None,
                bf16: bool = False, epoch_eval: bool = True) -> dict:
    """One airbench94 run in root (holding cifar10/*.pt): its TTA test accuracy, its own timer, and wall time.

    epoch_eval=False skips the per-epoch test pass outside airbench's timer (a third of a CPU run's wall time);
    training and the final TTA score are unchanged."""
    _, lib94, utils = load_package()
    captured: dict = {}

    def record(variables: dict, is_final_entry: bool) -> None:  # replaces its per-epoch table printer
        if is_final_entry:
            captured.update(accuracy=float(variables["tta_val_acc"]), timer_s=float(variables["total_time_seconds"]))

    hyp = lib94.hyp
    on_cpu = not device.startswith("cuda")
    torch.manual_seed(seed)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        stack.enter_context(in_directory(root))
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        stack.enter_context(replaced(utils, "print_training_details", record))
        if on_cpu:
            stack.enter_context(cpu_mode(utils, bf16))
        if not epoch_eval:
            stack.enter_context(replaced(utils, "evaluate", no_epoch_eval(utils.evaluate)))
        loader = utils.CifarLoader("cifar10", train=True, batch_size=batch_size or hyp["opt"]["batch_size"],
                                   aug=hyp["aug"], altflip=True)
        lib94.train94(loader, epochs=hyp["opt"]["train_epochs"] if epochs is None else epochs, run=0, verbose=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    captured["wall_s"] = time.perf_counter() - started
    captured["seed"] = seed
    captured["batch_size"] = batch_size or hyp["opt"]["batch_size"]
    captured["epochs"] = hyp["opt"]["train_epochs"] if epochs is None else epochs
    return captured


def precision(device: str, bf16: bool) -> str:
    if device.startswith("cuda"):
        return "fp16"  # the package's own choice: fp16 weights and inputs, fp32 batch norm
    return "bf16" if bf16 else "fp32"
