"""Defaults for photos: the size a run trains at when none is given, and the run-time estimate with its hint."""

from __future__ import annotations

import torch
from helpers import make_tree

from gpuvision.config import TrainConfig
from gpuvision.train.sizing import LONG_SECONDS, RunEstimate, default_image_size, duration, estimate, plan_inputs

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_the_size_rule():
    assert default_image_size(None, CPU) == (None, None)  # digits, CIFAR, IDX: their own size
    assert default_image_size(32, CUDA)[0] is None and default_image_size(100, CPU)[0] is None
    assert default_image_size(500, CPU)[0] == 128 and default_image_size(500, CUDA)[0] == 224
    assert default_image_size(200, CUDA)[0] is None  # smaller than the default: as they are
    assert default_image_size(32, CPU, pretrained_side=224)[0] == 224  # the weights' own size


def test_photos_get_the_default_and_a_given_size_wins(tmp_path):
    photos = make_tree(tmp_path / "photos", per_class=3, size=(500, 333), fmt="JPEG")
    _, size, rule = plan_inputs(TrainConfig(data=str(photos)), CPU)
    assert size == 128 and "photos" in rule
    assert plan_inputs(TrainConfig(data=str(photos), image_size=64), CPU)[1:] == (64, None)
    assert plan_inputs(TrainConfig(data="digits"), CPU)[1] is None


def test_a_long_run_gets_a_smaller_size_that_fits():
    long = estimate(per_step=3.0, total_steps=2200, side=224, device=CPU)  # 1h50m
    assert long["text"].startswith("about 1h50m on this CPU") and long["hint"]
    side = int(long["hint"].split()[1])
    assert side < 224 and 3.0 * 2200 * (side / 224) ** 2 <= LONG_SECONDS
    assert estimate(per_step=0.01, total_steps=100, side=224, device=CPU)["hint"] is None
    assert estimate(per_step=10.0, total_steps=1000, side=32, device=CPU)["hint"] is None  # already small
    assert duration(45) == "45 s" and duration(360) == "6 min" and duration(6600) == "1h50m"


def test_the_estimate_comes_once_after_the_warm_up():
    timer = RunEstimate(CPU, steps=100, image_side=32, warmup=2, measure_steps=3, measure_seconds=60)
    results = [timer.after_step() for _ in range(10)]
    assert [i for i, r in enumerate(results) if r] == [4]  # steps 1-2 warm up, 3-5 are timed
    assert results[4]["seconds"] >= 0 and "about" in results[4]["text"]
