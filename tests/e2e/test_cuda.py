"""The CUDA paths: device-resident data, bf16 autocast, torch.compile (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

import gpuvision
from gpuvision.data.augment import Augment
from gpuvision.data.input_spec import InputSpec
from gpuvision.data.loader import DeviceLoader

pytestmark = pytest.mark.cuda


def test_device_loader_on_cuda_yields_every_image_once():
    n = 1000
    images = torch.arange(n, device="cuda").remainder(256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, 8, 8)
    spec = InputSpec((8, 8), 3, (0.0,) * 3, (1.0,) * 3)
    loader = DeviceLoader(images.contiguous(), torch.arange(n, device="cuda"), 128, spec, Augment(),
                          torch.Generator(device="cuda").manual_seed(0))
    labels = torch.cat([y for _, y in loader.epoch(0)])
    assert labels.device.type == "cuda" and torch.equal(labels.sort().values, torch.arange(n, device="cuda"))


def test_cuda_bf16_compiled_training_on_a_cifar_subset(cifar_subset, tmp_path):
    result = gpuvision.train(data=str(cifar_subset), out=str(tmp_path / "gpu"), device="cuda", precision="auto",
                             compile="on", epochs=8, eval_every=0, checkpoint_every=0)
    assert result.manifest.training.device.startswith("cuda") and result.manifest.training.compiled is True
    assert gpuvision.evaluate(str(result.model_dir))["accuracy"] >= 0.45
