"""Recipe schedules: the shapes the recipes' docstrings promise."""

from __future__ import annotations

import pytest

from gpuvision.train.recipes import auto_batch_size, create_recipe


@pytest.mark.parametrize("optimizer", ["sgd", "muon"])
def test_fast_schedule_rises_to_its_peak_then_decays(optimizer):
    recipe = create_recipe("fast", optimizer=optimizer)
    recipe.resolve(50_000, 32)
    s, total = recipe.settings, 1000
    peak = int(s.warmup_fraction * total)
    assert recipe.lr_factor(0, total) == pytest.approx(s.lr_start)
    assert recipe.lr_factor(peak, total) == pytest.approx(1.0)
    assert recipe.lr_factor(total, total) == pytest.approx(s.lr_end)
    values = [recipe.lr_factor(i, total) for i in range(total + 1)]
    assert values[:peak] == sorted(values[:peak]) and values[peak:] == sorted(values[peak:], reverse=True)


def test_standard_schedule_warms_up_then_follows_a_cosine():
    recipe = create_recipe("standard")
    total = 1000
    warmup = int(recipe.settings.warmup_fraction * total)
    assert recipe.lr_factor(0, total) == pytest.approx(1 / warmup)
    assert recipe.lr_factor(warmup, total) == pytest.approx(1.0)
    assert recipe.lr_factor((warmup + total) // 2, total) == pytest.approx(0.5, abs=0.01)
    assert recipe.lr_factor(total, total) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("n, largest, expected", [(1_797, 1024, 64), (50_000, 1024, 1024), (100, 1024, 16)])
def test_batch_size_gives_about_16_steps_per_epoch(n, largest, expected):
    assert auto_batch_size(n, largest) == expected


@pytest.mark.parametrize("optimizer, batch_size", [("sgd", 1024), ("muon", 2000)])
def test_recipes_scale_epochs_to_a_minimum_number_of_steps(optimizer, batch_size):
    small, large = create_recipe("fast", optimizer=optimizer), create_recipe("fast", optimizer=optimizer)
    small.resolve(1_294, 8)
    large.resolve(50_000, 32)
    per_epoch = 50_000 // batch_size  # drop_last
    assert large.settings.batch_size == batch_size
    assert large.settings.epochs * per_epoch < 2 * large.settings.min_steps + 500
    assert small.settings.epochs * -(-1_294 // small.settings.batch_size) >= small.settings.min_steps
