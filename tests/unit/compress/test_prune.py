"""Compression pieces that need no trained model: plans, pruning and rebuilding a ResNet, default students."""

from __future__ import annotations

import json

import torch

from gpuvision.compress import PLANS
from gpuvision.compress.distill import student_spec
from gpuvision.compress.prune import prune_network
from gpuvision.models import count_params, create_model

ROWS = ["original", "original-fast", "prune", "int8", "distill", "prune+int8", "distill+int8"]


def test_plans_cover_each_method_and_the_chains():
    assert PLANS["all"] == ROWS[2:]
    assert all(PLANS[m] == [m] for m in ("prune", "int8", "distill"))


def test_resnet_prunes_and_rebuilds_from_layer_shapes():
    torch.manual_seed(0)
    arch = {"name": "resnet18", "args": {"num_classes": 10, "in_channels": 3, "image_size": 32}}
    net = create_model(arch["name"], **arch["args"]).eval()
    example = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # give the batch-norms statistics, so pruning sees a realistic network
        net.train()(torch.randn(16, 3, 32, 32))
    pruned, args = prune_network(net.eval(), arch, example, 0.5, steps=4)
    assert count_params(pruned) <= 0.5 * count_params(net)
    rebuilt = create_model("resnet18", **json.loads(json.dumps(args))).eval()  # the args survive the manifest
    rebuilt.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.allclose(rebuilt(example), pruned(example), atol=1e-5)
    assert args["layer_shapes"]["layer1.0.conv1"][0] < 64


def test_default_students_are_half_width():
    base = {"num_classes": 10, "in_channels": 3, "image_size": 32}
    for teacher in ({"name": "fastnet", "args": base}, {"name": "resnet18", "args": base}):
        name, args = student_spec(teacher, None)
        student = create_model(name, **args)
        assert student(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        assert count_params(student) < 0.35 * count_params(create_model(teacher["name"], **teacher["args"]))
