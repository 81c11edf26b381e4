"""A damaged cache entry costs one decode (with a warning) and is rewritten; it never breaks later commands."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from helpers import make_tree
from safetensors.numpy import load_file, save_file

from gpuvision.data import load_images


def truncate(arrays, meta):
    arrays.write_bytes(arrays.read_bytes()[:100])


def bad_json(arrays, meta):
    meta.write_text("{not json")


def missing_key(arrays, meta):
    data = json.loads(meta.read_text())
    del data["keys"]
    meta.write_text(json.dumps(data))


def wrong_type(arrays, meta):
    data = json.loads(meta.read_text())
    data["classes"] = "cat,dog"
    meta.write_text(json.dumps(data))


def too_few_keys(arrays, meta):
    data = json.loads(meta.read_text())
    data["keys"] = data["keys"][:-1]
    meta.write_text(json.dumps(data))


def label_out_of_range(arrays, meta):
    tensors = load_file(arrays)
    tensors["labels"] = tensors["labels"] + 5
    save_file(tensors, str(arrays))


def unknown_part(arrays, meta):
    tensors = load_file(arrays)
    tensors["given_part"] = np.full_like(tensors["given_part"], 9)
    save_file(tensors, str(arrays))


def float_images(arrays, meta):
    tensors = load_file(arrays)
    tensors["images"] = tensors["images"].astype(np.float32)
    save_file(tensors, str(arrays))


def nested_100000_deep(arrays, meta):  # Python's parser would recurse into a RecursionError (issue 22)
    meta.write_text("[" * 100_000 + "]" * 100_000)


def repeated_sample_key(arrays, meta):  # two samples under one key: the split could not tell them apart
    data = json.loads(meta.read_text())
    data["keys"][1] = data["keys"][0]
    meta.write_text(json.dumps(data))


def repeated_json_key(arrays, meta):  # json keeps the last value silently
    text = meta.read_text()
    meta.write_text(text[:-1] + ', "classes": ["x", "y"]}')


@pytest.mark.parametrize("damage", [truncate, bad_json, missing_key, wrong_type, too_few_keys, label_out_of_range,
                                    unknown_part, float_images, nested_100000_deep, repeated_sample_key,
                                    repeated_json_key])
def test_damaged_entry_is_decoded_again_and_rewritten(tmp_path, monkeypatch, caplog, damage):
    monkeypatch.setenv("GPUVISION_CACHE", str(tmp_path / "cache"))
    tree = make_tree(tmp_path / "tree", per_class=3)
    first = load_images(str(tree))
    [arrays] = (tmp_path / "cache").glob("*.safetensors")
    meta = arrays.with_suffix(".json")
    damage(arrays, meta)
    with caplog.at_level(logging.WARNING, logger="gpuvision.data.imageset"):
        again = load_images(str(tree))
    assert "damaged cache entry" in caplog.text
    assert np.array_equal(again.images, first.images) and again.keys == first.keys
    assert np.array_equal(again.given_part, first.given_part)
    caplog.clear()
    load_images(str(tree))  # the rewritten entry is good
    assert "damaged" not in caplog.text
