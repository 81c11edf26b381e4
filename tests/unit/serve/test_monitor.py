"""Monitoring on its own: the prediction window (bounded, labelled once, kept in a bounded file across restarts),
prediction ids, the binomial verdict and the population stability index."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gpuvision.artifact import Reference
from gpuvision.errors import BadInput, NotFound, UserError
from gpuvision.serve.batcher import Batch
from gpuvision.serve.monitor import (
    MAX_ID,
    Monitor,
    binomial_verdict,
    comparison_notes,
    drift_state,
    parse_feedback,
    prediction_ids,
    psi,
)
from gpuvision.serve.window import COMPACT_AT, Conflict, Window


def add(window: Window, ids: list[str], predicted: int = 0) -> None:
    n = len(ids)
    window.add(ids, np.full(n, predicted), np.full(n, 0.9), np.full(n, 0.5))


def test_the_window_keeps_the_latest_predictions_and_labels_each_once():
    window = Window(3, classes=2)
    add(window, ["a", "b", "c", "d"])  # "a" falls out
    with pytest.raises(NotFound, match="--feedback-window"):
        window.give_label("a", 1)
    with pytest.raises(NotFound):
        window.give_label("never", 1)
    assert window.give_label("b", 1) == 0
    with pytest.raises(Conflict, match="already"):
        window.give_label("b", 0)
    assert window.count == 3 and (window.label >= 0).sum() == 1
    add(window, ["c"], predicted=1)  # a repeated id names the latest prediction only
    assert window.give_label("c", 1) == 1 and (window.label >= 0).sum() == 1  # "b" evicted, with its label


def test_the_file_restores_the_window_and_stays_bounded(tmp_path):
    path = tmp_path / "m-v1.jsonl"
    window = Window(5, classes=3, path=path)
    for i in range(40):  # 8 x the window: compacted along the way
        add(window, [f"p{i}"], predicted=i % 3)
        if i % 2:
            window.give_label(f"p{i}", 0)
    with pytest.raises(UserError, match="in use"):
        Window(5, classes=3, path=path)  # a second writer of the same file is refused
    window.close()
    lines = path.read_text().splitlines()
    assert len(lines) <= COMPACT_AT * 5
    with open(path, "a") as f:
        f.write('{"id": "half a li')  # a crash's last line
    again = Window(5, classes=3, path=path)
    assert [again.ids[s] for s in again.recent(5)] == [f"p{i}" for i in range(35, 40)]
    assert np.array_equal(again.label[again.recent(5)], [0, -1, 0, -1, 0])
    assert np.array_equal(again.predicted[again.recent(5)], [i % 3 for i in range(35, 40)])
    with pytest.raises(Conflict):
        again.give_label("p39", 1)
    assert again.give_label("p38", 2) == 2
    again.close()
    assert {"id": "p38", "y": 2} in [json.loads(line) for line in path.read_text().splitlines()]
    third = Window(5, classes=3, path=path)
    assert np.array_equal(third.label[third.recent(5)], [0, -1, 0, 2, 0])
    third.close()


def test_prediction_ids_follow_the_request_id():
    assert prediction_ids("req-1", 1) == ("req-1", ["req-1"])
    assert prediction_ids("req-1", 3) == ("req-1", ["req-1/0", "req-1/1", "req-1/2"])
    new, ids = prediction_ids(None, 1)
    assert len(new) == 32 and ids == [new]
    long_id = "x" * (MAX_ID + 1)
    answered, ids = prediction_ids(long_id, 1)
    assert answered == long_id and ids[0] != long_id and len(ids[0]) == 32
    assert prediction_ids("", 1)[0] == "" and prediction_ids("", 1)[1][0] != ""


@pytest.mark.parametrize("body", [b"", b"[]", b'{"id": "a"}', b'{"id": 1, "label": "0"}', b'{"id": "", "label": "0"}',
                                  b'{"id": "a", "label": 3}', b'{"id": "a", "label": "0", "x": 1}', b"\xff"])
def test_bad_feedback_bodies_are_bad_input(body):
    with pytest.raises(BadInput):
        parse_feedback(body)


def test_the_verdict_is_an_exact_one_sided_binomial_test():
    assert binomial_verdict(20, 29, 0.9) == ("too few", None)
    assert binomial_verdict(5, 100, None) == ("no reference", None)
    verdict, p = binomial_verdict(60, 100, 0.9)  # 40% wrong against 90%
    assert verdict == "worse" and p < 1e-10
    verdict, p = binomial_verdict(88, 100, 0.9)  # within chance of 90%
    assert verdict == "ok" and 0.2 < p < 0.5
    assert binomial_verdict(100, 100, 0.9)[0] == "ok"


def test_psi_is_zero_for_the_same_distribution_and_grows_with_a_shift():
    reference = np.array([0, 5, 20, 50, 20, 5, 0])
    assert psi(reference, reference) == pytest.approx(0, abs=1e-12)
    assert psi(reference, reference * 3) < 0.01  # the half-count smoothing of empty bins differs a little
    assert psi(reference, np.roll(reference, 1)) > psi(reference, reference + 1) >= 0
    assert drift_state(0.3, 1000) == "drift" and drift_state(0.15, 1000) == "watch"
    assert drift_state(0.05, 1000) == "ok" and drift_state(0.3, 10) == "too few"


def test_fp32_requests_are_unnormalised_for_brightness():
    pixels = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mean, std = (120.0, 110.0, 100.0), (60.0, 50.0, 40.0)
    x = (pixels.float() - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    monitor = Monitor("m", "v", ["a", "b"], mean, std, None, 10)
    logits = torch.tensor([[2.0, 0.0]] * 4)
    monitor(Batch([x, x], [pixels, None], [logits, logits], [list("abcd"), list("efgh")], [0.0, 0.0], 0.0))
    w = monitor.window
    assert w.count == 8 and np.allclose(w.brightness[:4], w.brightness[4:8], atol=1e-5)
    assert np.allclose(w.brightness[:4], pixels.float().mean(dim=(1, 2, 3)).numpy() / 255, atol=1e-6)
    assert (w.predicted[:8] == 0).all() and np.allclose(w.confidence[:8], torch.softmax(logits, 1)[0, 0].item())
    report = monitor.report()
    assert report["accuracy"]["verdict"] == "no reference" and "no reference" in report["notes"][0]
    with pytest.raises(BadInput, match="not a class"):
        monitor.feedback("a", "zebra")


def test_a_server_that_does_not_measure_like_the_reference_says_so():
    reference = Reference(n=10, accuracy=0.9, confidence_histogram=[0] * 19 + [10],
                          brightness_histogram=[10] + [0] * 19, runtime="eager-fp32")
    assert comparison_notes(reference, "eager-fp32", tta=False) == []
    tta, runtime = comparison_notes(reference, "onnxruntime-int8", tta=True)
    assert "test-time augmentation" in tta and "not like for like" in tta
    assert "eager-fp32" in runtime and "onnxruntime-int8" in runtime
