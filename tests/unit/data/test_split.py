"""Splits are stratified, deterministic per seed, disjoint, and saved as keys that survive a reload."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from helpers import make_tree

from gpuvision.artifact import ModelDir
from gpuvision.data import load_images, make_split
from gpuvision.data.split import load_split, recorded_split, save_split
from gpuvision.errors import UserError


def test_stratified_deterministic_and_disjoint():
    images = load_images("digits")
    a, b = make_split(images, 0.1, 0.2, seed=3), make_split(images, 0.1, 0.2, seed=3)
    c = make_split(images, 0.1, 0.2, seed=4)
    assert all(np.array_equal(a.part(p), b.part(p)) for p in ("train", "val", "test"))
    assert not np.array_equal(a.test, c.test)
    together = np.concatenate([a.train, a.val, a.test])
    assert len(together) == len(images) == len(np.unique(together))
    test_share = np.bincount(images.labels[a.test], minlength=10) / np.bincount(images.labels, minlength=10)
    assert np.all(np.abs(test_share - 0.2) < 0.02)  # every class holds out its 20%


def test_val_fraction_zero_trains_on_everything_but_test():
    images = load_images("digits")
    split = make_split(images, 0.0, 0.2, seed=0)
    assert len(split.val) == 0 and len(split.train) + len(split.test) == len(images)


def test_given_test_part_is_used(tmp_path):
    make_tree(tmp_path, prefix="train", per_class=10)
    make_tree(tmp_path, prefix="test", per_class=3)
    images = load_images(str(tmp_path))
    split = make_split(images, 0.2, 0.5, seed=0)
    assert set(split.test) == set(np.flatnonzero(images.given_test))
    assert len(split.val) == 4  # 20% of each class's 10 training images


def test_keys_round_trip_and_changed_source_is_refused(tmp_path):
    tree = make_tree(tmp_path / "t", per_class=8)
    images = load_images(str(tree))
    split = make_split(images, 0.25, 0.25, seed=1)
    save_split(tmp_path / "split.json", images, split, seed=1)
    again = load_split(tmp_path / "split.json", load_images(str(tree)))
    assert np.array_equal(again.test, split.test) and np.array_equal(again.val, split.val)
    (tree / "cat" / "extra.png").write_bytes((tree / "cat" / "000.png").read_bytes())
    with pytest.raises(UserError, match="changed since the model was trained"):
        load_split(tmp_path / "split.json", load_images(str(tree)))


def test_bad_fractions():
    images = load_images("digits")
    with pytest.raises(UserError, match="val-fraction"):
        make_split(images, 1.0, 0.2)
    with pytest.raises(UserError, match="test-fraction"):
        make_split(images, 0.1, 0.0)


def test_recorded_split_is_the_model_directorys_and_refuses_a_changed_source(tiny_model):
    model_dir, images = ModelDir.open(tiny_model), load_images("digits")
    split = recorded_split(model_dir, images)
    saved = load_split(tiny_model / "split.json", images)
    assert all(np.array_equal(split.part(p), saved.part(p)) for p in ("train", "val", "test"))
    changed = replace(images, fingerprint="0" * 16)  # what the same source decodes to after a file changed
    with pytest.raises(UserError, match=f"changed since the model was trained on it .*{tiny_model.name}"):
        recorded_split(model_dir, changed)
