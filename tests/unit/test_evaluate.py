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
