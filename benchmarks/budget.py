"""Accuracy at a training budget on CIFAR-10-JPEG: gpuvision's fast recipe against airbench94 and airbench94_muon.

    python benchmarks/budget.py                          # 5 seeds a tool; resumes; starts no run past --hours
    python benchmarks/budget.py --seeds 8 --hours 1      # more seeds, an hour at most per invocation
    python benchmarks/budget.py --report                 # the table from what has accrued, running nothing
    python benchmarks/budget.py --tools gpuvision --label lr0.3 --recipe-args '{"muon_lr": 0.3}'   # a variant
    python benchmarks/budget.py --train-subset 50000 --tools airbench_muon,gpuvision,airbench --seeds 3 \
        --threads 1 --precision bf16 --hours 12          # full scale (all 50,000 training images)

The tools train on the same stratified training images (1,000 a class by default; `--train-subset`, all 50,000
at 50000) and are scored with TTA (level 2, all) on the full 10,000-image test set. Seeds alternate between the
tools in the order of --tools (gpuvision seed 0, airbench seed 0, gpuvision seed 1, ...). Every finished run
appends one JSON line to the results file
(benchmarks/results/budget-<subset>.jsonl) with its accuracy, its training FLOPs (benchmarks/flops.py, counted
for exactly the run's settings), its wall time and CPU time (all threads; with --threads 1 on a loaded machine
the less load-dependent of the two), the machine, load average, commit and date; a later invocation
skips the (tool, label, seed) runs already there, so seeds accrue over invocations of at most --hours each.

gpuvision: `gpuvision.train` (val_fraction 0, no checkpoints) on a JPEG tree of the subset (the archive's own
bytes, extracted once into --work-dir), then `gpuvision.evaluate(split="test")`. airbench: `train94` of PyPI
airbench 0.1.8, unchanged, on the same decoded pixels as its train.pt/test.pt (see peer_airbench.py), without
its untimed per-epoch test pass. airbench_muon: `main()` of KellerJordan/cifar10-airbench's airbench94_muon.py
(its path: --muon-peer; see peer_airbench_muon.py) on the same train.pt/test.pt. On the CPU all run in
--precision (bf16: autocast, where the CPU has fast bf16), with --threads torch threads each.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import benchlib
import flops
import numpy as np
import torch
from benchlib import log

import gpuvision
from gpuvision.data import load_images
from gpuvision.device import cpu_model
from gpuvision.train.recipes import create_recipe

TOOLS = ("gpuvision", "airbench", "airbench_muon")
PEER_LABELS = {"airbench": "airbench94", "airbench_muon": "airbench94_muon"}


# ------------------------------------------------------------------------------------------ data
def prepare(args) -> dict:
    """The subset as a JPEG tree (for gpuvision) and as airbench's cifar10/*.pt, each made once in --work-dir."""
    import peer_airbench
    from time_to_accuracy import extract_tree

    work = args.work_dir / f"subset-{args.train_subset}"
    tree, root = work / "tree", work / "airbench"
    if not (work / "ready").exists():
        full = load_images(str(args.data))
        train_idx = benchlib.stratified_subset(full.labels, np.flatnonzero(~full.given_test), args.train_subset)
        test_idx = np.flatnonzero(full.given_test)
        extract_tree(args.data, {full.keys[i] for i in np.concatenate([train_idx, test_idx])}, tree)
        subset = load_images(str(tree))  # the same bytes, so the same pixels, as gpuvision will read
        peer_airbench.write_cifar_folder(root, subset.images, subset.labels, subset.classes,
                                         np.flatnonzero(~subset.given_test), np.flatnonzero(subset.given_test))
        (work / "ready").write_text("")
    return {"tree": tree, "airbench_root": root}


