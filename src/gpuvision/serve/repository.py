"""The models a server holds: which directories under which names, how each is loaded, and which runtime runs it.

Every model directory gpuvision writes (eager, compiled, pruned, distilled, onnxruntime int8) is served as it is.
`load_model` is the one place the server opens a model directory, so verified or decrypted reads plug in there.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..artifact import MANIFEST, ModelDir
from ..config import Access, ServeConfig
from ..device import describe_device, inference_precision, pick_device
from ..errors import BadInput, NotFound, require
from ..runtime import Model, Runtime, open_runtime
from ..runtime import choice as runtime_choice

log = logging.getLogger(__name__)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # safe in a URL path segment and a metric label


@dataclass
class ServedModel:
    """A model ready to serve: its name, its loaded `Model` (directory + runtime), and why that runtime."""

    name: str
    model: Model
    choice: str  # "asked", "manifest", "measured" or "onnx" (an ONNX directory runs only in onnxruntime)
    timings_ms: dict = field(default_factory=dict)  # measured candidates: {runtime name: ms at batch 1 and max}

    @property
    def version(self) -> str:
        return self.model.model_dir.version

    @property
    def runtime(self) -> Runtime:
        return self.model.runtime


def model_paths(config: ServeConfig) -> dict[str, Path]:
    """Name -> directory for MODEL arguments (DIR or NAME=DIR) and every model directory in --model-repository."""
    pairs = []
    for spec in config.models:
        name, sep, directory = spec.partition("=")
        if not sep or Path(spec).is_dir():  # a directory whose own name holds "=" is still a directory
            name, directory = Path(spec).resolve().name, spec
        pairs.append((name, Path(directory)))
    if config.model_repository is not None:
        root = Path(config.model_repository)
        require(root.is_dir(), f"--model-repository {root}: no such directory", NotFound)
        found = sorted(p for p in root.iterdir() if (p / MANIFEST).is_file())
        require(bool(found), f"--model-repository {root}: no model directories inside (none has a {MANIFEST})",
                NotFound)
        pairs += [(p.name, p) for p in found]
    paths: dict[str, Path] = {}
    for name, directory in pairs:
        require(NAME.fullmatch(name) is not None, f"model name {name!r}: use letters, digits, '_', '.' and '-' "
                "(give NAME=DIR to choose one)", BadInput)
        require(name not in paths, f"two models are named {name!r} ({paths.get(name)} and {directory}); give "
                "NAME=DIR to tell them apart", BadInput)
        paths[name] = directory
    return paths


def load_model(path: Path, access: Access | None) -> ModelDir:
    """Open a model directory for serving (verified, signed or decrypted reads); the one place the server does so."""
    return ModelDir.open(path, access)


def choose_runtime(model_dir: ModelDir, device: torch.device, asked: str, max_batch: int
                   ) -> tuple[Runtime, str, dict]:
    """The runtime to serve with, why, and the timings behind a measured choice (runtime/choice.py's policy, over
    eager, inductor and onnxruntime at the recorded precision; never lower)."""
    m = model_dir.manifest
    if asked != "auto":
        return open_runtime(model_dir, device, asked), "asked", {}
    if m.format == "onnx":
        return open_runtime(model_dir, device), "onnx", {}
    if m.inference.measured_on == describe_device(device):
        return open_runtime(model_dir, device), "manifest", {}
    runtime, timings = runtime_choice.choose(model_dir, device, [inference_precision(m.inference.precision, device)],
                                     max_batch)
    return runtime, "measured", timings


def open_models(config: ServeConfig, access: Access | None = None) -> list[ServedModel]:
    """Load, choose a runtime for, and warm up every model the config names (each batch bucket run once)."""
    device = pick_device(config.device)
    paths = model_paths(config)
    model_dirs = {name: load_model(path, access) for name, path in paths.items()}  # every directory checked first
    served = []
    for name, model_dir in model_dirs.items():
        runtime, choice, timings = choose_runtime(model_dir, device, config.runtime, config.max_batch_size)
        started = time.perf_counter()
        runtime.warmup(warmup_sizes(config.max_batch_size))
        log.info("model %s (version %s) runs %s on %s (%s%s); warmed up in %.1f s", name, model_dir.version,
                 runtime.name, describe_device(device), choice, f": {timings} ms" if timings else "",
                 time.perf_counter() - started)
        served.append(ServedModel(name, Model(model_dir, runtime), choice, timings))
    return served


def warmup_sizes(max_batch: int) -> list[int]:
    """Every power-of-two bucket up to the largest batch (and that batch itself, where it is not one)."""
    return sorted({1 << i for i in range(max_batch.bit_length()) if 1 << i <= max_batch} | {max_batch})
