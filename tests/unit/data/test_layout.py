"""A source's own parts are taken as given: val/ (valid/, validation/) is the val split, and the test split too
when there is no test/; only what a source lacks is carved. Keys never cross between train and held-out parts."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_tree, refusal, tar_of

from gpuvision.data import ImageSet, load_images, make_split
from gpuvision.data.inspect import inspect_source
from gpuvision.data.split import load_split, save_split


def parts_tree(root, val="val", test=True, train_n=6, val_n=2, test_n=3):
    make_tree(root, prefix="train", per_class=train_n)
    if val:
        make_tree(root, prefix=val, per_class=val_n)
    if test:
        make_tree(root, prefix="test", per_class=test_n)
    return root


@pytest.mark.parametrize("val", ["val", "valid", "validation"])
@pytest.mark.parametrize("archive", [False, True])
def test_train_and_val_without_test(tmp_path, val, archive):
    tree = parts_tree(tmp_path / "tree", val=val, test=False)
    src = tar_of(tree, tmp_path / "data.tgz", arcroot="mydata/") if archive else tree
    images = load_images(str(src))
    assert images.layout == "train+val" and not images.has_given_test
    split = make_split(images, val_fraction=0.5, test_fraction=0.5, seed=0)  # fractions unused: nothing carved
    assert (split.val_source, split.test_source) == ("given:val", "given:val")
    given_val = np.flatnonzero(images.given_part == "val")
    assert np.array_equal(split.val, given_val) and np.array_equal(split.test, given_val)
    assert len(split.train) == 12 and all(images.keys[i].startswith(f"{val}/") for i in split.val)


def test_train_val_and_test(tmp_path):
    images = load_images(str(parts_tree(tmp_path, val="valid")))
    assert images.layout == "train+val+test"
    split = make_split(images, 0.1, 0.2, seed=0)
    assert (split.val_source, split.test_source) == ("given:val", "given:test")
    assert split.sizes() == {"train": 12, "val": 4, "test": 6}


def test_train_and_test_carve_val_and_flat_carves_both(tmp_path):
    split = make_split(load_images(str(parts_tree(tmp_path / "a", val=None))), 0.5, 0.2, seed=0)
    assert (split.val_source, split.test_source) == ("carved", "given:test")
    assert split.sizes() == {"train": 6, "val": 6, "test": 6}
    flat = load_images(str(make_tree(tmp_path / "b", per_class=10)))
    assert flat.layout == "flat"
    split = make_split(flat, 0.25, 0.2, seed=0)
    assert (split.val_source, split.test_source) == ("carved", "carved")


def test_a_class_named_train_is_not_a_part(tmp_path):
    images = load_images(str(make_tree(tmp_path, classes=("train", "car"), per_class=3)))
    assert images.classes == ["car", "train"] and images.layout == "flat"


def test_unknown_or_doubled_part_folders_are_refused(tmp_path):
    extra = parts_tree(tmp_path / "a", test=False)
    make_tree(extra, prefix="extra")
    refusal(extra, "folder 'extra' beside train/ is not a part")
    doubled = parts_tree(tmp_path / "b")
    make_tree(doubled, prefix="valid")
    refusal(doubled, "both val/ and valid/")


def test_recorded_split_keeps_its_sources(tmp_path):
    images = load_images(str(parts_tree(tmp_path / "t", val="val", test=False)))
    split = make_split(images, 0.1, 0.2, seed=0)
    save_split(tmp_path / "split.json", images, split, seed=0)
    again = load_split(tmp_path / "split.json", images)
    assert (again.val_source, again.test_source) == ("given:val", "given:val")
    assert all(np.array_equal(again.part(p), split.part(p)) for p in ("train", "val", "test"))


def test_inspect_reports_the_layout(tmp_path):
    info = inspect_source(str(parts_tree(tmp_path, val="validation", test=False)))
    assert info["layout"] == "train+val" and info["given_test_split"] is False
    assert (info["val_source"], info["test_source"]) == ("given:val", "given:val")
    assert info["split_sizes"] == {"train": 12, "val": 4, "test": 4}


def test_split_parts_sharing_a_key_is_a_bug_not_a_user_error():
    n = 8
    images = ImageSet(images=np.zeros((n, 1, 2, 2), np.uint8), labels=np.arange(n) % 2, classes=["a", "b"],
                      keys=[f"k{i % 4}" for i in range(n)], given_part=["train"] * 4 + ["test"] * 4,
                      fingerprint="", name="x", source="x")
    with pytest.raises(AssertionError, match="share sample keys"):
        make_split(images, 0.0, 0.2)
