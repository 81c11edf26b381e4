"""Trained model directories: what the manifest records about training, and training from given weights."""

from __future__ import annotations

import json

import numpy as np
from safetensors.torch import load as load_safetensors

import gpuvision
from gpuvision.artifact import SCHEMA_VERSION, ModelDir
from gpuvision.models import count_params, create_model


def test_manifest_describes_the_model(digits_model):
    model_dir = ModelDir.open(digits_model)
    m = model_dir.manifest
    raw = json.loads((digits_model / "manifest.json").read_text())
    assert raw["schema_version"] == SCHEMA_VERSION and m.format == "safetensors"
    assert m.inference.name == "eager-fp32" and m.training.device == "cpu" and m.training.world_size == 1
    assert sorted(m.files) == ["curves.png", "metrics.jsonl", "model.safetensors", "split.json"]
    assert (digits_model / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # temperature scaling, fitted on the validation split, made the probabilities mean what they say there
    c = m.calibration
    assert c.split == "val" and c.n == m.split.sizes["val"] and c.temperature > 0 and c.temperature_tta > 0
    assert c.ece_after < c.ece_before and c.nll_after <= c.nll_before
    # the directory holds exactly the listed files: no checkpoints, no run marker
    assert sorted(p.name for p in digits_model.iterdir()) == sorted([*m.files, "manifest.json"])
    assert m.classes == [str(i) for i in range(10)] and m.input.size == (8, 8) and m.input.channels == 1
    assert m.split.source == "digits" and m.split.test_source == "carved" and m.seed == 0
    assert m.reference.n == m.split.sizes["test"] and len(m.reference.confidence_histogram) == 20
    assert sum(m.reference.brightness_histogram) == m.split.sizes["test"] == sum(m.reference.predicted)
    assert not m.reference.tta and m.reference.runtime == "eager-fp32" and len(m.reference.recall) == len(m.classes)
    net = create_model(m.architecture["name"], **m.architecture["args"])
    net.load_state_dict(load_safetensors(model_dir.read("model.safetensors")))
    assert count_params(net) == m.params
    assert len(model_dir.version) == 12 and model_dir.version == model_dir.manifest_sha256[:12]


def test_load_and_predict(digits_model):
    from sklearn.datasets import load_digits

    model = gpuvision.load(digits_model)
    digits = load_digits()
    images = [np.round(digits.images[i] * 255 / 16).astype(np.uint8) for i in range(20)]
    top = model.predict(images, top_k=3)
    assert all(len(t) == 3 and t[0]["probability"] >= t[1]["probability"] for t in top)
    right = sum(t[0]["class"] == str(digits.target[i]) for i, t in enumerate(top))
    assert right >= 17


def test_train_from_pretrained_weights(tmp_path, digits_model):
    result = gpuvision.train(data="digits", out=str(tmp_path / "ft"), epochs=1, seed=1, eval_every=0,
                             pretrained=str(digits_model / "model.safetensors"))
    # One epoch from the trained digits weights already classifies well; from scratch it does not.
    assert result.manifest.metrics["val_accuracy"] >= 0.9
