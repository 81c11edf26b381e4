"""The differentiable pixels -> logits path attacks run on (`Model.pixel_model`): the same logits as inference,
gradients with respect to the pixels, and one clear error for a model that gives none (ONNX, int8)."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

import gpuvision
from gpuvision.artifact import Inference, ModelDir, write_manifest
from gpuvision.cli import main
from gpuvision.errors import Unsupported
from gpuvision.runtime import open_runtime


@pytest.fixture(scope="module")
def onnx_dir(tiny_model, tmp_path_factory):
    """tiny_model's directory in ONNX format, as compress writes its int8 variants; its graph a plain linear
    classifier built with onnx.helper (an export takes a minute here, and the graph's content does not matter)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = ModelDir.open(tiny_model).manifest
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 10)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Flatten", ["input"], ["flat"]),
                               helper.make_node("MatMul", ["flat", "w"], ["logits"])], "linear",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])], [weight])
    out = tmp_path_factory.mktemp("onnx") / "tiny-onnx"
    out.mkdir()
    (out / "model.onnx").write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                     .SerializeToString())
    onnx.checker.check_model(str(out / "model.onnx"))
    for name in ("split.json", "metrics.jsonl"):
        shutil.copy(tiny_model / name, out / name)
    write_manifest(out, replace(m, format="onnx", weights="model.onnx", inference=Inference("onnxruntime", "fp32")),
                   ["model.onnx", "split.json", "metrics.jsonl"])
    return out


def test_pixel_model_gives_inferences_logits_and_pixel_gradients(tiny_model):
    model = gpuvision.load(tiny_model, device="cpu")
    pixels = np.random.default_rng(0).integers(0, 256, (6, 1, 8, 8), dtype=np.uint8)
    x = torch.from_numpy(pixels).float().requires_grad_(True)
    logits = model.pixel_model()(x)
    assert torch.allclose(logits.detach(), model.logits(pixels, tta=False), atol=1e-4)
    logits[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_a_model_without_gradients_is_unsupported(onnx_dir, tmp_path, capsys):
    with pytest.raises(Unsupported, match="computes no gradients"):
        gpuvision.load(onnx_dir, device="cpu").pixel_model()
    with pytest.raises(Unsupported, match="computes no gradients"):
        open_runtime(ModelDir.open(onnx_dir), "cpu").pixel_model()
    assert main(["attack", str(onnx_dir), "--out", str(tmp_path / "report"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "onnx model" in err
    assert not (tmp_path / "report").exists()