# ------------------------------------------------------------------------------------------ runs
def run_gpuvision(args, data: dict, seed: int) -> dict:
    out = args.work_dir / f"gv-model-{os.getpid()}"  # a variant may run beside another invocation
    # the settings TrainConfig has fields of its own go there; the Trainer passes them on to the recipe
    own = {k: v for k, v in args.recipe_args.items() if k in ("epochs", "batch_size", "lr", "optimizer")}
    rest = {k: v for k, v in args.recipe_args.items() if k not in own}
    started = time.perf_counter()
    result = gpuvision.train(data=str(data["tree"]), out=str(out), overwrite=True, val_fraction=0, eval_every=0,
                             checkpoint_every=0, device="cpu", precision=args.precision, seed=seed, recipe_args=rest,
                             **own)
    trained = time.perf_counter()
    report = gpuvision.evaluate(str(out), split="test", plot=False)
    recipe = result.manifest.recipe
    overrides = {k: v for k, v in recipe.items() if k not in ("name",)}
    plan = flops.gpuvision_plan(result.manifest.split.sizes["train"], **overrides)
    return {"accuracy": report["accuracy"], "n_test": report["n"], "train_s": trained - started,
            "eval_s": time.perf_counter() - trained, "flops": plan["flops"], "optimizer_flops": plan["optimizer_flops"],
            "steps": plan["steps"], "batch_size": recipe["batch_size"], "epochs": recipe["epochs"], "recipe": recipe}


def run_airbench(args, data: dict, seed: int) -> dict:
    import peer_airbench

    r = peer_airbench.run_train94(data["airbench_root"], "cpu", seed, bf16=args.precision == "bf16",
                                  epoch_eval=False)
    plan = flops.airbench_plan(args.train_subset, r["epochs"], r["batch_size"])
    return {"accuracy": r["accuracy"], "n_test": 10_000, "train_s": r["wall_s"], "timer_s": r["timer_s"],
            "eval_s": None, "flops": plan["flops"], "optimizer_flops": 0, "steps": plan["steps"],
            "batch_size": r["batch_size"], "epochs": r["epochs"]}


def run_airbench_muon(args, data: dict, seed: int) -> dict:
    import peer_airbench_muon

    peer = peer_airbench_muon.MuonPeer(args.muon_peer, "cpu", bf16=args.precision == "bf16")
    r = peer.run(data["airbench_root"], seed)
    plan = flops.muon_peer_plan(args.train_subset, args.muon_peer)
    return {"accuracy": r["accuracy"], "n_test": 10_000, "train_s": r["wall_s"], "timer_s": r["timer_s"],
            "eval_s": None, "flops": plan["flops"], "optimizer_flops": plan["optimizer_flops"], "steps": plan["steps"],
            "batch_size": r["batch_size"], "epochs": r["epochs"], "peer": peer_airbench_muon.describe(args.muon_peer)}


RUNNERS = {"gpuvision": run_gpuvision, "airbench": run_airbench, "airbench_muon": run_airbench_muon}


# ------------------------------------------------------------------------------------------ results
def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def report(records: list[dict], n_train: int) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["tool"], r["label"]), []).append(r)
    base = flops.airbench_plan(n_train)["flops"]  # arithmetic: the same whether airbench94 ran or not
    rows = []
    for (_, label), runs in groups.items():
        acc = benchlib.summary([r["accuracy"] for r in runs])
        f = np.mean([r["flops"] for r in runs])
        # the whole run, training and TTA evaluation, for every tool (airbench's timers cover both)
        cpu_s = [r["cpu_s"] for r in runs if "cpu_s" in r]
        cpu = f"{np.mean(cpu_s):.0f}" if cpu_s else ""
        rows.append([label, len(runs), f"{100 * acc['mean']:.2f}", f"{100 * acc['std']:.2f}", f"{100 * acc['min']:.2f}",
                     f"{100 * acc['max']:.2f}", runs[0]["batch_size"], f"{runs[0]['epochs']:g}", runs[0]["steps"],
                     f"{f / 1e12:.2f}", f"{f / base:.3f}",
                     f"{np.mean([r['wall_s'] for r in runs]):.0f}", cpu])
    return benchlib.markdown_table(["configuration", "seeds", "TTA acc % mean", "std", "min", "max", "batch", "epochs",
                                    "steps", "train TFLOP", "x airbench94", "run wall s", "run CPU s"], rows)


