"""What every part of the bench shares: its scale (--quick or full), why a row was not measured, peak memory, and
the workload the training and inference rows run."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from ..data.augment import Augment
from ..data.input_spec import InputSpec
from ..device import synchronize
from ..models import create_model
from ..train.recipes import Recipe, create_recipe


class Skipped(Exception):
    """A row that does not apply here (CUDA graphs on a CPU) or cannot run; its message says why."""


@dataclass(frozen=True)
class Scale:
    """How much each row measures. Full: enough to steady the figures; quick: enough to prove every path."""

    quick: bool
    decode_images: int  # encoded images decoded per decoder row
    train_images: int | None  # training images on the device (None: all)
    batch_size: int | None  # training batch (None: the recipe's for the whole data set)
    warmup_steps: int  # untimed steps before each training row (they pay a compile)
    min_steps: int  # timed training steps, at least
    min_seconds: float  # and at least this long (CPU; a GPU takes a tenth)
    loader_batches: int  # timed batches per loader row
    latency_repeats: int  # timed batch-1 calls per inference row
    throughput_repeats: int  # timed batch-256 calls per inference row
    calibration_images: int  # images calibrating int8


FULL = Scale(False, decode_images=5000, train_images=None, batch_size=None, warmup_steps=2, min_steps=3,
             min_seconds=10.0, loader_batches=20, latency_repeats=50, throughput_repeats=10, calibration_images=512)
QUICK = Scale(True, decode_images=256, train_images=512, batch_size=64, warmup_steps=1, min_steps=2,
              min_seconds=0.0, loader_batches=4, latency_repeats=5, throughput_repeats=2, calibration_images=64)


class PeakMemory:
    """The peak memory of a row: allocated tensors on a GPU (torch's own counter); on a CPU the process's resident
    set, sampled at the points the row calls `sample()` (there is no allocator counter for host tensors)."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0
        if device.type == "cuda":
            synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)  # torch's statistics counter only; nothing else reads it

    def sample(self) -> None:
        if self.device.type != "cuda":
            self.peak = max(self.peak, _resident_bytes())

    def mib(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return self.peak / 2**20 if self.peak else None


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class Workload:
    """The images, network and recipe every training and inference row runs: the same initial weights on every
    device and in every row, so rows differ only in the method they add."""

    images: torch.Tensor  # N x C x H x W uint8, on the host: the training images the rows draw batches from
    labels: torch.Tensor
    spec: InputSpec
    classes: list[str]
    model: str
    args: dict  # create_model's arguments
    state: dict  # the initial weights, after the model's data-dependent initialisation
    recipe: str
    n_train: int  # the whole data set's training images: the recipe's settings follow from it
    batch_size: int
    forward_flops: int  # of one image
    params: int

    def network(self, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format) -> nn.Module:
        net = create_model(self.model, **self.args)
        net.load_state_dict(self.state)
        return net.to(device, memory_format=memory_format)

    def new_recipe(self) -> Recipe:
        recipe = create_recipe(self.recipe, batch_size=self.batch_size)
        recipe.resolve(self.n_train, max(self.spec.size))
        return recipe

    def augment(self) -> Augment:
        return self.new_recipe().augment(max(self.spec.size))
