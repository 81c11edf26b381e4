"""The model directory: self-describing manifest, verified on load, nothing unpickled."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import gpuvision
from gpuvision.artifact import read_manifest
from gpuvision.errors import UserError
from gpuvision.models import create_model


def test_manifest_describes_the_model(digits_model):
    m = read_manifest(digits_model)
    assert m["schema_version"] == 1 and m["format"] == "safetensors" and m["runtime"] == "eager"
    assert list(m["files"]) == ["model.safetensors", "split.json"]
    assert m["classes"] == [str(i) for i in range(10)]
    assert m["input"]["size"] == [8, 8] and m["input"]["channels"] == 1 and len(m["input"]["mean"]) == 1
    assert m["split"]["source"] == "digits" and m["split"]["source_fingerprint"]
    assert m["seed"] == 0 and m["settings"]["data"] == "digits" and m["versions"]["torch"]
    assert m["precision"] == "fp32" and m["recipe"]["name"] == "fast"
    # The architecture arguments alone rebuild the network the weights belong to.
    net = create_model(m["architecture"]["name"], **m["architecture"]["args"])
    net.load_state_dict(load_file(digits_model / "model.safetensors"))
    assert sum(p.numel() for p in net.parameters()) == m["params"]
    for name in ("metrics.jsonl", "split.json"):
        assert (digits_model / name).exists()


def test_model_rebuilds_with_other_widths():
    net = create_model("fastnet", num_classes=3, in_channels=3, image_size=32, widths=[8, 16, 24])
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    assert net.head.in_features == 24


def test_load_and_predict(digits_model):
    from sklearn.datasets import load_digits

    model = gpuvision.load(digits_model)
    digits = load_digits()
    images = [np.round(digits.images[i] * 255 / 16).astype(np.uint8) for i in range(20)]
    top = model.predict(images, top_k=3)
    assert all(len(t) == 3 and t[0]["probability"] >= t[1]["probability"] for t in top)
    assert all(t[0]["class"] in model.classes for t in top)
    right = sum(t[0]["class"] == str(digits.target[i]) for i, t in enumerate(top))
    assert right >= 17


@pytest.mark.parametrize("damage", ["alter", "remove"])
def test_missing_or_altered_file_is_refused(digits_model, tmp_path, damage):
    copy = tmp_path / "m"
    shutil.copytree(digits_model, copy)
    target = copy / "model.safetensors"
    if damage == "alter":
        blob = bytearray(target.read_bytes())
        blob[-1] ^= 1
        target.write_bytes(bytes(blob))
    else:
        target.unlink()
    with pytest.raises(UserError, match="altered" if damage == "alter" else "missing"):
        gpuvision.load(copy)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(UserError, match="not a model directory"):
        gpuvision.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        gpuvision.load(tmp_path)


def test_manifest_is_plain_json(digits_model):
    json.loads((digits_model / "manifest.json").read_text())
    assert not list(digits_model.glob("*.pt")) and not list(digits_model.glob("*.pkl"))
