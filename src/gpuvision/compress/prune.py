"""Structured channel pruning that really removes channels, then a short fine-tune with the parent as teacher.

Torch-Pruning (Fang et al., 2023) finds the coupled channels (a residual stream, a conv and its batch-norm) and cuts
them out of the weights; we choose one channel fraction for every layer (ranked by L2 magnitude per coupled group)
so that the parameter count falls by the target, and rebuild the network from its architecture arguments:
fastnet's `widths`, a ResNet's per-layer `layer_shapes`. The saved model is a plain safetensors model directory,
smaller and faster, not masked.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ..artifact import Manifest, ModelDir, save_weights
from ..errors import Unsupported, require
from ..models import count_params, create_model, list_models, model_spec
from ..runtime import build_network

ROUND_TO = 8  # kept channel counts are multiples of 8, which vectorised kernels handle without a remainder...
NARROW = 64  # ...unless a prunable layer is narrower than this: there, steps of 8 overshoot the target
SEARCH_STEPS = 10  # bisection steps on the channel fraction (each prunes a copy of the network)


def check_prunable(name: str) -> None:
    known = [m for m in list_models() if model_spec(m).prunable]
    require(model_spec(name).prunable, f"pruning does not apply to a {name} (it knows {', '.join(known)})",
            Unsupported)


def _prune_copy(net: nn.Module, name: str, example: torch.Tensor, ratio: float) -> nn.Module:
    import torch_pruning as tp

    pruned = copy.deepcopy(net)
    ignored = model_spec(name).pruning_ignored(pruned)
    widths = [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d) and m not in ignored]
    pruner = tp.pruner.MetaPruner(pruned, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=ratio, ignored_layers=ignored,
                                  round_to=ROUND_TO if min(widths) >= NARROW else None)
    pruner.step()
    return pruned


def prune_network(net: nn.Module, arch: dict, example: torch.Tensor, target_sparsity: float,
                  steps: int = SEARCH_STEPS) -> tuple[nn.Module, dict]:
    """The network with channels removed so that at least `target_sparsity` of its parameters are gone, rebuilt
    from its new architecture arguments (returned with it). A rebuild that does not reproduce the pruned network's
    outputs is a bug and raises."""
    name, before = arch["name"], count_params(net)
    goal = (1 - target_sparsity) * before
    net = net.eval()
    low, high, best = 0.0, 0.95, None
    for _ in range(steps):  # the smallest channel fraction that reaches the goal
        ratio = (low + high) / 2
        candidate = _prune_copy(net, name, example, ratio)
        if count_params(candidate) <= goal:
            best, high = candidate, ratio
        else:
            low = ratio
    if best is None:
        best = _prune_copy(net, name, example, high)
    require(count_params(best) <= goal, f"pruning cannot remove {target_sparsity:.0%} of this {name}'s parameters; "
            "give a smaller --target-sparsity")
    args = {**arch["args"], **model_spec(name).width_args(best)}
    rebuilt = create_model(name, **args).eval()
    rebuilt.load_state_dict(best.state_dict())
    with torch.no_grad():
        if not torch.allclose(rebuilt(example), best(example), atol=1e-5, rtol=1e-4):
            raise RuntimeError(f"the pruned {name} does not rebuild from {args}")
    return rebuilt, args


def make_pruned(ctx, source: ModelDir, out: Path) -> Manifest:
    """Prune the model in `source` into the model directory `out`, fine-tuned for ctx.config.finetune_epochs."""
    from . import train_variant, write_variant

    m = source.manifest
    check_prunable(m.architecture["name"])
    net = build_network(source)
    pruned, args = prune_network(net, m.architecture, ctx.inputs(ctx.test_images[:1], m), ctx.config.target_sparsity)
    record = {"method": "prune", "target_sparsity": ctx.config.target_sparsity, "params_before": count_params(net),
              "params_after": count_params(pruned), "finetune_epochs": ctx.config.finetune_epochs,
              "library": "torch-pruning", "importance": "L2 magnitude per coupled channel group"}
    if ctx.config.finetune_epochs <= 0:
        out.mkdir(parents=True)
        save_weights(out / m.weights, pruned)
        manifest = replace(m, architecture={"name": m.architecture["name"], "args": args},
                           params=count_params(pruned))
        return write_variant(ctx, source, out, manifest, record, [m.weights])
    init = out.parent / f".{out.name}-init.safetensors"
    save_weights(init, pruned)
    try:
        return train_variant(ctx, source, out, m.architecture["name"], args, record,
                             epochs=ctx.config.finetune_epochs, pretrained=str(init))
    finally:
        init.unlink(missing_ok=True)
