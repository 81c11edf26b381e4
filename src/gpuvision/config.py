"""One typed dataclass of settings per command; --config files and CLI flags fill them; saved in the manifest.

Each field is declared with `setting(default, help, ...)`: the CLI builds its flags, defaults and choices from
these declarations (nothing restated there), and `validate()` checks every value against its declared type and
range, so a value from a flag, a config file or an old manifest is refused at the edge with one clear line.
"""

from __future__ import annotations

import json
import math
import re
import time
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from .errors import BadInput, NotFound, require

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed
CADENCE = re.compile(r"(\d+(?:\.\d+)?)(e|st|s)?")


@dataclass(frozen=True)
class Cadence:
    """How often a run checkpoints: every N epochs (`3e`, or a plain 3), steps (`500st`) or seconds (`600s`); 0
    never. A step or time cadence checkpoints within epochs, so a killed run loses at most that much work."""

    every: float
    unit: str  # "e", "st" or "s"

    @classmethod
    def parse(cls, value: str | int) -> Cadence:
        match = CADENCE.fullmatch(str(value).strip())
        require(match is not None, f"--checkpoint-every {value!r}: give N epochs (3 or 3e), steps (500st) or seconds "
                "(600s); 0 for none", BadInput)
        every, unit = float(match[1]), match[2] or "e"
        require(unit == "s" or every == int(every), f"--checkpoint-every {value}: epochs and steps are whole",
                BadInput)
        return cls(every, unit)

    def __str__(self) -> str:
        return f"{self.every:g}{self.unit}"

    def at_epoch_end(self, epoch: int) -> bool:
        return self.unit == "e" and self.every > 0 and epoch % max(int(self.every), 1) == 0

    def within_epoch(self, step: int, since: float) -> bool:
        """After global step `step`, `since` the monotonic time of the last checkpoint (or the run's start)."""
        if self.every <= 0 or self.unit == "e":
            return False
        return step % int(self.every) == 0 if self.unit == "st" else time.monotonic() - since >= self.every


def setting(default=MISSING, help: str = "", *, choices: tuple | str | None = None, low: float | None = None,
            high: float | None = None, low_open: bool = False, flag: bool = True, factory=None):
    """A config field: `help` for --help; `choices` a tuple or the name of a registry the CLI reads ("models",
    "recipes", "methods", "formats", "attacks"); `low`/`high` an inclusive range (`low_open`: low itself excluded);
    `flag=False` for settings given another way (positional arguments, config files only)."""
    meta = {"help": help, **bounds(low, high, low_open=low_open, choices=choices), "flag": flag}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def bounds(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           choices: tuple | str | None = None) -> dict:
    """The allowed values of a setting, as `check_value` reads them (see `setting`)."""
    return {"choices": choices, "low": low, "high": high, "low_open": low_open}


def pixel_fraction(value, flag: str) -> float:
    """An L-infinity radius or step as a fraction of the pixel range, written `8/255` or `0.0314` (a flag, a config
    file or a manifest): the one parser, so every command reads it alike."""
    text = str(value).strip()
    try:
        top, _, bottom = text.partition("/")
        fraction = float(top) / float(bottom) if bottom else float(top)
    except (ValueError, ZeroDivisionError):
        raise BadInput(f"{flag} must be a fraction of the pixel range such as 8/255 or 0.0314, got {text!r}") from None
    require(math.isfinite(fraction) and 0 < fraction <= 1, f"{flag} must be in (0, 1] (a fraction of the pixel "
            f"range, e.g. 8/255), got {text}", BadInput)
    return fraction


def _base_types(annotation) -> tuple[type, ...]:
    """The concrete types a field annotation admits (e.g. `float | None` -> (float, NoneType))."""
    hint = eval(annotation, vars(typing), {}) if isinstance(annotation, str) else annotation  # noqa: S307
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    return tuple(typing.get_origin(a) or a for a in args)


def field_types(config_type, name: str) -> tuple[type, ...]:
    return _base_types(next(f for f in fields(config_type) if f.name == name).type)


