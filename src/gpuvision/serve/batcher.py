"""Dynamic batching: concurrent requests for one model are run as one batch.

A request is a normalised fp32 batch of n >= 1 images. Requests wait in a bounded queue; an executor takes the
oldest and, unless the previous batch was a lone request (the server is idle: waiting would only add latency),
waits until `max_batch` images are queued or the oldest has waited `max_wait` seconds, then runs what fits in
`max_batch` as one batch (`batch`), calls `predict` in its own thread (the event loop keeps serving), and hands
each request its rows (`unbatch`). `instances` executors share the queue: one gathers a batch while another runs.
A full queue refuses the request (503 with Retry-After) instead of growing a backlog. Once a batch's callers have
their answers, each of the model's observers (statistics, monitoring) is told of it as a `Batch`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from ..errors import UserError

log = logging.getLogger(__name__)


class Overloaded(UserError):
    """The queue is full: the caller should retry shortly."""

    http_status = 503


@dataclass
class _Request:
    x: torch.Tensor
    future: asyncio.Future
    queued: float  # time.perf_counter() when it joined the queue
    pixels: torch.Tensor | None = None
    ids: list[str] | None = None


@dataclass
class Batch:
    """One batch run, as observers see it: per request, the normalised images the model ran on, the uint8
    N x C x H x W pixels they came from (None where the client sent normalised values), the logits, and one
    prediction id per image (None where the route gave none); the time each request queued and the batch ran."""

    inputs: list[torch.Tensor]
    pixels: list[torch.Tensor | None]
    outputs: list[torch.Tensor]
    ids: list[list[str] | None]
    queue_seconds: list[float]
    compute_seconds: float

    @property
    def images(self) -> int:
        return sum(len(x) for x in self.inputs)


Observer = Callable[[Batch], None]


def batch(xs: list[torch.Tensor]) -> torch.Tensor:
    """The requests' images as one batch."""
    return xs[0] if len(xs) == 1 else torch.cat(xs)


def unbatch(y: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """Each request's rows of the batch's output."""
    return list(torch.split(y, sizes))


class Batcher:
    """The queue and executors of one model. Each of `observers` is called with every batch run (a `Batch`), on
    the event loop, after its callers have their answers."""

    def __init__(self, predict: Callable[[torch.Tensor], torch.Tensor], max_batch: int, max_wait_s: float,
                 max_queue: int, instances: int = 1, observers: list[Observer] = (), name: str = "model"):
        self.predict, self.max_batch, self.max_wait, self.max_queue = predict, max_batch, max_wait_s, max_queue
        self.instances, self.observers, self.name = instances, list(observers), name
        self._queue: deque[_Request] = deque()
        self._images = 0
        self._arrived = asyncio.Event()
        self._workers: list[asyncio.Task] = []
        self._pools: list[ThreadPoolExecutor] = []
        self._last_requests = 1

    @property
    def depth(self) -> int:
        """Requests waiting to run."""
        return len(self._queue)

    def start(self) -> None:
        """Start the executors (in the running event loop)."""
        for i in range(self.instances):
            pool = ThreadPoolExecutor(1, thread_name_prefix=f"gpuvision-{self.name}-{i}")
            self._pools.append(pool)
            self._workers.append(asyncio.create_task(self._work(pool)))

    async def stop(self) -> None:
        """Stop the executors; requests still queued are cancelled (the server drains before it stops)."""
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for pool in self._pools:
            pool.shutdown(wait=True)
        while self._queue:
            self._queue.popleft().future.cancel()
        self._workers, self._pools = [], []

    async def submit(self, x: torch.Tensor, pixels: torch.Tensor | None = None, ids: list[str] | None = None
                     ) -> torch.Tensor:
        """The model's output for one request's images (at most max_batch of them); `pixels` (uint8, before
        normalisation) and `ids` (one per image) are for the observers only."""
        if len(self._queue) >= self.max_queue:
            raise Overloaded(f"model {self.name}: {self.max_queue} requests are waiting already; retry shortly")
        request = _Request(x, asyncio.get_running_loop().create_future(), time.perf_counter(), pixels, ids)
        self._queue.append(request)
        self._images += len(x)
        self._arrived.set()
        return await request.future

    async def _wait_for(self, condition: Callable[[], bool], deadline: float | None = None) -> None:
        """Wait until condition() holds or the deadline (time.perf_counter()) passes."""
        while not condition():
            left = None if deadline is None else deadline - time.perf_counter()
            if left is not None and left <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                return

    async def _take(self) -> list[_Request]:
        """The next batch: the oldest requests whose images fit in max_batch."""
        while True:
            await self._wait_for(lambda: bool(self._queue))
            if self._last_requests > 1 or len(self._queue) > 1:
                await self._wait_for(lambda: self._images >= self.max_batch or not self._queue,
                                     self._queue[0].queued + self.max_wait)
            taken, n = [], 0
            while self._queue and (not taken or n + len(self._queue[0].x) <= self.max_batch):
                request = self._queue.popleft()
                self._images -= len(request.x)
                if not request.future.done():  # a caller that went away is not run
                    taken.append(request)
                    n += len(request.x)
            if taken:  # another executor may have emptied the queue while this one waited
                return taken

    async def _work(self, pool: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            requests = await self._take()
            sizes = [len(r.x) for r in requests]
            self._last_requests = len(requests)
            started = time.perf_counter()
            try:
                outputs = unbatch(await loop.run_in_executor(pool, self.predict, batch([r.x for r in requests])),
                                  sizes)
            except Exception as e:  # a failed batch fails its requests, not the server: each caller gets the error
                for r in requests:
                    if not r.future.done():
                        r.future.set_exception(e)
                continue
            finished = time.perf_counter()
            for r, y in zip(requests, outputs):
                if not r.future.done():
                    r.future.set_result(y)
            if self.observers:
                self._tell(Batch([r.x for r in requests], [r.pixels for r in requests], outputs,
                                 [r.ids for r in requests], [started - r.queued for r in requests], finished - started))

    def _tell(self, batch: Batch) -> None:
        for observer in self.observers:
            try:
                observer(batch)
            except Exception:  # a bug in an observer must not stop the executor: its callers were answered
                log.exception("model %s: observer %s failed", self.name, observer)
