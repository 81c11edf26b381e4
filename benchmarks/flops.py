"""Training arithmetic of gpuvision's fast recipe against airbench94, counted, not timed (hardware-independent).

    python benchmarks/flops.py                                   # CIFAR-10 at 10,000 and 50,000 training images
    python benchmarks/flops.py --train-sizes 50000 --gv sgd='{"optimizer": "sgd"}'

Each training step (forward, backward and optimizer step, Newton-Schulz iterations included) runs once under
`torch.utils.flop_counter.FlopCounterMode` on the meta device (shapes only, nothing computed) at the batch size
the tool uses, with the parameters that train in that phase; the total is FLOPs per step times steps. Element-wise
work (activations, batch norm, SGD's updates) is not counted by FlopCounterMode, for either tool. Not counted
either, being the same for both and tiny: the whitening layer's initialisation (a 12 x 12 eigendecomposition).

gpuvision's steps are the Trainer's: ceil(epochs * steps per epoch), with the recipe's batch size and drop_last
resolved for the data set's size as `gpuvision train` resolves them; the whitening bias trains in the recipe's
first whiten_bias_fraction of them (after that, as for both peers, no gradient flows into the first block's
input). airbench94 (PyPI airbench 0.1.8, `train94`): ceil(9.9 * floor(n / 1024)) steps of 1,024 (its loader drops
the last batch), the whitening bias training in the first 3 epochs only (its backward then also skips the first
block's input gradient). airbench94_muon (its own file, see peer_airbench_muon.py): ceil(8 * floor(n / 2,000))
steps of 2,000, its Muon's Newton-Schulz included, the whitening bias likewise in its first 3 epochs only.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import benchlib
import peer_airbench_muon
import torch
from torch.utils.flop_counter import FlopCounterMode

from gpuvision.models import create_model, model_spec
from gpuvision.train.recipes import create_recipe, epoch_steps

META = torch.device("meta")
EVAL_VIEWS = 6  # TTA level 2 (both tools): mirror x {none, two 1-pixel translations}


def _counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _step_flops(model, optimizer, loss_fn, batch: int, image_size: int, classes: int) -> tuple[int, int]:
    """(forward + backward FLOPs, optimizer-step FLOPs) of one training step at this batch size."""
    x = torch.empty(batch, 3, image_size, image_size, device=META).contiguous(memory_format=torch.channels_last)
    y = torch.zeros(batch, dtype=torch.long, device=META)

    def forward_backward():
        loss_fn(model(x), y).backward()

    grads = _counted(forward_backward)
    opt = _counted(optimizer.step)
    optimizer.zero_grad(set_to_none=True)
    return grads, opt


def forward_flops(image_size: int = 32, classes: int = 10) -> int:
    """FLOPs of one image through fastnet (evaluation)."""
    model = create_model("fastnet", num_classes=classes, in_channels=3, image_size=image_size).to(META).eval()
    with torch.no_grad():
        return _counted(lambda: model(torch.empty(1, 3, image_size, image_size, device=META)))


def gpuvision_plan(n_train: int, image_size: int = 32, classes: int = 10, **overrides) -> dict:
    """The fast recipe's training FLOPs on n_train images, its settings resolved as `gpuvision train` does."""
    recipe = create_recipe("fast", **overrides)
    recipe.resolve(n_train, image_size)
    s = recipe.settings
    model = create_model("fastnet", num_classes=classes, in_channels=3, image_size=image_size)
    model.to(META, memory_format=torch.channels_last)
    recipe.prepare(model)
    spec = model_spec("fastnet")
    optimizer = recipe.optimizer(model, META, spec)
    early_params = spec.early_params(model) if spec.early_params else []
    per_epoch = epoch_steps(n_train, s.batch_size, s.drop_last)
    steps = math.ceil(s.epochs * per_epoch)
    augment = recipe.augment(image_size)
    # (image side, whitening bias trains) -> steps: progressive resizing trains the first epochs smaller, and once
    # the bias is frozen the first block's input gradient is no longer computed
    early_end = math.ceil(s.whiten_bias_fraction * steps)
    buckets: dict[tuple[int, bool], int] = {}
    for step in range(steps):
        key = (augment.side(step // per_epoch, image_size), step < early_end)
        buckets[key] = buckets.get(key, 0) + 1
    flops = opt_flops = 0
    for (side, early), n in sorted(buckets.items()):
        for p in early_params:
            p.requires_grad_(early)
        grads, opt = _step_flops(model, optimizer, lambda z, y: recipe.loss(z, y, None), s.batch_size, side, classes)
        flops, opt_flops = flops + n * (grads + opt), opt_flops + n * opt
    steps_at: dict[int, int] = {}
    for (side, _), n in buckets.items():
        steps_at[side] = steps_at.get(side, 0) + n
    return {"tool": "gpuvision", "n_train": n_train, "optimizer": s.optimizer, "batch_size": s.batch_size,
            "epochs": s.epochs, "steps": steps, "images": steps * s.batch_size, "flops_per_step": flops / steps,
            "optimizer_flops_per_step": opt_flops / steps, "flops": flops, "optimizer_flops": opt_flops,
            "steps_at_side": steps_at, "whiten_bias_steps": early_end, "settings": recipe.describe()}


def airbench_plan(n_train: int, epochs: float = 9.9, batch_size: int = 1024, whiten_bias_epochs: int = 3) -> dict:
    """airbench94's training FLOPs on n_train images (its own network, optimizer and step count)."""
    import peer_airbench

    _, lib94, utils = peer_airbench.load_package()
    with peer_airbench.cpu_mode(utils, bf16=False):
        model = lib94.make_net94()
    model.to(META)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.85, nesterov=True)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.2, reduction="sum")
    per_epoch = n_train // batch_size
    steps = math.ceil(epochs * per_epoch)
    early_steps = min(steps, whiten_bias_epochs * per_epoch)
    with_bias = sum(_step_flops(model, optimizer, loss_fn, batch_size, 32, 10))
    model[0].bias.requires_grad_(False)
    without_bias = sum(_step_flops(model, optimizer, loss_fn, batch_size, 32, 10))
    flops = early_steps * with_bias + (steps - early_steps) * without_bias
    return {"tool": "airbench94", "n_train": n_train, "optimizer": "sgd", "batch_size": batch_size, "epochs": epochs,
            "steps": steps, "images": steps * batch_size, "flops_per_step": flops / steps,
            "optimizer_flops_per_step": 0, "flops": flops, "optimizer_flops": 0}


