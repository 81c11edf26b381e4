"""Checkpoints: nested state as safetensors + JSON, rebuilt exactly; a damaged one is a clear error."""

from __future__ import annotations

import pytest
import torch

from gpuvision.config import Cadence
from gpuvision.errors import UserError
from gpuvision.train.checkpoint import flatten, latest_checkpoint, load_checkpoint, save_checkpoint, unflatten


def _state():
    return {"config": {"lr": 0.1, "widths": [8, 16]}, "fingerprint": "f", "epoch": 2, "step": 10, "history": [],
            "model": {"w": torch.arange(6.0).view(2, 3)},
            "optimizer": {"state": {0: {"momentum_buffer": torch.ones(3)}, 1: {}}, "param_groups": [{"lr": 0.1}]}}


def test_flatten_and_unflatten_round_trip_nested_values():
    tensors, skeleton = flatten(_state())
    again = unflatten(skeleton, tensors)
    assert again["optimizer"]["state"][0]["momentum_buffer"].equal(torch.ones(3))
    assert list(again["optimizer"]["state"]) == [0, 1]  # integer keys stay integers
    assert again["model"]["w"].equal(torch.arange(6.0).view(2, 3)) and again["config"] == _state()["config"]


def test_save_keeps_the_newest_and_loads_back(tmp_path):
    for epoch, step in ((1, 10), (1, 15), (2, 20)):
        save_checkpoint(tmp_path, epoch, step, _state())
    assert [p.name for p in tmp_path.iterdir()] == ["epoch-0002-step-000000020"]
    loaded = load_checkpoint(latest_checkpoint(tmp_path))
    assert loaded["epoch"] == 2 and loaded["model"]["w"].equal(_state()["model"]["w"])


@pytest.mark.parametrize("damage", [b"", b"garbage", b"\xff" * 64])
def test_a_damaged_checkpoint_is_a_user_error(tmp_path, damage):
    path = save_checkpoint(tmp_path, 1, 10, _state())
    (path / "state.safetensors").write_bytes(damage)
    with pytest.raises(UserError, match="damaged"):
        load_checkpoint(path)
    (path / "state.json").write_text("[1, 2")
    with pytest.raises(UserError, match="damaged"):
        load_checkpoint(path)


@pytest.mark.parametrize("text, every, unit", [("3", 3, "e"), ("2e", 2, "e"), ("500st", 500, "st"),
                                               ("600s", 600, "s"), ("0.5s", 0.5, "s"), (0, 0, "e")])
def test_checkpoint_cadence_in_epochs_steps_or_seconds(text, every, unit):
    cadence = Cadence.parse(text)
    assert (cadence.every, cadence.unit) == (every, unit)


@pytest.mark.parametrize("text", ["1.5e", "2.5st", "ten", "-1", "3min"])
def test_a_bad_cadence_is_one_clear_error(text):
    with pytest.raises(UserError, match="checkpoint-every"):
        Cadence.parse(text)


def test_the_cadence_decides_within_and_at_the_end_of_epochs():
    import time

    assert Cadence.parse("2e").at_epoch_end(4) and not Cadence.parse("2e").at_epoch_end(3)
    assert not Cadence.parse("0").at_epoch_end(1) and not Cadence.parse("2e").within_epoch(2, 0.0)
    assert Cadence.parse("5st").within_epoch(10, time.monotonic()) and not Cadence.parse("5st").within_epoch(11, 0)
    assert Cadence.parse("1s").within_epoch(3, time.monotonic() - 2) and not Cadence.parse("60s").within_epoch(
        3, time.monotonic())
