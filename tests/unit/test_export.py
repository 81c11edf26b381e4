"""Export to ONNX and torch.export: parity with PyTorch on the real test images, metadata for a consumer, and a
loud failure (nothing written) when the exported model disagrees."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from gpuvision.artifact import read_manifest
from gpuvision.config import ExportConfig
from gpuvision.errors import UserError
from gpuvision.export import OnnxNet, eager_fp32, export_model, parity, parity_inputs, read_onnx_metadata


def test_onnx_matches_pytorch_on_every_test_image(cifar_model, tmp_path):
    out = tmp_path / "model.onnx"
    result = export_model(ExportConfig(model_dir=str(cifar_model), format="onnx", out=str(out), parity_images=0))
    manifest = read_manifest(cifar_model)
    assert result["parity"]["images"] == manifest["split"]["sizes"]["test"]
    assert result["parity"]["max_abs_diff"] <= 1e-4 and result["parity"]["top1_agreement"] == 1.0
    meta = read_onnx_metadata(out)
    assert json.loads(meta["classes"]) == manifest["classes"]
    assert json.loads(meta["mean"]) == manifest["input"]["mean"] and json.loads(meta["std"]) == manifest["input"]["std"]
    # dynamic batch: onnxruntime runs any batch size
    net = OnnxNet(out)
    for n in (1, 7):
        assert net(torch.zeros(n, 3, 32, 32)).shape == (n, 10)


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
    assert json.loads(meta["classes"]) == read_manifest(cifar_model)["classes"]


def test_disagreement_fails_loudly_and_writes_nothing(cifar_model, tmp_path):
    out = tmp_path / "model.onnx"
    with pytest.raises(UserError, match="disagrees with PyTorch"):
        export_model(ExportConfig(model_dir=str(cifar_model), format="onnx", out=str(out), parity_images=10,
                                  atol=-1.0))
    assert list(tmp_path.iterdir()) == []


def test_parity_measures_difference_and_agreement(cifar_model):
    model, net = eager_fp32(cifar_model)
    inputs = parity_inputs(model, None, 50)
    same = parity(net, net, inputs)
    assert same == {"images": 50, "max_abs_diff": 0.0, "top1_agreement": 1.0}
    flipped = parity(net, lambda x: -net(x), inputs)
    assert flipped["max_abs_diff"] > 0 and flipped["top1_agreement"] < 0.5
    assert np.isfinite(flipped["max_abs_diff"])


@pytest.mark.parametrize("out, message", [("model.txt", "must end in .onnx"), ("sub.onnx", "is a directory")])
def test_bad_output_name_is_refused(cifar_model, tmp_path, out, message):
    (tmp_path / "sub.onnx").mkdir()
    with pytest.raises(UserError, match=message):
        export_model(ExportConfig(model_dir=str(cifar_model), format="onnx", out=str(tmp_path / out)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.onnx"]