def check_value(config, f, flag: str | None = None, meta: dict | None = None) -> None:
    """One field of a dataclass against its annotated type and its bounds (`meta`, default: the field's own);
    `flag` names it in the error (default: its command-line flag)."""
    value, allowed = getattr(config, f.name), _base_types(f.type)
    flag = flag or f"--{f.name.replace('_', '-')}"
    if value is None:
        require(type(None) in allowed, f"{flag} needs a value", BadInput)
        return
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
        setattr(config, f.name, value)
    ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
    names = " or ".join(t.__name__ for t in allowed if t is not type(None))
    require(ok, f"{flag} must be {names}, got {value!r}", BadInput)
    meta = f.metadata if meta is None else meta
    if isinstance(value, float):
        require(math.isfinite(value), f"{flag} must be a finite number, got {value}", BadInput)
    if isinstance(value, int | float) and not isinstance(value, bool):
        low, high = meta.get("low"), meta.get("high")
        above = low is None or (value > low if meta.get("low_open") else value >= low)
        range_text = f"{'(' if meta.get('low_open') else '['}{low}, {high if high is not None else 'inf'}]"
        require(above and (high is None or value <= high), f"{flag} must be in {range_text}, got {value}", BadInput)
    choices = meta.get("choices")
    if isinstance(choices, tuple):
        require(value in choices, f"{flag} must be one of {', '.join(map(str, choices))}, got {value!r}", BadInput)


class Validated:
    """validate(): every field against its declared type, range and fixed choices."""

    def validate(self):
        for f in fields(self):
            check_value(self, f)
        return self


