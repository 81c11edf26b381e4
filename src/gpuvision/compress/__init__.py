"""Compression: prune, int8, distill (and chains of them), each result a regular model directory, plus a report.

    gpuvision compress runs/cifar --data cifar10-jpeg.tar.gz --method all --out runs/cifar-small
    gpuvision.compress.compress(CompressConfig("runs/cifar", data="...", method="prune"))

Output: one model directory per variant (`prune/`, `int8/`, `distill/`, `prune-int8/`, `distill-int8/`), whose
manifest says its format and runtime and records the parent and what was done; and report.json, report.md and
report.png comparing the original with every variant (see report.py). Every variant keeps the parent's test split:
fine-tuning and distillation train on the parent's training images only.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..artifact import WEIGHTS, library_versions, read_manifest, write_manifest
from ..config import CompressConfig
from ..data import ImageSet, Split, load_images, make_split
from ..data.split import load_split
from ..errors import require
from ..registry import Registry

Event = Callable[..., None]
METHODS: Registry[Callable] = Registry("compression method")
# What --method runs, in order; "a+b" applies b to the result of a.
PLANS = {"prune": ["prune"], "int8": ["int8"], "distill": ["distill"],
         "all": ["prune", "int8", "distill", "prune+int8", "distill+int8"]}


@dataclass
class Context:
    """What every method shares: the settings, the parent, its images and split, and the progress callback."""

    config: CompressConfig
    parent: Path
    manifest: dict
    images: ImageSet
    split: Split
    emit: Event = field(default=lambda *a, **k: None)

    @property
    def test_images(self) -> np.ndarray:
        return self.images.images[self.split.test]

    @property
    def test_labels(self) -> np.ndarray:
        return self.images.labels[self.split.test]

    def calibration_images(self) -> np.ndarray:
        """A seeded random sample of the training split (never test images)."""
        rng = np.random.default_rng(self.manifest.get("seed", 0))
        take = rng.permutation(self.split.train)[: self.config.calibration_images]
        return self.images.images[np.sort(take)]

    @staticmethod
    def normalised(images: np.ndarray, manifest: dict) -> torch.Tensor:
        """uint8 N x C x H x W images as the model with this manifest expects them (fp32, contiguous)."""
        inp = manifest["input"]
        mean = torch.tensor(inp["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(inp["std"]).view(1, -1, 1, 1)
        return ((torch.from_numpy(np.ascontiguousarray(images)).float() - mean) / std).contiguous()


# ------------------------------------------------------------------------------------------ variants
def flops_of(net: torch.nn.Module, example: torch.Tensor) -> int:
    """Floating-point operations of one forward pass per image (a multiply-add counts two)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(example[:1])
    return int(counter.get_total_flops())


def write_variant(ctx: Context, parent: Path, out: Path, base: dict, update: dict, record: dict,
                  files: list[str]) -> dict:
    """Finish the model directory `out`: manifest `base` changed by `update`, recording what was done and from
    which parent; the parent's split goes along (if training did not write it) so evaluate finds the same images."""
    parent_manifest = read_manifest(parent)
    split_file = parent_manifest["split"]["file"]
    if not (out / split_file).exists():
        shutil.copyfile(parent / split_file, out / split_file)
    lineage = parent_manifest.get("compression", {}).get("steps", [])
    manifest = {k: v for k, v in base.items() if k not in ("schema_version", "files", "compression")}
    manifest.update(update)
    if manifest.get("format") == "safetensors":
        manifest["runtime"] = update.get("runtime", "eager-fp32")
    # The parent's file hashes, not its manifest's: measuring may later record a faster runtime in that manifest.
    manifest["compression"] = {**record, "parent": str(parent), "parent_files": parent_manifest["files"],
                               "steps": [*lineage, record["method"]], "original": str(ctx.parent)}
    manifest["versions"] = library_versions()
    manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return write_manifest(out, manifest, [*files, split_file])


