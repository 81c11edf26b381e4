"""Temperature scaling: the fitted temperature undoes a known distortion, keeps every prediction, and the expected
calibration error sees the difference."""

from __future__ import annotations

import numpy as np
import torch

from gpuvision.artifact import Calibration
from gpuvision.runtime.calibration import (
    MIN_IMAGES,
    calibrate,
    expected_calibration_error,
    fit_temperature,
    probabilities,
    reliability,
    temperature,
)


def calibrated_logits(n=4000, k=10, seed=0):
    """Logits whose softmax is calibrated by construction: each label is drawn from it."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g) * 2.5
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).squeeze(1).numpy()
    return logits, labels


def test_the_fitted_temperature_undoes_over_and_under_confidence():
    logits, labels = calibrated_logits()
    for scale in (3.0, 0.4):  # over-confident, under-confident (label smoothing's kind)
        t = fit_temperature(logits * scale, labels)
        assert abs(t - scale) / scale < 0.1, (scale, t)
        before = expected_calibration_error(probabilities(logits * scale), labels)
        after = expected_calibration_error(probabilities(logits * scale, t), labels)
        assert after < 0.03 < before, (scale, before, after)
        assert torch.equal(probabilities(logits * scale, t).argmax(1), logits.argmax(1))  # no prediction changes


def test_reliability_bins_count_every_image():
    logits, labels = calibrated_logits(n=500)
    rel = reliability(probabilities(logits), labels, bins=15)
    assert sum(rel["count"]) == 500 and len(rel["accuracy"]) == 15 and 0 <= rel["ece"] <= 1


def test_calibrate_records_both_temperatures_and_refuses_too_little_evidence():
    logits, labels = calibrated_logits(n=600)
    c = calibrate({"plain": logits * 3, "tta": logits * 2}, labels)
    assert isinstance(c, Calibration) and c.split == "val" and c.n == 600
    assert abs(c.temperature - 3) < 0.5 and abs(c.temperature_tta - 2) < 0.4 and c.ece_after < c.ece_before
    assert temperature(c, tta=False) == c.temperature and temperature(c, tta=True) == c.temperature_tta
    assert temperature(None, tta=True) == 1.0
    assert calibrate({"plain": logits[: MIN_IMAGES - 1]}, labels[: MIN_IMAGES - 1]) is None
    perfect = torch.nn.functional.one_hot(torch.as_tensor(labels), 10).float() * 5  # no mistake: nothing to fit to
    assert calibrate({"plain": perfect}, labels) is None


def test_a_manifest_keeps_its_calibration(tiny_model, tmp_path):
    import json
    import shutil

    from gpuvision.artifact import Manifest, ModelDir, write_manifest
    from gpuvision.runtime import load

    m = ModelDir.open(tiny_model).manifest
    out = tmp_path / "calibrated"
    shutil.copytree(tiny_model, out)
    (out / "manifest.json").unlink()
    c = Calibration(temperature=0.5, temperature_tta=0.25, n=100, ece_before=0.3, ece_after=0.02)
    write_manifest(out, Manifest(**{**m.__dict__, "calibration": c, "files": {}}), list(m.files))
    model = load(out, device="cpu")
    assert model.manifest.calibration == c and model.runtime.temperature(True) == 0.25
    assert json.loads((out / "manifest.json").read_text())["calibration"]["temperature"] == 0.5
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    plain = load(tiny_model, device="cpu").predict([pixels], top_k=10, tta=False)[0]
    sharper = model.predict([pixels], top_k=10, tta=False)[0]
    assert [p["class"] for p in plain] == [p["class"] for p in sharper]  # same ranking,
    assert sharper[0]["probability"] > plain[0]["probability"]  # softmax(logits / 0.5) is sharper
