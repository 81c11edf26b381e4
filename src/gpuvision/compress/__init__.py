"""Compression: prune, int8, distill (and chains of them), each result a regular model directory, plus a report.

    gpuvision compress runs/cifar --data cifar10-jpeg.tar.gz --method all --out runs/cifar-small
    gpuvision.compress.compress(CompressConfig("runs/cifar", data="...", method="prune"))

Output: one model directory per variant (`prune/`, `int8/`, `distill/`, `prune-int8/`, `distill-int8/`) and
report.json, report.md and report.png comparing the original with every variant (see report.py). Each variant is
measured before its manifest is written, so its manifest records the fastest backend and precision for this
machine (`inference`) and what was done from which parent (`compression`), and is never rewritten. Every variant
keeps the parent's test split: fine-tuning and distillation train on the parent's training images only.

The variants of an encrypted model are encrypted with its data key (unless --plaintext): each is made in a private
directory in memory (/dev/shm, where onnxruntime's and the Trainer's intermediate files go too) and stored
encrypted, and nothing is compiled with inductor, which would cache the weights on disk.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..artifact import Manifest, ModelDir, check_outside_models, draft, library_versions, write_manifest
from ..config import Access, CompressConfig
from ..data import ImageSet, Split, load_images
from ..data.input_spec import normalise
from ..data.split import load_split, recorded_split
from ..errors import BadInput, Unsupported, UserError, require
from ..files import OutputLock, empty_dir, memory_workspace
from ..protect import encrypt_dir
from ..registry import Registry
from ..runtime import build_network
from ..runtime.reference import reference_figures

Event = Callable[..., None]
METHODS: Registry[Callable] = Registry("compression method")
# What --method runs, in order; "a+b" applies b to the result of a.
PLANS = {"prune": ["prune"], "int8": ["int8"], "distill": ["distill"],
         "all": ["prune", "int8", "distill", "prune+int8", "distill+int8"]}
MARKER = ".gpuvision-compress"  # marks an output directory compress is writing (or wrote: report.json)
log = logging.getLogger(__name__)


@dataclass
class Context:
    """What every method shares: the settings, the parent, its images and split, the rows measured so far, and
    the access options the parent was opened with (a teacher is opened with them again)."""

    config: CompressConfig
    parent: ModelDir
    images: ImageSet
    split: Split
    emit: Event = field(default=lambda *a, **k: None)
    rows: dict[str, dict] = field(default_factory=dict)
    access: Access | None = None

    @property
    def test_images(self) -> np.ndarray:
        return self.images.images[self.split.test]

    @property
    def test_labels(self) -> np.ndarray:
        return self.images.labels[self.split.test]

    def calibration_images(self) -> np.ndarray:
        """A seeded random sample of the training split (never test images)."""
        rng = np.random.default_rng(self.parent.manifest.seed)
        take = rng.permutation(self.split.train)[: self.config.calibration_images]
        return self.images.images[np.sort(take)]

    def inputs(self, images: np.ndarray, manifest: Manifest) -> torch.Tensor:
        """uint8 images as the model with this manifest takes them (fp32, contiguous)."""
        return normalise(images, manifest.input)


# ------------------------------------------------------------------------------------------ variants
def flops_of(net: torch.nn.Module, example: torch.Tensor) -> int:
    """Floating-point operations of one forward pass per image (a multiply-add counts two)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(example[:1])
    return int(counter.get_total_flops())


def finish_variant(ctx: Context, parent: ModelDir, out: Path, manifest: Manifest, record: dict,
                   files: list[str]) -> Manifest:
    """Complete a variant's manifest (lineage, versions), measure it on this machine, record the fastest runtime
    as its inference setting, and return it ready to write (its files and the split are already in `out`)."""
    from .report import measure

    split_file = parent.manifest.split.file
    if not (out / split_file).exists():  # the parent's split goes along, so evaluate finds the same images
        (out / split_file).write_bytes(parent.read(split_file))
    lineage = (parent.manifest.compression or {}).get("steps", [])
    manifest = replace(manifest, compression={**record, "parent": str(parent.path), "parent_version": parent.version,
                                              "steps": [*lineage, record["method"]],
                                              "original": str(ctx.parent.path)},
                       versions=library_versions(), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       encryption=None)  # made in plaintext from the parent's manifest; encrypted (or not) later
    listed = list(dict.fromkeys([*files, split_file]))
    row, inference, runtime = measure(ctx, out.name.replace("-", "+"), draft(out, manifest, listed))
    ctx.rows[row["name"]] = row
    # The parent's reference (or, for a trained variant, its training precision's) is not this variant's: measure
    # it again on the same test split, without TTA, on the runtime its manifest will name (what evaluate runs).
    reference = reference_figures(runtime.logits(ctx.test_images), ctx.test_labels, ctx.test_images,
                                  runtime=runtime.name)
    return replace(manifest, inference=inference, reference=reference)


