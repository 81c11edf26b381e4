"""--pretrained sources: hub weights load into the body with a new classifier; bad sources are one clear error.
(Fetching from a hub cache, offline, is in tests/e2e/test_ux.py.)"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from gpuvision.errors import BadInput, NotFound, Unsupported
from gpuvision.models import create_model, model_spec
from gpuvision.models.pretrained import Pretrained, load_backbone, resolve


def imagenet_like(path):
    """A timm resnet18 of 1,000 classes (random weights, as the hub's file is laid out)."""
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        net = timm.create_model("resnet18", pretrained=False)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return net.state_dict()


def test_hub_weights_load_into_the_body_and_the_head_is_new(tmp_path):
    weights = imagenet_like(tmp_path / "model.safetensors")
    model = create_model("resnet18", num_classes=2, in_channels=3, image_size=224, small_stem=False)
    head = model_spec("resnet18").head(model)
    fresh = head.weight.detach().clone()
    load_backbone(model, Pretrained("imagenet", str(tmp_path / "model.safetensors"), "resnet18", "timm/x"), head)
    state = model.state_dict()
    assert all(torch.equal(state[k], weights[k]) for k in weights if not k.startswith("fc."))
    assert model.fc is head and head.out_features == 2 and torch.equal(head.weight, fresh)


def test_weights_without_that_classifier_are_refused(tmp_path):
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7)}, str(tmp_path / "x.safetensors"))
    model = create_model("resnet18", num_classes=2, in_channels=3, image_size=224, small_stem=False)
    with pytest.raises(BadInput, match="no classifier fc"):
        load_backbone(model, Pretrained("hf-hub:x", str(tmp_path / "x.safetensors"), "resnet18", "x"), model.fc)


def test_bad_sources_say_what_to_give(tmp_path):
    with pytest.raises(Unsupported, match="no ImageNet weights for fastnet"):
        resolve("imagenet", "fastnet")
    with pytest.raises(NotFound, match="imagenet, or hf-hub:NAME"):
        resolve(str(tmp_path / "missing.safetensors"), "auto")
    with pytest.raises(BadInput, match="needs a NAME"):
        resolve("hf-hub:", "auto")
    local = tmp_path / "mine.safetensors"
    local.write_bytes(b"")
    assert resolve(str(local), "auto") == Pretrained(str(local), str(local))  # a local file: as it always was
