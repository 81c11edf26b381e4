"""The model registry doubles as the test matrix: every registered model builds, runs and rebuilds."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from gpuvision.errors import UserError
from gpuvision.models import create_model, list_models, load_pretrained


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("channels,size", [(3, 32), (1, 8)])
def test_every_model_builds_for_small_inputs(name, channels, size):
    net = create_model(name, num_classes=7, in_channels=channels, image_size=size).eval()
    with torch.no_grad():
        assert net(torch.zeros(2, channels, size, size)).shape == (2, 7)


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(UserError, match="fastnet"):
        create_model("vgg11", num_classes=2, in_channels=3, image_size=32)


def test_pretrained_weights_load_except_a_head_of_another_shape_only_when_asked(tmp_path):
    source = create_model("fastnet", num_classes=10, in_channels=1, image_size=8)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors"))
    target = create_model("fastnet", num_classes=4, in_channels=1, image_size=8)
    before = target.head.weight.clone()
    with pytest.raises(UserError, match="1 of this model's 39 tensors .* head.weight.*--pretrained-partial"):
        load_pretrained(target, str(tmp_path / "w.safetensors"))
    assert torch.equal(target.head.weight, before)  # nothing was loaded
    missing = load_pretrained(target, str(tmp_path / "w.safetensors"), partial=True)
    assert missing == ["head.weight"]
    assert torch.equal(target.groups[0].conv1.weight, source.groups[0].conv1.weight)
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="not a readable safetensors"):
        load_pretrained(target, str(tmp_path / "bad.safetensors"))


def test_arguments_are_checked_on_the_meta_device_before_anything_is_allocated():
    with pytest.raises(UserError, match=r"450,025,000,318 parameters .* more than the .* memory available"):
        create_model("fastnet", num_classes=10, in_channels=3, image_size=32, widths=[100_000] * 3)
    for bad in ({"widthz": [8, 8, 8]}, {"widths": [-1, 8, 8]}):
        with pytest.raises(UserError, match="does not take the arguments"):
            create_model("fastnet", num_classes=10, in_channels=3, image_size=32, **bad)
