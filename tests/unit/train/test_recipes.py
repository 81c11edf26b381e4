"""Recipes: optimizer choice, settings that scale with the data set, the whitening bias's freeze, the average."""

from __future__ import annotations

import pytest
import torch

from gpuvision.errors import UserError
from gpuvision.models import create_model, model_spec
from gpuvision.train.muon import Muon, Optimizers
from gpuvision.train.recipes import WeightAverage, create_recipe

CPU = torch.device("cpu")


def _fastnet(widths=(8, 16, 16)):
    torch.manual_seed(0)
    return create_model("fastnet", num_classes=3, in_channels=3, image_size=16, widths=widths)


def _recipe(n_train=600, **overrides):
    recipe = create_recipe("fast", **overrides)
    recipe.resolve(n_train, 16)
    return recipe


def test_muon_trains_the_filters_and_sgd_the_rest():
    net = _fastnet()
    optimizer = _recipe().optimizer(net, CPU, model_spec("fastnet"))
    assert isinstance(optimizer, Optimizers)
    sgd, muon = optimizer.optimizers
    filters = {id(p) for p in net.parameters() if p.ndim == 4 and p.requires_grad}
    assert isinstance(muon, Muon) and {id(p) for g in muon.param_groups for p in g["params"]} == filters
    rest = {id(p) for g in sgd.param_groups for p in g["params"]}
    assert rest == {id(p) for p in net.parameters() if p.requires_grad and p.ndim < 4}


def test_sgd_gives_the_whitening_bias_the_base_rate_in_a_group_of_its_own():
    net = _fastnet()
    recipe = _recipe(optimizer="sgd")
    optimizer = recipe.optimizer(net, CPU, model_spec("fastnet"))
    assert isinstance(optimizer, torch.optim.SGD)
    whiten = [g for g in optimizer.param_groups if any(p is net.whiten.bias for p in g["params"])]
    assert len(whiten) == 1 and len(whiten[0]["params"]) == 1 and whiten[0]["role"] == "early"
    others = next(g for g in optimizer.param_groups if any(p is net.head.weight for p in g["params"]))
    assert whiten[0]["lr"] == others["lr"]  # airbench94's rate for it: the base one, not the 64x of the BN biases


