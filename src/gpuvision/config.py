"""One typed dataclass of settings per command; --config files and CLI flags fill them; saved in the manifest."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
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
    image_size: int | None = None  # None: the most common size in the data
    device: str = "auto"
    precision: str = "auto"
    compile: str = "auto"  # auto: on for CUDA, off on the CPU (first compile costs 10-35 s there)
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


def as_dict(config) -> dict:
    return asdict(config)
