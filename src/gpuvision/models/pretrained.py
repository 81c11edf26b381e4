"""Where `--pretrained` weights come from: timm's ImageNet weights for the chosen model (`imagenet`), a timm model on
the Hugging Face hub (`hf-hub:NAME`, e.g. `hf-hub:timm/resnet50.a1_in1k`), or a local safetensors file.

Hub weights go through huggingface_hub's cache (HF_HOME, ~/.cache/huggingface), as for any timm user: a machine
that fetched them once works offline (the cache is read first; HF_HUB_OFFLINE=1 never asks the network). Only
safetensors files are read (nothing is unpickled). Hub weights bring their preprocessing: the input size, mean and
std the network was trained with, which the Trainer then uses; their classifier is replaced by a new one for the
user's classes (`load_backbone`). Loading itself is `models.load_pretrained`'s (a local file's checks apply).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..errors import BadInput, NotFound, Unsupported, UserError, require

WEIGHTS, CONFIG = "model.safetensors", "config.json"
HUB_PREFIX = "hf-hub:"
IMAGENET = "imagenet"
DEFAULT_ARCHITECTURE = "resnet18"  # what --model auto becomes with hub weights


@dataclass(frozen=True)
class Pretrained:
    """Resolved initial weights: the local file, the registered architecture they are for (None: a local file,
    for whichever model is chosen), and for hub weights their hub id and preprocessing (mean, std in 0..255)."""

    source: str
    file: str
    architecture: str | None = None
    hub_id: str | None = None
    input_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def from_hub(self) -> bool:
        return self.hub_id is not None

    def describe(self) -> dict:
        """For the manifest: where the weights came from."""
        return {"source": self.source, "hub_id": self.hub_id, "input_size": self.input_size}


def resolve(source: str, model: str) -> Pretrained:
    """The weights `--pretrained source` names, for `--model model` ("auto" or a registered name)."""
    from . import list_models

    if source == IMAGENET:
        import timm

        architecture = DEFAULT_ARCHITECTURE if model == "auto" else model
        hub_models = [m for m in list_models() if timm.models.is_model(m)]
        require(architecture in hub_models, f"--pretrained imagenet: timm has no ImageNet weights for {architecture}; "
                f"use --model {' or '.join(hub_models)}, or give a local .safetensors file", Unsupported)
        cfg = timm.models.get_pretrained_cfg(architecture).to_dict()
        return _hub(source, cfg["hf_hub_id"], architecture, cfg)
    if source.startswith(HUB_PREFIX):
        hub_id = source[len(HUB_PREFIX):]
        require(bool(hub_id), "--pretrained hf-hub:NAME needs a NAME, e.g. hf-hub:timm/resnet18.a1_in1k", BadInput)
        config = _read_config(_download(hub_id, CONFIG, source), source)
        architecture = str(config.get("architecture", ""))
        require(architecture in list_models(), f"--pretrained {source}: a {architecture or 'model of unknown'} "
                f"architecture; gpuvision trains {', '.join(list_models())}", Unsupported)
        require(model in ("auto", architecture), f"--pretrained {source} holds a {architecture}, not a {model}; give "
                f"--model {architecture} (or auto)", BadInput)
        return _hub(source, hub_id, architecture, config.get("pretrained_cfg") or {})
    require(Path(source).is_file(), f"--pretrained {source}: no such file; give a .safetensors file, imagenet, or "
            "hf-hub:NAME", NotFound)
    return Pretrained(source, source)


def _hub(source: str, hub_id: str, architecture: str, cfg: dict) -> Pretrained:
    size = cfg.get("input_size") or (3, 224, 224)
    require(len(size) == 3 and size[0] == 3 and size[1] == size[2], f"--pretrained {source}: weights for "
            f"{size} inputs; gpuvision takes square colour images", Unsupported)
    mean, std = (tuple(255.0 * v for v in cfg.get(k, d)) for k, d in (("mean", (0.485, 0.456, 0.406)),
                                                                      ("std", (0.229, 0.224, 0.225))))
    return Pretrained(source, _download(hub_id, WEIGHTS, source), architecture, hub_id, int(size[1]), mean, std)


def _download(hub_id: str, filename: str, source: str) -> str:
    """The cached file, else fetched into the cache; without network and cache, one line saying what to do."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, HFValidationError

    repo, _, revision = hub_id.partition("@")
    try:
        try:
            return hf_hub_download(repo, filename, revision=revision or None, local_files_only=True)
        except EntryNotFoundError:  # not in the cache (LocalEntryNotFoundError is one): ask the hub
            return hf_hub_download(repo, filename, revision=revision or None)
    except (EntryNotFoundError, HfHubHTTPError, HFValidationError, OSError) as e:
        first = " ".join(str(e).split())[:160]
        raise UserError(f"--pretrained {source}: cannot get {filename} of {hub_id} from the Hugging Face hub or its "
                        f"cache ({type(e).__name__}: {first}); on a machine with network run it once (or `hf download "
                        f"{repo}`) and copy ~/.cache/huggingface here (or set HF_HOME to that copy), or give a local "
                        ".safetensors file") from e


def _read_config(path: str, source: str) -> dict:
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise BadInput(f"--pretrained {source}: its config.json is not readable JSON ({e})") from e
    require(isinstance(config, dict), f"--pretrained {source}: its config.json is not an object", BadInput)
    return config


def load_backbone(model: nn.Module, pretrained: Pretrained, head: nn.Module) -> None:
    """Load hub weights into `model` with a new classifier: the weights' own head (of another class count) is
    loaded into a stand-in of its shape, then `head`, the model's freshly initialised one, is put back."""
    from safetensors import safe_open

    from . import load_pretrained

    name = next(n for n, m in model.named_modules() if m is head)
    require(isinstance(head, nn.Linear), f"--pretrained {pretrained.source}: the classifier {name} is not a linear "
            "layer", Unsupported)
    with safe_open(pretrained.file, "pt") as f:
        keys = set(f.keys())
        shape = f.get_slice(f"{name}.weight").get_shape() if f"{name}.weight" in keys else None
    require(shape is not None and len(shape) == 2 and shape[1] == head.in_features, f"--pretrained "
            f"{pretrained.source}: no classifier {name} of {head.in_features} features in it; weights for another "
            "model?", BadInput)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Linear(shape[1], shape[0], bias=f"{name}.bias" in keys))
    try:
        load_pretrained(model, pretrained.file)
    finally:
        setattr(parent, child, head)
