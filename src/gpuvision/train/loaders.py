"""The loaders of a run: this process's block of the training and validation images, on the device (or left in host
memory, a memory-mapped cache, and read as batches stream), and the input normalisation they apply."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from ..data import ImageSet, Split
from ..data.input_spec import InputSpec
from ..data.loader import DeviceLoader, Shard, StreamingLoader
from ..data.split import stratified_sample
from ..device import Acceleration
from .distributed import World
from .recipes import Recipe

STATS_IMAGES = 10_000  # training images that set the input normalisation
VAL_BATCH = 1000


@dataclass
class Loaders:
    train: DeviceLoader
    val: DeviceLoader
    spec: InputSpec  # the normalisation, from a seeded draw of training images
    stats_sample: np.ndarray  # that draw (indices into the image set), in proportion to the classes
    generator: torch.Generator  # all the training loader's device-side randomness (saved in checkpoints)


def build_loaders(images: ImageSet, split: Split, recipe: Recipe, image_side: int, acceleration: Acceleration,
                  device: torch.device, world: World, seed: int, stats: tuple | None = None) -> Loaders:
    """The statistics come from training images drawn in proportion to the classes (a class-sorted source would
    otherwise give the first class's), unless `stats` (mean, std) are given: those pretrained weights were trained
    with; each process gets its block of each split (data/loader.py's Shard)."""
    pixels, labels = torch.from_numpy(images.images), torch.from_numpy(images.labels)
    stats_sample = stratified_sample(images.labels, split.train, STATS_IMAGES, seed)
    spec = InputSpec.from_images(pixels[torch.from_numpy(stats_sample)])
    if stats is not None:
        spec = replace(spec, mean=stats[0], std=stats[1])
    generator = torch.Generator(device=device).manual_seed(seed)
    blocks = []
    for indices in (split.train, split.val):
        shard = Shard.of(len(indices), world.rank, world.size)
        blocks.append((shard, torch.from_numpy(indices[shard.start : shard.stop])))
    (train_shard, train_rows), (_, val_rows) = blocks
    common = dict(channels_last=acceleration.channels_last)
    train = dict(augment=recipe.augment(image_side), generator=generator, shard=train_shard,
                 drop_last=recipe.settings.drop_last, **common)
    batch = recipe.settings.batch_size
    if acceleration.loader == "stream":  # only the rows of this process's blocks are read, as batches need them
        return Loaders(StreamingLoader(pixels, labels[train_rows], batch, spec, device, rows=train_rows, **train),
                       StreamingLoader(pixels, labels[val_rows], VAL_BATCH, spec, device, rows=val_rows, **common),
                       spec, stats_sample, generator)
    return Loaders(DeviceLoader(pixels[train_rows].to(device), labels[train_rows].to(device), batch, spec, **train),
                   DeviceLoader(pixels[val_rows].to(device), labels[val_rows].to(device), VAL_BATCH, spec, **common),
                   spec, stats_sample, generator)
