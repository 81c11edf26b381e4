"""Run under torchrun by test_distributed.py: a few steps of the real Trainer, recording each step's loss over the
whole global batch (summed over the processes), then the model; rank 0 writes the losses to LOSSES."""

from __future__ import annotations

import json
import sys

import torch

from gpuvision.config import TrainConfig
from gpuvision.train import distributed
from gpuvision.train.trainer import Trainer


def main(out: str, losses_file: str) -> None:
    config = TrainConfig(data="digits", out=out, device="cpu", precision="fp32", optimizer="sgd", batch_size=256,
                         epochs=0.6, sync_bn="on", eval_every=0, checkpoint_every=0, seed=5,
                         model_args={"widths": [8, 16, 16]})
    trainer = Trainer(config)
    trainer.setup()
    losses = []

    class Recording:
        """The trainer's step, recording each step's loss over the global batch."""

        def __init__(self, step):
            self.step = step

        def __getattr__(self, name):
            return getattr(self.step, name)

        def __call__(self, x, y, index, total, global_size=None, **kwargs):
            loss, logits = self.step(x, y, index, total, global_size, **kwargs)
            summed = loss.detach() * (1 if trainer.recipe.loss_reduction == "sum" else len(y))
            losses.append(float(distributed.all_sum(summed.double())[0]) / global_size)
            return loss, logits

    trainer.train_step = Recording(trainer.train_step)
    with trainer.acceleration.scope(trainer.device):
        trainer.train()
    trainer.save_model()
    trainer.cleanup()
    if trainer.world.main:
        json.dump({"losses": losses, "world_size": trainer.world.size}, open(losses_file, "w"))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(*sys.argv[1:])
    distributed.end_process(0)
