"""Export to ONNX and torch.export: parity with PyTorch on the real test images, metadata for a consumer, a
uint8-input graph that normalises inside, and a loud failure (nothing written) when the exported model disagrees."""

from __future__ import annotations

import json
import os
import shutil
import zipfile

import numpy as np
import pytest
import torch

import gpuvision
from gpuvision.artifact import ModelDir
from gpuvision.config import ExportConfig
from gpuvision.errors import UserError
from gpuvision.export import export_model, parity, parity_pixels
from gpuvision.runtime import OnnxRuntime, build_network
from gpuvision.runtime.onnx import onnx_metadata


def test_onnx_matches_pytorch_on_every_test_image(cifar_model, tmp_path):
    out = tmp_path / "model.onnx"
    result = export_model(ExportConfig(model_dir=str(cifar_model), format="onnx", out=str(out), parity_images=0))
    m = ModelDir.open(cifar_model).manifest
    assert result["parity"]["images"] == m.split.sizes["test"]
    assert result["parity"]["max_abs_diff"] <= 1e-4 and result["parity"]["top1_agreement"] == 1.0
    meta = onnx_metadata(out.read_bytes())
    assert json.loads(meta["classes"]) == m.classes
    assert json.loads(meta["mean"]) == list(m.input.mean) and json.loads(meta["std"]) == list(m.input.std)
    # the preprocessing and the calibration a consumer needs to reproduce predict's probabilities
    assert json.loads(meta["resize_filter"]) == "bilinear" and "aspect ratio is not kept" in meta["resize"]
    assert json.loads(meta["temperature"]) == m.calibration.temperature != 1.0
    runtime = OnnxRuntime(out.read_bytes(), m.input, m.classes, 0, torch.device("cpu"), "fp32")
    assert runtime.session.get_inputs()[0].name == "input"
    for n in (1, 7):  # dynamic batch: onnxruntime runs any batch size
        assert runtime.forward(torch.zeros(n, 3, 32, 32)).shape == (n, 10)


def test_uint8_input_onnx_takes_pixels_and_matches(cifar_model, tmp_path):
    out = tmp_path / "pixels.onnx"
    result = export_model(ExportConfig(model_dir=str(cifar_model), format="onnx", out=str(out), uint8_input=True,
                                       parity_images=200))
    assert result["uint8_input"] and result["parity"]["max_abs_diff"] <= 1e-4
    import onnxruntime as ort

    session = ort.InferenceSession(out.read_bytes(), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "input" and inp.type == "tensor(uint8)" and inp.shape[1:] == [32, 32, 3]
    pixels = np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    expected = gpuvision.load(cifar_model, device="cpu").logits(pixels, tta=False).numpy()
    (got,) = session.run(None, {"input": pixels.transpose(0, 2, 3, 1).copy()})
    assert np.abs(got - expected).max() < 1e-4


def test_static_batch_onnx_has_a_fixed_batch_of_one(cifar_model, tmp_path):
    import onnx

    out = tmp_path / "fixed.onnx"
    result = export_model(ExportConfig(model_dir=str(cifar_model), format="onnx", out=str(out), dynamic_batch=False,
                                       parity_images=20))
    assert result["parity"]["top1_agreement"] == 1.0
    dims = onnx.load_model(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 32, 32]


def test_pt2_round_trip_matches_pytorch(cifar_model, tmp_path):
    out = tmp_path / "model.pt2"
    result = export_model(ExportConfig(model_dir=str(cifar_model), format="pt2", out=str(out), parity_images=300))
    assert result["parity"]["max_abs_diff"] <= 1e-4 and result["parity"]["top1_agreement"] == 1.0
    with zipfile.ZipFile(out) as archive:  # the metadata reads without loading (or unpickling) the program
        entry = next(n for n in archive.namelist() if n.endswith("gpuvision.json"))
        meta = json.loads(archive.read(entry))
    assert json.loads(meta["classes"]) == ModelDir.open(cifar_model).manifest.classes


def test_disagreement_fails_loudly_and_writes_nothing(cifar_model, tmp_path):
    out = tmp_path / "model.onnx"
    with pytest.raises(UserError, match="disagrees with PyTorch"):
        # onnxruntime's float sums differ from PyTorch's in the last bits: no tolerance at all must fail
        export_model(ExportConfig(model_dir=str(cifar_model), format="onnx", out=str(out), parity_images=50,
                                  atol=0.0))
    assert list(tmp_path.iterdir()) == []


def test_parity_measures_difference_agreement_and_treats_nan_as_mismatch(cifar_model):
    model_dir = ModelDir.open(cifar_model)
    net, spec = build_network(model_dir), model_dir.manifest.input
    pixels = parity_pixels(model_dir, None, 50)
    from gpuvision.data.input_spec import normalise

    def logits(x):
        return net(normalise(x, spec))

    assert parity(logits, logits, pixels) == {"images": 50, "max_abs_diff": 0.0, "top1_agreement": 1.0}
    flipped = parity(logits, lambda x: -logits(x), pixels)
    assert 0 < flipped["max_abs_diff"] < float("inf") and flipped["top1_agreement"] < 0.5
    nan = parity(logits, lambda x: torch.full_like(logits(x), float("nan")), pixels)
    assert nan["max_abs_diff"] == float("inf")


@pytest.mark.parametrize("out, message", [("model.txt", "must end in .onnx"), ("sub.onnx", "is a directory")])
def test_bad_output_name_is_refused(cifar_model, tmp_path, out, message):
    (tmp_path / "sub.onnx").mkdir()
    with pytest.raises(UserError, match=message):
        export_model(ExportConfig(model_dir=str(cifar_model), format="onnx", out=str(tmp_path / out)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.onnx"]


def test_export_and_evaluate_leave_a_read_only_model_directory_byte_identical(cifar_model, tmp_path):
    model = tmp_path / "ro"
    shutil.copytree(cifar_model, model)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    for p in model.iterdir():
        os.chmod(p, 0o444)
    os.chmod(model, 0o555)  # (root may still write: the byte comparison below is what holds everywhere)
    try:
        result = export_model(ExportConfig(model_dir=str(model), format="onnx", parity_images=20))
        assert result["path"] == str(tmp_path / "ro-export" / "model.onnx")
        report = gpuvision.evaluate(str(model), plot=False)
        assert report["report"] == str(tmp_path / "ro-eval" / "test.json")
    finally:
        os.chmod(model, 0o755)
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before

