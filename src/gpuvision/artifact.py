"""The model directory: the one contract between training and everything downstream.

    manifest.json       the Manifest below (schema_version 2); written last and never rewritten, so its presence
                        marks a complete model and its sha256 names the model's version
    model.safetensors   the weights (or model.onnx for an onnxruntime model)
    split.json          the sample keys of the train/val/test split, with the source fingerprint
    metrics.jsonl       one line per training epoch
    model.sig           optional: a signature over all of the above, added by `gpuvision sign`

A directory holds exactly the files its manifest lists (plus model.sig): `ModelDir.open(path, access)`, the one
way every reader opens one, refuses anything else in it, and with `access.pubkey` a directory whose model.sig does
not verify with that key or does not cover exactly the manifest it read. Every file is read through
`ModelDir.read(name)`, which refuses a file that is not listed, lies outside the directory or behind a link,
verifies its sha256 at the moment it is read and, in an encrypted directory, decrypts it in memory (AES-256-GCM,
bound to the manifest and the file's name). Nothing is unpickled. Version 1 directories (gpuvision 0.1) load under
version 2 without being rewritten.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath

from .config import Access
from .crypto import aead, keys, signing
from .data.input_spec import InputSpec
from .errors import BadInput, IntegrityError, NotFound, Unsupported, UserError, require
from .files import atomic_write, parse_json, sha256_file, write_json

SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
SIGNATURE = signing.SIGNATURE
WEIGHT_FILES = {"safetensors": "model.safetensors", "onnx": "model.onnx"}
BACKENDS = ("eager", "inductor", "onnxruntime")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
MAX_CLASSES = 100_000
MAX_MANIFEST_BYTES = 64 << 20
V1_UNLISTED = ("metrics.jsonl", "checkpoints", "eval")  # gpuvision 0.1 kept these beside its manifest, unlisted


@dataclass(frozen=True)
class Inference:
    """How the model is meant to run: backend, precision, and the machine that measured it fastest (or None)."""

    backend: str = "eager"
    precision: str = "fp32"
    measured_on: str | None = None

    @property
    def name(self) -> str:
        """The name reports give a variant, e.g. "inductor-bf16"."""
        return f"{self.backend}-{self.precision}"


@dataclass(frozen=True)
class Training:
    """Where and how the weights were trained."""

    device: str
    precision: str
    world_size: int = 1
    compiled: bool = False
    acceleration: dict | None = None  # device.Acceleration.to_json(): every speed switch and why (None: older)


@dataclass(frozen=True)
class SplitRecord:
    """Which images the model was trained, validated and tested on: the saved keys file and the source."""

    file: str
    source: str
    source_fingerprint: str
    sizes: dict
    skipped: int = 0
    val_source: str = "carved"  # carved from the training images, or given:val (the source's own val/ part)
    test_source: str = "carved"  # carved, given:test, or given:val when the source has val/ but no test/


@dataclass(frozen=True)
class Encryption:
    """How an encrypted directory's files are encrypted: the scheme, the data key's public id (never the key) and
    each file's sha256 before encryption (what `decrypt` restores)."""

    scheme: str
    key_id: str
    plaintext: dict


@dataclass(frozen=True)
class Reference:
    """What the model did on its test split, measured when its directory was made (by the Trainer, and again by
    `compress` for each variant, on the same split): what serving compares production traffic with.

    Histograms count over `bins` equal bins of 0..1. `predicted` (test images predicted as each class) and
    `recall` (per class) are in class order; both are None in manifests written before they were recorded, as is
    `runtime` (the `backend-precision` measured)."""

    n: int
    accuracy: float
    confidence_histogram: list
    brightness_histogram: list
    split: str = "test"
    tta: bool = False  # measured with the recipe's test-time augmentation
    bins: int = 20
    predicted: list | None = None
    recall: list | None = None
    runtime: str | None = None

    @classmethod
    def from_dict(cls, d: dict, classes: int) -> Reference:
        """A manifest's `reference`, checked; keys it does not know (an older or newer writer's) are dropped."""
        _check(isinstance(d, dict), "reference must be an object")
        ref = cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
        _check(isinstance(ref.n, int) and ref.n >= 0 and isinstance(ref.accuracy, int | float)
               and 0 <= ref.accuracy <= 1 and isinstance(ref.bins, int) and ref.bins >= 1
               and isinstance(ref.tta, bool) and isinstance(ref.split, str)
               and _counts(ref.confidence_histogram, ref.bins) and _counts(ref.brightness_histogram, ref.bins)
               and (ref.predicted is None or _counts(ref.predicted, classes))
               and (ref.recall is None or (isinstance(ref.recall, list) and len(ref.recall) == classes
                                           and all(isinstance(r, int | float) and 0 <= r <= 1 for r in ref.recall)))
               and (ref.runtime is None or isinstance(ref.runtime, str)),
               "reference must be {n, accuracy in 0..1, tta, bins, two histograms of `bins` counts, predicted and "
               "recall per class}")
        return ref