@dataclass
class TrainConfig(Validated):
    """Settings of `gpuvision train`. None means: chosen automatically (from the data, model or device)."""

    data: str = setting("digits", "digits, an image folder, a .tar/.tar.gz/.tgz/.zip of one, "
                        "cifar-10-python.tar.gz, or an IDX folder")
    model: str = setting("auto", "network: auto (fastnet up to 64 px, resnet18 above)", choices="models")
    model_args: dict = setting(help="extra architecture arguments, e.g. {widths: [32, 64, 64]}", flag=False,
                               factory=dict)
    recipe: str = setting("auto", "training recipe: auto (fast for fastnet, standard otherwise)", choices="recipes")
    recipe_args: dict = setting(help="recipe settings beyond epochs/batch size/lr (see its dataclass)", flag=False,
                                factory=dict)
    epochs: float | None = setting(None, "training epochs, fractions allowed (default: from the data size)", low=0,
                                   high=10_000, low_open=True)
    batch_size: int | None = setting(None, "images per step (default: from the data size)", low=1, high=1 << 16)
    lr: float | None = setting(None, "learning rate in the recipe's units (default: the recipe's)", low=0, high=1e6,
                               low_open=True)
    optimizer: str | None = setting(None, "sgd or muon (default: the recipe's)", choices=("sgd", "muon"))
    image_size: int | None = setting(None, "resize images to S x S (default: the most common size; photos over 64 "
                                     "px: 224 on CUDA, 128 elsewhere; hub weights: their size)", low=1, high=4096)
    device: str = setting("auto", "auto, cpu, cuda, cuda:N or mps")
    precision: str = setting("auto", "auto (bf16 where the device runs it fast), fp32, bf16 or fp16",
                             choices=("auto", "fp32", "bf16", "fp16"))
    # The acceleration settings (device/acceleration.py resolves each `auto`, with its reason, into the manifest).
    compile: str = setting("auto", "torch.compile: auto (on for CUDA, off on the CPU), on or off",
                           choices=("auto", "on", "off"))
    loader: str = setting("auto", "device (data set on the device), stream (from pinned host memory), or auto",
                          choices=("auto", "device", "stream"))
    channels_last: str = setting("auto", "NHWC memory layout: auto (on, unless gpuvision bench measured NCHW "
                                 "faster here), on or off", choices=("auto", "on", "off"))
    cuda_graphs: str = setting("auto", "replay compiled steps as CUDA graphs: auto (off until measured), on or off",
                               choices=("auto", "on", "off"))
    tf32: str = setting("auto", "TF32 tensor-core fp32 maths: auto (on for CUDA GPUs of compute capability 8.0+), "
                        "on or off", choices=("auto", "on", "off"))
    cudnn_benchmark: str = setting("auto", "cuDNN autotuning: auto (on for CUDA), on or off",
                                   choices=("auto", "on", "off"))
    optimizer_kernel: str = setting("auto", "optimizer step: auto (fused on CUDA, foreach elsewhere), fused, "
                                    "foreach or loop", choices=("auto", "fused", "foreach", "loop"))
    seed: int = setting(0, "seed of every random choice (split, init, batches, augmentation)", low=0, high=MAX_SEED)
    val_fraction: float = setting(0.1, "fraction of the training images held out for validation", low=0, high=0.9)
    test_fraction: float = setting(0.2, "fraction held out for testing, when the data has no test part", low=0,
                                   high=0.9, low_open=True)
    eval_every: int = setting(1, "epochs between validation passes (0: only at the end)", low=0)
    checkpoint_every: str | int = setting("1e", "checkpoint every N epochs (1e, or 1), steps (500st) or seconds "
                                          "(600s); 0: none")
    max_nonfinite: int = setting(10, "steps with a non-finite gradient (each skipped) before the run stops", low=0)
    grad_accum: int = setting(1, "micro-batches per step: gradients of K smaller batches summed before each update "
                              "(a global batch larger than the devices hold)", low=1, high=4096)
    sync_bn: str = setting("auto", "batch norm over the global batch on several processes: auto (on when a "
                           "process's share of a batch is under 32 images), on or off", choices=("auto", "on", "off"))
    nproc: int = setting(1, "processes on this machine: more than 1 runs torchrun for you (one per GPU; CPU "
                         "processes use gloo)", low=1, high=1024)
    max_restarts: int = setting(0, "with --nproc: times torchrun restarts failed workers, which resume from the last "
                                "checkpoint", low=0, high=1000)
    keep_checkpoints: bool = setting(False, "keep checkpoints/ in the finished model directory (listed in its "
                                     "manifest)")
    keep_best: bool = setting(False, "keep the weights of the epoch with the best validation accuracy, not the last")
    early_stop: int = setting(0, "stop after N validation passes without a better validation accuracy, keeping the "
                              "best epoch's weights (0: off)", low=0)
    pretrained: str | None = setting(None, "initial weights: imagenet (timm's for --model), hf-hub:NAME (a timm "
                                     "model on the Hugging Face hub), or a local .safetensors file")
    pretrained_partial: bool = setting(False, "with --pretrained, load the tensors that fit and start the others "
                                       "from their initial values (reported); without it a partial load is refused")
    max_decoded_bytes: str | None = setting(None, "bound on the decoded images' memory, e.g. 8G (default: "
                                            "$GPUVISION_MAX_DECODED_BYTES or 8G)")
    out: str | None = setting(None, "run directory = model directory (default: runs/<data name>-<timestamp>)")
    overwrite: bool = setting(False, "replace --out if it is a directory gpuvision wrote (a model or a run)")
    resume: bool = setting(False, "continue the run in --out from its last checkpoint")
    strict: bool = setting(False, "refuse unreadable images instead of skipping them")
    adversarial: str | None = setting(None, "adversarial training: fgsm-rs (one FGSM step from a random start, Wong "
                                      "et al. 2020) or pgd (Madry et al. 2018), keeping the epoch of best validation "
                                      "robust accuracy", choices=("fgsm-rs", "pgd"))
    eps: str | float = setting("8/255", "adversarial training's L-infinity radius, a fraction of the pixel range: "
                               "8/255 or 0.0314")
    adv_steps: int | None = setting(None, "attack steps per training batch (default: 1 for fgsm-rs, 7 for pgd)",
                                    low=1, high=100)
    adv_step_size: str | float | None = setting(None, "the training attack's step, a fraction of the pixel range "
                                                "(default: 1.25 x eps for fgsm-rs; for pgd 2.5 x eps / steps, at "
                                                "most eps / 2)")

    def validate(self) -> TrainConfig:
        super().validate()
        require(not (self.resume and self.overwrite), "--resume and --overwrite contradict each other; pick one",
                BadInput)
        for what, given, taken in (("model_args", self.model_args, DATA_MODEL_ARGS),
                                   ("recipe_args", self.recipe_args, {f.name for f in fields(self)})):
            clash = sorted(set(map(str, given)) & set(taken))
            require(not clash, f"{what} {', '.join(clash)}: " + ("set from the data, not by hand" if what ==
                    "model_args" else "a setting of its own; give it as a flag or at the top level of --config"),
                    BadInput)
        Cadence.parse(self.checkpoint_every)
        pixel_fraction(self.eps, "--eps")
        if self.adv_step_size is not None:
            pixel_fraction(self.adv_step_size, "--adv-step-size")
        require(self.adv_steps in (None, 1) or self.adversarial == "pgd", "--adv-steps goes with --adversarial pgd "
                "(fgsm-rs takes one step)", BadInput)
        return self


