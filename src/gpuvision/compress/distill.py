"""Distillation: a smaller student trained from the teacher's soft labels with the regular trainer.

The student is the teacher's architecture at half width by default (about a quarter of the parameters), or any
registered model (`--student NAME`) at its default size, provided it is smaller than the teacher. Training is the
`distill` recipe on top of the student's usual recipe, on the teacher's own training split.
"""

from __future__ import annotations

from pathlib import Path

from ..artifact import Manifest, ModelDir
from ..errors import Unsupported, require
from ..models import count_params, create_model, list_models, model_spec

BASE_ARGS = ("num_classes", "in_channels", "image_size")
HALF = 0.5


def student_spec(teacher: dict, student: str | None) -> tuple[str, dict]:
    """(model name, architecture arguments) of the student; a student no smaller than the teacher is refused."""
    base = {k: teacher["args"][k] for k in BASE_ARGS}
    if student is None:
        require(model_spec(teacher["name"]).narrower is not None,
                f"a {teacher['name']} has no narrower default student; give --student NAME", Unsupported)
        name, args = teacher["name"], model_spec(teacher["name"]).narrower(teacher["args"], HALF)
    else:
        require(student in list_models(), f"--student {student}: unknown model; choose one of "
                f"{', '.join(list_models())}")
        name, args = student, base
    teacher_params = count_params(create_model(teacher["name"], **teacher["args"]))
    student_params = count_params(create_model(name, **args))
    require(student_params < teacher_params, f"--student {name} has {student_params:,} parameters, not fewer than "
            f"the teacher's {teacher_params:,}; a student must be smaller")
    return name, args


def make_student(ctx, source: ModelDir, out: Path) -> Manifest:
    """Train the student of the model in `source` into the model directory `out`."""
    from . import train_variant

    teacher = source.manifest
    name, args = student_spec(teacher.architecture, ctx.config.student)
    epochs = ctx.config.distill_epochs or teacher.recipe.get("epochs") or 10.0
    record = {"method": "distill", "student": name, "teacher_params": teacher.params, "epochs": epochs}
    return train_variant(ctx, source, out, name, args, record, epochs=epochs)
