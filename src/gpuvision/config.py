"""One typed dataclass of settings per command; --config files and CLI flags fill them; saved in the manifest."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from .errors import UserError, require


@dataclass
class TrainConfig:
    """Settings of `gpuvision train`. None means: chosen automatically (from the data, model or device)."""

    data: str = "digits"
    model: str = "auto"  # fastnet up to 64 px, resnet18 above
    model_args: dict = field(default_factory=dict)  # extra architecture arguments, e.g. {"widths": [32, 64, 64]}
    recipe: str = "auto"  # fast for fastnet, standard for the others
    recipe_args: dict = field(default_factory=dict)  # recipe settings beyond epochs/batch size/lr (see its dataclass)
    epochs: float | None = None  # may be fractional (9.9)
    batch_size: int | None = None
    lr: float | None = None  # in the recipe's own units (see its settings)
    optimizer: str | None = None  # sgd or muon; None: the recipe's choice
    image_size: int | None = None  # None: the most common size in the data
    device: str = "auto"
    precision: str = "auto"
    compile: str = "auto"  # auto: on for CUDA, off on the CPU (first compile costs 10-35 s there)
    loader: str = "auto"  # device: the decoded set lives on the device; stream: batches copied from pinned host
    # memory ahead of use; auto: device when the set fits in half the free device memory
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2  # used when the source has no test part of its own
    eval_every: int = 1  # epochs between validation passes; 0: only at the end
    checkpoint_every: int = 1  # epochs between checkpoints; 0: none
    pretrained: str | None = None
    out: str | None = None  # default runs/<data name>-<timestamp>
    overwrite: bool = False
    resume: bool = False
    strict: bool = False

    def validate(self) -> TrainConfig:
        require(self.epochs is None or self.epochs > 0, f"--epochs must be positive, got {self.epochs}")
        require(self.batch_size is None or self.batch_size > 0, f"--batch-size must be positive, got {self.batch_size}")
        require(self.lr is None or self.lr > 0, f"--lr must be positive, got {self.lr}")
        require(self.compile in ("auto", "on", "off"), f"--compile must be auto, on or off, got {self.compile!r}")
        require(self.loader in ("auto", "device", "stream"), f"--loader must be auto, device or stream: {self.loader}")
        require(self.eval_every >= 0 and self.checkpoint_every >= 0, "--eval-every/--checkpoint-every must be >= 0")
        require(not (self.resume and self.overwrite), "--resume and --overwrite contradict each other; pick one")
        return self


@dataclass
class EvaluateConfig:
    """Settings of `gpuvision evaluate`."""

    model_dir: str
    data: str | None = None  # default: the source recorded in the manifest
    split: str = "test"  # test, val or all
    tta: bool | None = None  # None: the recipe's choice, recorded in the manifest
    plot: bool = True  # draw the confusion-matrix PNG (matplotlib costs about 2 s)


@dataclass
class PredictConfig:
    """Settings of `gpuvision predict`."""

    model_dir: str
    images: list[str]
    top_k: int = 1


def read_config_file(path: str, config_type=TrainConfig) -> dict:
    """The settings in a YAML or JSON file, as a dict of known field names (dashes or underscores)."""
    p = Path(path)
    require(p.is_file(), f"--config {path}: no such file")
    text = p.read_text()
    try:
        if p.suffix.lower() == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except Exception as e:  # both parsers raise their own error types
        raise UserError(f"--config {path}: not valid YAML/JSON ({str(e).splitlines()[0]})") from e
    require(isinstance(raw, dict), f"--config {path}: expected a mapping of setting: value")
    names = {f.name for f in fields(config_type)}
    settings = {k.replace("-", "_"): v for k, v in raw.items()}
    unknown = sorted(set(settings) - names)
    require(not unknown, f"--config {path}: unknown setting(s) {', '.join(unknown)}")
    return settings


@dataclass
class CompressConfig:
    """Settings of `gpuvision compress`: which methods to run on a model directory, and how to measure them."""

    model_dir: str
    data: str  # training images for calibration and fine-tuning, and the test split for accuracy
    method: str = "all"  # prune, int8, distill or all (each, plus prune+int8 and distill+int8)
    target_sparsity: float = 0.5  # fraction of parameters pruning removes (0.5 halves the count)
    student: str | None = None  # registered model name; None: the teacher's architecture at half width
    finetune_epochs: float = 2.0  # epochs of fine-tuning (with the parent as teacher) after pruning; 0: none
    distill_epochs: float | None = None  # epochs of student training; None: the parent's
    calibration_images: int = 512  # training images that calibrate int8 activation ranges
    out: str | None = None  # default <model_dir>-compressed
    overwrite: bool = False
    compile: bool = True  # also measure inductor (torch.compile) runtimes; off saves minutes of compiling
    device: str = "cpu"  # where fine-tuning and distillation train
    latency_repeats: int = 30  # timed runs per measurement (after warm-up); median and p90 are reported
    seed: int | None = None  # None: the parent's seed

    def validate(self) -> CompressConfig:
        require(self.method in ("prune", "int8", "distill", "all"),
                f"--method must be prune, int8, distill or all, got {self.method!r}")
        require(0 < self.target_sparsity < 1, f"--target-sparsity must be in (0, 1), got {self.target_sparsity}")
        require(self.finetune_epochs >= 0, f"--finetune-epochs must be >= 0, got {self.finetune_epochs}")
        require(self.distill_epochs is None or self.distill_epochs > 0, "--distill-epochs must be positive")
        require(self.calibration_images > 0, "--calibration-images must be positive")
        require(self.latency_repeats > 0, "--latency-repeats must be positive")
        return self


@dataclass
class ExportConfig:
    """Settings of `gpuvision export`."""

    model_dir: str
    format: str = "onnx"  # onnx or pt2
    out: str | None = None  # default <model_dir>/export/model.<onnx|pt2>
    opset: int | None = None  # ONNX opset; None: the exporter's default
    dynamic_batch: bool = True
    data: str | None = None  # images for the parity check; default: the model's recorded test split
    parity_images: int = 1000  # test images compared with PyTorch; 0: all
    atol: float = 1e-4  # largest allowed absolute logit difference (fp32)
    min_agreement: float = 0.999  # smallest allowed top-1 agreement (near-ties may flip)

    def validate(self) -> ExportConfig:
        require(self.format in ("onnx", "pt2"), f"--format must be onnx or pt2, got {self.format!r}")
        require(self.opset is None or 13 <= self.opset <= 30, f"--opset must be between 13 and 30, got {self.opset}")
        require(self.parity_images >= 0, f"--parity-images must be >= 0, got {self.parity_images}")
        return self
