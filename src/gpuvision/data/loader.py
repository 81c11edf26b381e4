"""Loaders: batches drawn by index from decoded uint8 images, augmented and normalised on the device.

DeviceLoader: the images live on the device; a step is one gather (crop, flip), one cast and one normalisation
there: no per-image Python and no host-to-device copy per step. StreamingLoader: the images stay in host memory
(a memory-mapped cache: only the rows read are paged in) and a background thread gathers each batch into a pinned
buffer and copies it over, ahead of use.

Order and augmentation are drawn per *global* batch, identically in every process (the same seeded generators),
then sharded: a process holds one contiguous block (`Shard`) of the split and takes, from each global batch, the
images of its block. N processes thus train on exactly the global batches one process draws, each touching only
its own images; a process's part of a global batch varies around batch/N from step to step.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .augment import Augment, cutout, flip_translate, jitter, resize
from .input_spec import InputSpec, normalise


def epoch_steps(n: int, batch_size: int, drop_last: bool) -> int:
    """Batches in an epoch of n images (drop_last keeps at least one batch)."""
    return n // batch_size if drop_last and n >= batch_size else -(-n // batch_size)


def _draw_seed(generator: torch.Generator | None) -> int:
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**31, (1,), device=device, generator=generator))


@dataclass(frozen=True)
class Shard:
    """The block [start, stop) of a split's `total` images that one process holds."""

    start: int
    stop: int
    total: int

    @classmethod
    def of(cls, total: int, rank: int = 0, world: int = 1) -> Shard:
        return cls(total * rank // world, total * (rank + 1) // world, total)

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.stop == self.total


class DeviceLoader:
    """Iterate (inputs, labels) batches of one split; shuffled and augmented when `augment` is given.

    images, labels: this process's block of the split (all of it unless `shard` says otherwise), uint8
    N x C x H x W on the device; spec: the model's input (normalisation); batch_size: the global batch. Every image
    of the split is in exactly one global batch per epoch (the last may be smaller; drop_last skips it). The
    generators' states are all the loader's randomness, so saving them at an epoch boundary replays its batches.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, spec: InputSpec,
                 augment: Augment | None = None, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32, channels_last: bool = True, drop_last: bool = False,
                 shard: Shard | None = None):
        self.images, self.labels, self.batch_size, self.drop_last = images, labels, batch_size, drop_last
        self.augment, self.generator, self.dtype, self.channels_last = augment, generator, dtype, channels_last
        self.spec, self.device = spec, labels.device
        self.plan_device = images.device  # where the rows a step gathers are indexed from
        self.shard = shard or Shard.of(len(labels))
        # The order is drawn on the host (the shard plan is host arithmetic; no device sync per step), the
        # augmentation on the device generator, each from its own seeded stream.
        self.order_generator = torch.Generator().manual_seed(_draw_seed(generator))
        if augment and augment.flip and augment.altflip:
            # altflip (from airbench): each image gets a random first flip, then flips every other epoch, so
            # consecutive epochs see both mirror images of it. Drawn for the whole split: the same in every process.
            g = torch.Generator(device=self.device).manual_seed(_draw_seed(generator))
            base = torch.rand(self.shard.total, device=self.device, generator=g) < 0.5
            self.base_flip = base[self.shard.start : self.shard.stop]

    def __len__(self) -> int:
        return epoch_steps(self.shard.total, self.batch_size, self.drop_last)

    def global_size(self, step: int) -> int:
        """Images in the global batch of the epoch's `step` (all processes together)."""
        return min(self.batch_size, self.shard.total - step * self.batch_size)

    def epoch(self, epoch: int = 0, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's part of each global batch of one epoch (epoch only matters for altflip); `skip` draws
        the first batches without yielding them (resuming mid-epoch replays the rest exactly)."""
        if self.augment is None:
            for start in range(0, len(self.labels), self.batch_size):
                yield self.normalise(self._rows(slice(start, start + self.batch_size))), \
                    self.labels[start : start + self.batch_size]
            return
        for local, positions, size in self._plan(skip):
            params = self._draw(size, positions)
            if local is not None:
                yield self._augment(self._rows(local), local, epoch, params), self.labels[local]

    def _plan(self, skip: int) -> Iterator[tuple[torch.Tensor | None, torch.Tensor | None, int]]:
        """Per global batch of the epoch: this process's rows in it, their positions in it (None: all of it)
        and its size; None rows for a skipped batch. Computed once per epoch on the host, copied over once."""
        s, size = self.shard, self.batch_size
        order = torch.randperm(s.total, generator=self.order_generator)[: len(self) * size if self.drop_last else None]
        step_of = torch.arange(len(order)) // size
        mine = (order >= s.start) & (order < s.stop)
        local = (order[mine] - s.start).to(self.plan_device, non_blocking=True)
        positions = None if s.whole else (torch.arange(len(order)) % size)[mine].to(self.device, non_blocking=True)
        counts = torch.bincount(step_of[mine], minlength=len(self)).tolist()
        offset = 0
        for step, count in enumerate(counts):
            part = slice(offset, offset + count)
            offset += count
            yield (local[part] if step >= skip else None), (None if positions is None else positions[part]), \
                self.global_size(step)

    def _draw(self, size: int, positions: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """One global batch's augmentation (drawn alike in every process), this process's part of it."""
        aug, g, device = self.augment, self.generator, self.device
        params = {"flip": torch.rand(size, device=device, generator=g) < 0.5 if aug.flip and not aug.altflip
                  else None,
                  "shifts": torch.randint(-aug.translate, aug.translate + 1, (size, 2), device=device, generator=g)}
        if aug.brightness or aug.contrast:
            params["jitter"] = torch.rand(size, 2, device=device, generator=g)
        if aug.cutout:
            params["corner"] = torch.rand(size, 2, device=device, generator=g)
        return {k: v if v is None or positions is None else v[positions] for k, v in params.items()}

    def _augment(self, images: torch.Tensor, local: torch.Tensor, epoch: int, params: dict) -> torch.Tensor:
        """A uint8 batch flipped and translated in one gather, normalised, resized to the epoch's side, jittered,
        cut out."""
        aug = self.augment
        if aug.flip and aug.altflip:
            flip = self.base_flip[local] ^ bool(epoch % 2)
        elif aug.flip:
            flip = params["flip"]
        else:
            flip = torch.zeros(len(local), dtype=torch.bool, device=self.device)
        x = self.normalise(flip_translate(images, flip, params["shifts"]))
        x = resize(x, aug.side(epoch, images.shape[-1])) if aug.sides else x
        x = jitter(x, aug.brightness, aug.contrast, params["jitter"]) if "jitter" in params else x
        return cutout(x, aug.cutout, corner=params["corner"]) if aug.cutout else x

    def _rows(self, index) -> torch.Tensor:
        return self.images[index]

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 -> the model's input (channels_last unless disabled)."""
        return normalise(batch, self.spec, self.dtype, self.channels_last)

    def state(self) -> dict[str, torch.Tensor]:
        """All the loader's randomness; restoring it at an epoch boundary replays the same batches."""
        state = {"order": self.order_generator.get_state()}
        return {**state, "device": self.generator.get_state()} if self.generator is not None else state

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        self.order_generator.set_state(state["order"])
        if self.generator is not None:
            self.generator.set_state(state["device"])


class StreamingLoader(DeviceLoader):
    """Batches gathered on the host and copied to the device ahead of use.

    For data sets larger than the device memory, or than the host's (a memory-mapped cache): `images` is a host
    array and `rows` (if given) says which of its rows are this process's block, so only those are ever read. A
    background thread gathers the next batches into pinned buffers and starts their copies, images and indices
    alike (non-blocking, on a side CUDA stream), so copying overlaps the current step; augmentation still runs
    batched on the device. `wait_seconds` counts the time the training loop spent waiting for a batch.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, spec: InputSpec,
                 device: torch.device, augment: Augment | None = None, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32, channels_last: bool = True, prefetch: int = 3,
                 drop_last: bool = False, shard: Shard | None = None, rows: torch.Tensor | None = None):
        super().__init__(images, labels.to(device), batch_size, spec, augment, generator, dtype, channels_last,
                         drop_last, shard)
        self.host_rows = rows  # None: images holds exactly this process's block
        self.pin, self.prefetch, self.wait_seconds = device.type == "cuda", prefetch, 0.0

    def epoch(self, epoch: int = 0, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.augment is None:
            n = len(self.labels)
            steps = [(torch.arange(i, min(i + self.batch_size, n)), None) for i in range(0, n, self.batch_size)]
            for images, local, _ in self._stream(steps):
                yield self.normalise(images), self.labels[local]
            return
        for images, local, params in self._stream([(p[0], p) for p in self._plan(skip)]):
            if local is not None:
                yield self._augment(images, local, epoch, params), self.labels[local]

    def _stream(self, steps: list):
        """(device images, device local rows, augmentation params) per step, gathered by a background thread;
        augmentation is drawn here, in step order, so the generator's sequence matches the device loader's."""
        import queue
        import threading

        slots: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stream = torch.cuda.Stream(self.device) if self.pin else None
        stop = threading.Event()

        def produce():
            for local, _ in steps:
                if stop.is_set():
                    return
                if local is None:
                    slots.put((None, None, None))
                    continue
                rows = local if self.host_rows is None else self.host_rows[local]
                batch = torch.empty((len(rows), *self.images.shape[1:]), dtype=torch.uint8, pin_memory=self.pin)
                torch.index_select(self.images, 0, rows, out=batch)
                if stream is not None:
                    with torch.cuda.stream(stream):
                        # pinned, so the index copy does not block this thread as a pageable one would
                        on_device = batch.to(self.device, non_blocking=True)
                        local = local.pin_memory().to(self.device, non_blocking=True)
                        ready = torch.cuda.Event()
                        ready.record(stream)
                else:
                    on_device, ready = batch, None
                slots.put((on_device, local, ready))
            slots.put(StopIteration)

        worker = threading.Thread(target=produce, daemon=True)
        worker.start()
        try:
            for _, plan in steps:
                started = time.perf_counter()
                item = slots.get()
                self.wait_seconds += time.perf_counter() - started
                on_device, local, ready = item
                params = self._draw(plan[2], plan[1]) if plan is not None and self.augment else None
                if on_device is None:
                    yield None, None, params
                    continue
                if ready is not None:
                    main = torch.cuda.current_stream(self.device)
                    main.wait_event(ready)
                    # Made on the side stream, used on this one: without this the allocator could hand their
                    # memory to the next copy once Python drops them, while this stream's kernels still read it.
                    on_device.record_stream(main)
                    local.record_stream(main)
                yield on_device, local, params
        finally:
            stop.set()
            while worker.is_alive():  # drain so the producer can finish
                try:
                    slots.get(timeout=0.1)
                except queue.Empty:
                    pass
            worker.join()