def muon_peer_plan(n_train: int, path: str | None = None) -> dict:
    """airbench94_muon's training FLOPs on n_train images: its own network and Muon (peer_airbench_muon.py), its
    step count (ceil(8 epochs x floor(n / 2,000))), the whitening bias training in its first 3 epochs."""
    import peer_airbench
    import peer_airbench_muon

    m = peer_airbench_muon.load(path)
    model = m.CifarNet().to(META)
    model.reset = None  # meta tensors hold no values to initialise
    filters = [p for p in model.parameters() if p.ndim == 4 and p.requires_grad]
    muon = m.Muon(filters, lr=0.24, momentum=0.6, nesterov=True)
    batch, per_epoch = peer_airbench_muon.BATCH_SIZE, n_train // peer_airbench_muon.BATCH_SIZE
    steps, early_steps = math.ceil(peer_airbench_muon.EPOCHS * per_epoch), math.ceil(3 * per_epoch)
    x = torch.empty(batch, 3, 32, 32, device=META, dtype=torch.half).contiguous(memory_format=torch.channels_last)
    y = torch.zeros(batch, dtype=torch.long, device=META)
    per_step = {}
    eager_ns = m.zeropower_via_newtonschulz5._torchdynamo_orig_callable
    with peer_airbench.replaced(m, "zeropower_via_newtonschulz5", eager_ns):
        for bias in (True, False):
            grads = _counted(lambda bias=bias: torch.nn.functional.cross_entropy(
                model(x, whiten_bias_grad=bias), y, label_smoothing=0.2, reduction="sum").backward())
            per_step[bias] = (grads, _counted(muon.step))
            model.zero_grad(set_to_none=True)
    flops = early_steps * sum(per_step[True]) + (steps - early_steps) * sum(per_step[False])
    opt_flops = steps * per_step[False][1]
    return {"tool": "airbench94_muon", "n_train": n_train, "optimizer": "muon", "batch_size": batch,
            "epochs": peer_airbench_muon.EPOCHS, "steps": steps, "images": steps * batch,
            "flops_per_step": flops / steps, "optimizer_flops_per_step": opt_flops / steps, "flops": flops,
            "optimizer_flops": opt_flops}


def table(rows: list[dict]) -> str:
    base = {r["n_train"]: r["flops"] for r in rows if r["tool"] == "airbench94"}
    out = []
    for r in rows:
        ratio = f"{r['flops'] / base[r['n_train']]:.3f}" if r["n_train"] in base else ""
        out.append([r.get("label", r["tool"]), r["n_train"], r["optimizer"], r["batch_size"], f"{r['epochs']:g}",
                    r["steps"], f"{r['flops'] / 1e12:.2f}", f"{100 * r['optimizer_flops'] / r['flops']:.2f}", ratio])
    return benchlib.markdown_table(["tool", "train images", "optimizer", "batch", "epochs", "steps", "TFLOP",
                                    "optimizer %", "x airbench94"], out)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-sizes", default="10000,50000", help="comma-separated training-set sizes")
    p.add_argument("--gv", action="append", default=[], metavar="LABEL=JSON",
                   help="a gpuvision configuration: recipe overrides as JSON (default: the recipe's defaults, "
                        "and optimizer sgd)")
    p.add_argument("--muon-peer", default=None, help="path of airbench94_muon.py (default: see peer_airbench_muon.py; "
                   "its row is left out when there is none)")
    p.add_argument("--results-dir", default=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    configs = dict(item.split("=", 1) for item in args.gv) or {"gpuvision": "{}",
                                                               "gpuvision sgd": '{"optimizer": "sgd"}'}
    rows = []
    for n in (int(x) for x in args.train_sizes.split(",")):
        rows.append(airbench_plan(n))
        if peer_airbench_muon.default_path() or args.muon_peer:
            rows.append(muon_peer_plan(n, args.muon_peer))
        for label, overrides in configs.items():
            rows.append({"label": label, **gpuvision_plan(n, **json.loads(overrides))})
    result = benchlib.header("flops", "meta", argv)
    result.update(rows=rows, forward_flops_per_image=forward_flops(), eval_views=EVAL_VIEWS)
    path = benchlib.write_result(result, benchlib.result_path(result, args.results_dir))
    print(table(rows))
    print(f"\nevaluation (both tools, TTA level 2): {EVAL_VIEWS} x {result['forward_flops_per_image'] / 1e6:.1f} "
          f"MFLOP per test image, not counted above")
    print(f"{result['commit']}; {result['date']}\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
