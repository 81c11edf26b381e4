"""The Trainer: setup / train / save_checkpoint / save_model / cleanup, configured by a TrainConfig and a recipe.

Launch (one GPU or the CPU):   gpuvision train --data DATA [--epochs E] [--out DIR]
From Python:                   gpuvision.train(data="digits", epochs=5, out="runs/digits")

The loop keeps its running loss and accuracy on the device and reads them to the host only at logging points
(epoch ends, plus a few points per epoch when a progress callback is listening), so a GPU is never stalled per step.
A run holds an OS lock on its directory; a loss or weights that stop being finite end it with a clear error,
keeping the last good checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path

import torch

from ..artifact import (
    WEIGHT_FILES,
    Inference,
    Manifest,
    SplitRecord,
    Training,
    library_versions,
    save_weights,
    write_manifest,
)
from ..attacks import AdversarialTraining
from ..config import Access, TrainConfig
from ..data import load_images, make_split
from ..data.input_spec import InputSpec
from ..data.loader import DeviceLoader, StreamingLoader
from ..data.split import save_split, stratified_sample
from ..device import autocast, pick_device
from ..device.acceleration import SETTINGS as ACCELERATION_SETTINGS
from ..device.acceleration import resolve as resolve_acceleration
from ..errors import BadInput, UserError, require
from ..files import atomic_write
from ..models import count_params, create_model, default_model, load_pretrained, model_spec
from ..runtime import EagerRuntime
from ..runtime.reference import reference_figures
from . import run_dir
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .recipes import create_recipe, default_recipe
from .selection import BestEpoch
from .step import TrainStep

SPLIT_FILE = "split.json"
METRICS_FILE = "metrics.jsonl"
STATS_IMAGES = 10_000  # training images that set the input normalisation
DATA_INIT_IMAGES = 5_000  # of those, the ones a model's data-dependent initialisation sees (fastnet's whitening)
LOGS_PER_EPOCH = 4  # logging points per epoch when a progress callback listens (each is one device sync)

Event = Callable[..., None]
Finalize = Callable[[Manifest, Path], Manifest]


@dataclass
class TrainResult:
    """Where the model went and how training ended."""

    model_dir: Path
    manifest: Manifest
    seconds: float
    history: list[dict]  # one record per epoch, as in metrics.jsonl


class Trainer:
    """Trains one model from a TrainConfig; `run()` does all phases. `finalize` may complete the manifest before
    it is written (compress records what it did there)."""

    def __init__(self, config: TrainConfig, on_event: Event | None = None, finalize: Finalize | None = None,
                 access: Access | None = None):
        self.config = replace(config).validate()
        self.access = access  # how model directories the recipe reads (a distillation teacher) are opened
        self.emit = on_event or (lambda *a, **k: None)
        self.listening = on_event is not None
        self.finalize = finalize
        self.lock: run_dir.RunLock | None = None

    # --------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Data, split, model, loaders, optimizer; restores the checkpoint when resuming. Writes nothing until
        everything that can fail on bad input has run, so a refused run leaves no directory behind."""
        cfg = self.config
        cfg.data = run_dir.absolute_data(cfg.data)
        if cfg.resume:
            cfg = self._open_resume()
        self.device = pick_device(cfg.device)
        self.images = load_images(cfg.data, cfg.image_size, strict=cfg.strict,
                                  max_decoded_bytes=cfg.max_decoded_bytes)
        if cfg.resume:
            require(self.images.fingerprint == self.checkpoint["fingerprint"],
                    f"--resume: {cfg.data} changed since the run started, so its split (and test images) would "
                    "change; restore the data or start a new run", BadInput)
        else:
            cfg.out = cfg.out or str(run_dir.default_out(self.images.name))
            run_dir.check_out(Path(cfg.out), cfg.data, cfg.overwrite)
        self.out = Path(cfg.out)
        self.split = make_split(self.images, cfg.val_fraction, cfg.test_fraction, cfg.seed)
        self._build_model()
        train_bytes = len(self.split.train) * self.images.images[:1].nbytes
        self.acceleration = resolve_acceleration(self.device, model=self.architecture["name"], data_bytes=train_bytes,
                                                 **{k: getattr(cfg, k) for k in ACCELERATION_SETTINGS})
        self.precision, self.compiled = self.acceleration.precision, self.acceleration.compile
        self.model.to(self.device, memory_format=self.acceleration.memory_format)
        self._build_loaders()
        self.steps_per_epoch = len(self.train_loader)
        self.total_steps = math.ceil(self.recipe.settings.epochs * self.steps_per_epoch)
        spec = model_spec(self.architecture["name"])
        if spec.data_init and not cfg.pretrained:  # given weights are kept as they are
            sample = torch.from_numpy(self.images.images[self.stats_sample[:DATA_INIT_IMAGES]]).to(self.device)
            spec.data_init(self.model, self.train_loader.normalise(sample))
        self.adversarial = AdversarialTraining.for_run(cfg, self.images, self.split, self.spec, self.device,
                                                       self.acceleration) if cfg.adversarial else None
        self.train_step = TrainStep.create(self.model, self.recipe, self.device, self.acceleration, spec,
                                           perturb=self.adversarial)
        self.optimizer, self.scaler = self.train_step.optimizer, self.train_step.scaler
        self.step, self.epoch, self.history = 0, 0, []
        self.best = self._best_epoch()
        if cfg.resume:
            self._restore(self.checkpoint)
        else:
            self.lock = run_dir.RunLock(self.out)
            self.lock.acquire()
            run_dir.check_out(self.out, cfg.data, cfg.overwrite)  # again: another run may have finished meanwhile
            run_dir.start(self.out)
            save_split(self.out / SPLIT_FILE, self.images, self.split, cfg.seed)
        s = self.recipe.settings
        self.emit("setup", device=str(self.device), precision=self.precision, model=self.architecture["name"],
                  acceleration=self.acceleration.to_json(),
                  recipe=self.recipe.name, compiled=self.compiled, streaming=self.streaming,
                  params=count_params(self.model), split=self.split.sizes(), epochs=s.epochs,
                  batch_size=s.batch_size, steps=self.total_steps, out=str(self.out), skipped=len(self.images.skipped),
                  val_source=self.split.val_source, test_source=self.split.test_source)

    def _best_epoch(self) -> BestEpoch | None:
        """What keeps the best epoch's weights (--keep-best, --early-stop), or None. Adversarial training keeps its
        best robust epoch wherever it validates, as the papers do (robust overfitting; catastrophic overfitting)."""
        cfg = self.config
        robust = bool(cfg.adversarial and len(self.split.val) and cfg.eval_every)
        if not (cfg.keep_best or cfg.early_stop or robust):
            return None
        flag = "--early-stop" if cfg.early_stop else "--keep-best"
        require(len(self.split.val) > 0, f"{flag} needs a validation split: give --val-fraction above 0 (or a val/ "
                "folder)", BadInput)
        require(cfg.eval_every > 0, f"{flag} compares validation passes: give --eval-every 1 (or more)", BadInput)
        return BestEpoch("val_robust_accuracy" if cfg.adversarial else "val_accuracy", cfg.early_stop)

    def _open_resume(self) -> TrainConfig:
        """Lock the run directory, read its last checkpoint and take the run's own settings from it."""
        require(self.config.out, "--resume needs --out DIR: the run directory to continue", BadInput)
        out = Path(self.config.out)
        require(out.is_dir() and latest_checkpoint(out / "checkpoints") is not None,
                f"--resume: nothing to resume in {out} (no checkpoint); drop --resume to start", BadInput)
        self.lock = run_dir.RunLock(out)
        self.lock.acquire()
        self.checkpoint = load_checkpoint(latest_checkpoint(out / "checkpoints"))
        self.config = run_dir.resumed_config(self.config, self.checkpoint["config"])
        return self.config

    def _build_model(self) -> None:
        cfg = self.config
        _, channels, height, width = self.images.images.shape
        self.image_side = max(height, width)
        name = default_model(self.image_side) if cfg.model == "auto" else cfg.model
        self.recipe = create_recipe(default_recipe(name) if cfg.recipe == "auto" else cfg.recipe,
                                    epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, optimizer=cfg.optimizer,
                                    **cfg.recipe_args)
        self.recipe.access = self.access
        self.recipe.resolve(len(self.split.train), self.image_side, fine_tune=bool(cfg.pretrained))
        args = {"num_classes": len(self.images.classes), "in_channels": channels, "image_size": self.image_side,
                **cfg.model_args}
        # Initialisation draws from the global generator (torch.nn.init has no other): seed it for this call only.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            try:
                self.model = create_model(name, **args)
            except TypeError as e:
                raise BadInput(f"model_args {cfg.model_args} do not fit a {name} ({e})") from e
        self.architecture = {"name": name, "args": args}
        if cfg.pretrained:
            load_pretrained(self.model, cfg.pretrained)

    def _build_loaders(self) -> None:
        """The decoded set goes to the device once (or streams from host memory); the input normalisation comes
        from a seeded draw of training images in proportion to the classes (a class-sorted source would otherwise
        give the first class's statistics)."""
        cfg, batch_size = self.config, self.recipe.settings.batch_size
        images, labels = torch.from_numpy(self.images.images), torch.from_numpy(self.images.labels)
        train_idx, val_idx = torch.from_numpy(self.split.train), torch.from_numpy(self.split.val)
        self.stats_sample = stratified_sample(self.images.labels, self.split.train, STATS_IMAGES, cfg.seed)
        self.spec = InputSpec.from_images(images[torch.from_numpy(self.stats_sample)])
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        augment = self.recipe.augment(self.image_side)
        layout = {"channels_last": self.acceleration.channels_last}
        drop_last = self.recipe.settings.drop_last
        self.streaming = self.acceleration.loader == "stream"
        if self.streaming:
            self.train_loader = StreamingLoader(images[train_idx], labels[train_idx], batch_size, self.spec,
                                                self.device, augment, self.generator, drop_last=drop_last, **layout)
            self.val_loader = StreamingLoader(images[val_idx], labels[val_idx], 1000, self.spec, self.device,
                                              **layout)
            return
        images, labels = images.to(self.device), labels.to(self.device)
        train_idx, val_idx = train_idx.to(self.device), val_idx.to(self.device)
        self.train_loader = DeviceLoader(images[train_idx], labels[train_idx], batch_size, self.spec, augment,
                                         self.generator, drop_last=drop_last, **layout)
        self.val_loader = DeviceLoader(images[val_idx], labels[val_idx], 1000, self.spec, **layout)

    # --------------------------------------------------------------------------------------------- train
    def train(self) -> None:
        cfg, recipe, model = self.config, self.recipe, self.model
        model.train()
        while self.step < self.total_steps:
            record = self._train_epoch()
            last = self.step >= self.total_steps
            if len(self.val_loader.labels) and ((cfg.eval_every and self.epoch % cfg.eval_every == 0) or last):
                record["val_loss"], record["val_accuracy"] = self.validate()
                self._require_finite(record["val_loss"], "the validation loss")
                if self.adversarial:
                    record["val_robust_accuracy"] = self.adversarial.robust_accuracy(model)
            stop = self.best is not None and self.best.observe(record, model, recipe)
            self.history.append(record)
            with open(self.out / METRICS_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")
            self.emit("epoch_end", **record, total_steps=self.total_steps)
            if stop:
                self.emit("early_stop", epoch=self.epoch, best_epoch=self.best.epoch, metric=self.best.metric,
                          value=self.best.value)
                break
            if cfg.checkpoint_every and self.epoch % cfg.checkpoint_every == 0 and not last:
                self.save_checkpoint()
        if self.best is not None:
            self.best.restore(model, recipe)
        recipe.finish(model)
        self._require_finite(float(sum(p.float().abs().sum() for p in model.state_dict().values()
                                       if p.is_floating_point())), "the final weights")

    def _train_epoch(self) -> dict:
        """One epoch of steps; its record (loss, accuracy, lr, speed), read from the device once at its end."""
        recipe, model = self.recipe, self.model
        recipe.on_epoch(model, self.epoch, recipe.settings.epochs)
        steps_this_epoch = min(self.steps_per_epoch, self.total_steps - self.step)
        self.emit("epoch_start", epoch=self.epoch, steps=steps_this_epoch, total_steps=self.total_steps,
                  done_steps=self.step)
        log_every = max(1, steps_this_epoch // LOGS_PER_EPOCH)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen, started = 0, time.perf_counter()
        waited = getattr(self.train_loader, "wait_seconds", 0.0)
        for i, (x, y) in enumerate(self.train_loader.epoch(self.epoch)):
            if self.step >= self.total_steps:
                break
            loss, logits = self.train_step(x, y, self.step, self.total_steps)
            self.step += 1
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
        self._require_finite(record["train_loss"], "the training loss")
        record["images_per_s"] = seen / record["seconds"]
        if self.streaming:
            record["data_wait_share"] = (self.train_loader.wait_seconds - waited) / record["seconds"]
        return record

    def _require_finite(self, value: float, what: str) -> None:
        if not math.isfinite(value):
            last = latest_checkpoint(self.out / "checkpoints")
            kept = f"the last good checkpoint is {last}" if last else "no checkpoint was saved"
            raise UserError(f"training diverged at epoch {self.epoch}: {what} is not finite; lower --lr and start "
                            f"again with --overwrite ({kept})")

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        """Loss and accuracy on the validation split (no TTA), leaving the model in training mode."""
        self.model.eval()
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        loss = torch.zeros((), device=self.device)
        with autocast(self.device, self.precision):
            for x, y in self.val_loader.epoch():
                logits = self.model(x).float()
                loss += torch.nn.functional.cross_entropy(logits, y, reduction="sum")
                correct += (logits.argmax(1) == y).sum()
        self.model.train()
        n = len(self.val_loader.labels)
        return loss.item() / n, correct.item() / n

    # --------------------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        state = {
            "config": asdict(self.config), "fingerprint": self.images.fingerprint, "epoch": self.epoch,
            "step": self.step, "history": self.history, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "recipe": self.recipe.state_tensors(),
            "rng": {"loader": self.train_loader.state(),
                    **({"attack": self.adversarial.state()} if self.adversarial else {})},
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "best": self.best.state() if self.best else None,
        }
        path = save_checkpoint(self.out / "checkpoints", self.epoch, state)
        self.emit("checkpoint", path=str(path), epoch=self.epoch)
        return path

    def _restore(self, state: dict) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.recipe.load_state_tensors(state["recipe"])
            self.train_loader.set_state(state["rng"]["loader"])
            if self.adversarial:
                self.adversarial.load_state(state["rng"]["attack"])
            if self.scaler and state["scaler"]:
                self.scaler.load_state_dict(state["scaler"])
            if self.best and state.get("best"):
                self.best.load_state(state["best"])
            self.epoch, self.step, self.history = int(state["epoch"]), int(state["step"]), list(state["history"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise UserError(f"--resume: the checkpoint in {self.out} does not fit this run ({type(e).__name__}); "
                            "start again with --overwrite") from e
        # metrics.jsonl keeps exactly the epochs the checkpoint has seen
        lines = [json.dumps(r) + "\n" for r in self.history]
        atomic_write(self.out / METRICS_FILE, lambda p: Path(p).write_text("".join(lines)))

    # --------------------------------------------------------------------------------------------- model directory
    def reference(self) -> dict:
        """The test-split figures serving compares production with: accuracy (no TTA), confidence, brightness."""
        runtime = EagerRuntime(self.model, self.spec, self.images.classes, 0, self.device, self.precision)
        pixels, labels = self.images.images[self.split.test], self.images.labels[self.split.test]
        return reference_figures(runtime.logits(pixels), labels, pixels)

    def save_model(self) -> Manifest:
        """Write the weights, then manifest.json (last, vouching for every file), then drop the checkpoints."""
        cfg = self.config
        weights = WEIGHT_FILES["safetensors"]
        save_weights(self.out / weights, self.model)
        final = self.history[-1] if self.history else {}
        if self.best and self.best.epoch is not None:  # the weights are the best epoch's: so are the figures
            final = {**next(r for r in self.history if r["epoch"] == self.best.epoch),
                     "selected_by": f"best {self.best.metric}"}
        manifest = Manifest(
            format="safetensors", weights=weights, architecture=self.architecture, classes=self.images.classes,
            input=self.spec,
            split=SplitRecord(file=SPLIT_FILE, source=self.images.source, source_fingerprint=self.images.fingerprint,
                              sizes=self.split.sizes(), skipped=len(self.images.skipped),
                              val_source=self.split.val_source, test_source=self.split.test_source),
            inference=Inference("eager", self.precision),
            training=Training(str(self.device), self.precision, 1, self.compiled, self.acceleration.to_json()),
            tta_level=self.recipe.settings.tta_level, reference=self.reference(), seed=cfg.seed,
            adversarial=self.adversarial.record() if self.adversarial else None,
            settings=asdict(cfg), recipe=self.recipe.describe(), params=count_params(self.model),
            metrics={k: final[k] for k in ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                                           "val_robust_accuracy", "selected_by") if k in final},
            versions=library_versions(), created=datetime.now().astimezone().isoformat(timespec="seconds"))
        if self.finalize:
            manifest = self.finalize(manifest, self.out)
        files = [weights, SPLIT_FILE, METRICS_FILE]
        if cfg.keep_checkpoints:
            files += sorted(p.relative_to(self.out).as_posix() for p in (self.out / "checkpoints").rglob("*")
                            if p.is_file())
        manifest = write_manifest(self.out, manifest, files)
        if not cfg.keep_checkpoints:
            import shutil

            shutil.rmtree(self.out / "checkpoints", ignore_errors=True)
        run_dir.finish(self.out)
        return manifest

    def cleanup(self) -> None:
        """Release the run directory's lock and the device memory the run held."""
        if self.lock:
            self.lock.release()
        for name in ("train_loader", "val_loader", "optimizer", "train_step"):
            self.__dict__.pop(name, None)
        if getattr(self, "device", None) is not None and self.device.type == "cuda":
            torch.cuda.empty_cache()

    def run(self) -> TrainResult:
        started = time.perf_counter()
        try:
            self.setup()
            with self.acceleration.scope(self.device):
                self.train()
            manifest = self.save_model()
        finally:
            self.cleanup()
        result = TrainResult(self.out, manifest, time.perf_counter() - started, list(self.history))
        self.emit("done", model_dir=str(self.out), seconds=result.seconds)
        return result


def train(config: TrainConfig | None = None, on_event: Event | None = None, finalize: Finalize | None = None,
          access: Access | None = None, **settings) -> TrainResult:
    """Train a model: `gpuvision.train(data="digits", epochs=5)`; settings are TrainConfig fields; `access` opens a
    model directory the recipe reads (the distill recipe's teacher: see `ModelDir.open`)."""
    config = replace(config or TrainConfig(), **settings)
    return Trainer(config, on_event, finalize, access).run()


__all__ = ["Event", "Trainer", "TrainResult", "train"]
