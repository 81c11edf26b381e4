"""The Trainer: setup / train / save_checkpoint / save_model / cleanup, configured by a TrainConfig and a recipe.

Launch (one GPU or the CPU):   gpuvision train --data DATA [--epochs E] [--out DIR]
From Python:                   gpuvision.train(data="digits", epochs=5, out="runs/digits")

The loop keeps its running loss and accuracy on the device and reads them to the host only at logging points
(epoch ends, plus a few points per epoch when a progress callback is listening), so a GPU is never stalled per step.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path

import torch

from ..artifact import WEIGHTS, library_versions, save_weights, write_manifest
from ..config import TrainConfig
from ..data import load_images, make_split
from ..data.loader import DeviceLoader, StreamingLoader
from ..data.split import save_split, stratified_sample
from ..device import autocast, pick_device, pick_precision
from ..errors import require
from ..models import count_params, create_model, default_model, load_pretrained, model_spec
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .recipes import create_recipe, default_recipe

SPLIT_FILE = "split.json"
METRICS_FILE = "metrics.jsonl"
STATS_IMAGES = 10_000  # training images that set the input normalisation
DATA_INIT_IMAGES = 5_000  # of those, the ones a model's data-dependent initialisation sees (fastnet's whitening)
LOGS_PER_EPOCH = 4  # logging points per epoch when a progress callback listens (each is one device sync)

Event = Callable[..., None]


@dataclass
class TrainResult:
    """Where the model went and how training ended."""

    model_dir: Path
    manifest: dict
    seconds: float


def _default_out(data_name: str) -> Path:
    return Path("runs") / f"{data_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _prepare_out(config: TrainConfig) -> None:
    out = Path(config.out)
    if config.resume:
        ckpt = latest_checkpoint(out / "checkpoints") if out.is_dir() else None
        require(ckpt is not None, f"--resume: nothing to resume in {out} (no checkpoint); drop --resume to start")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        require(config.overwrite, f"--out {out} exists and is not empty; add --overwrite to replace it or --resume")


def _should_stream(choice: str, train_images: torch.Tensor, device: torch.device) -> bool:
    """auto: stream only from host to a CUDA device that the training images would fill more than half of."""
    if choice != "auto":
        return choice == "stream"
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return train_images.numel() > free // 2


class Trainer:
    """Trains one model from a TrainConfig; `run()` does all phases."""

    def __init__(self, config: TrainConfig, on_event: Event | None = None):
        self.config = config.validate()
        self.emit = on_event or (lambda *a, **k: None)
        self.listening = on_event is not None

    # --------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Data, split, model, loaders, optimizer; restores the checkpoint when resuming. Writes nothing until
        everything that can fail on bad input has run, so a refused run leaves no directory behind."""
        cfg = self.config
        if cfg.resume:
            require(cfg.out, "--resume needs --out DIR: the run directory to continue")
            _prepare_out(cfg)
            self.checkpoint = load_checkpoint(latest_checkpoint(Path(cfg.out) / "checkpoints"))
            cfg = self.config = replace(TrainConfig(**self.checkpoint["config"]), out=cfg.out, resume=True)
        self.device = pick_device(cfg.device)
        self.precision = pick_precision(cfg.precision, self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels once
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        self.images = load_images(cfg.data, cfg.image_size, strict=cfg.strict)
        if not cfg.resume:
            cfg.out = cfg.out or str(_default_out(self.images.name))
            _prepare_out(cfg)
        self.out = Path(cfg.out)
        self.split = make_split(self.images, cfg.val_fraction, cfg.test_fraction, cfg.seed)
        self._build_model()
        self._build_loaders()
        self.steps_per_epoch = len(self.train_loader)
        self.total_steps = math.ceil(self.recipe.settings.epochs * self.steps_per_epoch)
        spec = model_spec(self.architecture["name"])
        if spec.data_init and not cfg.pretrained:  # given weights are kept as they are
            sample = torch.from_numpy(self.images.images[self.stats_sample[:DATA_INIT_IMAGES]]).to(self.device)
            spec.data_init(self.model, self.train_loader.normalise(sample))
        self.recipe.prepare(self.model)
        self.optimizer = self.recipe.optimizer(self.model, self.device, spec)
        for group in self.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.compiled = cfg.compile == "on" or (cfg.compile == "auto" and self.device.type == "cuda")
        # dynamic=False: the epoch's last, smaller batch gets its own static graph instead of turning every
        # later step into a slower dynamic-shape one.
        self.forward = torch.compile(self.model, dynamic=False) if self.compiled else self.model
        self.step, self.epoch, self.history = 0, 0, []
        if cfg.resume:
            self._restore(self.checkpoint)
        else:
            if self.out.exists():
                shutil.rmtree(self.out)  # --overwrite, checked above; only now that the data and model are fine
            self.out.mkdir(parents=True)
            save_split(self.out / SPLIT_FILE, self.images, self.split, cfg.seed)
        s = self.recipe.settings
        self.emit("setup", device=str(self.device), precision=self.precision, model=self.architecture["name"],
                  recipe=self.recipe.name, compiled=self.compiled, streaming=self.streaming,
                  params=count_params(self.model), split=self.split.sizes(), epochs=s.epochs,
                  batch_size=s.batch_size, steps=self.total_steps, out=str(self.out), skipped=len(self.images.skipped))

    def _build_model(self) -> None:
        cfg = self.config
        _, channels, height, width = self.images.images.shape
        self.image_side = max(height, width)
        name = default_model(self.image_side) if cfg.model == "auto" else cfg.model
        self.recipe = create_recipe(default_recipe(name) if cfg.recipe == "auto" else cfg.recipe,
                                    epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, optimizer=cfg.optimizer,
                                    **cfg.recipe_args)
        self.recipe.resolve(len(self.split.train), self.image_side)
        torch.manual_seed(cfg.seed)
        args = {"num_classes": len(self.images.classes), "in_channels": channels, "image_size": self.image_side,
                **cfg.model_args}
        self.model = create_model(name, **args)
        self.architecture = {"name": name, "args": args}
        if cfg.pretrained:
            load_pretrained(self.model, cfg.pretrained)
        self.model.to(self.device, memory_format=torch.channels_last)

    def _build_loaders(self) -> None:
        """The decoded set goes to the device once (or streams from host memory); mean/std from training images."""
        cfg, batch_size = self.config, self.recipe.settings.batch_size
        images, labels = torch.from_numpy(self.images.images), torch.from_numpy(self.images.labels)
        train_idx, val_idx = torch.from_numpy(self.split.train), torch.from_numpy(self.split.val)
        # A seeded draw in proportion to the classes: sources sorted by class would otherwise give one class's mean.
        self.stats_sample = stratified_sample(self.images.labels, self.split.train, STATS_IMAGES, cfg.seed)
        sample = images[torch.from_numpy(self.stats_sample)].float()
        self.mean = sample.mean(dim=(0, 2, 3)).tolist()
        self.std = sample.std(dim=(0, 2, 3)).clamp_min(1.0).tolist()
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        augment = self.recipe.augment(self.image_side)
        self.streaming = _should_stream(cfg.loader, images[train_idx], self.device)
        if self.streaming:
            self.train_loader = StreamingLoader(images[train_idx], labels[train_idx], batch_size, self.mean,
                                                self.std, self.device, augment, self.generator)
            self.val_loader = StreamingLoader(images[val_idx], labels[val_idx], 1000, self.mean, self.std, self.device)
            return
        images, labels = images.to(self.device), labels.to(self.device)
        train_idx, val_idx = train_idx.to(self.device), val_idx.to(self.device)
        self.train_loader = DeviceLoader(images[train_idx], labels[train_idx], batch_size, self.mean, self.std,
                                         augment, self.generator, drop_last=self.recipe.settings.drop_last)
        self.val_loader = DeviceLoader(images[val_idx], labels[val_idx], 1000, self.mean, self.std)

    # --------------------------------------------------------------------------------------------- train
    def train(self) -> None:
        cfg, recipe, model = self.config, self.recipe, self.model
        epochs = recipe.settings.epochs
        model.train()
        while self.step < self.total_steps:
            recipe.on_epoch(model, self.epoch, epochs)
            steps_this_epoch = min(self.steps_per_epoch, self.total_steps - self.step)
            self.emit("epoch_start", epoch=self.epoch, steps=steps_this_epoch)
            log_every = max(1, steps_this_epoch // LOGS_PER_EPOCH)
            loss_sum = torch.zeros((), device=self.device)
            correct = torch.zeros((), device=self.device, dtype=torch.long)
            seen, started = 0, time.perf_counter()
            waited = getattr(self.train_loader, "wait_seconds", 0.0)
            for i, (x, y) in enumerate(self.train_loader.epoch(self.epoch)):
                if self.step >= self.total_steps:
                    break
                loss, logits = self._step(x, y)
                loss_sum += loss.detach().float() * (1 if recipe.loss_reduction == "sum" else len(y))
                correct += (logits.detach().argmax(1) == y).sum()
                seen += len(y)
                if self.listening:
                    self.emit("step", epoch=self.epoch, step=i + 1, images=seen, seconds=time.perf_counter() - started)
                    if (i + 1) % log_every == 0:  # a logging point: one sync
                        self.emit("log", loss=loss_sum.item() / seen, accuracy=correct.item() / seen)
            self.epoch += 1
            record = {"epoch": self.epoch, "step": self.step, "train_loss": loss_sum.item() / seen,
                      "train_accuracy": correct.item() / seen, "lr": self.optimizer.param_groups[-1]["lr"],
                      "seconds": time.perf_counter() - started}
            record["images_per_s"] = seen / record["seconds"]
            if self.streaming:
                record["data_wait_share"] = (self.train_loader.wait_seconds - waited) / record["seconds"]
            last = self.step >= self.total_steps
            if len(self.val_loader.labels) and ((cfg.eval_every and self.epoch % cfg.eval_every == 0) or last):
                record["val_accuracy"] = self.validate()
            self.history.append(record)
            with open(self.out / METRICS_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")
            self.emit("epoch_end", **record)
            if cfg.checkpoint_every and self.epoch % cfg.checkpoint_every == 0 and not last:
                self.save_checkpoint()
        recipe.finish(model)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        factor = self.recipe.lr_factor(self.step, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        with autocast(self.device, self.precision):
            logits = self.forward(x)
            loss = self.recipe.loss(logits.float(), y, x)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.step += 1
        self.recipe.after_step(self.model, self.step, self.total_steps)
        return loss, logits

    @torch.no_grad()
    def validate(self) -> float:
        """Accuracy on the validation split (no TTA), leaving the model in training mode."""
        self.model.eval()
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        with autocast(self.device, self.precision):
            for x, y in self.val_loader.epoch():
                correct += (self.model(x).argmax(1) == y).sum()
        self.model.train()
        return correct.item() / len(self.val_loader.labels)

    # --------------------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        state = {
            "config": asdict(self.config), "epoch": self.epoch, "step": self.step, "history": self.history,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "recipe": self.recipe.state_tensors(), "rng": {"loader": self.train_loader.state(),
                                                           "torch": torch.get_rng_state()},
            "scaler": self.scaler.state_dict() if self.scaler else None,
        }
        path = save_checkpoint(self.out / "checkpoints", self.epoch, state)
        self.emit("checkpoint", path=str(path), epoch=self.epoch)
        return path

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.recipe.load_state_tensors(state["recipe"])
        self.train_loader.set_state(state["rng"]["loader"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.history = state["epoch"], state["step"], state["history"]
        # metrics.jsonl keeps exactly the epochs the checkpoint has seen
        lines = [json.dumps(r) + "\n" for r in self.history]
        (self.out / METRICS_FILE).write_text("".join(lines))

    # --------------------------------------------------------------------------------------------- model directory
    def save_model(self) -> dict:
        """Write model.safetensors, then manifest.json (last, vouching for the weights and the split)."""
        save_weights(self.out / WEIGHTS, self.model)
        _, channels, height, width = self.images.images.shape
        final = self.history[-1] if self.history else {}
        manifest = {
            "format": "safetensors",
            "runtime": "eager",
            "architecture": self.architecture,
            "classes": self.images.classes,
            "input": {"size": [height, width], "channels": channels, "mean": self.mean, "std": self.std,
                      "value_range": [0, 255]},
            "tta_level": self.recipe.settings.tta_level,
            "split": {"file": SPLIT_FILE, "source": self.images.source, "source_fingerprint": self.images.fingerprint,
                      "sizes": self.split.sizes(), "skipped": len(self.images.skipped)},
            "seed": self.config.seed,
            "settings": asdict(self.config),
            "recipe": self.recipe.describe(),
            "device": str(self.device), "precision": self.precision, "compiled": self.compiled,
            "params": count_params(self.model),
            "metrics": {k: final[k] for k in ("train_loss", "train_accuracy", "val_accuracy") if k in final},
            "versions": library_versions(),
            "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        return write_manifest(self.out, manifest, [WEIGHTS, SPLIT_FILE])

    def cleanup(self) -> None:
        """Release the device memory the run held (the loaders' image copies, optimizer state)."""
        del self.train_loader, self.val_loader, self.optimizer, self.forward
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def run(self) -> TrainResult:
        started = time.perf_counter()
        self.setup()
        self.train()
        manifest = self.save_model()
        self.cleanup()
        result = TrainResult(self.out, manifest, time.perf_counter() - started)
        self.emit("done", model_dir=str(self.out), seconds=result.seconds)
        return result


def train(config: TrainConfig | None = None, on_event: Event | None = None, **settings) -> TrainResult:
    """Train a model: `gpuvision.train(data="digits", epochs=5)`; settings are TrainConfig fields."""
    config = replace(config or TrainConfig(), **settings)
    return Trainer(config, on_event).run()

