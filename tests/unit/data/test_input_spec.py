"""InputSpec: the one uint8 -> model input formula, as a function and as a module, and its manifest form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpuvision.data.input_spec import InputSpec, Normalise, normalise
from gpuvision.errors import BadInput

SPEC = InputSpec(size=(4, 5), channels=3, mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 8.0))


def test_round_trip_through_the_manifest_form():
    assert InputSpec.from_dict(SPEC.to_dict()) == SPEC and SPEC.shape == (3, 4, 5)


def test_function_and_module_agree_and_apply_the_formula():
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 4, 5), dtype=np.uint8))
    x = normalise(pixels, SPEC)
    expected = (pixels.float() - torch.tensor(SPEC.mean).view(1, 3, 1, 1)) / torch.tensor(SPEC.std).view(1, 3, 1, 1)
    assert torch.equal(x, expected)
    assert torch.equal(Normalise(SPEC)(pixels), x)
    assert torch.equal(Normalise(SPEC, "NHWC")(pixels.permute(0, 2, 3, 1)), x)
    assert normalise(pixels.numpy(), SPEC, channels_last=True).is_contiguous(memory_format=torch.channels_last)


def test_statistics_from_images():
    images = torch.stack([torch.full((1, 2, 2), 10, dtype=torch.uint8), torch.full((1, 2, 2), 30, dtype=torch.uint8)])
    spec = InputSpec.from_images(images)
    assert spec.size == (2, 2) and spec.channels == 1 and spec.mean == pytest.approx((20.0,))
    assert spec.std[0] == pytest.approx(float(torch.tensor([10.0] * 4 + [30.0] * 4).std()))


@pytest.mark.parametrize("bad", [
    {"size": [0, 4], "channels": 3, "mean": [0, 0, 0], "std": [1, 1, 1]},
    {"size": [4, 4], "channels": 2, "mean": [0, 0], "std": [1, 1]},
    {"size": [4, 4], "channels": 1, "mean": [0, 0], "std": [1]},
    {"size": [4, 4], "channels": 1, "mean": [0], "std": [0]},
    {"size": [4, 4], "channels": 1, "mean": [float("nan")], "std": [1]},
    {"size": "4x4", "channels": 1, "mean": [0], "std": [1]},
])
def test_bad_specs_are_refused(bad):
    with pytest.raises(BadInput):
        InputSpec.from_dict(bad)


def test_statistics_in_chunks_equal_the_whole_and_need_no_float_copy_of_the_set():
    images = torch.randint(0, 256, (300, 3, 16, 16), dtype=torch.uint8)
    whole, chunked = InputSpec.from_images(images), InputSpec.from_images(images, chunk=1000)
    direct = images.float()
    assert chunked.mean == whole.mean and chunked.std == whole.std
    assert whole.mean == pytest.approx(tuple(direct.mean(dim=(0, 2, 3)).tolist()), rel=1e-5)
    assert whole.std == pytest.approx(tuple(direct.std(dim=(0, 2, 3)).tolist()), rel=1e-5)
