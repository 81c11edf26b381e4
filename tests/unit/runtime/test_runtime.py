"""The runtime package: one interface over eager, inductor and onnxruntime; buckets; TTA; no global side effects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpuvision.artifact import ModelDir
from gpuvision.data.input_spec import InputSpec
from gpuvision.runtime import EagerRuntime, InductorRuntime, bucket, open_runtime, tta_logits


def test_buckets_are_powers_of_two():
    assert [bucket(n) for n in (1, 2, 3, 5, 64, 65, 1024)] == [1, 2, 4, 8, 64, 128, 1024]
    assert bucket(1500) == 1500  # beyond the largest bucket a batch runs as it is


def test_tta_levels():
    def run(x):
        return x.mean(dim=(2, 3))

    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    assert torch.equal(tta_logits(run, x, 0), run(x))
    assert torch.allclose(tta_logits(run, x, 1), run(x))  # a mirror keeps the mean
    seen = []
    tta_logits(lambda t: seen.append(t.shape) or run(t), x, 2)
    assert len(seen) == 6


def test_onnxruntime_and_eager_agree_on_a_trained_model(digits_model):
    model_dir = ModelDir.open(digits_model)
    pixels = np.random.default_rng(0).integers(0, 256, (5, 1, 8, 8), dtype=np.uint8)
    eager = open_runtime(model_dir, "cpu")
    ort = open_runtime(model_dir, "cpu", backend="onnxruntime")
    assert eager.name == "eager-fp32" and ort.name == "onnxruntime-fp32"
    assert torch.allclose(eager.logits(pixels, tta=True), ort.logits(pixels, tta=True), atol=1e-4)


@pytest.mark.compile
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