@dataclass(frozen=True)
class Calibration:
    """Temperature scaling fitted on the validation split after training (runtime/calibration.py): probabilities
    are softmax(logits / temperature), or / temperature_tta for logits averaged over the recipe's test-time
    augmentation; the validation NLL and expected calibration error before and after, for the record."""

    temperature: float
    temperature_tta: float | None = None
    method: str = "temperature"
    split: str = "val"
    n: int = 0
    nll_before: float | None = None
    nll_after: float | None = None
    ece_before: float | None = None
    ece_after: float | None = None

    def __post_init__(self):
        for t in (self.temperature, self.temperature_tta):
            _check(t is None or (isinstance(t, int | float) and math.isfinite(t) and t > 0),
                   "calibration temperatures must be positive numbers")

    @classmethod
    def from_dict(cls, d) -> Calibration:
        """A manifest's `calibration`; keys a newer writer added are dropped."""
        _check(isinstance(d, dict), "calibration must be an object")
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def for_tta(self, tta: bool) -> float:
        return self.temperature_tta if tta and self.temperature_tta else self.temperature


@dataclass
class Manifest:
    """What a model directory holds and how to run it; fields are typed and validated when read."""

    format: str
    weights: str
    architecture: dict
    classes: list
    input: InputSpec
    split: SplitRecord
    inference: Inference = field(default_factory=Inference)
    training: Training | None = None
    tta_level: int = 0
    reference: Reference | None = None  # test-split figures serving compares production with (runtime/reference.py)
    calibration: Calibration | None = None  # None: probabilities are the plain softmax
    seed: int = 0
    settings: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)
    params: int | None = None
    flops: int | None = None
    metrics: dict = field(default_factory=dict)
    compression: dict | None = None
    adversarial: dict | None = None  # adversarial training: its attack, eps, steps (attacks/training.py), or None
    versions: dict = field(default_factory=dict)
    created: str = ""
    files: dict = field(default_factory=dict)
    encryption: Encryption | None = None  # only in an encrypted directory; then `files` hash the ciphertexts
    extra: dict = field(default_factory=dict)  # fields of a newer minor version, kept as they were read

    def to_dict(self) -> dict:
        d = {"schema_version": SCHEMA_VERSION, **{k: v for k, v in asdict(self).items() if k != "extra"}}
        d["input"] = self.input.to_dict()
        for key in ("encryption", "calibration", "adversarial"):  # absent unless used: reads as before they existed
            if d[key] is None:
                del d[key]
        return {**d, **self.extra}

    @classmethod
    def from_dict(cls, d, where: str = MANIFEST) -> Manifest:
        require(isinstance(d, dict), f"{where}: not a manifest (a JSON object is expected)", IntegrityError)
        version = d.get("schema_version")
        if version == 1:
            d = _from_v1(d)
        else:
            require(isinstance(version, int), f"{where}: no schema_version; not a gpuvision manifest", IntegrityError)
            require(version <= SCHEMA_VERSION, f"{where}: schema_version {version} is newer than this gpuvision "
                    f"reads ({SCHEMA_VERSION}); upgrade gpuvision", Unsupported)
        try:
            return _parse(d)
        except (KeyError, TypeError, ValueError, UserError) as e:
            detail = f"missing {e}" if isinstance(e, KeyError) else str(e)
            raise IntegrityError(f"{where}: malformed manifest ({detail}); the model directory is damaged") from e


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise ValueError(what)


def _counts(value, size: int) -> bool:
    return isinstance(value, list) and len(value) == size and all(
        isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in value)


