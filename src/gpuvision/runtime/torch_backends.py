"""The PyTorch backends: eager, and inductor (torch.compile with weight freezing), from a model directory's
safetensors weights read through its verified `read`."""

from __future__ import annotations

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn

from ..artifact import ModelDir
from ..data.input_spec import InputSpec
from ..device import autocast
from ..errors import IntegrityError, Unsupported, UserError, require
from ..models import create_model, planned_state
from .base import Runtime


def build_network(model_dir: ModelDir) -> nn.Module:
    """The eager fp32 network of a safetensors model directory, in eval mode on the CPU.

    The network the manifest describes is planned on the meta device and compared with the weights file, tensor by
    tensor, before anything is allocated: a manifest edited to ask for a huge network (or to list other classes
    than the network outputs) is refused at no cost."""
    m = model_dir.manifest
    require(m.format == "safetensors", f"{model_dir.path} holds a {m.format} model; this needs a PyTorch "
            "(safetensors) model directory", Unsupported)
    try:
        state = load_safetensors(model_dir.read(m.weights))
    except SafetensorError as e:
        raise IntegrityError(f"{model_dir.path}: {m.weights} is not a readable safetensors file ({e})") from e
    name, args = m.architecture["name"], m.architecture["args"]
    damaged = f"{model_dir.path}: the manifest does not fit the weights (the model directory is damaged)"
    require(args.get("num_classes") == len(m.classes), f"{damaged}: it lists {len(m.classes)} classes for a network "
            f"of {args.get('num_classes')} outputs", IntegrityError)
    try:
        planned = planned_state(name, **args)
    except UserError as e:
        raise IntegrityError(f"{damaged}: {e}") from e
    given = {k: tuple(v.shape) for k, v in state.items()}
    differ = sorted(k for k in planned.keys() | given.keys() if planned.get(k) != given.get(k))
    if differ:
        k = differ[0]
        raise IntegrityError(f"{damaged}: {len(differ)} tensors differ, e.g. {k} (architecture {planned.get(k)}, "
                             f"weights {given.get(k)})")
    try:
        net = create_model(name, **args)
        net.load_state_dict(state)
    except (TypeError, RuntimeError, ValueError) as e:  # a dtype the network does not take
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise IntegrityError(f"{model_dir.path}: the weights do not fit the recorded architecture ({first})") from e
    return net.eval()


class EagerRuntime(Runtime):
    """The network as it is, under autocast for bf16/fp16."""

    backend = "eager"

    def __init__(self, net: nn.Module, spec: InputSpec, classes: list[str], tta_level: int, device: torch.device,
                 precision: str):
        super().__init__(spec, classes, tta_level, device, precision)
        self.channels_last = device.type != "mps"
        layout = torch.channels_last if self.channels_last else torch.preserve_format
        self.net = net.to(device=device, memory_format=layout).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return self.net(x).float()

    def pixel_model(self) -> nn.Module:
        """The eager network in fp32 behind `Normalise` (also inductor's: its compiled graph is frozen)."""
        return nn.Sequential(self.spec.module().to(self.device), self.net).eval()


class InductorRuntime(EagerRuntime):
    """torch.compile with inductor's freezing, which folds the weights in as constants (without it compiled bf16 is
    no faster than eager fp32 on the CPU). Freezing is switched on only around this runtime's own calls; batches
    are padded to power-of-two buckets, each compiled once (`warmup` compiles them ahead)."""

    backend = "inductor"
    pads = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.compiled = torch.compile(self.net, dynamic=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True), autocast(self.device, self.precision):
            return self.compiled(x).float()
