"""The dynamic batcher on its own, with a stand-in model: grouping, limits, a bounded queue, failures."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from gpuvision.serve.batcher import Batcher, Overloaded


def run(coroutine, timeout: float = 20):
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


class Model:
    """Doubles its input; records batch sizes; slow enough that requests pile up while it runs."""

    def __init__(self, seconds: float = 0.05):
        self.seconds, self.sizes, self.threads = seconds, [], set()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.seconds)
        return x * 2


async def submit_all(batcher: Batcher, xs: list[torch.Tensor]) -> list:
    batcher.start()
    try:
        return await asyncio.gather(*(batcher.submit(x) for x in xs), return_exceptions=True)
    finally:
        await batcher.stop()


def test_concurrent_requests_are_batched_up_to_the_limit_and_each_gets_its_rows():
    model, seen = Model(), []
    batcher = Batcher(model, max_batch=8, max_wait_s=0.5, max_queue=64, instances=2,
                      observers=[seen.append], name="m")
    xs = [torch.full((1 + i % 3, 2), float(i)) for i in range(16)]  # 1 to 3 images a request
    images = sum(len(x) for x in xs)
    outs = run(submit_all(batcher, xs))
    assert all(torch.equal(out, x * 2) for out, x in zip(outs, xs))
    assert len(model.sizes) < len(xs) and max(model.sizes) <= 8 and sum(model.sizes) == images
    assert sum(batch.images for batch in seen) == images and len(seen) == len(model.sizes)
    assert len(model.threads) == 2  # both executors ran batches


def test_a_lone_request_does_not_wait_for_company():
    batcher = Batcher(Model(0), max_batch=64, max_wait_s=5.0, max_queue=4)
    started = time.perf_counter()
    run(submit_all(batcher, [torch.ones(1, 2)]))
    assert time.perf_counter() - started < 2.5


def test_a_full_queue_refuses_instead_of_growing():
    model = Model(0.2)
    batcher = Batcher(model, max_batch=1, max_wait_s=0, max_queue=2)
    outs = run(submit_all(batcher, [torch.ones(1, 2)] * 6))
    refused = [o for o in outs if isinstance(o, Overloaded)]
    assert refused and refused[0].http_status == 503
    assert len(outs) - len(refused) == len(model.sizes)  # every accepted request ran


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on():
    calls = []

    def flaky(x):
        calls.append(len(x))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return x

    async def scenario():
        batcher = Batcher(flaky, max_batch=4, max_wait_s=0, max_queue=8)
        batcher.start()
        try:
            with pytest.raises(RuntimeError, match="boom"):
                await batcher.submit(torch.ones(1, 2))
            return await batcher.submit(torch.ones(1, 2))
        finally:
            await batcher.stop()

    assert torch.equal(run(scenario()), torch.ones(1, 2))


def test_observers_see_pixels_outputs_and_ids_and_a_failing_one_stops_nothing():
    seen = []

    def broken(batch):
        raise RuntimeError("an observer's bug")

    batcher = Batcher(Model(0.01), max_batch=8, max_wait_s=0.2, max_queue=64, observers=[broken, seen.append])
    pixels = [torch.full((2, 1, 2, 2), i, dtype=torch.uint8) for i in range(3)]

    async def scenario():
        batcher.start()
        try:
            first = await asyncio.gather(*(batcher.submit(p.float(), p, [f"{i}a", f"{i}b"])
                                           for i, p in enumerate(pixels)))
            return first, await batcher.submit(torch.ones(1, 1, 2, 2))  # still serving after the bug
        finally:
            await batcher.stop()

    outs, last = run(scenario())
    assert torch.equal(last, torch.full((1, 1, 2, 2), 2.0))
    batches = [b for b in seen if b.ids[0] is not None]
    assert sum(b.images for b in batches) == 6
    for batch in batches:
        for x, p, y, ids in zip(batch.inputs, batch.pixels, batch.outputs, batch.ids):
            i = int(p[0, 0, 0, 0])
            assert torch.equal(p, pixels[i]) and torch.equal(x, p.float()) and torch.equal(y, outs[i])
            assert ids == [f"{i}a", f"{i}b"]
    assert seen[-1].pixels == [None] and seen[-1].ids == [None]