def _is_name(name) -> bool:
    """A plain relative file name inside the directory: no absolute path, no '..', no backslash tricks."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return False
    posix = PurePosixPath(name)
    return not posix.is_absolute() and ".." not in posix.parts and posix.parts[0] not in ("", ".")


def _parse(d: dict) -> Manifest:
    known = {f for f in Manifest.__dataclass_fields__ if f != "extra"}
    fmt = d["format"]
    _check(fmt in WEIGHT_FILES, f"format {fmt!r} is not one of {', '.join(WEIGHT_FILES)}")
    files = d["files"]
    _check(isinstance(files, dict) and all(_is_name(k) and isinstance(v, str) and len(v) == 64
                                           for k, v in files.items()), "files must map relative names to sha256")
    weights = d["weights"]
    _check(weights in files, f"weights file {weights!r} is not among the listed files")
    arch = d["architecture"]
    _check(isinstance(arch, dict) and isinstance(arch.get("name"), str) and isinstance(arch.get("args"), dict),
           "architecture must be {name, args}")
    classes = d["classes"]
    _check(isinstance(classes, list) and 2 <= len(classes) <= MAX_CLASSES
           and all(isinstance(c, str) for c in classes) and len(set(classes)) == len(classes),
           f"classes must be 2..{MAX_CLASSES} distinct strings")
    split = SplitRecord(**d["split"])
    _check(split.file in files and split.file.endswith(".json"), "split.file must be a listed .json file")
    inference = Inference(**d.get("inference") or {})
    _check(inference.backend in BACKENDS and inference.precision in PRECISIONS, f"unknown inference {inference}")
    training = Training(**d["training"]) if d.get("training") else None
    encryption = Encryption(**d["encryption"]) if d.get("encryption") is not None else None
    _check(encryption is None or (encryption.scheme == aead.SCHEME and isinstance(encryption.key_id, str)
                                  and isinstance(encryption.plaintext, dict) and set(encryption.plaintext) == set(files)
                                  and all(isinstance(v, str) and len(v) == 64 for v in encryption.plaintext.values())),
           f"encryption must be {{scheme: {aead.SCHEME}, key_id, plaintext: {{each listed file: sha256}}}}")
    calibration = Calibration.from_dict(d["calibration"]) if d.get("calibration") is not None else None
    tta = d.get("tta_level", 0)
    _check(tta in (0, 1, 2), "tta_level must be 0, 1 or 2")
    _check(d.get("compression") is None or isinstance(d["compression"], dict), "compression must be an object")
    reference = Reference.from_dict(d["reference"], len(classes)) if d.get("reference") is not None else None
    _check(d.get("adversarial") is None or isinstance(d["adversarial"], dict), "adversarial must be an object")
    for key in ("settings", "recipe", "metrics", "versions"):
        _check(isinstance(d.get(key, {}), dict), f"{key} must be an object")
    return Manifest(format=fmt, weights=weights, architecture=arch, classes=classes,
                    input=InputSpec.from_dict(d["input"]), split=split, inference=inference, training=training,
                    tta_level=tta, reference=reference, calibration=calibration, seed=d.get("seed", 0),
                    settings=d.get("settings", {}), recipe=d.get("recipe", {}), params=d.get("params"),
                    flops=d.get("flops"), metrics=d.get("metrics", {}), compression=d.get("compression"),
                    adversarial=d.get("adversarial"),
                    versions=d.get("versions", {}), created=d.get("created", ""), files=files, encryption=encryption,
                    extra={k: v for k, v in d.items() if k not in known and k != "schema_version"})


def _from_v1(d: dict) -> dict:
    """A version-1 manifest (gpuvision 0.1) in version-2 terms; the directory itself is not changed."""
    d = dict(d)
    runtime = str(d.pop("runtime", "eager"))  # "eager", "eager-fp32", "inductor-bf16", "onnxruntime-int8"
    backend, _, precision = runtime.partition("-")
    fmt = d.get("format", "safetensors")
    d["weights"] = d.pop("onnx_file", None) or WEIGHT_FILES.get(fmt, "")
    d["inference"] = {"backend": backend, "precision": precision or "fp32"}
    if "device" in d:
        d["training"] = {"device": d.pop("device"), "precision": d.pop("precision", "fp32"),
                         "compiled": bool(d.pop("compiled", False))}
    d["input"] = {k: v for k, v in d.get("input", {}).items() if k != "value_range"}
    return d


class ModelDir:
    """A model directory opened for reading: its validated manifest, and verified (and decrypted) reads of its files.

    `bound` is what an encrypted directory's files are bound to: a digest of the manifest as written, less its
    `files` (which hash the ciphertexts, so they cannot be inside them); `data_key` decrypts them."""

    def __init__(self, path: Path, manifest: Manifest, manifest_sha256: str, bound: bytes = b"",
                 data_key: bytes | None = None):
        self.path, self.manifest, self.manifest_sha256 = path, manifest, manifest_sha256
        self.bound, self.data_key = bound, data_key

    @classmethod
    def open(cls, path: str | Path, access: Access | None = None) -> ModelDir:
        """The one way to open a model directory for reading, with the user's access options (--pubkey, --data-key
        or $GPUVISION_DATA_KEY): validate the manifest, check that the directory holds exactly the listed files as
        plain files (plus model.sig), that model.sig verifies with `access.pubkey` when one is given, and that an
        encrypted model's data key is the one it was encrypted with. Files are verified when they are read."""
        path, access = Path(path), access or Access()
        require(path.is_dir(), f"{path}: no such model directory", NotFound)
        manifest_path = path / MANIFEST
        require(manifest_path.is_file() and not manifest_path.is_symlink(),
                f"{path}: not a model directory (no {MANIFEST}); give a directory `gpuvision train` wrote", NotFound)
        require(manifest_path.stat().st_size <= MAX_MANIFEST_BYTES, f"{manifest_path}: too large for a manifest",
                IntegrityError)
        raw = manifest_path.read_bytes()
        parsed = parse_json(raw, f"{manifest_path} (the model directory is damaged)", IntegrityError)
        manifest = Manifest.from_dict(parsed, str(manifest_path))
        model_dir = cls(path, manifest, hashlib.sha256(raw).hexdigest(), bound_digest(parsed))
        for name in manifest.files:
            model_dir._file(name)
        model_dir._check_nothing_else(V1_UNLISTED if parsed.get("schema_version") == 1 else ())
        if access.pubkey:
            model_dir.check_signature(access.pubkey)
        if manifest.encryption:
            model_dir.data_key = keys.read_data_key(access.data_key)
            used, given = manifest.encryption.key_id, model_dir.data_key and aead.key_id(model_dir.data_key)
            require(given in (None, used), f"{path} was encrypted with another data key (key id {used}; the given "
                    f"key's id is {given})", IntegrityError)
        return model_dir

    @property
    def version(self) -> str:
        """The model's version: the first 12 hex digits of its manifest's sha256."""
        return self.manifest_sha256[:12]

    @property
    def encrypted(self) -> bool:
        return self.manifest.encryption is not None

    def _file(self, name: str) -> Path:
        require(name in self.manifest.files, f"{self.path}: {name} is not listed in its manifest; refusing to read "
                "it", IntegrityError)
        file = self.path
        for part in PurePosixPath(name).parts:  # no component may be a link: nothing outside is ever read
            file = file / part
            require(not file.is_symlink(), f"{self.path}: {name} is or passes through a link; refusing it",
                    IntegrityError)
        require(file.exists(), f"{self.path}: file {name} is missing; the model directory is incomplete",
                IntegrityError)
        require(file.is_file(), f"{self.path}: {name} is not a regular file", IntegrityError)
        return file

    def _check_nothing_else(self, unlisted: tuple[str, ...] = ()) -> None:
        """Anything beside the listed files, the manifest and model.sig (and, in a version 1 directory, what 0.1
        kept unlisted, which is never read) was put there by someone else: refuse it rather than guess its use."""
        allowed = {*self.manifest.files, MANIFEST, SIGNATURE}
        folders = {str(p) for name in self.manifest.files for p in PurePosixPath(name).parents if str(p) != "."}
        for root, dirs, files in os.walk(self.path):  # links are listed, never followed
            where = Path(root).relative_to(self.path)
            for name in sorted(dirs + files):
                item = (where / name).as_posix()
                if item.split("/")[0] in unlisted:
                    continue
                require(item in (folders if name in dirs else allowed), f"{self.path}: {item} is not listed in its "
                        f"manifest; a model directory holds exactly its listed files (plus {SIGNATURE}): refusing it",
                        IntegrityError)

    def check_signature(self, pubkey: str, signature: Path | None = None) -> None:
        """Refuse unless `signature` (default: model.sig) verifies with `pubkey` and signs exactly this manifest (the
        one in memory) and the files it lists; each file is then bound to the signature by its verified read."""
        signature = signature or self.path / SIGNATURE
        require(signature.is_file() and not signature.is_symlink(), f"{self.path} is not signed (no {SIGNATURE}); "
                "--pubkey accepts only a model signed with its key (`gpuvision sign`)", IntegrityError)
        require(signature.stat().st_size <= MAX_MANIFEST_BYTES, f"{signature}: too large for a signature",
                IntegrityError)
        parse_json(signature.read_bytes(), str(signature), IntegrityError)  # bounded, before the library parses it
        signed = signing.signed_digests(signature, pubkey)
        expected = {MANIFEST: self.manifest_sha256, **self.manifest.files}
        differ = sorted(n for n in expected.keys() | signed.keys() if expected.get(n) != signed.get(n))
        require(not differ, f"{self.path}: {SIGNATURE} is by this key but signs other contents "
                f"({', '.join(differ[:5])} differ): the model was changed after it was signed; refusing it",
                IntegrityError)

    def read_stored(self, name: str) -> bytes:
        """The bytes of a listed file as stored (ciphertext in an encrypted directory), verified against the
        manifest's sha256 as they are read."""
        data = self._file(name).read_bytes()
        require(hashlib.sha256(data).hexdigest() == self.manifest.files[name],
                f"{self.path}: file {name} was altered (sha256 mismatch); refusing it", IntegrityError)
        return data

    def read(self, name: str) -> bytes:
        """The content of a listed file, verified as it is read, and decrypted in memory if the model is encrypted
        (the plaintext never touches the disk)."""
        data = self.read_stored(name)
        if not self.encrypted:
            return data
        require(self.data_key is not None, f"{self.path} is encrypted; give --data-key FILE or set "
                f"{keys.DATA_KEY_ENV}", IntegrityError)
        return aead.unseal(self.data_key, data, associated_data(self.bound, name), f"{self.path}: {name}")

    def read_json(self, name: str):
        return parse_json(self.read(name), f"{self.path}: {name}", IntegrityError)

    def verify(self) -> None:
        """Read every listed file and check it against the manifest; decrypt it too where the data key is at hand
        (without it, an encrypted directory is checked as stored)."""
        for name in self.manifest.files:
            (self.read if self.data_key else self.read_stored)(name)