DATA_MODEL_ARGS = ("num_classes", "in_channels", "image_size")  # a network's arguments that the data decides

# What a resumed run may change: where it runs, how fast, and how often it reports; the rest would change the result.
RESUMABLE_SETTINGS = ("out", "resume", "device", "eval_every", "checkpoint_every", "keep_checkpoints", "loader",
                      "max_decoded_bytes", "overwrite", "compile", "channels_last", "cuda_graphs", "tf32",
                      "cudnn_benchmark", "optimizer_kernel", "max_nonfinite", "grad_accum", "sync_bn", "nproc",
                      "max_restarts")


@dataclass
class EvaluateConfig(Validated):
    """Settings of `gpuvision evaluate`."""

    model_dir: str = setting(help="model directory", flag=False)
    data: str | None = setting(None, "source to evaluate on (default: the one recorded in the manifest)")
    split: str = setting("test", "test, val, or all (every image of the source)", choices=("test", "val", "all"))
    tta: bool | None = setting(None, "test-time augmentation (default: the recipe's choice)")
    plot: bool = setting(True, "draw the confusion-matrix PNG")
    device: str = setting("auto", "auto, cpu, cuda, cuda:N or mps")
    out: str | None = setting(None, "report directory (default: MODEL_DIR-eval)")


@dataclass
class AttackConfig(Validated):
    """Settings of `gpuvision attack`: which images, which L-infinity attack, how strong."""

    model_dir: str = setting(help="model directory", flag=False)
    data: str | None = setting(None, "source to attack (default: the one recorded in the manifest)")
    split: str = setting("test", "test, val, or all (every image of the source)", choices=("test", "val", "all"))
    method: str = setting("pgd", "fgsm, pgd, or apgd (APGD-CE, Croce and Hein 2020)", choices="attacks")
    eps: str | float = setting("8/255", "L-infinity radius, a fraction of the pixel range: 8/255 or 0.0314")
    steps: int | None = setting(None, "attack iterations (default: 10 for pgd, 100 for apgd; fgsm takes one)",
                                low=1, high=10_000)
    step_size: str | float | None = setting(None, "pgd's step, a fraction of the pixel range (default: 2.5 x eps "
                                            "/ steps)")
    restarts: int = setting(1, "runs of pgd or apgd from new random starts (a point fooled once stays fooled)",
                            low=1, high=100)
    random_start: bool = setting(True, "pgd starts from a random point of the eps-ball")
    limit: int | None = setting(None, "attack a class-stratified draw of N images of the split (default: all)",
                                low=1)
    batch_size: int = setting(256, "images attacked at once", low=1, high=1 << 16)
    seed: int = setting(0, "seed of the random starts and of --limit's draw", low=0, high=MAX_SEED)
    plot: bool = setting(True, "draw the PNG of originals, perturbations and adversarial images")
    device: str = setting("auto", "auto, cpu, cuda, cuda:N or mps")
    out: str | None = setting(None, "report directory (default: MODEL_DIR-eval)")

    def validate(self) -> AttackConfig:
        super().validate()
        pixel_fraction(self.eps, "--eps")
        if self.step_size is not None:
            pixel_fraction(self.step_size, "--step-size")
        require(self.method == "pgd" or (self.step_size is None and self.random_start), "--step-size and "
                "--no-random-start go with --method pgd (fgsm steps eps once; apgd sets its own steps)", BadInput)
        return self


