"""DeviceLoader: batches drawn by index from uint8 images resident on the device, augmented and normalised there.

The whole decoded set is copied to the device once; each step is then one gather (crop, flip), one cast and one
normalisation on the device: no per-image Python and no host-to-device copy per step.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from .augment import Augment, cutout, flip_translate, jitter, resize
from .input_spec import InputSpec, normalise


def epoch_steps(n: int, batch_size: int, drop_last: bool) -> int:
    """Batches in an epoch of n images (drop_last keeps at least one batch)."""
    return n // batch_size if drop_last and n >= batch_size else -(-n // batch_size)


def _draw_seed(generator: torch.Generator | None) -> int:
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**31, (1,), device=device, generator=generator))


class DeviceLoader:
    """Iterate (inputs, labels) batches of one split; shuffled and augmented when `augment` is given.

    images: N x C x H x W uint8 on the device; spec: the model's input (normalisation). Every image is yielded
    exactly once per epoch (the last batch may be smaller; drop_last skips it). The generator's state is all the
    loader's randomness, so saving it at an epoch boundary makes a resumed run draw the same batches.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, spec: InputSpec,
                 augment: Augment | None = None, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32, channels_last: bool = True, drop_last: bool = False):
        self.images, self.labels, self.batch_size, self.drop_last = images, labels, batch_size, drop_last
        self.augment, self.generator, self.dtype, self.channels_last = augment, generator, dtype, channels_last
        self.spec, device = spec, images.device
        if augment and augment.flip and augment.altflip:
            # altflip (from airbench): each image gets a random first flip, then flips every other epoch, so
            # consecutive epochs see both mirror images of it.
            g = torch.Generator(device=device).manual_seed(_draw_seed(generator))
            self.base_flip = torch.rand(len(images), device=device, generator=g) < 0.5

    def __len__(self) -> int:
        return epoch_steps(len(self.labels), self.batch_size, self.drop_last)

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one epoch (epoch only matters for altflip)."""
        n = len(self.labels)
        if self.augment is None:
            for start in range(0, n, self.batch_size):
                end = start + self.batch_size
                yield self.normalise(self.images[start:end]), self.labels[start:end]
            return
        order = torch.randperm(n, device=self.images.device, generator=self.generator)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self._augment(self.images[idx], idx, epoch), self.labels[idx]

    def _augment(self, images: torch.Tensor, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        """A uint8 batch flipped and translated in one gather, normalised, resized to the epoch's side, jittered,
        cut out."""
        aug, g, device = self.augment, self.generator, images.device
        if aug.flip and aug.altflip:
            flip = self.base_flip[idx] ^ bool(epoch % 2)
        elif aug.flip:
            flip = torch.rand(len(idx), device=device, generator=g) < 0.5
        else:
            flip = torch.zeros(len(idx), dtype=torch.bool, device=device)
        shifts = torch.randint(-aug.translate, aug.translate + 1, (len(idx), 2), device=device, generator=g)
        x = self.normalise(flip_translate(images, flip, shifts))
        x = resize(x, aug.side(epoch, images.shape[-1])) if aug.sides else x
        x = jitter(x, aug.brightness, aug.contrast, g) if aug.brightness or aug.contrast else x
        return cutout(x, aug.cutout, g) if aug.cutout else x

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 -> the model's input (channels_last unless disabled)."""
        return normalise(batch, self.spec, self.dtype, self.channels_last)

    def state(self) -> dict[str, torch.Tensor]:
        """All the loader's randomness; restoring it at an epoch boundary replays the same batches."""
        return {"device": self.generator.get_state()} if self.generator is not None else {}

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        if self.generator is not None:
            self.generator.set_state(state["device"])


class StreamingLoader(DeviceLoader):
    """Batches gathered on the host from (pinned) memory and copied to the device ahead of use.

    For data sets larger than the device memory: a background thread gathers the next batches by index into
    pinned buffers and starts their copies, images and indices alike (non-blocking, on a side CUDA stream), so
    copying overlaps the current step; augmentation still runs batched on the device. `wait_seconds` counts the
    time the training loop spent waiting for a batch, to report the share of step time lost to data.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, spec: InputSpec,
                 device: torch.device,
                 augment: Augment | None = None, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32, channels_last: bool = True, prefetch: int = 3,
                 drop_last: bool = False):
        pin = device.type == "cuda"
        host_images = images.cpu().pin_memory() if pin else images.cpu()
        # The permutation is drawn on the host (the images are there); augmentation draws on the device generator.
        self.host_generator = torch.Generator().manual_seed(_draw_seed(generator))
        super().__init__(host_images, labels.to(device), batch_size, spec, augment, generator, dtype,
                         channels_last, drop_last)
        self.device, self.pin, self.prefetch, self.wait_seconds = device, pin, prefetch, 0.0
        if hasattr(self, "base_flip"):
            self.base_flip = self.base_flip.to(device)

    def _batches(self, order: torch.Tensor):
        """Yield (device uint8 images, device indices) in order, produced by a background thread."""
        import queue
        import threading

        slots: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stream = torch.cuda.Stream(self.device) if self.pin else None
        stop = threading.Event()

        def produce():
            for start in range(0, len(order), self.batch_size):
                if stop.is_set():
                    return
                idx = order[start : start + self.batch_size]
                batch = torch.empty((len(idx), *self.images.shape[1:]), dtype=torch.uint8, pin_memory=self.pin)
                torch.index_select(self.images, 0, idx, out=batch)
                if stream is not None:
                    with torch.cuda.stream(stream):
                        # pinned, so the index copy does not block this thread as a pageable one would
                        on_device = batch.to(self.device, non_blocking=True)
                        idx = idx.pin_memory().to(self.device, non_blocking=True)
                        ready = torch.cuda.Event()
                        ready.record(stream)
                else:
                    on_device, ready = batch, None
                slots.put((on_device, idx, ready))
            slots.put(None)

        worker = threading.Thread(target=produce, daemon=True)
        worker.start()
        try:
            while True:
                started = time.perf_counter()
                item = slots.get()
                self.wait_seconds += time.perf_counter() - started
                if item is None:
                    return
                on_device, idx, ready = item
                if ready is not None:
                    main = torch.cuda.current_stream(self.device)
                    main.wait_event(ready)
                    # Made on the side stream, used on this one: without this the allocator could hand their
                    # memory to the next copy once Python drops them, while this stream's kernels still read it.
                    on_device.record_stream(main)
                    idx.record_stream(main)
                yield on_device, idx
        finally:
            stop.set()
            while worker.is_alive():  # drain so the producer can finish
                try:
                    slots.get(timeout=0.1)
                except queue.Empty:
                    pass
            worker.join()

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.augment is None:
            for images, idx in self._batches(torch.arange(n)):
                yield self.normalise(images), self.labels[idx]
            return
        order = torch.randperm(n, generator=self.host_generator)[: len(self) * self.batch_size]  # drop_last
        for images, idx in self._batches(order):
            yield self._augment(images, idx, epoch), self.labels[idx]

    def state(self) -> dict[str, torch.Tensor]:
        return {**super().state(), "host": self.host_generator.get_state()}

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        super().set_state(state)
        self.host_generator.set_state(state["host"])
