"""The attacks: each registered one finds the exact answer where it is known (a linear model), none leaves the
eps-ball or the valid pixels, sizes convert to normalised units in one place, and the training perturbation leaves
the weights' gradients alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gpuvision.attacks import ATTACKS, AdversarialTraining, AttackSettings, Threat, run_attack
from gpuvision.config import pixel_fraction
from gpuvision.data.input_spec import InputSpec, normalise
from gpuvision.errors import BadInput

CPU = torch.device("cpu")


@pytest.mark.parametrize("text, value", [("8/255", 8 / 255), ("0.0314", 0.0314), (" 1/2 ", 0.5), (0.25, 0.25),
                                         ("1", 1.0)])
def test_eps_reads_as_a_fraction_or_a_decimal(text, value):
    assert pixel_fraction(text, "--eps") == pytest.approx(value)


@pytest.mark.parametrize("text", ["8/0", "eight", "0", "-1/255", "2", "nan", "1/inf", ""])
def test_a_bad_eps_is_one_clear_error(text):
    with pytest.raises(BadInput, match="--eps"):
        pixel_fraction(text, "--eps")


class Linear(nn.Module):
    """Two classes split by a hyperplane through grey: class 0 where w . (x - 128) > 0."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = w

    def forward(self, x):
        z = ((x - 128.0) * self.w).flatten(1).sum(1, keepdim=True) / 100.0
        return torch.cat([z, -z], 1)


@pytest.mark.parametrize("method", ATTACKS.names())
def test_every_attack_finds_the_linear_models_exact_answer(method):
    """For a linear model the L-infinity optimum is known: an image is fooled iff its margin |w . (x - 128)| is
    below eps * ||w||_1 (pixels far from black and white, so the box never binds)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1, 1, 4, 4, generator=g)
    x = 64 + 128 * torch.rand(400, 1, 4, 4, generator=g)
    margin = ((x - 128) * w).flatten(1).sum(1)
    y = (margin < 0).long()
    eps = 8 / 255
    expected_robust = margin.abs() > 8 * w.abs().sum()
    assert 0.2 < expected_robust.float().mean() < 0.8  # both kinds present
    adv = run_attack(Linear(w), x, y, Threat.pixels(eps, CPU), AttackSettings(method, eps, steps=10), g)
    robust = Linear(w)(adv).argmax(1) == y
    assert torch.equal(robust, expected_robust)


@pytest.mark.parametrize("method", ATTACKS.names())
def test_no_attack_leaves_the_ball_or_the_valid_pixels(method):
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5)).eval()
    x = torch.randint(0, 256, (32, 3, 8, 8), generator=g).float()
    x[:, :, :2] = 0.0  # black and white pixels: the box binds there
    x[:, :, -2:] = 255.0
    y = torch.randint(0, 5, (32,), generator=g)
    eps = 16 / 255
    adv = run_attack(net, x, y, Threat.pixels(eps, CPU), AttackSettings(method, eps, restarts=2), g)
    assert (adv - x).abs().max() <= 16 + 1e-4
    assert adv.min() >= 0 and adv.max() <= 255
    assert (adv != x).any()


def test_normalised_threat_is_the_pixel_ball_in_normalised_units():
    """The training step sees normalised batches: its ball is eps of the pixel range per channel, clipped to the
    normalised black and white."""
    spec = InputSpec((6, 6), 3, (120.0, 60.0, 200.0), (50.0, 20.0, 80.0))
    g = torch.Generator().manual_seed(2)
    pixels = torch.randint(0, 256, (16, 3, 6, 6), generator=g)
    x = normalise(pixels, spec)
    threat = Threat.normalised(8 / 255, spec, CPU)
    pushed = threat.project(x + 100 * torch.randn(x.shape, generator=g), x)
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    back = pushed * std + mean
    assert (back - pixels.float()).abs().max() <= 8 + 1e-3
    assert (back - pixels.float()).abs().max() >= 8 - 1e-3  # the ball's corner is reached
    assert back.min() >= -1e-3 and back.max() <= 255 + 1e-3


@pytest.mark.parametrize("method, steps", [("fgsm-rs", 1), ("pgd", 3)])
def test_training_perturbation_stays_in_the_ball_and_leaves_gradients_alone(method, steps):
    spec = InputSpec((8, 8), 3, (128.0, 128.0, 128.0), (64.0, 64.0, 64.0))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(288, 4)).train()
    pixels = torch.randint(0, 256, (16, 3, 8, 8))
    x, y = normalise(pixels, spec), torch.randint(0, 4, (16,))
    perturb = AdversarialTraining(method, 8 / 255, steps if method == "pgd" else None, spec, CPU, "fp32", seed=0)
    x_adv = perturb(net, x, y)
    moved = (x_adv - x) * 64.0  # back in pixel units
    assert 4 < moved.abs().max() <= 8 + 1e-3
    assert not x_adv.requires_grad
    assert all(p.grad is None for p in net.parameters())
    record = perturb.record()
    assert record["method"] == method and record["eps"] == pytest.approx(8 / 255) and record["steps"] == steps