@dataclass
class PredictConfig(Validated):
    """Settings of `gpuvision predict`."""

    model_dir: str = setting(help="model directory", flag=False)
    images: list = setting(help="image files, folders (every image in them) or glob patterns", flag=False,
                           factory=list)
    top_k: int = setting(1, "classes per image", low=1, high=100_000)
    out: str | None = setting(None, "also write the predictions to FILE: .csv, or .jsonl (one JSON object a line)")
    tta: bool | None = setting(None, "test-time augmentation (default: the recipe's choice)")
    device: str = setting("auto", "auto, cpu, cuda, cuda:N or mps")


@dataclass
class CompressConfig(Validated):
    """Settings of `gpuvision compress`: which methods to run on a model directory, and how to measure them."""

    model_dir: str = setting(help="model directory", flag=False)
    data: str = setting("", "the model's training data: calibration, fine-tuning, test split (required)")
    method: str = setting("all", "prune, int8, distill, or all (each, plus prune+int8 and distill+int8)",
                          choices="methods")
    target_sparsity: float = setting(0.5, "fraction of parameters pruning removes", low=0.01, high=0.99)
    student: str | None = setting(None, "registered model to distil into (default: the teacher's architecture at "
                                  "half width)", choices="models")
    finetune_epochs: float = setting(2.0, "fine-tuning epochs after pruning, with the parent as teacher (0: none)",
                                     low=0, high=10_000)
    distill_epochs: float | None = setting(None, "student training epochs (default: the parent's)", low=0,
                                           high=10_000, low_open=True)
    calibration_images: int = setting(512, "training images that calibrate int8 activation ranges", low=1,
                                      high=1 << 20)
    out: str | None = setting(None, "output directory (default: MODEL_DIR-compressed)")
    overwrite: bool = setting(False, "replace --out if an earlier compress wrote it")
    compile: bool = setting(True, "also measure torch.compile (inductor) runtimes; off saves minutes of compiling")
    device: str = setting("cpu", "where fine-tuning and distillation train")
    latency_repeats: int = setting(30, "timed runs per speed figure (median and p90 reported)", low=1,
                                   high=100_000)
    seed: int | None = setting(None, "seed (default: the parent's)", low=0, high=MAX_SEED)
    plaintext: bool = setting(False, "write the variants of an encrypted model unencrypted (by default they are "
                              "encrypted with the parent's data key)")

    def validate(self) -> CompressConfig:
        super().validate()
        require(bool(self.data), "compress needs --data SRC: the data the model was trained on", BadInput)
        return self


@dataclass
class ExportConfig(Validated):
    """Settings of `gpuvision export`."""

    model_dir: str = setting(help="model directory", flag=False)
    format: str = setting("onnx", "onnx (checked in onnxruntime) or pt2 (torch.export)", choices="formats")
    out: str | None = setting(None, "output file (default: MODEL_DIR-export/model.FORMAT)")
    opset: int | None = setting(None, "ONNX opset (default: the exporter's)", low=13, high=30)
    dynamic_batch: bool = setting(True, "a dynamic batch dimension")
    uint8_input: bool = setting(False, "ONNX takes UINT8 pixels N x H x W x C, the normalisation inside the graph")
    data: str | None = setting(None, "images for the parity check (default: the model's recorded test split)")
    parity_images: int = setting(1000, "test images compared with PyTorch (0: all)", low=0)
    atol: float = setting(1e-4, "largest allowed absolute logit difference", low=0)
    min_agreement: float = setting(0.999, "smallest allowed top-1 agreement (near-ties may flip)", low=0, high=1)
    plaintext: bool = setting(False, "write the export of an encrypted model unencrypted (by default it is "
                              "encrypted with the model's data key, as OUT.enc)")


