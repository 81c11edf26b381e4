"""Checkpoints: nested state as safetensors + JSON, rebuilt exactly; a damaged one is a clear error."""

from __future__ import annotations

import pytest
import torch

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
    for epoch in (1, 2):
        save_checkpoint(tmp_path, epoch, _state())
    assert [p.name for p in tmp_path.iterdir()] == ["epoch-0002"]
    loaded = load_checkpoint(latest_checkpoint(tmp_path))
    assert loaded["epoch"] == 2 and loaded["model"]["w"].equal(_state()["model"]["w"])


@pytest.mark.parametrize("damage", [b"", b"garbage", b"\xff" * 64])
def test_a_damaged_checkpoint_is_a_user_error(tmp_path, damage):
    path = save_checkpoint(tmp_path, 1, _state())
    (path / "state.safetensors").write_bytes(damage)
    with pytest.raises(UserError, match="damaged"):
        load_checkpoint(path)
    (path / "state.json").write_text("[1, 2")
    with pytest.raises(UserError, match="damaged"):
        load_checkpoint(path)
