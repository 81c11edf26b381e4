"""Stratified, seeded train/val/test splits, saved as stable sample keys so evaluation finds the same images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import IntegrityError, UserError, require
from ..files import parse_json, write_json
from .imageset import ImageSet


@dataclass
class Split:
    """Index arrays into an ImageSet for each part; val may be empty (--val-fraction 0).

    val_source, test_source: where each part came from: "carved" (drawn at random from the training images),
    "given:val" or "given:test" (the source's own val/ or test/ part; without test/, val/ is both val and test).
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    val_source: str = "carved"
    test_source: str = "carved"

    def part(self, name: str) -> np.ndarray:
        require(name in ("train", "val", "test"), f"unknown split {name!r}; use train, val, test or all")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def _stratified_take(indices: np.ndarray, labels: np.ndarray, fraction: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Split indices in two, taking `fraction` of each class (at least one where the class has two or more)."""
    taken, kept = [], []
    for c in np.unique(labels[indices]):
        members = indices[labels[indices] == c]
        members = members[rng.permutation(len(members))]
        n = int(round(fraction * len(members)))
        if fraction > 0 and len(members) >= 2:
            n = min(max(n, 1), len(members) - 1)
        taken.append(members[:n])
        kept.append(members[n:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(taken))


def stratified_sample(labels: np.ndarray, indices: np.ndarray, n: int, seed: int) -> np.ndarray:
    """About n of `indices`, drawn at random in proportion to each class (seeded), in random order.

    For statistics taken from training images (normalisation, whitening): sources sorted by class would give
    the first class's statistics if the first n were taken."""
    if n >= len(indices):
        return np.random.default_rng(seed).permutation(indices)
    rng = np.random.default_rng(seed)
    _, taken = _stratified_take(np.asarray(indices), labels, n / len(indices), rng)
    return rng.permutation(taken)


def make_split(images: ImageSet, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Stratified split that takes the source's own parts as given and carves only what it lacks.

    A given test/ part is the test split; a given val/ part is the val split, and the test split too when there is
    no test/; otherwise test_fraction, then val_fraction, of each class's training images are drawn at random.
    """
    require(0 <= val_fraction < 1, f"--val-fraction must be in [0, 1), got {val_fraction}")
    require(0 < test_fraction < 1, f"--test-fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    part = images.given_part
    train = np.flatnonzero((part == "") | (part == "train"))
    given_val, given_test = np.flatnonzero(part == "val"), np.flatnonzero(part == "test")
    if len(given_test):
        test, test_source = given_test, "given:test"
    elif len(given_val):
        test, test_source = given_val, "given:val"
    else:
        train, test = _stratified_take(train, images.labels, test_fraction, rng)
        test_source = "carved"
    if len(given_val):
        val, val_source = given_val, "given:val"
    else:
        train, val = _stratified_take(train, images.labels, val_fraction, rng)
        val_source = "carved"
    require(len(train) > 0 and len(test) > 0, "too few images to split into train and test; add images")
    split = Split(train=train, val=val, test=test, val_source=val_source, test_source=test_source)
    _assert_disjoint(images, split)
    return split


def _assert_disjoint(images: ImageSet, split: Split) -> None:
    """Training keys never reach val or test (nor val test, unless val/ is deliberately both): a bug otherwise."""
    keys = [{images.keys[i] for i in split.part(p)} for p in ("train", "val", "test")]
    shared = keys[0] & (keys[1] | keys[2])
    if split.test_source != "given:val":
        shared |= keys[1] & keys[2]
    if shared:
        raise AssertionError(f"split parts share sample keys, e.g. {sorted(shared)[0]!r}")


def save_split(path: Path, images: ImageSet, split: Split, seed: int) -> None:
    """Write the split as sample keys plus the source fingerprint."""
    keys = images.keys
    write_json(path, {
        "source_fingerprint": images.fingerprint,
        "seed": seed,
        **{part: [keys[i] for i in split.part(part)] for part in ("train", "val", "test")},
    })


class RecordsSplit(Protocol):
    """What `recorded_split` needs of a model directory (artifact.ModelDir, which sits above data/)."""

    path: Path
    manifest: Any  # its .split is an artifact.SplitRecord

    def read_json(self, name: str) -> Any: ...


def recorded_split(model_dir: RecordsSplit, images: ImageSet) -> Split:
    """The train/val/test split a model directory recorded at training, as indices into `images` (its source,
    decoded now): the one resolver of a model's images, used by evaluate, compress, demo, attacks and monitoring.

    The split file is read through the model directory (verified, and decrypted if encrypted). A source whose
    fingerprint differs from the recorded one is a UserError, never a newly drawn split: a model's test images are
    the ones it was tested on, or none."""
    record = model_dir.manifest.split
    if images.fingerprint != record.source_fingerprint:
        raise UserError(
            f"{images.source} changed since the model was trained on it ({model_dir.path} recorded another "
            "fingerprint), so its recorded split no longer exists: give the data it was trained on, or retrain "
            "(evaluate --split all scores every image of any labelled source)"
        )
    return load_split(model_dir.read_json(record.file), images)


def load_split(saved: Path | bytes | dict, images: ImageSet) -> Split:
    """The saved split (a file, its bytes, or its parsed JSON: a model directory's verified read) as indices into
    images; a changed source is a UserError, never a different test set."""
    if isinstance(saved, Path):
        saved = saved.read_bytes()
    if isinstance(saved, bytes):
        saved = parse_json(saved, "the recorded split", IntegrityError)
    require(isinstance(saved, dict) and all(isinstance(saved.get(p), list) for p in ("train", "val", "test")),
            "the recorded split is malformed (not {source_fingerprint, train, val, test})", IntegrityError)
    if saved.get("source_fingerprint") != images.fingerprint:
        raise UserError(
            f"{images.source} changed since the model was trained, so its recorded split no longer exists; "
            "evaluate with --split all, or retrain"
        )
    index = {k: i for i, k in enumerate(images.keys)}
    try:
        parts = {p: np.array([index[k] for k in saved[p]], dtype=np.int64) for p in ("train", "val", "test")}
    except KeyError as e:
        raise UserError(f"{images.source}: sample {e} of the recorded split is missing; use --split all") from e
    return Split(**parts, val_source=_source_of(images, parts["val"]), test_source=_source_of(images, parts["test"]))


def _source_of(images: ImageSet, indices: np.ndarray) -> str:
    """Where a recorded part came from: given when every image in it is in one given val/ or test/ part."""
    given = set(images.given_part[indices])
    return f"given:{given.pop()}" if len(given) == 1 and given <= {"val", "test"} else "carved"