@dataclass
class Access(Validated):
    """How a command opens the model directories it reads: one option group, on every such command (and serve).

    With `pubkey`, a directory is refused unless its model.sig verifies with that key and covers exactly its files;
    the data key (a file, else $GPUVISION_DATA_KEY; never the key itself on the command line, where other users can
    read it) decrypts an encrypted model's files as they are read."""

    pubkey: str | None = setting(None, "refuse the model unless its model.sig verifies with this public key (PEM)")
    data_key: str | None = setting(None, "file holding the data key (64 hex characters) that decrypts an encrypted "
                                   "model (default: $GPUVISION_DATA_KEY)")


@dataclass
class KeysConfig(Validated):
    """Settings of `gpuvision keys generate`."""

    out: str = setting("", "directory for signing.key, signing.pub and data.key (required; never overwritten)")

    def validate(self) -> KeysConfig:
        super().validate()
        require(bool(self.out), "keys generate needs --out DIR", BadInput)
        return self


@dataclass
class SignConfig(Validated):
    """Settings of `gpuvision sign`."""

    model_dir: str = setting(help="model directory", flag=False)
    signing_key: str = setting("", "elliptic-curve private key in PEM, e.g. signing.key from `keys generate` "
                               "(required)")
    overwrite: bool = setting(False, "replace an existing model.sig (signing again with a new key)")

    def validate(self) -> SignConfig:
        super().validate()
        require(bool(self.signing_key), "sign needs --signing-key FILE", BadInput)
        return self


@dataclass
class CryptConfig(Validated):
    """Settings of `gpuvision encrypt` and `gpuvision decrypt` (the data key comes from the access options)."""

    model_dir: str = setting(help="model directory (decrypt: or an exported .enc file)", flag=False)
    out: str | None = setting(None, "output directory, which must not exist (default: MODEL_DIR-encrypted or "
                              "MODEL_DIR-decrypted; a decrypted .enc file loses its suffix)")


@dataclass
class ServeConfig(Validated):
    """Settings of `gpuvision serve`: which models, where to listen, how to batch, and who may call."""

    models: list = setting(help="model directories: DIR (served under its base name) or NAME=DIR", flag=False,
                           factory=list)
    model_repository: str | None = setting(None, "serve every model directory inside DIR")
    host: str = setting("127.0.0.1", "address to listen on; a non-loopback one needs --api-key-file or --insecure")
    port: int = setting(8000, "TCP port (0: any free one; --json prints the URL)", low=0, high=65535)
    device: str = setting("auto", "auto, cpu, cuda, cuda:N or mps")
    runtime: str = setting("auto", "auto (the manifest's where it was measured on this machine, else the fastest "
                           "measured at start-up), eager, inductor or onnxruntime",
                           choices=("auto", "eager", "inductor", "onnxruntime"))
    max_batch_size: int = setting(64, "most images run as one batch (also the most one request may carry)", low=1,
                                  high=1024)
    max_wait_ms: float = setting(5.0, "longest a request waits for others to share its batch, in ms", low=0,
                                 high=10_000)
    max_queue: int = setting(256, "requests waiting per model; beyond it 503 with Retry-After", low=1, high=1 << 20)
    instances: int = setting(1, "executors per model in this process (batching and statistics shared)", low=1,
                             high=64)
    max_body_mb: float = setting(10.0, "largest request body in MB (decompressed too); beyond it 413", low=0,
                                 high=4096, low_open=True)
    request_timeout: float = setting(10.0, "seconds a request's headers and body may take to arrive; a slower one "
                                     "gets 408 and its connection is closed", low=0.1, high=3600)
    max_client_connections: int = setting(64, "open connections per client address; past it that client's "
                                          "longest-waiting idle or slow one is closed", low=1, high=1 << 16)
    api_key_file: str | None = setting(None, "file holding the key clients send as 'Authorization: Bearer KEY'")
    metrics_public: bool = setting(False, "serve /metrics without the API key")
    insecure: bool = setting(False, "allow a non-loopback --host without --api-key-file")
    ssl_certfile: str | None = setting(None, "TLS certificate (PEM), with --ssl-keyfile")
    ssl_keyfile: str | None = setting(None, "TLS private key (PEM), with --ssl-certfile")
    tta: bool = setting(False, "test-time augmentation (the recipe's; several model runs per image)")
    monitor: bool = setting(True, "watch each model: prediction ids, feedback, live accuracy and drift against its "
                            "test split")
    feedback_window: int = setting(100_000, "latest predictions per model that feedback can label and live "
                                   "accuracy counts over", low=1, high=10_000_000)
    monitor_dir: str | None = setting(None, "keep each model's prediction window in DIR, so a restarted server "
                                      "keeps it")

    def validate(self) -> ServeConfig:
        import ipaddress

        super().validate()
        require(bool(self.models) or self.model_repository is not None,
                "serve needs a MODEL directory (or NAME=DIR) or --model-repository DIR", BadInput)
        require((self.ssl_certfile is None) == (self.ssl_keyfile is None),
                "--ssl-certfile and --ssl-keyfile go together; give both or neither", BadInput)
        try:
            loopback = self.host == "localhost" or ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            loopback = False  # a host name other than localhost may resolve anywhere
        require(loopback or self.api_key_file is not None or self.insecure,
                f"--host {self.host} is not a loopback address: give --api-key-file FILE so callers need a key, "
                "or --insecure to serve it open", BadInput)
        return self