def train_variant(ctx: Context, source: Path, out: Path, name: str, args: dict, record: dict, epochs: float,
                  pretrained: str | None = None) -> dict:
    """Train `name(args)` into `out` with the regular Trainer and the distill recipe (the source as teacher), on
    the parent's own split (same data, fractions and seed), then record the compression in its manifest."""
    from ..train.recipes import default_recipe
    from ..train.trainer import train

    settings = ctx.manifest["settings"]
    teacher_recipe = read_manifest(source)["recipe"]
    base = teacher_recipe.get("base", teacher_recipe["name"]) if name == ctx.manifest["architecture"]["name"] \
        else default_recipe(name)
    extra = {k: v for k, v in args.items() if k not in ("num_classes", "in_channels", "image_size")}
    result = train(data=ctx.config.data, model=name, model_args=extra, recipe="distill",
                   recipe_args={"teacher": str(source), "base": base}, epochs=epochs,
                   image_size=settings.get("image_size"), val_fraction=settings["val_fraction"],
                   test_fraction=settings["test_fraction"], seed=ctx.config.seed if ctx.config.seed is not None
                   else ctx.manifest["seed"], device=ctx.config.device, compile="off", eval_every=0,
                   checkpoint_every=0, pretrained=pretrained, strict=settings.get("strict", False), out=str(out),
                   on_event=lambda event, **info: ctx.emit("train", stage=out.name, train_event=event, **info))
    test_keys = set(load_split(out / result.manifest["split"]["file"], ctx.images).test.tolist())
    if test_keys != set(ctx.split.test.tolist()):
        raise RuntimeError(f"{out}: training drew another test split than the parent's")
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return write_variant(ctx, source, out, result.manifest, {}, record, [WEIGHTS])


@METHODS.register("prune")
def _prune(ctx: Context, source: Path, out: Path) -> dict:
    from .prune import make_pruned

    return make_pruned(ctx, source, out)


@METHODS.register("int8")
def _int8(ctx: Context, source: Path, out: Path) -> dict:
    from .quantize import make_int8

    return make_int8(ctx, source, out)


@METHODS.register("distill")
def _distill(ctx: Context, source: Path, out: Path) -> dict:
    from .distill import make_student

    return make_student(ctx, source, out)


# ------------------------------------------------------------------------------------------ checks and command
def _check_applicable(config: CompressConfig, manifest: dict) -> None:
    """Refuse, before anything is written, methods that cannot apply to this model."""
    require(manifest.get("format", "safetensors") == "safetensors",
            f"{config.model_dir} is a {manifest.get('format')} model ({manifest.get('runtime')}); compress a PyTorch "
            "(safetensors) model directory, e.g. the one `train` wrote")
    steps = {step for plan in PLANS[config.method] for step in plan.split("+")}
    if "prune" in steps:
        from .prune import check_prunable

        check_prunable(manifest["architecture"]["name"])
    if "distill" in steps:
        from .distill import student_spec

        student_spec(manifest["architecture"], config.student)


def _load_data(config: CompressConfig, manifest: dict) -> tuple[ImageSet, Split]:
    inp = manifest["input"]
    images = load_images(config.data, tuple(inp["size"]), channels=inp["channels"])
    require(images.classes == manifest["classes"], f"--data {config.data}: its classes ({', '.join(images.classes)}) "
            f"are not the model's ({', '.join(manifest['classes'])}); give the data the model was trained on")
    if images.fingerprint == manifest["split"]["source_fingerprint"]:
        return images, load_split(Path(config.model_dir) / manifest["split"]["file"], images)
    settings = manifest["settings"]
    return images, make_split(images, settings["val_fraction"], settings["test_fraction"], manifest["seed"])


def _out_dir(config: CompressConfig) -> Path:
    out = Path(config.out) if config.out else Path(f"{str(config.model_dir).rstrip('/')}-compressed")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        require(config.overwrite, f"--out {out} exists and is not empty; add --overwrite to replace it")
    require(out.resolve() != Path(config.model_dir).resolve(), "--out must not be the model directory itself")
    return out


def compress(config: CompressConfig, on_event: Event | None = None) -> dict:
    """Run the methods of `config.method` on a model directory, measure everything, write the report; returns it."""
    from .report import measure_all, write_report

    config.validate()
    manifest = read_manifest(config.model_dir)
    _check_applicable(config, manifest)
    out = _out_dir(config)
    images, split = _load_data(config, manifest)
    emit = on_event or (lambda *a, **k: None)
    ctx = Context(config, Path(config.model_dir), manifest, images, split, emit)
    if out.exists():
        shutil.rmtree(out)  # --overwrite, checked above; only now that every input is known to be good
    out.mkdir(parents=True)
    dirs, seconds = {}, {}
    for step in PLANS[config.method]:
        *before, method = step.split("+")
        source = dirs[before[-1]] if before else ctx.parent
        target = out / step.replace("+", "-")
        emit("stage", stage=step, text=f"{step}: {method} of {source} -> {target}")
        started = time.perf_counter()
        METHODS.get(method)(ctx, source, target)
        dirs[step], seconds[step] = target, time.perf_counter() - started
    rows = measure_all(ctx, dirs, seconds)
    report = {"schema_version": 1, "model_dir": str(ctx.parent), "data": config.data, "method": config.method,
              "out": str(out), "settings": asdict(config), "variants": rows}
    write_report(out, report)
    return report