def write_variant(ctx: Context, parent: ModelDir, out: Path, manifest: Manifest, record: dict,
                  files: list[str]) -> Manifest:
    return write_manifest(out, finish_variant(ctx, parent, out, manifest, record, files), [*files,
                          parent.manifest.split.file])


def train_variant(ctx: Context, source: ModelDir, out: Path, name: str, args: dict, record: dict, epochs: float,
                  pretrained: str | None = None) -> Manifest:
    """Train `name(args)` into `out` with the regular Trainer and the distill recipe (the source as teacher), on
    the parent's own split (same data, fractions and seed); its manifest is completed before it is written."""
    from ..train.recipes import default_recipe
    from ..train.trainer import train

    parent = ctx.parent.manifest
    settings = parent.settings
    teacher_recipe = source.manifest.recipe
    base = teacher_recipe.get("base", teacher_recipe.get("name", "fast")) \
        if name == parent.architecture["name"] else default_recipe(name)
    extra = {k: v for k, v in args.items() if k not in ("num_classes", "in_channels", "image_size")}

    def finalize(manifest: Manifest, directory: Path) -> Manifest:
        split = load_split(directory / manifest.split.file, ctx.images)
        if set(split.test.tolist()) != set(ctx.split.test.tolist()):
            raise RuntimeError(f"{out}: training drew another test split than the parent's")
        return finish_variant(ctx, source, directory, manifest, record, [manifest.weights, "metrics.jsonl"])

    result = train(data=ctx.config.data, model=name, model_args=extra, recipe="distill",
                   recipe_args={"teacher": str(source.path), "base": base}, epochs=epochs,
                   image_size=settings.get("image_size"), val_fraction=settings.get("val_fraction", 0.1),
                   test_fraction=settings.get("test_fraction", 0.2),
                   seed=ctx.config.seed if ctx.config.seed is not None else parent.seed, device=ctx.config.device,
                   compile="off", eval_every=0, checkpoint_every=0, pretrained=pretrained,
                   strict=settings.get("strict", False), out=str(out), finalize=finalize, access=ctx.access,
                   on_event=lambda event, **info: ctx.emit("train", stage=out.name, train_event=event, **info))
    return result.manifest


@METHODS.register("prune")
def _prune(ctx: Context, source: ModelDir, out: Path) -> Manifest:
    from .prune import make_pruned

    return make_pruned(ctx, source, out)


@METHODS.register("int8")
def _int8(ctx: Context, source: ModelDir, out: Path) -> Manifest:
    from .quantize import make_int8

    return make_int8(ctx, source, out)


@METHODS.register("distill")
def _distill(ctx: Context, source: ModelDir, out: Path) -> Manifest:
    from .distill import make_student

    return make_student(ctx, source, out)


# ------------------------------------------------------------------------------------------ checks and command
def _check_applicable(config: CompressConfig, manifest: Manifest) -> None:
    """Refuse, before anything is written, methods that cannot apply to this model."""
    require(manifest.format == "safetensors", f"{config.model_dir} is a {manifest.format} model "
            f"({manifest.inference.name}); compress a PyTorch (safetensors) model directory, e.g. the one `train` "
            "wrote", Unsupported)
    steps = {step for plan in PLANS[config.method] for step in plan.split("+")}
    if "prune" in steps:
        from .prune import check_prunable

        check_prunable(manifest.architecture["name"])
    if "distill" in steps:
        from .distill import student_spec

        student_spec(manifest.architecture, config.student)


