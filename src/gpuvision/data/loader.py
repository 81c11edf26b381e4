"""DeviceLoader: batches drawn by index from uint8 images resident on the device, augmented and normalised there.

The whole decoded set is copied to the device once; each step is then one gather (crop, flip), one cast and one
normalisation on the device: no per-image Python and no host-to-device copy per step.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .augment import Augment, cutout, flip_translate


class DeviceLoader:
    """Iterate (inputs, labels) batches of one split; shuffled and augmented when `augment` is given.

    images: N x C x H x W uint8 on the device; mean/std: per-channel, in 0..255 units. Every image is yielded
    exactly once per epoch (the last batch may be smaller). The generator's state is all the loader's randomness,
    so saving it at an epoch boundary makes a resumed run draw the same batches.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, mean, std,
                 augment: Augment | None = None, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32, channels_last: bool = True):
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.augment, self.generator, self.dtype, self.channels_last = augment, generator, dtype, channels_last
        device = images.device
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.inv_std = 1.0 / torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        if augment and augment.flip and augment.altflip:
            # altflip (from airbench): each image gets a random first flip, then flips every other epoch, so
            # consecutive epochs see both mirror images of it.
            g = torch.Generator(device=device).manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
            self.base_flip = torch.rand(len(images), device=device, generator=g) < 0.5

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        x = (batch.float() - self.mean) * self.inv_std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x.to(self.dtype)

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one epoch (epoch only matters for altflip)."""
        n, device = len(self.labels), self.images.device
        if self.augment is None:
            for start in range(0, n, self.batch_size):
                yield self.normalise(self.images[start : start + self.batch_size]), self.labels[start : start + self.batch_size]
            return
        aug, g = self.augment, self.generator
        order = torch.randperm(n, device=device, generator=g)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            images = self.images[idx]
            if aug.flip and aug.altflip:
                flip = self.base_flip[idx] ^ bool(epoch % 2)
            elif aug.flip:
                flip = torch.rand(len(idx), device=device, generator=g) < 0.5
            else:
                flip = torch.zeros(len(idx), dtype=torch.bool, device=device)
            shifts = torch.randint(-aug.translate, aug.translate + 1, (len(idx), 2), device=device, generator=g)
            x = self.normalise(flip_translate(images, flip, shifts))
            if aug.cutout:
                x = cutout(x, aug.cutout, g)
            yield x, self.labels[idx]
