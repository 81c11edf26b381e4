"""Evaluation reports: metrics from labels and predictions, and a plot that leaves the process as it was."""

from __future__ import annotations

import logging
import warnings

import numpy as np

from gpuvision.evaluate import classification_report, plot_confusion


def test_classification_report_counts():
    labels, predicted = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0])
    report = classification_report(labels, predicted, ["a", "b", "c"])
    assert report["accuracy"] == 3 / 5 and report["n"] == 5
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert report["per_class"]["b"] == {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    assert report["per_class"]["c"]["f1"] == 0.0


def test_plot_with_cjk_and_emoji_classes_is_quiet_and_keeps_the_backend(tmp_path, caplog):
    import matplotlib

    backend = matplotlib.get_backend()
    classes = ["猫", "犬", "🐟"]
    report = classification_report(np.array([0, 1, 2]), np.array([0, 1, 1]), classes)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        plot_confusion(report, classes, tmp_path / "c.png", "test")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert not [w for w in caught if "Glyph" in str(w.message)] and not caplog.records
    assert matplotlib.get_backend() == backend


def test_balanced_accuracy_macro_f1_and_most_confused():
    # 8 of class a (all right), 2 of b (one called a): accuracy hides the weak class, the balanced figures do not
    labels = np.array([0] * 8 + [1] * 2 + [2] * 2)
    predicted = np.array([0] * 8 + [0, 1] + [1, 1])
    report = classification_report(labels, predicted, ["a", "b", "c"])
    assert report["accuracy"] == 9 / 12 and report["balanced_accuracy"] == (1 + 0.5 + 0) / 3
    f1 = [c["f1"] for c in report["per_class"].values()]
    assert report["macro_f1"] == sum(f1) / 3
    assert report["most_confused"] == [{"true": "c", "predicted": "b", "count": 2},
                                       {"true": "b", "predicted": "a", "count": 1}]


def test_top5_calibration_and_worst_mistakes():
    import torch

    from gpuvision.evaluate import calibration_report, top_k_accuracy, worst_mistakes

    logits = torch.tensor([[9.0, 1, 0, 0, 0, 0, 0], [0, 5, 4, 3, 2, 1, 0], [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    labels = np.array([0, 4, 0])
    assert top_k_accuracy(logits, labels, 1) == 1 / 3 and top_k_accuracy(logits, labels, 5) == 2 / 3
    images = np.arange(3).reshape(3, 1, 1, 1).astype(np.uint8)
    worst, captions = worst_mistakes(images, labels, torch.softmax(logits, 1), [str(i) for i in range(7)])
    assert worst[:, 0, 0, 0].tolist() == [1, 2] and captions[0].startswith("true 4\npredicted 1")  # surest first
    c = calibration_report(logits, labels, temperature=2.0)
    assert c["reliability_after"] is not None and c["ece_after"] != c["ece_before"]
    assert calibration_report(logits, labels, 1.0)["reliability_after"] is None
