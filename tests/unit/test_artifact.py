"""The model directory: a typed manifest (v2, reading v1), exactly the listed files, each verified as it is read.
(On an untrained model directory made by the `tiny_model` fixture; tests/e2e/test_model_dir.py covers trained ones.)"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import gpuvision
from gpuvision.artifact import SCHEMA_VERSION, Manifest, ModelDir
from gpuvision.errors import IntegrityError, NotFound, Unsupported

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture
def copy_of(tmp_path, tiny_model):
    target = tmp_path / "m"
    shutil.copytree(tiny_model, target)
    return target


def _rewrite(directory: Path, change) -> None:
    path = directory / "manifest.json"
    raw = json.loads(path.read_text())
    raw = change(raw)
    path.write_text(json.dumps(raw))


def test_manifest_round_trips_through_json(tiny_model):
    m = ModelDir.open(tiny_model).manifest
    again = Manifest.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again == m


def test_adversarial_record_round_trips_and_is_absent_otherwise(tiny_model):
    from dataclasses import replace

    m = ModelDir.open(tiny_model).manifest
    assert "adversarial" not in m.to_dict()  # a manifest without it reads as before the field existed
    record = {"method": "pgd", "eps": 8 / 255, "steps": 7}
    again = Manifest.from_dict(json.loads(json.dumps(replace(m, adversarial=record).to_dict())))
    assert again.adversarial == record and again.extra == {}


def test_a_version_1_directory_loads_unchanged_and_predicts_as_it_did(tmp_path):
    v1 = tmp_path / "v1"
    shutil.copytree(FIXTURES / "v1-digits", v1)
    before = {p.name: p.read_bytes() for p in v1.iterdir()}
    model = gpuvision.load(v1, device="cpu")
    assert model.manifest.inference.name == "eager-fp32" and model.manifest.training.precision == "fp32"
    expected = json.loads((FIXTURES / "v1-digits-expected.json").read_text())
    from sklearn.datasets import load_digits

    images = np.round(load_digits().images[:8] * 255 / 16).astype(np.uint8)[:, None]
    assert torch.allclose(model.logits(images, tta=False), torch.tensor(expected["logits_no_tta"]), atol=1e-4)
    assert torch.allclose(model.logits(images, tta=True), torch.tensor(expected["logits_tta"]), atol=1e-4)
    assert {p.name: p.read_bytes() for p in v1.iterdir()} == before  # read, never rewritten


# `reference` as manifests before it was typed wrote it (gpuvision 0.2 up to issue 20)
OLD_REFERENCE = {"split": "test", "n": 10, "accuracy": 0.7, "tta": False, "bins": 20,
                 "confidence_histogram": [0] * 19 + [10], "brightness_histogram": [10] + [0] * 19}


def test_an_untyped_reference_loads_as_the_typed_one(copy_of):
    _rewrite(copy_of, lambda m: {**m, "reference": OLD_REFERENCE})
    reference = ModelDir.open(copy_of).manifest.reference
    assert reference.accuracy == 0.7 and reference.n == 10 and reference.confidence_histogram[-1] == 10
    assert reference.predicted is None and reference.recall is None and reference.runtime is None
    _rewrite(copy_of, lambda m: {**m, "reference": {**OLD_REFERENCE, "from_a_newer_writer": 1}})
    assert ModelDir.open(copy_of).manifest.reference == reference


def test_unknown_manifest_version_is_refused(copy_of):
    _rewrite(copy_of, lambda m: {**m, "schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(Unsupported, match="newer"):
        ModelDir.open(copy_of)


def test_newer_optional_fields_are_kept(copy_of):
    _rewrite(copy_of, lambda m: {**m, "future_field": {"a": 1}})
    m = ModelDir.open(copy_of).manifest
    assert m.extra == {"future_field": {"a": 1}} and m.to_dict()["future_field"] == {"a": 1}


@pytest.mark.parametrize("damage", ["alter", "remove"])
def test_missing_or_altered_file_is_refused(copy_of, damage):
    target = copy_of / "model.safetensors"
    if damage == "alter":
        blob = bytearray(target.read_bytes())
        blob[-1] ^= 1
        target.write_bytes(bytes(blob))
        model_dir = ModelDir.open(copy_of)  # opening checks presence; the hash is checked as the file is read
        with pytest.raises(IntegrityError, match="altered"):
            model_dir.read("model.safetensors")
    else:
        target.unlink()
        with pytest.raises(IntegrityError, match="missing"):
            ModelDir.open(copy_of)
    with pytest.raises(IntegrityError):
        gpuvision.load(copy_of)


@pytest.mark.parametrize("change, words", [
    (lambda m: [], "JSON object"),
    (lambda m: None, "JSON object"),
    (lambda m: {**m, "files": "model.safetensors"}, "files"),
    (lambda m: {k: v for k, v in m.items() if k != "classes"}, "classes"),
    (lambda m: {**m, "classes": ["a"] * (1 << 20)}, "classes"),
    (lambda m: {**m, "split": {**m["split"], "file": "model.safetensors"}}, "split.file"),
    (lambda m: {**m, "weights": "../other/model.safetensors"}, "weights"),
    (lambda m: {**m, "files": {**m["files"], "/etc/passwd": "0" * 64}}, "files"),
    (lambda m: {**m, "input": {**m["input"], "std": [0.0]}}, "std"),
    (lambda m: {**m, "inference": {"backend": "tensorrt", "precision": "fp32"}}, "inference"),
    (lambda m: {**m, "reference": {**OLD_REFERENCE, "confidence_histogram": [1] * 19}}, "reference"),
    (lambda m: {**m, "reference": {**OLD_REFERENCE, "accuracy": 1.5}}, "reference"),
    (lambda m: {**m, "reference": {**OLD_REFERENCE, "predicted": [1, 2]}}, "reference"),
    (lambda m: {**m, "reference": "0.9"}, "reference"),
    (lambda m: {**m, "adversarial": "fgsm-rs"}, "adversarial"),
])
def test_malformed_manifests_are_one_clear_error(copy_of, change, words):
    _rewrite(copy_of, change)
    with pytest.raises(IntegrityError, match=words) as caught:
        ModelDir.open(copy_of)
    assert "\n" not in str(caught.value)


def test_unlisted_and_linked_files_are_never_read(copy_of, tmp_path):
    model_dir = ModelDir.open(copy_of)
    (copy_of / "extra.bin").write_bytes(b"x")
    with pytest.raises(IntegrityError, match="not listed"):
        model_dir.read("extra.bin")
    outside = tmp_path / "outside.safetensors"
    shutil.move(copy_of / "model.safetensors", outside)
    os.symlink(outside, copy_of / "model.safetensors")
    with pytest.raises(IntegrityError, match="link"):
        ModelDir.open(copy_of)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(NotFound, match="not a model directory"):
        ModelDir.open(tmp_path)
    with pytest.raises(NotFound, match="no such model directory"):
        ModelDir.open(tmp_path / "nothing")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(IntegrityError, match="not valid JSON"):
        ModelDir.open(tmp_path)


def test_pickle_in_place_of_safetensors_is_refused(copy_of):
    import pickle

    blob = pickle.dumps({"weight": [1, 2, 3]})
    (copy_of / "model.safetensors").write_bytes(blob)
    import hashlib

    _rewrite(copy_of, lambda m: {**m, "files": {**m["files"], "model.safetensors": hashlib.sha256(blob).hexdigest()}})
    with pytest.raises(IntegrityError, match="safetensors"):
        gpuvision.load(copy_of)