def default_label(overrides: dict, n_train: int) -> str:
    """fast-<optimizer>-<hash of the resolved settings>: a changed default gets a label of its own."""
    recipe = create_recipe("fast", **overrides)
    recipe.resolve(n_train, 32)
    digest = hashlib.sha256(json.dumps(recipe.describe(), sort_keys=True).encode()).hexdigest()[:6]
    return f"fast-{recipe.settings.optimizer}-{digest}"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=benchlib.DEFAULT_DATA, help="CIFAR-10-JPEG archive")
    p.add_argument("--train-subset", type=int, default=10_000, help="stratified training images")
    p.add_argument("--seeds", type=int, default=5, help="seeds K..K+N-1 for each tool (K: --first-seed)")
    p.add_argument("--first-seed", type=int, default=0, help="K: two invocations at once can split the seeds")
    p.add_argument("--tools", default=",".join(TOOLS))
    p.add_argument("--label", default=None, help="name of the gpuvision configuration (default: the recipe's)")
    p.add_argument("--recipe-args", type=json.loads, default={}, help="gpuvision recipe overrides, as JSON")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="every tool's, on the CPU")
    p.add_argument("--muon-peer", default=None, help="path of airbench94_muon.py (see peer_airbench_muon.py)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--hours", type=float, default=1.0, help="start no run after this long")
    p.add_argument("--results", type=Path, default=None, help="JSON-lines file (default under benchmarks/results)")
    p.add_argument("--work-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "gpuvision-budget")
    p.add_argument("--report", action="store_true", help="print the table of the results file and stop")
    args = p.parse_args(argv)
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if set(args.tools) - set(TOOLS):
        p.error(f"tools are {TOOLS}")
    args.label = args.label or default_label(args.recipe_args, args.train_subset)
    args.results = args.results or benchlib.default_results_dir() / f"budget-{args.train_subset}.jsonl"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        print(report(load(args.results), args.train_subset))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    data = prepare(args)
    cpu = cpu_model()
    started = time.perf_counter()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for tool in args.tools:
            label = args.label if tool == "gpuvision" else PEER_LABELS[tool]
            done = [r for r in load(args.results) if r["tool"] == tool and r["label"] == label]
            if any(r["seed"] == seed for r in done):
                continue
            expected = np.mean([r["wall_s"] for r in done]) if done else 0.0
            if time.perf_counter() - started + expected > 3600 * args.hours:
                log(f"--hours {args.hours}: no time for {tool} seed {seed} (~{expected:.0f} s); run again to go on")
                print(report(load(args.results), args.train_subset))
                return 0
            load_start = os.getloadavg()
            t, cpu_t = time.perf_counter(), time.process_time()
            record = {"tool": tool, "label": label, "seed": seed, **RUNNERS[tool](args, data, seed),
                      "wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - cpu_t,
                      "load_average_start": load_start,
                      "load_average_end": os.getloadavg(), "threads": torch.get_num_threads(),
                      "commit": benchlib.git_commit(), "cpu": cpu, "torch": torch.__version__,
                      "date": datetime.now().astimezone().isoformat(timespec="seconds"),
                      "train_subset": args.train_subset, "precision": args.precision}
            args.results.parent.mkdir(parents=True, exist_ok=True)
            with open(args.results, "a") as f:
                f.write(json.dumps(record) + "\n")
            log(f"{tool} {label} seed {seed}: accuracy {record['accuracy']:.4f}, {record['flops'] / 1e12:.2f} TFLOP, "
                f"{record['wall_s']:.0f} s")
    print(report(load(args.results), args.train_subset))
    print(f"\nresults: {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
