"""Production against test: each served model's live figures beside the reference its manifest recorded.

A `Monitor` is an observer of its model's batcher (as the statistics are): it records each prediction (id,
predicted class, top-1 confidence, image brightness) in the model's `Window`, takes labels through
`POST /models/{name}/feedback`, and reports through `GET /models/{name}/monitor` and /metrics:

- accuracy: live accuracy and per-class recall over the labelled predictions in the window, against the
  reference accuracy by an exact one-sided binomial test (H0: the model is as accurate as on its test split).
  Verdict `worse` at p < ALPHA, else `ok`; `too few` below MIN_LABELS labels.
- drift, without labels: the population stability index (PSI) of top-1 confidence and of image brightness over the
  latest DRIFT_RECENT predictions against the reference histograms, and of the predicted classes against the
  test split's; state `ok` below PSI_WATCH, `watch` below PSI_DRIFT, then `drift`; `too few` below MIN_DRIFT.
  PSI = sum over bins of (live - reference) x ln(live / reference), shares smoothed by half a count per bin so
  an empty bin is finite.

Brightness is the mean of the raw uint8 pixels (before normalisation), as the reference measured it; a request
sent as normalised FP32 values is un-normalised for it.
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import torch
from prometheus_client.core import GaugeMetricFamily

from ..artifact import Reference
from ..errors import BadInput, require
from ..runtime.reference import BINS, brightness, confidence, histogram
from .batcher import Batch
from .window import Window, window_file

ALPHA = 0.01
MIN_LABELS = 30
PSI_WATCH, PSI_DRIFT = 0.1, 0.25
DRIFT_RECENT = 5_000
MIN_DRIFT = 100
MAX_ID = 128  # a longer request id is answered, but its predictions get ids of their own (the window keeps them)
PREFIX = "gpuvision_monitor"


def new_ids(n: int) -> list[str]:
    """n new prediction ids (random, 32 hex digits)."""
    return [uuid.uuid4().hex for _ in range(n)]


def prediction_ids(request_id: str | None, n: int) -> tuple[str, list[str]]:
    """The response id (the request's, else a new one) and one prediction id per image: the response id for one
    image, `ID/0`... for several; a request id that is empty or over MAX_ID characters gets new prediction ids."""
    response_id = request_id if request_id is not None else new_ids(1)[0]
    base = response_id if 0 < len(response_id) <= MAX_ID else new_ids(1)[0]
    return response_id, [base] if n == 1 else [f"{base}/{i}" for i in range(n)]


def parse_feedback(body: bytes) -> tuple[str, str]:
    """The (id, label) of a feedback body `{"id": "...", "label": "<class>"}`."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise BadInput(f"feedback must be JSON {{\"id\": ..., \"label\": ...}} ({str(e)[:100]})") from e
    require(isinstance(doc, dict) and set(doc) == {"id", "label"}, 'feedback must be {"id": "<prediction id>", '
            '"label": "<class>"} and nothing else', BadInput)
    require(isinstance(doc["id"], str) and 0 < len(doc["id"]) <= 2 * MAX_ID, "feedback `id` must be a prediction "
            "id (a non-empty string)", BadInput)
    require(isinstance(doc["label"], str), "feedback `label` must be a class name (a string)", BadInput)
    return doc["id"], doc["label"]


def psi(reference: np.ndarray, live: np.ndarray) -> float:
    """Population stability index of live counts against reference counts over the same bins."""
    expected = (np.asarray(reference, np.float64) + 0.5) / (np.sum(reference) + 0.5 * len(reference))
    actual = (np.asarray(live, np.float64) + 0.5) / (np.sum(live) + 0.5 * len(live))
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def drift_state(value: float | None, n: int) -> str:
    if value is None:
        return "no reference"
    if n < MIN_DRIFT:
        return "too few"
    return "drift" if value >= PSI_DRIFT else "watch" if value >= PSI_WATCH else "ok"


def binomial_verdict(correct: int, n: int, reference: float | None) -> tuple[str, float | None]:
    """(verdict, p-value): is `correct` of `n` worse than `reference` accuracy? One-sided exact binomial test."""
    if reference is None:
        return "no reference", None
    if n < MIN_LABELS:
        return "too few", None
    from scipy.stats import binomtest

    p = float(binomtest(correct, n, reference, alternative="less").pvalue)
    return ("worse" if p < ALPHA else "ok"), p


class Monitor:
    """The monitoring of one served model (an observer of its batcher)."""

    def __init__(self, name: str, version: str, classes: list[str], mean: tuple, std: tuple,
                 reference: Reference | None, window: int, directory: str | None = None, runtime: str | None = None,
                 tta: bool = False):
        self.name, self.version, self.classes, self.reference = name, version, list(classes), reference
        self.index = {c: i for i, c in enumerate(self.classes)}
        self.mean, self.std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        self.notes = comparison_notes(reference, runtime, tta)
        path = window_file(directory, name, version) if directory else None
        self.window = Window(window, len(self.classes), path)

    def __call__(self, batch: Batch) -> None:
        """Record a batch's predictions (those the route gave ids)."""
        ids, logits, light = [], [], []
        for x, pixels, y, request_ids in zip(batch.inputs, batch.pixels, batch.outputs, batch.ids):
            if request_ids is None:
                continue
            ids += request_ids
            logits.append(y)
            light.append(brightness(pixels) if pixels is not None else self._unnormalised_brightness(x))
        if ids:  # numpy, not torch, on the event loop: see runtime.reference.confidence
            logits = np.concatenate([y.numpy() for y in logits])
            self.window.add(ids, logits.argmax(1), confidence(logits), np.concatenate(light))

    def _unnormalised_brightness(self, x: torch.Tensor) -> np.ndarray:
        means = x.numpy().mean(axis=(2, 3)) * self.std + self.mean  # per image and channel, 0..255
        return np.clip(means.mean(axis=1) / 255.0, 0.0, 1.0)

    def feedback(self, prediction_id: str, label: str) -> dict:
        """Give a prediction its true label: 404 for an unknown or expired id, 409 for a second label."""
        require(label in self.index, f"label {label[:100]!r} is not a class of model {self.name} (its classes: "
                f"{', '.join(self.classes[:20])}{', ...' if len(self.classes) > 20 else ''})", BadInput)
        predicted = self.window.give_label(prediction_id, self.index[label])
        return {"id": prediction_id, "label": label, "predicted": self.classes[predicted],
                "correct": self.classes[predicted] == label}

    # ------------------------------------------------------------------------------------------ figures
    def accuracy(self) -> dict:
        w, ref = self.window, self.reference
        labelled = w.label >= 0
        labels, predicted = w.label[labelled], w.predicted[labelled]
        n, correct = len(labels), int((labels == predicted).sum())
        verdict, p = binomial_verdict(correct, n, ref.accuracy if ref else None)
        k = len(self.classes)
        support = np.bincount(labels, minlength=k)
        hits = np.bincount(labels[labels == predicted], minlength=k)
        recall = {c: {"live": float(hits[i] / support[i]) if support[i] else None, "n": int(support[i]),
                      "test": ref.recall[i] if ref and ref.recall else None} for i, c in enumerate(self.classes)}
        return {"verdict": verdict, "labelled": n, "correct": correct, "live": correct / n if n else None,
                "test": ref.accuracy if ref else None, "p_value": p, "alpha": ALPHA, "min_labels": MIN_LABELS,
                "per_class_recall": recall}

    def drift(self) -> dict:
        w, ref = self.window, self.reference
        slots = w.recent(DRIFT_RECENT)
        n = len(slots)
        out = {"recent": n, "of_latest": DRIFT_RECENT, "min": MIN_DRIFT, "thresholds": {"watch": PSI_WATCH,
                                                                                        "drift": PSI_DRIFT}}
        for signal, values, hist in (("confidence", w.confidence, ref and ref.confidence_histogram),
                                     ("brightness", w.brightness, ref and ref.brightness_histogram)):
            value = psi(hist, histogram(values[slots])) if hist and ref.bins == BINS else None
            out[signal] = {"psi": value, "state": drift_state(value, n)}
        k = len(self.classes)
        live = np.bincount(w.predicted[slots], minlength=k)
        test = np.asarray(ref.predicted) if ref and ref.predicted else None
        value = psi(test, live) if test is not None else None
        shares = {c: {"live": float(live[i] / n) if n else None,
                      "test": float(test[i] / max(test.sum(), 1)) if test is not None else None}
                  for i, c in enumerate(self.classes)}
        out["classes"] = {"psi": value, "state": drift_state(value, n), "shares": shares}
        return out

    def report(self) -> dict:
        """The model's monitoring figures (GET /models/{name}/monitor; README, "Monitoring")."""
        ref = self.reference
        return {"window": {"predictions": self.window.count, "size": self.window.size,
                           "persisted": self.window.path is not None},
                "accuracy": self.accuracy(), "drift": self.drift(),
                "reference": None if ref is None else {"split": ref.split, "n": ref.n, "accuracy": ref.accuracy,
                                                       "tta": ref.tta, "runtime": ref.runtime},
                "notes": self.notes}

    def close(self) -> None:
        self.window.close()


def comparison_notes(reference: Reference | None, runtime: str | None, tta: bool) -> list[str]:
    """Where the server's figures are not measured like the reference's: said beside them, not hidden."""
    if reference is None:
        return ["the manifest has no reference figures (a model made without a test split): nothing to compare "
                "with"]
    notes = []
    if reference.tta != tta:
        notes.append(f"the server runs {'with' if tta else 'without'} test-time augmentation, the reference was "
                     f"measured {'with' if reference.tta else 'without'}: live accuracy and confidence are not "
                     "like for like")
    if None not in (reference.runtime, runtime) and reference.runtime != runtime:
        notes.append(f"the reference was measured on {reference.runtime}, the server runs {runtime}: expect small "
                     "differences in confidence")
    return notes


class Collector:
    """The monitors' figures as Prometheus gauges (computed when /metrics is read)."""

    def __init__(self, monitors: list[Monitor]):
        self.monitors = monitors

    def collect(self):
        labels = ["model", "version"]
        gauges = {key: GaugeMetricFamily(f"{PREFIX}_{key}", text, labels=labels) for key, text in (
            ("window_predictions", "Predictions in the feedback window"),
            ("labelled", "Labelled predictions in the window"),
            ("live_accuracy", "Accuracy over the labelled predictions in the window (NaN without labels)"),
            ("test_accuracy", "The reference accuracy on the test split (the manifest's)"),
            ("p_value", "One-sided exact binomial test of live against test accuracy (NaN below the minimum)"),
            ("worse", "1 when live accuracy is worse than the test split's at p < 0.01"))}
        psi_gauge = GaugeMetricFamily(f"{PREFIX}_psi", "Population stability index of recent traffic against the "
                                      "test split (0.1 watch, 0.25 drift)", labels=[*labels, "signal"])
        share = GaugeMetricFamily(f"{PREFIX}_predicted_share", "Share of recent predictions per class, live and on "
                                  "the test split", labels=[*labels, "class", "on"])
        nan = float("nan")
        for m in self.monitors:
            at, accuracy, drift = [m.name, m.version], m.accuracy(), m.drift()
            for key, value in (("window_predictions", m.window.count), ("labelled", accuracy["labelled"]),
                               ("live_accuracy", accuracy["live"]), ("test_accuracy", accuracy["test"]),
                               ("p_value", accuracy["p_value"]), ("worse", accuracy["verdict"] == "worse")):
                gauges[key].add_metric(at, nan if value is None else float(value))
            for signal in ("confidence", "brightness", "classes"):
                value = drift[signal]["psi"]
                psi_gauge.add_metric([*at, signal], nan if value is None else value)
            for c, s in drift["classes"]["shares"].items():
                for on in ("live", "test"):
                    share.add_metric([*at, c, on], nan if s[on] is None else s[on])
        yield from gauges.values()
        yield psi_gauge
        yield share