def _run_hooks(recipe, net, total):
    """The recipe's hooks in the Trainer's order, on random data; the whitening bias after each step, its rate
    before each step, and its base rate."""
    recipe.prepare(net)
    opt = recipe.optimizer(net, CPU, model_spec("fastnet"))
    for group in opt.param_groups:
        group.setdefault("initial_lr", group["lr"])
    whiten = next(g for g in opt.param_groups if g.get("role") == "early")
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 3, (8,))
    history, rates = [], []
    for step in range(total):
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * recipe.lr_factor(step, total) * recipe.group_factor(group, step, total)
        rates.append(whiten["lr"])
        loss = recipe.loss(net(x), y, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        recipe.after_step(net, step + 1, total)
        history.append(net.whiten.bias.detach().clone())
    return history, rates, whiten["initial_lr"]


@pytest.mark.parametrize("optimizer", ["sgd", "muon"])
def test_whitening_bias_trains_first_then_is_frozen(optimizer):
    net = _fastnet()
    recipe = _recipe(optimizer=optimizer, whiten_bias_fraction=0.5, lookahead_every=0)  # Lookahead moves all
    history, _, _ = _run_hooks(recipe, net, total=6)
    assert not torch.equal(history[0], history[2])  # trained in the first half (steps 1-3)
    assert torch.equal(history[3], history[5])  # frozen after
    assert not net.whiten.bias.requires_grad  # and no gradient computed for it any more


def test_muon_whitening_bias_rate_decays_on_its_own_to_zero():
    """airbench94_muon: the bias's rate falls linearly from its peak to zero over its own steps (3 of 8 epochs),
    while the other groups follow the whole run's schedule; SGD's (airbench94's) follows the schedule."""
    recipe = _recipe(epochs=8, batch_size=100, n_train=1_000)  # 10 steps an epoch, 80 in all
    assert recipe.settings.whiten_bias_fraction == 3 / 8 and recipe.settings.whiten_bias_decay
    _, rates, base = _run_hooks(recipe, _fastnet(), total=80)
    assert rates[:30] == pytest.approx([base * (1 - step / 30) for step in range(30)])
    assert rates[30:] == [0.0] * 50
    sgd = _recipe(optimizer="sgd", lookahead_every=0)
    _, rates, base = _run_hooks(sgd, _fastnet(), total=10)
    assert rates[:3] == pytest.approx([base * sgd.lr_factor(step, 10) for step in range(3)])


def test_whitening_bias_never_trained_costs_no_gradient():
    net = _fastnet()
    _recipe(whiten_bias_fraction=0.0).optimizer(net, CPU, model_spec("fastnet"))
    assert not net.whiten.bias.requires_grad


def test_settings_scale_with_the_data_set_and_keep_what_was_given():
    small, large = _recipe(n_train=1_400), _recipe(n_train=50_000, optimizer="muon")
    assert small.settings.batch_size < large.settings.batch_size
    assert small.settings.epochs >= large.settings.epochs
    assert small.settings.drop_last
    given = _recipe(n_train=50_000, epochs=2, batch_size=100)
    assert (given.settings.epochs, given.settings.batch_size) == (2, 100)


def test_given_weights_fine_tune_with_sgd_at_full_size_unless_told_otherwise():
    scratch = _recipe(n_train=10_000)
    assert scratch.settings.optimizer == "muon" and scratch.augment(32).sides
    full = _recipe(n_train=50_000)  # Muon at every size; progressive resizing up to 10,000 images (as measured)
    assert full.settings.optimizer == "muon" and not full.augment(32).sides
    assert full.settings.batch_size == 2_000  # airbench94_muon's 25 steps an epoch
    tuned = create_recipe("fast")
    tuned.resolve(10_000, 32, fine_tune=True)
    assert tuned.settings.optimizer == "sgd" and not tuned.augment(32).sides
    told = create_recipe("fast", optimizer="muon", low_res_scale=0.75)
    told.resolve(10_000, 32, fine_tune=True)
    assert told.settings.optimizer == "muon" and told.augment(32).sides


def test_unknown_or_unsupported_optimizer_is_refused():
    with pytest.raises(UserError, match="adam"):
        create_recipe("fast", optimizer="adam")
    with pytest.raises(UserError, match="standard"):
        create_recipe("standard", optimizer="muon")


def test_schedules_start_end_and_peak_where_set():
    muon = _recipe()
    assert muon.lr_factor(0, 100) == 1.0 and muon.lr_factor(100, 100) == pytest.approx(0.0)
    sgd = _recipe(optimizer="sgd")
    assert sgd.lr_factor(0, 100) == pytest.approx(0.2) and sgd.lr_factor(23, 100) == pytest.approx(1.0)
    assert sgd.lr_factor(100, 100) == pytest.approx(0.07)


def test_weight_average_follows_the_model_and_writes_back():
    net = _fastnet()
    average = WeightAverage(net)
    start = net.head.weight.detach().clone()
    with torch.no_grad():
        net.head.weight.add_(1.0)
    average.update(net, decay=0.75)  # avg = 0.75 avg + 0.25 model
    assert torch.allclose(average.avg["head.weight"], start + 0.25)
    average.copy_to(net)
    assert torch.allclose(net.head.weight, start + 0.25)


def test_progressive_resizing_covers_the_first_fraction_of_the_epochs():
    recipe = _recipe(epochs=8, low_res_scale=0.75, low_res_fraction=0.5)
    assert recipe.augment(16).sides == (12,) * 4 and recipe.augment(32).sides == (24,) * 4
    assert recipe.augment(8).sides == ()  # too small to shrink
    assert _recipe(epochs=8, optimizer="sgd").augment(16).sides == ()  # airbench94's recipe, unchanged