def _load_data(config: CompressConfig, model_dir: ModelDir) -> tuple[ImageSet, Split]:
    m = model_dir.manifest
    images = load_images(config.data, m.input.size, channels=m.input.channels)
    require(images.classes == m.classes, f"--data {config.data}: its classes ({', '.join(images.classes)}) are not "
            f"the model's ({', '.join(m.classes)}); give the data the model was trained on", BadInput)
    return images, recorded_split(model_dir, images)


def _out_dir(config: CompressConfig) -> Path:
    out = Path(config.out) if config.out else Path(f"{str(config.model_dir).rstrip('/')}-compressed")
    require(not out.is_file(), f"--out {out} is a file; give a directory", BadInput)
    if out.is_dir() and any(out.iterdir()):
        require(config.overwrite, f"--out {out} exists and is not empty; add --overwrite to replace it", BadInput)
        require((out / "report.json").is_file() or (out / MARKER).is_file(), f"--out {out} is not a directory "
                "compress wrote; --overwrite replaces only those: choose another --out", BadInput)
    check_outside_models(out)  # the parent's own directory too
    return out


def compress(config: CompressConfig, on_event: Event | None = None, access: Access | None = None) -> dict:
    """Run the methods of `config.method` on a model directory, measure everything, write the report; returns it.
    A failure removes the output directory again: no half-made variants are left. `access`: the signature and data
    key options the parent is opened with (see `ModelDir.open`)."""
    config.validate()
    parent = ModelDir.open(config.model_dir, access)
    require(config.method in PLANS, f"--method must be one of {', '.join(PLANS)}, got {config.method!r}", BadInput)
    _check_applicable(config, parent.manifest)
    out = _out_dir(config)
    parent.verify()  # every file, and the weights load, before anything is written: a damaged model leaves nothing
    build_network(parent)
    images, split = _load_data(config, parent)
    secret = parent.encrypted and not config.plaintext
    if secret and config.compile:
        log.info("%s is encrypted: inductor runtimes are not measured (inductor caches weights on disk)", parent.path)
        config = replace(config, compile=False)
    emit = on_event or (lambda *a, **k: None)
    ctx = Context(config, parent, images, split, emit, access=access)
    with OutputLock(out):  # of two compress runs into one --out, the second is refused (never both deleted)
        _out_dir(config)  # again, under the lock: another run may have written it since
        try:
            empty_dir(out)  # --overwrite, checked above; only now that every input is known to be good
            (out / MARKER).touch()
        except OSError as e:
            raise UserError(f"--out {out}: cannot write there ({e.strerror})") from e
        return _compress(ctx, parent, out, secret, emit, replace(access or Access(), pubkey=None))


def _compress(ctx: Context, parent: ModelDir, out: Path, secret: bool, emit: Event, variant_access: Access) -> dict:
    """Make every variant into the locked `out` and write the report; a failure removes `out` again. Variants are
    opened again with the data key only (`variant_access`): they are not signed (sign them after compressing)."""
    from .report import measure_originals, write_report

    config = ctx.config
    try:
        dirs, seconds = {}, {}
        with memory_workspace() if secret else contextlib.nullcontext(out) as workspace:
            for step in PLANS[config.method]:
                *before, method = step.split("+")
                source = dirs[before[-1]] if before else parent
                target = out / step.replace("+", "-")
                emit("stage", stage=step, text=f"{step}: {method} of {source.path} -> {target}")
                started = time.perf_counter()
                METHODS.get(method)(ctx, source, workspace / target.name)
                if secret:  # made in memory, stored encrypted with the parent's key
                    encrypt_dir(ModelDir.open(workspace / target.name), target, parent.data_key)
                    ctx.rows[step]["dir"] = str(target)
                dirs[step], seconds[step] = ModelDir.open(target, variant_access), time.perf_counter() - started
        rows = measure_originals(ctx)
        for step in PLANS[config.method]:
            rows.append({**ctx.rows[step], "seconds_to_make": seconds[step]})
        report = {"schema_version": 1, "model_dir": str(parent.path), "data": config.data, "method": config.method,
                  "out": str(out), "settings": asdict(config), "variants": rows}
        write_report(out, report)
        (out / MARKER).unlink()
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return report