def check_outside_models(target: str | Path, flag: str = "--out") -> None:
    """Refuse an output that lies inside a model directory, at any depth: a model directory holds exactly its listed
    files, so anything written into it would make every reader refuse it as altered."""
    target = Path(target)
    for parent in target.resolve().parents:
        require(not (parent / MANIFEST).is_file(), f"{flag} {target} lies inside the model directory {parent}, which "
                "is never written after it is made: choose another place", BadInput)


def bound_digest(manifest: dict) -> bytes:
    """What an encrypted file is bound to: the manifest as written, but for `files` (which hash the ciphertexts)."""
    core = {k: v for k, v in manifest.items() if k != "files"}
    return hashlib.sha256(json.dumps(core, sort_keys=True, separators=(",", ":")).encode()).digest()


def associated_data(bound: bytes, name: str) -> bytes:
    """An encrypted file's associated data: its manifest and its name, so it decrypts nowhere else."""
    return b"gpuvision model file\0" + bound + b"\0" + name.encode()


def draft(directory: Path, manifest: Manifest, files: list[str]) -> ModelDir:
    """A model directory whose files are written but whose manifest is not yet: `files` (plain files inside
    `directory`) hashed into the manifest, readable through `read` (to measure it before the manifest is final)."""
    hashes = {}
    for name in files:
        file = directory / name
        if not _is_name(name) or file.is_symlink() or not file.is_file():
            raise ValueError(f"{file}: not a plain file inside the model directory")
        hashes[name] = sha256_file(file)
    manifest = replace(manifest, files=hashes)
    Manifest.from_dict(json.loads(json.dumps(manifest.to_dict())))  # what we write must read back
    return ModelDir(directory, manifest, "")


def write_manifest(directory: Path, manifest: Manifest, files: list[str]) -> Manifest:
    """Hash `files` into the manifest and write manifest.json, last; it is never rewritten."""
    manifest = draft(directory, manifest, files).manifest
    write_json(directory / MANIFEST, manifest.to_dict())
    return manifest


def save_weights(path: Path, net) -> None:
    """A network's state as safetensors, written atomically."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    atomic_write(path, lambda p: Path(p).write_bytes(save(state)))


def library_versions() -> dict[str, str]:
    import numpy
    import torch
    import torchvision

    from .version import __version__

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": numpy.__version__, "gpuvision": __version__}


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN or infinity: such a figure is recorded as null."""
    return value if value is not None and math.isfinite(value) else None
