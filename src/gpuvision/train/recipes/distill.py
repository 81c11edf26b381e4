"""The distill recipe: a student learns from a teacher model directory's soft labels, on top of another recipe.

    gpuvision.train(data=..., model="fastnet", model_args={"widths": [32, 128, 128]}, recipe="distill",
                    recipe_args={"teacher": "runs/cifar", "base": "fast"})

The base recipe (fast or standard) keeps its optimiser, schedule, augmentation, averaging and TTA; only the loss
changes: alpha * T^2 * KL(teacher || student at temperature T) + (1 - alpha) * the base recipe's label loss
(Hinton et al., 2015). The teacher sees the student's augmented, normalised batches, so train the student on the
teacher's data (as `gpuvision compress` does): the normalisation statistics then match.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ...config import bounds
from ...errors import require
from ...models import ModelSpec
from . import RECIPES, Recipe, check_settings, create_recipe


# ------------------------------------------------------------------------------------------ settings
@dataclass
class DistillSettings:
    teacher: str = ""  # model directory of the teacher (required)
    base: str = "fast"  # recipe that supplies optimiser, schedule, augmentation and TTA
    alpha: float = 0.9  # weight of the soft-label term; 1 - alpha goes to the hard labels
    temperature: float = 4.0  # softens both distributions; the T^2 factor keeps gradient sizes comparable

    BOUNDS = {"base": bounds(choices=("fast", "standard")), "alpha": bounds(0, 1),
              "temperature": bounds(0, 1e3, low_open=True)}


@RECIPES.register("distill")
class DistillRecipe(Recipe):
    name = "distill"

    def __init__(self, teacher: str = "", base: str = "fast", alpha: float = 0.9, temperature: float = 4.0,
                 **overrides):
        self.distill = DistillSettings(teacher, base, alpha, temperature)
        check_settings(self.distill)
        require(bool(teacher), "the distill recipe needs recipe_args teacher=<model directory>")
        self.base = create_recipe(base, **overrides)
        self.settings = self.base.settings  # the Trainer reads epochs, batch size and TTA from here
        self.loss_reduction = self.base.loss_reduction
        self.teacher = None

    # ------------------------------------------------------------------------------------- delegated hooks
    def resolve(self, n_train: int, image_size: int, fine_tune: bool = False) -> None:
        self.base.resolve(n_train, image_size, fine_tune)

    def augment(self, image_size: int):
        return self.base.augment(image_size)

    def optimizer(self, model: nn.Module, device: torch.device, spec: ModelSpec, kernel: str = "foreach"
                  ) -> torch.optim.Optimizer:
        return self.base.optimizer(model, device, spec, kernel)

    def lr_factor(self, step: int, total: int) -> float:
        return self.base.lr_factor(step, total)

    def group_factor(self, group: dict, step: int, total: int) -> float:
        return self.base.group_factor(group, step, total)

    def on_epoch(self, model: nn.Module, epoch: int, epochs: float) -> None:
        self.base.on_epoch(model, epoch, epochs)

    def after_step(self, model: nn.Module, step: int, total: int) -> None:
        self.base.after_step(model, step, total)

    def finish(self, model: nn.Module) -> None:
        self.base.finish(model)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return self.base.state_tensors()

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.base.load_state_tensors(tensors)

    def describe(self) -> dict:
        return {**self.base.describe(), "name": self.name, "base": self.distill.base, "distill": asdict(self.distill)}

    # ------------------------------------------------------------------------------------- teacher
    def prepare(self, model: nn.Module) -> None:
        from ...runtime import load

        device = next(model.parameters()).device
        # fp32: the soft labels should not carry the teacher's rounding errors on top of the student's.
        self.teacher = load(self.distill.teacher, device=str(device), backend="eager", precision="fp32",
                            access=self.access).runtime.net
        self.base.prepare(model)

    # ------------------------------------------------------------------------------------- loss
    def loss(self, logits: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        s = self.distill
        # The Trainer calls the loss under its autocast; the teacher runs in fp32 all the same (see prepare).
        with torch.no_grad(), torch.autocast(inputs.device.type, enabled=False):
            teacher_logits = self.teacher(inputs.float()).float()
        require(teacher_logits.shape == logits.shape,
                f"distill: the teacher gives {teacher_logits.shape[1]} classes, the student {logits.shape[1]}")
        t = s.temperature
        soft = nn.functional.kl_div(torch.log_softmax(logits / t, dim=1), torch.log_softmax(teacher_logits / t, dim=1),
                                    reduction="sum", log_target=True) * t * t
        if self.loss_reduction == "mean":
            soft = soft / len(labels)
        return s.alpha * soft + (1 - s.alpha) * self.base.loss(logits, labels, inputs)
