"""Keeping the best epoch: the weights of the epoch whose validation metric was best so far, and early stopping.

Which metric decides is the Trainer's choice: validation accuracy by default; a robust accuracy when training
adversarially (keeping the best robust epoch is the remedy for robust overfitting, Rice et al. 2020).
"""

from __future__ import annotations

import torch
from torch import nn

from .recipes import Recipe


class BestEpoch:
    """Tracks `metric` (higher is better) over validation passes; keeps a host copy of the best epoch's weights and
    of the recipe's state (its weight average); `patience` passes without improvement end the run (0: never)."""

    def __init__(self, metric: str, patience: int = 0):
        self.metric, self.patience = metric, patience
        self.epoch: int | None = None
        self.value: float | None = None
        self.stale = 0
        self.weights: dict[str, torch.Tensor] = {}
        self.recipe_state: dict[str, torch.Tensor] = {}

    def observe(self, record: dict, model: nn.Module, recipe: Recipe) -> bool:
        """Take one epoch's record (after validation); True when the run should stop early."""
        value = record.get(self.metric)
        if value is None:
            return False
        if self.value is None or value > self.value:
            self.epoch, self.value, self.stale = int(record["epoch"]), float(value), 0
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            self.recipe_state = {k: v.detach().to("cpu", copy=True) for k, v in recipe.state_tensors().items()}
            return False
        self.stale += 1
        return bool(self.patience) and self.stale >= self.patience

    def restore(self, model: nn.Module, recipe: Recipe) -> None:
        """Put the best epoch's weights (and the recipe's state of then) back, before the recipe's `finish`."""
        if self.weights:
            model.load_state_dict(self.weights)
            if self.recipe_state:
                recipe.load_state_tensors(self.recipe_state)

    def state(self) -> dict:
        """For checkpoints: a resumed run keeps the best epoch it had seen."""
        return {"metric": self.metric, "epoch": self.epoch, "value": self.value, "stale": self.stale,
                "weights": self.weights, "recipe": self.recipe_state}

    def load_state(self, state: dict) -> None:
        self.epoch, self.value, self.stale = state["epoch"], state["value"], int(state["stale"])
        self.weights, self.recipe_state = dict(state["weights"]), dict(state["recipe"])
