"""The "plain PyTorch" baseline: gpuvision's network and fast recipe, fed the ordinary way.

Same network (fastnet) and recipe (its default optimiser, schedule, label smoothing, whitening init, progressive
resizing, drop_last, averaging and TTA) as `gpuvision train` uses; but the data come from
torchvision's ImageFolder + DataLoader (2 workers, PIL transforms: RandomCrop 32 with 2-pixel reflect padding,
RandomHorizontalFlip, ToTensor, Normalize), in float32, eager, contiguous (not channels_last) tensors. One seed.

The time is the wall time from building the loaders to the end of the TTA evaluation. With fewer epochs than the
recipe's (`epochs` below `full_epochs`), the full-length time is projected from the measured per-step time.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from gpuvision.data.augment import resize
from gpuvision.device import acceleration, synchronize
from gpuvision.models import create_model, model_spec
from gpuvision.runtime import tta_logits
from gpuvision.train.recipes import create_recipe
from gpuvision.train.step import TrainStep

# CIFAR-10's per-channel mean and std (of the official training set), the usual constants for Normalize.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
WORKERS = 2
WHITEN_SAMPLE = 5000


def _loaders(tree: Path, batch_size: int, seed: int, drop_last: bool):
    to_input = [transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)]
    train_tf = transforms.Compose([transforms.RandomCrop(32, padding=2, padding_mode="reflect"),
                                   transforms.RandomHorizontalFlip(), *to_input])
    train_set = datasets.ImageFolder(str(tree / "train"), transform=train_tf)
    plain_train = datasets.ImageFolder(str(tree / "train"), transform=transforms.Compose(to_input))
    test_set = datasets.ImageFolder(str(tree / "test"), transform=transforms.Compose(to_input))
    g = torch.Generator().manual_seed(seed)
    sample_idx = torch.randperm(len(plain_train), generator=g)[:WHITEN_SAMPLE].tolist()
    train = DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=WORKERS, generator=g,
                       drop_last=drop_last, persistent_workers=True)
    sample = DataLoader(Subset(plain_train, sample_idx), batch_size=500, num_workers=WORKERS)
    test = DataLoader(test_set, batch_size=500, num_workers=WORKERS)
    return train, sample, test, train_set.classes


def _train(model, recipe, loader, device, total_steps: int, epochs: float) -> int:
    """The recipe's loop over the DataLoader, through gpuvision's one training step (eager fp32, NCHW, as a plain
    loop runs); returns the steps taken (bounded by total_steps)."""
    accel = acceleration.resolve(device, precision="fp32", channels_last="off", compile="off")
    train_step = TrainStep.create(model, recipe, device, accel, model_spec("fastnet"))
    step = 0
    augment = recipe.augment(32)  # for its progressive resizing, applied as the DeviceLoader applies it
    for epoch in range(math.ceil(epochs)):
        recipe.on_epoch(model, epoch, epochs)
        for x, y in loader:
            if step >= total_steps:
                break
            x, y = x.to(device), y.to(device)
            train_step(resize(x, augment.side(epoch, 32)), y, step, total_steps)
            step += 1
    recipe.finish(model)
    return step


@torch.no_grad()
def _evaluate(model, loader, device, tta_level: int) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        logits = tta_logits(model, x.to(device), tta_level)
        correct += int((logits.argmax(1).cpu() == y).sum())
        total += len(y)
    return correct / max(total, 1)


def run_plain(tree: Path, device: str, seed: int = 0, epochs: float | None = None, batch_size: int | None = None,
              full_epochs: float | None = None) -> dict:
    """Train and TTA-evaluate once on the ImageFolder tree (train/<class>/*, test/<class>/*)."""
    dev = torch.device(device)
    torch.manual_seed(seed)
    started = time.perf_counter()
    # The recipe resolves batch size and epochs from the data set's size exactly as `gpuvision train` does.
    n_train = len(datasets.ImageFolder(str(tree / "train")))
    full = create_recipe("fast", epochs=full_epochs, batch_size=batch_size)
    full.resolve(n_train, 32)
    recipe = create_recipe("fast", epochs=epochs or full.settings.epochs, batch_size=full.settings.batch_size)
    recipe.resolve(n_train, 32)
    settings = recipe.settings
    train, sample, test, classes = _loaders(tree, settings.batch_size, seed, settings.drop_last)
    model = create_model("fastnet", num_classes=len(classes), in_channels=3, image_size=32).to(dev)
    model_spec("fastnet").data_init(model, torch.cat([x for x, _ in sample]).to(dev))
    setup_s = time.perf_counter() - started

    total_steps = math.ceil(settings.epochs * len(train))
    steps = _train(model, recipe, train, dev, total_steps, settings.epochs)
    synchronize(dev)
    train_s = time.perf_counter() - started - setup_s
    accuracy = _evaluate(model, test, dev, settings.tta_level)
    wall_s = time.perf_counter() - started
    eval_s = wall_s - setup_s - train_s

    full_steps = math.ceil(full.settings.epochs * len(train))
    projected = setup_s + train_s / max(steps, 1) * full_steps + eval_s
    return {"seed": seed, "accuracy": accuracy, "wall_s": wall_s, "setup_s": setup_s, "train_s": train_s,
            "eval_s": eval_s, "steps": steps, "epochs": settings.epochs, "full_epochs": full.settings.epochs,
            "full_steps": full_steps, "projected_s": projected, "batch_size": settings.batch_size,
            "images_per_s": steps * settings.batch_size / max(train_s, 1e-9), "tta_level": settings.tta_level}