@dataclass
class DoctorConfig(Validated):
    """Settings of `gpuvision doctor`."""

    compile_probe: bool = setting(False, "also try torch.compile on each device (seconds on a GPU, minutes on a CPU)")


@dataclass
class BenchConfig(Validated):
    """Settings of `gpuvision bench`: where to measure, which network, on which images, how long."""

    device: str = setting("all", "cpu, cuda, or all (every device here, side by side)", choices=("cpu", "cuda", "all"))
    model: str = setting("auto", "network: auto (the default for the data's image size)", choices="models")
    data: str | None = setting(None, "images to measure on, as for train (default: ../shared/data/cifar10-jpeg.tar.gz "
                               "beside the checkout when present, else digits)")
    quick: bool = setting(False, "a subset and a few steps per row (about a minute on a CPU; no CPU compile rows)")
    out: str | None = setting(None, "report directory (default: runs/bench-<timestamp>)")
    profile: bool = setting(False, "also save a torch.profiler trace of a few training steps per device")


@dataclass
class MonitorConfig(Validated):
    """Settings of `gpuvision monitor`: which server, which model, and the key it needs."""

    url: str = setting(help="the server's URL, e.g. http://127.0.0.1:8000", flag=False)
    model: str | None = setting(None, "only this model (default: every model the server has)")
    api_key_file: str | None = setting(None, "file holding the server's API key")
    timeout: float = setting(10.0, "seconds to wait for the server", low=0, high=600, low_open=True)

    def validate(self) -> MonitorConfig:
        super().validate()
        require(self.url.startswith(("http://", "https://")), f"URL {self.url!r}: give http://HOST:PORT or "
                "https://HOST:PORT", BadInput)
        return self


def read_config_file(path: str, config_type=TrainConfig) -> dict:
    """The settings in a YAML or JSON file, as a dict of known field names (dashes or underscores)."""
    p = Path(path)
    require(p.is_file(), f"--config {path}: no such file", NotFound)
    try:
        text = p.read_text()
        if p.suffix.lower() == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    # JSONDecodeError is a ValueError; RecursionError: nested past Python's limit
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BadInput(f"--config {path}: not valid YAML/JSON ({str(e).splitlines()[0]})") from e
    except Exception as e:  # yaml.YAMLError and its subclasses
        if type(e).__module__.startswith("yaml"):
            raise BadInput(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from e
        raise
    require(isinstance(raw, dict), f"--config {path}: expected a mapping of setting: value", BadInput)
    names = {f.name for f in fields(config_type)}
    settings = {str(k).replace("-", "_"): v for k, v in raw.items()}
    unknown = sorted(set(settings) - names)
    require(not unknown, f"--config {path}: unknown setting(s) {', '.join(unknown)}", BadInput)
    return settings
