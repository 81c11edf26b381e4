"""Which directories a server serves under which names, its settings, and the runtime it chooses."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
import torch

from gpuvision.artifact import Inference, ModelDir, write_manifest
from gpuvision.cli import main
from gpuvision.config import ServeConfig
from gpuvision.device import describe_device
from gpuvision.errors import BadInput, NotFound
from gpuvision.runtime import build_network
from gpuvision.runtime.onnx import export_metadata, onnx_model, serialize
from gpuvision.serve.repository import choose_runtime, model_paths, warmup_sizes


def fake_models(root, *names):
    for name in names:
        (root / name).mkdir(parents=True)
        (root / name / "manifest.json").write_text("{}")


def test_models_are_named_by_directory_or_explicitly_and_never_twice(tmp_path):
    fake_models(tmp_path / "a", "cifar")
    fake_models(tmp_path / "b", "cifar", "digits")
    (tmp_path / "b" / "notes").mkdir()
    config = ServeConfig(models=[str(tmp_path / "a" / "cifar"), f"other={tmp_path / 'b' / 'cifar'}"])
    assert list(model_paths(config)) == ["cifar", "other"]
    assert list(model_paths(ServeConfig(model_repository=str(tmp_path / "b")))) == ["cifar", "digits"]
    with pytest.raises(BadInput, match="two models are named 'cifar'"):
        model_paths(ServeConfig(models=[str(tmp_path / "a" / "cifar")], model_repository=str(tmp_path / "b")))
    with pytest.raises(BadInput, match="model name"):
        model_paths(ServeConfig(models=[f"bad/name={tmp_path / 'a' / 'cifar'}"]))
    with pytest.raises(NotFound, match="no model directories"):
        model_paths(ServeConfig(model_repository=str(tmp_path / "b" / "notes")))


def test_settings_refuse_an_open_non_loopback_address_and_half_tls():
    ServeConfig(models=["m"], host="::1").validate()
    ServeConfig(models=["m"], host="0.0.0.0", insecure=True).validate()
    ServeConfig(models=["m"], host="0.0.0.0", api_key_file="key").validate()
    for bad in ({"host": "0.0.0.0"}, {"host": "example.org"}, {"ssl_certfile": "cert.pem"}, {"models": []},
                {"max_batch_size": 0}):
        with pytest.raises(BadInput):
            ServeConfig(**{"models": ["m"], **bad}).validate()


def test_serve_command_errors_are_one_line_exit_2(tmp_path, capsys):
    for args in (["serve"], ["serve", str(tmp_path / "missing")], ["serve", "m", "--host", "0.0.0.0"]):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err, err


def test_buckets_up_to_the_largest_batch_are_warmed():
    assert warmup_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
    assert warmup_sizes(12) == [1, 2, 4, 8, 12]


def test_runtime_choice_asked_recorded_measured_or_onnx(tiny_model, tmp_path):
    cpu = torch.device("cpu")
    model_dir = ModelDir.open(tiny_model)
    runtime, choice, _ = choose_runtime(model_dir, cpu, "eager", 8)
    assert (runtime.name, choice) == ("eager-fp32", "asked")
    runtime, choice, timings = choose_runtime(model_dir, cpu, "auto", 8)
    assert choice == "measured" and runtime.name in timings
    assert set(timings) == {"eager-fp32", "inductor-fp32", "onnxruntime-fp32"}  # the policy of runtime/choice.py
    assert all(set(t) == {"b1", "b8"} for t in timings.values())

    m = model_dir.manifest
    recorded = tmp_path / "recorded"
    shutil.copytree(tiny_model, recorded)
    write_manifest(recorded, replace(m, inference=Inference("eager", "fp32", describe_device(cpu))), list(m.files))
    assert choose_runtime(ModelDir.open(recorded), cpu, "auto", 8)[1] == "manifest"

    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    meta = export_metadata(m.input, m.classes, m.tta_level, m.architecture["name"])
    proto = onnx_model(build_network(model_dir), torch.zeros(2, 1, 8, 8), meta)
    (onnx_dir / "model.onnx").write_bytes(serialize(proto))
    shutil.copy(tiny_model / m.split.file, onnx_dir / m.split.file)
    write_manifest(onnx_dir, replace(m, format="onnx", weights="model.onnx", inference=Inference("onnxruntime")),
                   ["model.onnx", m.split.file])
    runtime, choice, _ = choose_runtime(ModelDir.open(onnx_dir), cpu, "auto", 8)
    assert (runtime.name, choice) == ("onnxruntime-fp32", "onnx")
    pixels = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    eager = choose_runtime(model_dir, cpu, "eager", 8)[0]
    assert torch.allclose(runtime.logits(pixels), eager.logits(pixels), atol=1e-4)
