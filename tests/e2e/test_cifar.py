"""Real CIFAR-10-JPEG images: a short fp32 run and a short bf16 run each clear a floor well above chance (0.1)."""

from __future__ import annotations

import json

import gpuvision


def test_fp32_run_on_a_cifar_subset(cifar_model):
    report = gpuvision.evaluate(str(cifar_model))
    manifest = json.loads((cifar_model / "manifest.json").read_text())
    assert report["n"] == manifest["split"]["sizes"]["test"] and report["tta"] is True
    assert manifest["split"]["test_source"] == "given:test"  # the tree's own test/ part
    assert report["accuracy"] >= 0.4, report["accuracy"]
    assert manifest["input"]["size"] == [32, 32] and manifest["input"]["channels"] == 3
    assert len(manifest["classes"]) == 10 and manifest["classes"][0] == "airplane"


def test_bf16_run_on_a_cifar_subset(cifar_subset, tmp_path):
    # 16 px keeps this quick on CPUs that emulate bf16 (about 6x slower than fp32 on an AVX2-only CPU).
    result = gpuvision.train(data=str(cifar_subset), out=str(tmp_path / "bf16"), device="cpu", precision="bf16",
                             image_size=16, epochs=6, model_args={"widths": [32, 64, 64]}, eval_every=0,
                             checkpoint_every=0)
    assert result.manifest.training.precision == "bf16" == result.manifest.inference.precision
    assert gpuvision.evaluate(str(result.model_dir))["accuracy"] >= 0.3


def test_reproducible_for_a_fixed_seed(cifar_subset, tmp_path):
    weights = []
    for name in ("a", "b"):
        r = gpuvision.train(data=str(cifar_subset), out=str(tmp_path / name), device="cpu", precision="fp32",
                            epochs=0.5, model_args={"widths": [8, 16, 16]}, eval_every=0, checkpoint_every=0)
        weights.append((r.model_dir / "model.safetensors").read_bytes())
    assert weights[0] == weights[1]


def test_tta_keeps_the_label_space(cifar_model):
    model = gpuvision.load(cifar_model)
    import numpy as np
    import torch

    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (6, 3, 32, 32), dtype=np.uint8))
    plain, tta = model.logits(x, tta=False), model.logits(x, tta=True)
    assert plain.shape == tta.shape == (6, 10)
    assert not torch.allclose(plain, tta)
