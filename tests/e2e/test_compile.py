"""torch.compile through the trainer (the one test that pays for a compile: tens of seconds on a CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import gpuvision
from gpuvision.data.input_spec import InputSpec
from gpuvision.runtime import EagerRuntime, InductorRuntime

pytestmark = pytest.mark.compile


def test_compiled_training_matches_eager_closely(tmp_path):
    # SGD: Muon's orthogonalised steps (in bf16 on an AMX CPU) turn the compiled kernels' rounding differences into
    # weight differences of the order of the learning rate, so only SGD's weights can be compared this closely.
    settings = dict(data="digits", device="cpu", precision="fp32", epochs=1, model_args={"widths": [8, 16, 16]},
                    eval_every=0, checkpoint_every=0, seed=2, optimizer="sgd")
    eager = gpuvision.train(out=str(tmp_path / "eager"), compile="off", **settings)
    compiled = gpuvision.train(out=str(tmp_path / "compiled"), compile="on", **settings)
    assert compiled.manifest.training.compiled is True and eager.manifest.training.compiled is False
    a, b = load_file(eager.model_dir / "model.safetensors"), load_file(compiled.model_dir / "model.safetensors")
    # Fused kernels round differently, so the weights agree closely rather than bitwise after a short run.
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-2, rtol=1e-2) for k in a)
    assert abs(eager.manifest.metrics["val_accuracy"] - compiled.manifest.metrics["val_accuracy"]) < 0.1


def test_inductor_runtime_leaves_inductor_freezing_as_it_was():
    import torch._inductor.config as inductor_config

    spec = InputSpec((8, 8), 1, (0.0,), (1.0,))
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 36, 3))
    before = inductor_config.freezing
    compiled = InductorRuntime(net, spec, ["a", "b", "c"], 0, torch.device("cpu"), "fp32")
    eager = EagerRuntime(net, spec, ["a", "b", "c"], 0, torch.device("cpu"), "fp32")
    pixels = np.random.default_rng(0).integers(0, 256, (3, 1, 8, 8), dtype=np.uint8)
    assert torch.allclose(compiled.logits(pixels), eager.logits(pixels), atol=1e-4)  # batch 3 runs padded to 4
    assert inductor_config.freezing == before
