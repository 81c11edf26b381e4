"""The one training step: what each acceleration setting does to it, and the phase timer bench reads."""

from __future__ import annotations

import pytest
import torch

from gpuvision.device import acceleration
from gpuvision.models import create_model, model_spec
from gpuvision.train.recipes import create_recipe
from gpuvision.train.step import PhaseTimer, TrainStep

CPU = torch.device("cpu")


def make_step(**settings) -> tuple[TrainStep, torch.Tensor, torch.Tensor]:
    accel = acceleration.resolve(CPU, precision="fp32", **settings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = create_model("fastnet", num_classes=4, in_channels=3, image_size=16, widths=[8, 16, 16])
    net.to(memory_format=accel.memory_format)
    recipe = create_recipe("fast", optimizer="sgd", batch_size=32, epochs=1.0)
    recipe.resolve(256, 16)
    step = TrainStep.create(net, recipe, CPU, accel, model_spec("fastnet"))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 3, 16, 16, generator=g).contiguous(memory_format=accel.memory_format)
    return step, x, torch.randint(0, 4, (32,), generator=g)


@pytest.mark.parametrize("kernel", ["fused", "foreach", "loop"])
def test_every_optimizer_kernel_takes_the_same_step(kernel):
    reference, x, y = make_step(optimizer_kernel="foreach")
    step, _, _ = make_step(optimizer_kernel=kernel)
    for i in range(3):
        reference(x, y, i, 10)
        step(x, y, i, 10)
    for a, b in zip(reference.model.parameters(), step.model.parameters()):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert step.optimizer.param_groups[0].get("fused") is (True if kernel == "fused" else None)


def test_the_layout_setting_reaches_the_weights_and_the_result_does_not_depend_on_it():
    nhwc, x, y = make_step(channels_last="on")
    nchw, _, _ = make_step(channels_last="off")
    conv = next(m for m in nchw.model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1)
    assert conv.weight.is_contiguous() and not conv.weight.is_contiguous(memory_format=torch.channels_last)
    losses = [(nhwc(x, y, i, 10)[0].item(), nchw(x.contiguous(), y, i, 10)[0].item()) for i in range(3)]
    assert all(abs(a - b) < 1e-3 * max(1.0, abs(a)) for a, b in losses)
    assert losses[-1][0] < losses[0][0]  # it trains


def test_a_perturbation_hook_sees_the_batch_before_the_forward():
    step, x, y = make_step()
    seen = []

    def perturb(forward, batch, labels):
        seen.append((batch.shape, labels is y))
        return batch + 0.01

    step.perturb = perturb
    step(x, y, 0, 10)
    assert seen == [(x.shape, True)]


def test_the_phase_timer_splits_a_step_into_forward_backward_and_optimizer():
    step, x, y = make_step()
    timer = PhaseTimer(CPU)
    timer.start()
    for i in range(2):
        step(x, y, i, 10, timer=timer)
    assert set(timer.seconds) == {"forward", "backward", "optimizer"} and all(v > 0 for v in timer.seconds.values())


@pytest.mark.parametrize("kernel", ["fused", "foreach"])
def test_a_step_with_non_finite_gradients_is_skipped_on_the_device_and_counted(kernel):
    step, x, y = make_step(optimizer_kernel=kernel)
    before = {k: v.clone() for k, v in step.model.state_dict().items()}
    bad = x.clone()
    bad[0] = float("nan")
    step(bad, y, 0, 10)
    assert int(step.nonfinite) == 1
    after = step.model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    norms = [k for k in before if "running" in k]
    assert norms and all(after[k].equal(before[k]) for k in norms)  # the NaN batch left no statistics behind
    if kernel == "fused":  # a fused kernel skips the whole update; others zero its gradients (weight decay runs)
        assert all(after[k].equal(before[k]) for k in before)
    step(x, y, 1, 10)
    assert int(step.nonfinite) == 1 and not all(after[k].equal(before[k]) for k in before)


def test_gradient_accumulation_takes_the_step_of_the_whole_batch():
    """Without batch norm (whose statistics are per micro-batch), K micro-batches give one big batch's update."""
    from gpuvision.models import ModelSpec

    def linear_step(accumulate):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
        recipe = create_recipe("standard", batch_size=32, epochs=1.0)
        recipe.resolve(256, 16)
        accel = acceleration.resolve(CPU, precision="fp32")
        return TrainStep.create(net, recipe, CPU, accel, ModelSpec(build=lambda **k: net), accumulate=accumulate)

    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(32, 3, 16, 16, generator=g), torch.randint(0, 4, (32,), generator=g)
    one, four = linear_step(1), linear_step(4)
    for i in range(3):
        a, _ = one(x, y, i, 10)
        b, _ = four(x, y, i, 10)
        assert abs(a.item() - b.item()) < 1e-5
    for p, q in zip(one.model.parameters(), four.model.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
