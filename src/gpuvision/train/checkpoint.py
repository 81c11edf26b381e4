"""Checkpoints as safetensors (every tensor) plus JSON (everything else): no pickle.

A checkpoint is a directory `checkpoints/epoch-NNNN/` written under a temporary name and renamed into place,
so a killed process leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import UserError, require
from ..files import parse_json

SEP = "/"


def flatten(obj, prefix: str = "") -> tuple[dict[str, torch.Tensor], object]:
    """Split a nested dict/list of tensors and plain values into ({path: tensor}, JSON-able skeleton)."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj.detach().cpu().contiguous()}, {"__tensor__": prefix}
    if isinstance(obj, dict):
        tensors, skeleton = {}, {}
        for k, v in obj.items():
            t, s = flatten(v, f"{prefix}{SEP}{k}" if prefix else str(k))
            tensors.update(t)
            skeleton[str(k)] = s
        return tensors, {"__dict__": skeleton, "__intkeys__": all(isinstance(k, int) for k in obj) and bool(obj)}
    if isinstance(obj, list | tuple):
        tensors, skeleton = {}, []
        for i, v in enumerate(obj):
            t, s = flatten(v, f"{prefix}{SEP}{i}")
            tensors.update(t)
            skeleton.append(s)
        return tensors, skeleton
    return {}, obj


def unflatten(skeleton, tensors: dict[str, torch.Tensor]):
    """The inverse of flatten: rebuild the nested value from its skeleton and tensors."""
    if isinstance(skeleton, dict) and "__tensor__" in skeleton:
        return tensors[skeleton["__tensor__"]]
    if isinstance(skeleton, dict) and "__dict__" in skeleton:
        items = {k: unflatten(v, tensors) for k, v in skeleton["__dict__"].items()}
        return {int(k): v for k, v in items.items()} if skeleton["__intkeys__"] else items
    if isinstance(skeleton, list):
        return [unflatten(v, tensors) for v in skeleton]
    return skeleton


def save_checkpoint(directory: Path, epoch: int, step: int, state: dict, keep: int = 1) -> Path:
    """Write state (nested dicts of tensors and JSON values) as checkpoints/epoch-EEEE-step-SSSSSSSSS (names sort in
    training order), keeping the newest `keep`."""
    directory.mkdir(parents=True, exist_ok=True)
    name = f"epoch-{epoch:04d}-step-{step:09d}"
    final = directory / name
    tmp = directory / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors, skeleton = flatten(state)
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps(skeleton))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(directory.glob("epoch-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(directory: Path) -> Path | None:
    done = [p for p in sorted(directory.glob("epoch-*")) if (p / "state.json").exists()]
    return done[-1] if done else None


def load_checkpoint(path: Path) -> dict:
    """The state saved by save_checkpoint; a damaged checkpoint is a UserError, never a traceback."""
    try:
        skeleton = parse_json((path / "state.json").read_bytes(), str(path / "state.json"))
        state = unflatten(skeleton, load_file(str(path / "state.safetensors")))
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError, SafetensorError, UserError) as e:
        raise UserError(f"--resume: the checkpoint {path} is damaged ({type(e).__name__}); remove it to resume "
                        "from an earlier one, or start again with --overwrite") from e
    require(isinstance(state, dict) and {"config", "fingerprint", "epoch", "step", "model"} <= set(state),
            f"--resume: {path} is not a checkpoint of this gpuvision version; start again with --overwrite")
    return state
