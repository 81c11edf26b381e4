"""Distillation: a smaller student trained from the teacher's soft labels with the regular trainer.

The student is the teacher's architecture at half width by default (about a quarter of the parameters), or any
registered model (`--student NAME`) at its default size, provided it is smaller than the teacher. Training is the
`distill` recipe on top of the student's usual recipe, on the teacher's own training split.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import require
from ..models import count_params, create_model, list_models

BASE_ARGS = ("num_classes", "in_channels", "image_size")
HALF = 0.5


def _round8(n: float) -> int:
    return max(8, int(round(n / 8)) * 8)


def _half_width(arch: dict) -> dict:
    """The teacher's architecture arguments with every hidden layer half as wide."""
    name, args = arch["name"], dict(arch["args"])
    if name == "fastnet":
        import inspect

        from ..models.fastnet import FastNet

        widths = args.get("widths", inspect.signature(FastNet).parameters["widths"].default)
        return {**args, "widths": [_round8(w * HALF) for w in widths]}
    from ..models.resnet import layer_shapes

    template = create_model(name, **args)
    shapes = {}
    for layer, shape in layer_shapes(template).items():
        shape = list(shape)
        shape[0] = shape[0] if layer == "fc" else _round8(shape[0] * HALF)  # the classes stay
        if len(shape) > 1 and not (len(shape) == 4 and shape[1] == args["in_channels"] and layer == "conv1"):
            shape[1] = _round8(shape[1] * HALF)  # inputs follow the halved layer before, except the image's
        shapes[layer] = shape
    return {**args, "layer_shapes": shapes}


def student_spec(teacher: dict, student: str | None) -> tuple[str, dict]:
    """(model name, architecture arguments) of the student; a student no smaller than the teacher is refused."""
    base = {k: teacher["args"][k] for k in BASE_ARGS}
    if student is None:
        name, args = teacher["name"], _half_width(teacher)
    else:
        require(student in list_models(), f"--student {student}: unknown model; choose one of "
                f"{', '.join(list_models())}")
        name, args = student, base
    teacher_params = count_params(create_model(teacher["name"], **teacher["args"]))
    student_params = count_params(create_model(name, **args))
    require(student_params < teacher_params, f"--student {name} has {student_params:,} parameters, not fewer than "
            f"the teacher's {teacher_params:,}; a student must be smaller")
    return name, args


def make_student(ctx, source: Path, out: Path) -> dict:
    """Train the student of the model in `source` into the model directory `out`."""
    from ..artifact import read_manifest
    from . import train_variant

    teacher = read_manifest(source)
    name, args = student_spec(teacher["architecture"], ctx.config.student)
    epochs = ctx.config.distill_epochs or teacher["recipe"]["epochs"]
    record = {"method": "distill", "student": name, "teacher_params": teacher["params"], "epochs": epochs}
    return train_variant(ctx, source, out, name, args, record, epochs=epochs)
