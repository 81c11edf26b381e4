"""Serving statistics: Prometheus metrics named in Triton's shape with our prefix, and Triton's stats JSON.

One `ModelStats` per served model records each request and each batch once, into both views, labelled by model
and version. The exec/inference count ratio is the mean batch size the server formed.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .batcher import Batch

PREFIX = "gpuvision_inference"
RECENT = 10_000  # requests whose latency `summary` takes percentiles over
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds


class Metrics:
    """The collectors of one server, in their own registry (the process-wide default registry is left alone)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        labels, r = ("model", "version"), self.registry
        self.success = Counter(f"{PREFIX}_request_success", "Inference requests answered", labels, registry=r)
        self.failure = Counter(f"{PREFIX}_request_failure", "Inference requests refused or failed", labels,
                               registry=r)
        self.inferences = Counter(f"{PREFIX}_count", "Images inferred (a request may carry several)", labels,
                                  registry=r)
        self.executions = Counter(f"{PREFIX}_exec_count", "Batches run; inferences / executions is the mean "
                                  "batch size", labels, registry=r)
        self.queue = Histogram(f"{PREFIX}_queue_seconds", "Time each request waited for its batch", labels,
                               buckets=BUCKETS, registry=r)
        self.compute = Histogram(f"{PREFIX}_compute_seconds", "Time each batch ran", labels, buckets=BUCKETS,
                                 registry=r)
        self.pending = Gauge(f"{PREFIX}_pending_request_count", "Requests waiting in the queue", labels, registry=r)


def _ns(count: int = 0, seconds: float = 0.0) -> dict:
    return {"count": count, "ns": int(seconds * 1e9)}


class ModelStats:
    """The statistics of one model."""

    def __init__(self, metrics: Metrics, name: str, version: str, depth: Callable[[], int]):
        self.name, self.version = name, version
        labels = {"model": name, "version": version}
        self._success, self._failure = metrics.success.labels(**labels), metrics.failure.labels(**labels)
        self._inferences, self._executions = metrics.inferences.labels(**labels), metrics.executions.labels(**labels)
        self._queue, self._compute = metrics.queue.labels(**labels), metrics.compute.labels(**labels)
        metrics.pending.labels(**labels).set_function(depth)
        self.inference_count = self.execution_count = 0
        self.last_inference_ms = 0
        self.totals = defaultdict(lambda: [0, 0.0])  # success, fail, queue, compute -> [count, seconds]
        self.batches = defaultdict(lambda: [0, 0.0])  # batch size -> [count, compute seconds]
        self.recent: deque[float] = deque(maxlen=RECENT)  # seconds of the latest successful requests

    @contextmanager
    def request(self) -> Iterator[None]:
        """Count the enclosed request as a success, or as a failure if it raises."""
        started = time.perf_counter()
        try:
            yield
        except BaseException:
            self._add("fail", time.perf_counter() - started)
            self._failure.inc()
            raise
        seconds = time.perf_counter() - started
        self._add("success", seconds)
        self.recent.append(seconds)
        self._success.inc()

    def __call__(self, batch: Batch) -> None:
        """Record one batch run (an observer of the model's Batcher)."""
        requests, images, compute_seconds = len(batch.inputs), batch.images, batch.compute_seconds
        self.inference_count += images
        self.execution_count += 1
        self.last_inference_ms = int(time.time() * 1e3)
        self._inferences.inc(images)
        self._executions.inc()
        self._compute.observe(compute_seconds)
        for seconds in batch.queue_seconds:
            self._queue.observe(seconds)
            self._add("queue", seconds)
        self._add("compute_infer", compute_seconds * requests, requests)  # as Triton: each request its batch's time
        size = self.batches[images]
        size[0] += 1
        size[1] += compute_seconds

    def _add(self, key: str, seconds: float, count: int = 1) -> None:
        total = self.totals[key]
        total[0] += count
        total[1] += seconds

    def summary(self) -> dict:
        """Requests answered and failed, images, the mean batch, and p50/p99 latency (ms, in the server, over the
        latest RECENT requests)."""
        ms = np.array(self.recent) * 1e3
        latency = {f"p{q}": round(float(np.percentile(ms, q)), 3) if len(ms) else None for q in (50, 99)}
        return {"requests": self.totals["success"][0] if "success" in self.totals else 0,
                "failures": self.totals["fail"][0] if "fail" in self.totals else 0, "images": self.inference_count,
                "mean_batch": round(self.inference_count / self.execution_count, 2) if self.execution_count else None,
                "latency_ms": latency}

    def triton(self) -> dict:
        """This model's entry of Triton's statistics extension (`model_stats`)."""
        keys = ("success", "fail", "queue", "compute_infer")
        return {"name": self.name, "version": self.version, "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count, "execution_count": self.execution_count,
                "inference_stats": {k: _ns(*self.totals[k]) if k in self.totals else _ns() for k in keys},
                "batch_stats": [{"batch_size": size, "compute_infer": _ns(*value)}
                                for size, value in sorted(self.batches.items())]}
