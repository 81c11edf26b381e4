"""Keeping the best epoch's weights, and stopping after `patience` passes without a better one."""

from __future__ import annotations

import torch

from gpuvision.train.recipes import create_recipe
from gpuvision.train.selection import BestEpoch


def test_the_best_epochs_weights_come_back_and_patience_stops_the_run():
    net, recipe = torch.nn.Linear(2, 2), create_recipe("fast")
    best = BestEpoch("val_accuracy", patience=2)
    snapshots = {}
    stops = []
    for epoch, value in enumerate([0.5, 0.7, 0.6, 0.65], start=1):
        with torch.no_grad():
            net.weight.fill_(epoch)
        snapshots[epoch] = net.weight.clone()
        stops.append(best.observe({"epoch": epoch, "val_accuracy": value}, net, recipe))
    assert stops == [False, False, False, True] and best.epoch == 2 and best.value == 0.7
    best.restore(net, recipe)
    assert net.weight.equal(snapshots[2])

    resumed = BestEpoch("val_accuracy", patience=2)  # a checkpointed state resumes where it was
    resumed.load_state(best.state())
    assert (resumed.epoch, resumed.stale) == (2, 2) and resumed.weights["weight"].equal(snapshots[2])


def test_an_epoch_without_the_metric_changes_nothing():
    best = BestEpoch("val_accuracy", patience=1)
    assert best.observe({"epoch": 1, "train_loss": 1.0}, torch.nn.Linear(1, 1), create_recipe("fast")) is False
    assert best.epoch is None and best.stale == 0
