"""The Trainer: setup / train / save_checkpoint / save_model / cleanup, configured by a TrainConfig and a recipe.

Launch (one GPU or the CPU):   gpuvision train --data DATA [--epochs E] [--out DIR]
Several processes:             gpuvision train --nproc 4 ...   or   torchrun --nproc-per-node 4 -m gpuvision train ...
From Python:                   gpuvision.train(data="digits", epochs=5, out="runs/digits")

The loop keeps its running loss and accuracy on the device and reads them to the host only at logging points
(epoch ends, plus a few points per epoch when a progress callback is listening), so a GPU is never stalled per step.
On several processes (train/distributed.py) each holds its block of the data and takes its part of every global
batch; gradients, validation and test figures are summed over all of them; only rank 0 writes the run directory.
A run holds an OS lock on its directory; a step whose gradients are not finite is skipped (counted; more than
--max-nonfinite end the run), and weights that stop being finite end it with a clear error, keeping the last good
checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path

import torch

from ..artifact import (
    MANIFEST,
    WEIGHT_FILES,
    Calibration,
    Inference,
    Manifest,
    Reference,
    SplitRecord,
    Training,
    library_versions,
    save_weights,
    write_manifest,
)
from ..attacks import AdversarialTraining
from ..config import Access, Cadence, TrainConfig
from ..data import load_images, make_split
from ..data.limits import env_bytes, parse_bytes
from ..data.loader import Shard
from ..data.split import save_split, stratified_sample
from ..device import Acceleration, autocast, pick_device
from ..device.acceleration import SETTINGS as ACCELERATION_SETTINGS
from ..device.acceleration import resolve as resolve_acceleration
from ..device.acceleration import workload
from ..errors import BadInput, UserError, require
from ..files import atomic_write
from ..models import count_params, create_model, default_model, load_pretrained, model_spec
from ..models.pretrained import load_backbone
from ..plots import training_curves
from ..runtime import EagerRuntime
from ..runtime.calibration import fit_on
from ..runtime.reference import reference_figures
from . import distributed, run_dir
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .loaders import build_loaders
from .recipes import create_recipe, default_recipe
from .selection import BestEpoch
from .sizing import RunEstimate, plan_inputs
from .step import TrainStep

log = logging.getLogger(__name__)

SPLIT_FILE = "split.json"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"  # loss and accuracy per epoch
CALIBRATION_IMAGES = 5_000  # validation images the temperature is fitted on (one scalar: plenty)
DATA_INIT_IMAGES = 5_000  # of those, the ones a model's data-dependent initialisation sees (fastnet's whitening)
LOGS_PER_EPOCH = 4  # logging points per epoch when a progress callback listens (each is one device sync)
SYNC_BN_BELOW = 32  # sync_bn auto: batch norm over the global batch when a process's share is smaller than this

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
        self.world = distributed.world_from_env()
        self.listening = on_event is not None and self.world.main  # only rank 0 reports
        self.emit = on_event if self.listening else (lambda *a, **k: None)
        self.finalize = finalize
        self.lock: run_dir.RunLock | None = None
        self.owns_group = False

    # --------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Data, split, model, loaders, optimizer; restores the checkpoint when resuming. Writes nothing until
        everything that can fail on bad input has run, so a refused run leaves no directory behind."""
        cfg = self.config
        cfg.data = run_dir.absolute_data(cfg.data)
        if self.world.restarts and not cfg.resume:  # torchrun restarted the workers: carry on from where they were
            found = bool(cfg.out) and latest_checkpoint(Path(cfg.out) / "checkpoints") is not None
            cfg.resume, cfg.overwrite = found, not found
            if self.world.main:
                log.warning("torchrun restarted the workers (restart %d): %s", self.world.restarts,
                            "resuming from the last checkpoint" if found else "no checkpoint yet, starting again")
        if cfg.resume:
            cfg = self._open_resume()
        self.device = pick_device(distributed.device_request(self.world, cfg.device))
        # the size goes into the settings, so that evaluate and --resume decode alike
        self.pretrained, cfg.image_size, self.size_rule = plan_inputs(cfg, self.device)
        self.owns_group = self.world.distributed and not torch.distributed.is_initialized()
        distributed.start(self.world, self.device)
        self._load_data()
        if not cfg.resume:
            cfg.out = distributed.broadcast(cfg.out or str(run_dir.default_out(self.images.name)), self.device)
            if self.world.main:
                run_dir.check_out(Path(cfg.out), cfg.data, cfg.overwrite)
        self.out = Path(cfg.out)
        self.split = make_split(self.images, cfg.val_fraction, cfg.test_fraction, cfg.seed)
        self._build_model()
        self.acceleration = self._resolve_acceleration()
        self.precision, self.compiled = self.acceleration.precision, self.acceleration.compile
        self.model.to(self.device, memory_format=self.acceleration.memory_format)
        stats = (self.pretrained.mean, self.pretrained.std) if self.pretrained and self.pretrained.from_hub else None
        loaders = build_loaders(self.images, self.split, self.recipe, self.image_side, self.acceleration, self.device,
                                self.world, cfg.seed, stats)
        self.train_loader, self.val_loader, self.spec = loaders.train, loaders.val, loaders.spec
        self.stats_sample, self.generator = loaders.stats_sample, loaders.generator
        self.streaming = self.acceleration.loader == "stream"
        self.steps_per_epoch = len(self.train_loader)
        self.total_steps = math.ceil(self.recipe.settings.epochs * self.steps_per_epoch)
        spec = model_spec(self.architecture["name"])
        if spec.data_init and not cfg.pretrained:  # given weights are kept as they are
            sample = torch.from_numpy(self.images.images[self.stats_sample[:DATA_INIT_IMAGES]]).to(self.device)
            spec.data_init(self.model, self.train_loader.normalise(sample))
        self.synced_norms = self._sync_norms()
        self.adversarial = AdversarialTraining.for_run(cfg, self.images, self.split, self.spec, self.device,
                                                       self.acceleration) if cfg.adversarial else None
        self.train_step = TrainStep.create(self.model, self.recipe, self.device, self.acceleration, spec,
                                           world_size=self.world.size, accumulate=cfg.grad_accum,
                                           synced_norms=self.synced_norms, ddp=self.world.distributed,
                                           perturb=self.adversarial)
        self.optimizer, self.scaler = self.train_step.optimizer, self.train_step.scaler
        self.cadence = Cadence.parse(cfg.checkpoint_every)
        self.step, self.epoch, self.history, self.in_epoch = 0, 0, [], None
        self.best = self._best_epoch()
        if cfg.resume:
            self._restore(self.checkpoint)
        elif self.world.main:
            self.lock = run_dir.RunLock(self.out)
            self.lock.acquire()
            run_dir.check_out(self.out, cfg.data, cfg.overwrite)  # again: another run may have finished meanwhile
            run_dir.start(self.out)
            save_split(self.out / SPLIT_FILE, self.images, self.split, cfg.seed)
        distributed.barrier()  # no process starts before rank 0 has made the run directory
        self.estimate = RunEstimate(self.device, self.total_steps - self.step, self.image_side) \
            if self.listening else None
        s = self.recipe.settings
        self.emit("setup", device=str(self.device), precision=self.precision, model=self.architecture["name"],
                  acceleration=self.acceleration.to_json(), world_size=self.world.size,
                  recipe=self.recipe.name, compiled=self.compiled, streaming=self.streaming,
                  params=count_params(self.model), split=self.split.sizes(), epochs=s.epochs,
                  batch_size=s.batch_size, steps=self.total_steps, out=str(self.out), skipped=len(self.images.skipped),
                  val_source=self.split.val_source, test_source=self.split.test_source,
                  image_size=list(self.spec.size), size_rule=self.size_rule,
                  pretrained=self.pretrained.describe() if self.pretrained else None)

    def _resolve_acceleration(self) -> Acceleration:
        """The speed settings, resolved by rank 0 (from its measurements) and used alike by every process."""
        cfg = self.config
        train_bytes = len(self.split.train) * self.images.images[:1].nbytes // self.world.size
        resident = parse_bytes(cfg.max_decoded_bytes, "--max-decoded-bytes") if cfg.max_decoded_bytes else \
            env_bytes("GPUVISION_MAX_DECODED_BYTES")
        resolved = resolve_acceleration(self.device, model=workload(self.architecture["name"], self.image_side),
                                        data_bytes=train_bytes, resident_bytes=resident,
                                        **{k: getattr(cfg, k) for k in ACCELERATION_SETTINGS})
        return Acceleration(**distributed.broadcast(resolved.to_json(), self.device))

    def _load_data(self) -> None:
        """Decode (or read the cache): rank 0 first, so the others read what it cached instead of decoding too."""
        cfg = self.config
        for turn in (True, False):
            if self.world.main == turn:
                hub = self.pretrained is not None and self.pretrained.from_hub
                self.images = load_images(cfg.data, cfg.image_size, channels=3 if hub else None, strict=cfg.strict,
                                          max_decoded_bytes=cfg.max_decoded_bytes)
            if turn:
                distributed.barrier()
        if cfg.resume:
            require(self.images.fingerprint == self.checkpoint["fingerprint"],
                    f"--resume: {cfg.data} changed since the run started, so its split (and test images) would "
                    "change; restore the data or start a new run", BadInput)

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

    def _sync_norms(self) -> bool:
        """Batch norm over the global batch (--sync-bn), where a process's share of a batch is small."""
        cfg, world = self.config, self.world
        share = self.recipe.settings.batch_size / world.size / cfg.grad_accum
        require(share >= 1, f"a batch of {self.recipe.settings.batch_size} cannot be split into {world.size} "
                f"processes x {cfg.grad_accum} micro-batches; raise --batch-size", BadInput)
        synced = world.distributed and (cfg.sync_bn == "on" or (cfg.sync_bn == "auto" and share < SYNC_BN_BELOW))
        if synced:
            distributed.sync_batch_norm(self.model)
        return synced

    def _open_resume(self) -> TrainConfig:
        """Lock the run directory (rank 0), read its last checkpoint and take the run's own settings from it."""
        require(self.config.out, "--resume needs --out DIR: the run directory to continue", BadInput)
        out = Path(self.config.out)
        require(out.is_dir() and latest_checkpoint(out / "checkpoints") is not None,
                f"--resume: nothing to resume in {out} (no checkpoint); drop --resume to start", BadInput)
        if self.world.main:
            self.lock = run_dir.RunLock(out)
            self.lock.acquire()
        self.checkpoint = load_checkpoint(latest_checkpoint(out / "checkpoints"))
        self.config = run_dir.resumed_config(self.config, self.checkpoint["config"])
        return self.config

    def _build_model(self) -> None:
        cfg = self.config
        _, channels, height, width = self.images.images.shape
        self.image_side = max(height, width)
        hub = self.pretrained.architecture if self.pretrained else None
        name = hub or (default_model(self.image_side) if cfg.model == "auto" else cfg.model)
        self.recipe = create_recipe(default_recipe(name) if cfg.recipe == "auto" else cfg.recipe,
                                    epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, optimizer=cfg.optimizer,
                                    **cfg.recipe_args)
        self.recipe.access = self.access
        self.recipe.resolve(len(self.split.train), self.image_side, fine_tune=bool(cfg.pretrained))
        args = {"num_classes": len(self.images.classes), "in_channels": channels, "image_size": self.image_side,
                **({"small_stem": False} if hub else {}), **cfg.model_args}  # hub weights have ImageNet's stem
        # Initialisation draws from the global generator (torch.nn.init has no other): seed it for this call only.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            try:
                self.model = create_model(name, **args)
            except TypeError as e:
                raise BadInput(f"model_args {cfg.model_args} do not fit a {name} ({e})") from e
        self.architecture = {"name": name, "args": args}
        if hub:
            self.architecture["weights"] = self.pretrained.describe()
            load_backbone(self.model, self.pretrained, model_spec(name).head(self.model))
        elif cfg.pretrained:
            load_pretrained(self.model, cfg.pretrained, cfg.pretrained_partial)

    # --------------------------------------------------------------------------------------------- train
    def train(self) -> None:
        cfg, recipe, model = self.config, self.recipe, self.model
        model.train()
        self.saved_at = time.monotonic()
        while self.step < self.total_steps:
            record = self._train_epoch()
            last = self.step >= self.total_steps
            if self.split.val.size and ((cfg.eval_every and self.epoch % cfg.eval_every == 0) or last):
                record["val_loss"], record["val_accuracy"] = self.validate()
                self._require_finite(record["val_loss"], "the validation loss")
                if self.adversarial:
                    record["val_robust_accuracy"] = self.adversarial.robust_accuracy(model)
            stop = self.best is not None and self.best.observe(record, model, recipe)
            self.history.append(record)
            if self.world.main:
                with open(self.out / METRICS_FILE, "a") as f:
                    f.write(json.dumps(record) + "\n")
            self.emit("epoch_end", **record, total_steps=self.total_steps)
            if stop:
                self.emit("early_stop", epoch=self.epoch, best_epoch=self.best.epoch, metric=self.best.metric,
                          value=self.best.value)
                break
            if self.cadence.at_epoch_end(self.epoch) and not last:
                self.save_checkpoint()
        if self.best is not None:
            self.best.restore(model, recipe)
        recipe.finish(model)
        self._require_finite(self._weights_sum(), "the final weights")

    def _train_epoch(self) -> dict:
        """One epoch of steps (the rest of one, after a mid-epoch checkpoint); its record (loss, accuracy, lr,
        speed) summed over the processes and read from the device once at its end."""
        recipe, model, loader = self.recipe, self.model, self.train_loader
        resumed = self.in_epoch or {"steps": 0}
        self.in_epoch, self.epoch_start = None, {k: v.clone() for k, v in loader.state().items()}
        recipe.on_epoch(model, self.epoch, recipe.settings.epochs)
        steps_this_epoch = min(self.steps_per_epoch, self.total_steps - self.step + resumed["steps"])
        self.emit("epoch_start", epoch=self.epoch, steps=steps_this_epoch, total_steps=self.total_steps,
                  done_steps=self.step - resumed["steps"])
        log_every = max(1, steps_this_epoch // LOGS_PER_EPOCH)
        loss_sum = torch.tensor(float(resumed.get("loss_sum", 0.0)), device=self.device)
        correct = torch.tensor(int(resumed.get("correct", 0)), device=self.device)
        seen, nonfinite_before = int(resumed.get("seen", 0)), int(self.train_step.nonfinite)
        counted = torch.tensor(float(seen), device=self.device)  # images of the steps that were not skipped
        started = time.perf_counter() - float(resumed.get("seconds", 0.0))
        waited = getattr(loader, "wait_seconds", 0.0)
        for i, (x, y) in enumerate(loader.epoch(self.epoch, skip=resumed["steps"]), start=resumed["steps"]):
            if self.step >= self.total_steps:
                break
            loss, logits = self.train_step(x, y, self.step, self.total_steps, loader.global_size(i))
            self.step += 1
            if self.estimate and (estimate := self.estimate.after_step()):
                self.emit("estimate", **estimate)
            finite = torch.isfinite(loss.detach())  # a skipped step's loss is left out of the epoch's figures
            images = 1 if recipe.loss_reduction == "sum" else len(y)  # the loss as a sum over the step's images
            loss_sum += torch.where(finite, loss.detach().float(), 0) * images
            correct += (logits.detach().argmax(1) == y).sum() * finite
            counted += finite * len(y)
            seen += len(y)
            if self.listening:
                self.emit("step", epoch=self.epoch, step=i + 1, images=seen * self.world.size,
                          seconds=time.perf_counter() - started)
                if (i + 1) % log_every == 0:  # a logging point: one sync
                    counts = max(counted.item(), 1)
                    self.emit("log", loss=loss_sum.item() / counts, accuracy=correct.item() / counts)
            if self.cadence.within_epoch(self.step, self.saved_at) and self.step < self.total_steps:
                self.save_checkpoint(in_epoch={"steps": i + 1, **self._partial(loss_sum, correct, seen, started)})
        self.epoch += 1
        loss_sum, correct, counted, images = distributed.all_sum(
            loss_sum, correct.double(), counted, torch.tensor(float(seen), device=self.device))
        counts = max(float(counted), 1.0)
        record = {"epoch": self.epoch, "step": self.step, "train_loss": float(loss_sum) / counts,
                  "train_accuracy": float(correct) / counts, "lr": self.optimizer.param_groups[-1]["lr"],
                  "seconds": time.perf_counter() - started}
        record["images_per_s"] = float(images) / record["seconds"]
        record["nonfinite_steps"] = int(self.train_step.nonfinite) - nonfinite_before
        if record["nonfinite_steps"]:
            self._check_nonfinite()
        self._require_finite(record["train_loss"], "the training loss")
        if self.streaming:
            record["data_wait_share"] = (loader.wait_seconds - waited) / record["seconds"]
        return record

    def _partial(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, started: float) -> dict:
        """An epoch's figures so far, for a mid-epoch checkpoint; one process's alone say nothing of the others'
        (and a resumed run may have another number of processes), so on several they start again after resuming."""
        if self.world.size > 1:
            return {}
        return {"loss_sum": loss_sum.item(), "correct": int(correct.item()), "seen": seen,
                "seconds": time.perf_counter() - started}

    def _check_nonfinite(self) -> None:
        count = int(self.train_step.nonfinite)
        log.warning("%d training step(s) so far had gradients that are not finite and were skipped", count)
        if count > self.config.max_nonfinite:
            last = latest_checkpoint(self.out / "checkpoints")
            kept = f"the last good checkpoint is {last}" if last else "no checkpoint was saved"
            raise UserError(f"training diverged at epoch {self.epoch}: {count} steps had non-finite gradients and were "
                            f"skipped (more than --max-nonfinite {self.config.max_nonfinite}); lower --lr, or use fp32 "
                            f"({kept})")

    def _weights_sum(self) -> float:
        return float(sum(p.float().abs().sum() for p in self.model.state_dict().values() if p.is_floating_point()))

    def _require_finite(self, value: float, what: str) -> None:
        if not math.isfinite(value):
            last = latest_checkpoint(self.out / "checkpoints")
            kept = f"the last good checkpoint is {last}" if last else "no checkpoint was saved"
            raise UserError(f"training diverged at epoch {self.epoch}: {what} is not finite; lower --lr and start "
                            f"again with --overwrite ({kept})")

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        """Loss and accuracy on the validation split (no TTA, every process its block, summed), leaving the model
        in training mode."""
        self.model.eval()
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        loss = torch.zeros((), device=self.device)
        with autocast(self.device, self.precision):
            for x, y in self.val_loader.epoch():
                logits = self.model(x).float()
                loss += torch.nn.functional.cross_entropy(logits, y, reduction="sum")
                correct += (logits.argmax(1) == y).sum()
        self.model.train()
        loss, correct = distributed.all_sum(loss.double(), correct.double())
        n = len(self.split.val)
        return float(loss) / n, float(correct) / n

    # --------------------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, in_epoch: dict | None = None) -> Path | None:
        """Rank 0 writes the run's state: at an epoch's end, or `in_epoch` (steps done and figures so far) within
        one, with the loader's state at that epoch's start so a resumed run replays the rest of it exactly."""
        self.saved_at = time.monotonic()
        if not self.world.main:
            return None
        self._require_finite(self._weights_sum(), "the weights")  # a checkpoint is always a good one
        state = {
            "config": asdict(self.config), "fingerprint": self.images.fingerprint, "epoch": self.epoch,
            "step": self.step, "history": self.history, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "recipe": self.recipe.state_tensors(),
            "rng": {"loader": self.epoch_start if in_epoch else self.train_loader.state(),
                    **({"attack": self.adversarial.state()} if self.adversarial else {})}, "in_epoch": in_epoch,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "best": self.best.state() if self.best else None, "world_size": self.world.size,
        }
        path = save_checkpoint(self.out / "checkpoints", self.epoch, self.step, state)
        self.emit("checkpoint", path=str(path), epoch=self.epoch, step=self.step)
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
            self.in_epoch = state.get("in_epoch")
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise UserError(f"--resume: the checkpoint in {self.out} does not fit this run ({type(e).__name__}); "
                            "start again with --overwrite") from e
        if self.world.main:  # metrics.jsonl keeps exactly the epochs the checkpoint has seen
            lines = [json.dumps(r) + "\n" for r in self.history]
            atomic_write(self.out / METRICS_FILE, lambda p: Path(p).write_text("".join(lines)))

    # --------------------------------------------------------------------------------------------- model directory
    def reference(self) -> Reference | None:
        """The test-split figures serving compares production with: accuracy (no TTA), confidence, brightness;
        every process scores its block of the test split, rank 0 computes the figures from all of them."""
        runtime = EagerRuntime(self.model, self.spec, self.images.classes, 0, self.device, self.precision)
        block = Shard.of(len(self.split.test), self.world.rank, self.world.size)
        mine = self.split.test[block.start : block.stop]
        logits = distributed.all_rows(runtime.logits(self.images.images[mine]).to(self.device)).cpu()
        pixels, labels = self.images.images[self.split.test], self.images.labels[self.split.test]
        return reference_figures(logits, labels, pixels, runtime=runtime.name) if self.world.main else None

    def calibrate(self) -> Calibration | None:
        """Temperature scaling fitted on the validation split (runtime/calibration.py), with and without TTA."""
        runtime = EagerRuntime(self.model, self.spec, self.images.classes, self.recipe.settings.tta_level,
                               self.device, self.precision)
        val = stratified_sample(self.images.labels, self.split.val, CALIBRATION_IMAGES, self.config.seed)
        calibration = fit_on(runtime, self.images.images[val], self.images.labels[val])
        if calibration:
            self.emit("calibrated", **asdict(calibration))
        return calibration

    def save_model(self) -> Manifest:
        """Write the weights, then manifest.json (last, vouching for every file), then drop the checkpoints (rank 0;
        the other processes wait for it and read what it wrote)."""
        cfg = self.config
        reference = self.reference()  # every process takes part
        if not self.world.main:
            distributed.barrier()
            return Manifest.from_dict(json.loads((self.out / MANIFEST).read_text()))
        weights = WEIGHT_FILES["safetensors"]
        save_weights(self.out / weights, self.model)
        final = self.history[-1] if self.history else {}
        if self.best and self.best.epoch is not None:  # the weights are the best epoch's: so are the figures
            final = {**next(r for r in self.history if r["epoch"] == self.best.epoch),
                     "selected_by": f"best {self.best.metric}"}
        training_curves(self.history, self.out / CURVES_FILE, self.best.epoch if self.best else None,
                        f"{self.architecture['name']} on {self.images.name}")
        manifest = Manifest(
            format="safetensors", weights=weights, architecture=self.architecture, classes=self.images.classes,
            input=self.spec,
            split=SplitRecord(file=SPLIT_FILE, source=self.images.source, source_fingerprint=self.images.fingerprint,
                              sizes=self.split.sizes(), skipped=len(self.images.skipped),
                              val_source=self.split.val_source, test_source=self.split.test_source),
            inference=Inference("eager", self.precision),
            training=Training(str(self.device), self.precision, self.world.size, self.compiled,
                              self.acceleration.to_json()),
            tta_level=self.recipe.settings.tta_level, reference=reference, calibration=self.calibrate(),
            seed=cfg.seed,
            adversarial=self.adversarial.record() if self.adversarial else None,
            settings=asdict(cfg), recipe=self.recipe.describe(), params=count_params(self.model),
            metrics={k: final[k] for k in ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                                           "val_robust_accuracy", "selected_by") if k in final},
            versions=library_versions(), created=datetime.now().astimezone().isoformat(timespec="seconds"))
        if self.finalize:
            manifest = self.finalize(manifest, self.out)
        files = [weights, SPLIT_FILE, METRICS_FILE, CURVES_FILE]
        if cfg.keep_checkpoints:
            files += sorted(p.relative_to(self.out).as_posix() for p in (self.out / "checkpoints").rglob("*")
                            if p.is_file())
        manifest = write_manifest(self.out, manifest, files)
        if not cfg.keep_checkpoints:
            import shutil

            shutil.rmtree(self.out / "checkpoints", ignore_errors=True)
        run_dir.finish(self.out)
        distributed.barrier()
        return manifest

    def cleanup(self) -> None:
        """Release the run directory's lock, the device memory the run held and the process group it joined."""
        if self.lock:
            self.lock.release()
        for name in ("train_loader", "val_loader", "optimizer", "train_step"):
            self.__dict__.pop(name, None)
        if getattr(self, "device", None) is not None and self.device.type == "cuda":
            torch.cuda.empty_cache()
        if self.owns_group:
            distributed.stop()

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
          access: Access | None = None, verbose: bool = True, **settings) -> TrainResult:
    """Train a model: `gpuvision.train(data="digits", epochs=5)`; settings are TrainConfig fields; `access` opens a
    model directory the recipe reads (the distill recipe's teacher: see `ModelDir.open`).

    Progress goes to stderr as on the command line (bars on a terminal, a line at most every 30 s otherwise),
    unless `verbose=False` or an `on_event(event, **info)` callback takes the events instead."""
    config = replace(config or TrainConfig(), **settings)
    if on_event is None and verbose:
        from ..progress import TrainProgress

        with TrainProgress() as progress:
            return Trainer(config, progress, finalize, access).run()
    return Trainer(config, on_event, finalize, access).run()


__all__ = ["Event", "Trainer", "TrainResult", "train"]
