"""The runtime package: one interface over eager, inductor and onnxruntime; buckets; TTA; no global side effects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpuvision.artifact import ModelDir
from gpuvision.errors import IntegrityError
from gpuvision.runtime import OnnxRuntime, bucket, build_network, open_runtime, tta_logits
from gpuvision.runtime.onnx import export_metadata, onnx_model, serialize


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


def test_onnxruntime_and_eager_agree(tiny_model):
    model_dir = ModelDir.open(tiny_model)
    pixels = np.random.default_rng(0).integers(0, 256, (5, 1, 8, 8), dtype=np.uint8)
    eager = open_runtime(model_dir, "cpu")
    ort = open_runtime(model_dir, "cpu", backend="onnxruntime")
    assert eager.name == "eager-fp32" and ort.name == "onnxruntime-fp32"
    assert torch.allclose(eager.logits(pixels, tta=True), ort.logits(pixels, tta=True), atol=1e-4)
    # an ONNX graph of 10 outputs under a manifest of 11 classes is refused at load, never a wrong answer (issue 22)
    m = model_dir.manifest
    blob = serialize(onnx_model(build_network(model_dir), torch.zeros(2, *m.input.shape),
                                export_metadata(m.input, m.classes, 0, "fastnet")))
    with pytest.raises(IntegrityError, match="lists 11 classes for a network of 10 outputs"):
        OnnxRuntime(blob, m.input, [*m.classes, "eleven"], 0, torch.device("cpu"), "fp32")
