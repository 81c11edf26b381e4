"""Time to accuracy on CIFAR-10-JPEG: gpuvision vs the airbench94 peer vs a plain PyTorch loop (issue 4).

    python benchmarks/time_to_accuracy.py --device cuda --seeds 5                      # the GPU figure
    python benchmarks/time_to_accuracy.py --device cpu --seeds 3 --plain-epochs 1      # the CPU figure (hours here)
    python benchmarks/time_to_accuracy.py --device cpu --train-subset 2000 --test-subset 1000 \\
        --epochs 1 --seeds 1 --plain-epochs 1 --batch-size 256                         # a smoke run (minutes)

The data set is decoded once with gpuvision's loader (into its cache); every tool then sees the same pixels:
gpuvision reads its cache, airbench gets the same uint8 arrays as train.pt/test.pt, and the plain loop decodes
the very same JPEG files through ImageFolder. All three train on every training image (no validation split)
and are scored with TTA on the test images (the given 50,000 / 10,000 unless scaled down with the subset flags).

How each is timed:
  gpuvision  after an in-process warm-up run (which also pays torch.compile where it is on), the wall time of
             `gpuvision.train(...)` (setup, training, saving the model directory) plus
             `gpuvision.evaluate(..., split="test")` with TTA. Reported beside it: the warm-up (compile) time,
             the training loop alone, and, with --cli-run, a fresh `python -m gpuvision train` process timed from
             its start to the saved model.
  airbench   its own timer (whitening init + training epochs + TTA evaluation), after a warm-up run; see
             peer_airbench.py. Its wall time per call is reported beside it.
  plain      wall time of one run, loaders to TTA accuracy; see plain_pytorch.py.
Ratios: "x airbench" is a tool's time over airbench's (the issue's target is <= 0.8); "plain / tool" is how many
times faster than the plain loop (target >= 5).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
import numpy as np
import torch
from benchlib import log

import gpuvision
from gpuvision.data import load_images
from gpuvision.data.safe_archive import iter_members
from gpuvision.device import cpu_has_fast_bf16, synchronize

TOOLS = ("gpuvision", "airbench", "plain")
FULL_TRAIN, FULL_TEST = 50_000, 10_000


# ------------------------------------------------------------------------------------------ data
def extract_tree(archive: Path, keys: set[str], root: Path) -> Path:
    """Write the archive members named in keys (train/<class>/x.jpg, test/...) under root, byte for byte."""
    written = 0
    for name, data in iter_members(archive):
        if name in keys:
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            written += 1
    if written != len(keys):
        raise SystemExit(f"{archive}: found {written} of the {len(keys)} images the subset names")
    return root


def prepare_data(args, work: Path) -> dict:
    """Decode once; pick the (sub)sets; make the sources each tool reads. Returns what the runners need."""
    started = time.perf_counter()
    full = load_images(str(args.data))
    decode_s = time.perf_counter() - started
    log(f"decoded {len(full)} images of {args.data} in {decode_s:.1f} s (gpuvision cache)")
    pick = benchlib.stratified_subset
    train_idx = pick(full.labels, np.flatnonzero(~full.given_test), args.train_subset or FULL_TRAIN)
    test_idx = pick(full.labels, np.flatnonzero(full.given_test), args.test_subset or FULL_TEST)
    subset = len(train_idx) < (~full.given_test).sum() or len(test_idx) < full.given_test.sum()
    tree = work / "tree"
    if subset or "plain" in args.tools:  # the plain loop needs files; a subset needs a source of its own
        extract_tree(Path(args.data), {full.keys[i] for i in np.concatenate([train_idx, test_idx])}, tree)
    if subset:  # gpuvision reads the subset's JPEG files: the same bytes, so the same decoded pixels
        source = str(tree)
        images = load_images(source)
        train_idx, test_idx = np.flatnonzero(~images.given_test), np.flatnonzero(images.given_test)
    else:
        source, images = str(args.data), full
    return {"source": source, "images": images, "train_idx": train_idx, "test_idx": test_idx, "tree": tree,
            "decode_s": decode_s, "n_train": len(train_idx), "n_test": len(test_idx)}


# ------------------------------------------------------------------------------------------ gpuvision
def _dynamo_stats() -> dict:
    """torch.compile's counters (graphs compiled, recompiles), to see whether later seeds recompile."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return {}
    return {f"{group}.{name}": n for group in ("stats", "recompiles") for name, n in counters[group].items()}


def gpuvision_once(args, data: dict, out: Path, seed: int, epochs: float | None) -> dict:
    dev = torch.device(args.device)
    before = _dynamo_stats()
    synchronize(dev)
    started = time.perf_counter()
    result = gpuvision.train(data=data["source"], out=str(out), epochs=epochs, batch_size=args.batch_size,
                             val_fraction=0, eval_every=0, checkpoint_every=0, device=args.device,
                             precision=args.precision, compile=args.compile, seed=seed, overwrite=True)
    synchronize(dev)
    trained = time.perf_counter()
    report = gpuvision.evaluate(str(result.model_dir), split="test", plot=False)
    synchronize(dev)
    done = time.perf_counter()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    m = result.manifest
    after = _dynamo_stats()
    return {"seed": seed, "accuracy": report["accuracy"], "tta": report["tta"], "n_test": report["n"],
            "time_s": done - started, "train_s": trained - started, "eval_s": done - trained,
            "loop_s": sum(r["seconds"] for r in metrics), "precision": m.training.precision,
            "compiled": m.training.compiled, "epochs": m.recipe["epochs"], "batch_size": m.recipe["batch_size"],
            "dynamo": {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}}


def cli_run(args, data: dict, out: Path) -> float:
    """A fresh `python -m gpuvision train` process, timed from its start to the saved model."""
    cmd = [sys.executable, "-m", "gpuvision", "train", "--data", data["source"], "--out", str(out), "--overwrite",
           "--val-fraction", "0", "--eval-every", "0", "--checkpoint-every", "0", "--device", args.device,
           "--precision", args.precision, "--compile", args.compile, "--seed", "0", "--json"]
    cmd += ["--epochs", str(args.epochs)] if args.epochs else []
    cmd += ["--batch-size", str(args.batch_size)] if args.batch_size else []
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=args.cli_timeout)
    return time.perf_counter() - started


def run_gpuvision(args, data: dict, work: Path) -> dict:
    warm_epochs = args.epochs if args.warmup == "full" else 0.1
    started = time.perf_counter()
    warm = gpuvision_once(args, data, work / "gv-warmup", 10_000, warm_epochs)
    warmup_s = time.perf_counter() - started
    log(f"gpuvision warm-up ({args.warmup}): {warmup_s:.1f} s, accuracy {warm['accuracy']:.4f}")
    runs = []
    for seed in range(args.seeds):
        runs.append(gpuvision_once(args, data, work / f"gv-{seed}", seed, args.epochs))
        r = runs[-1]
        log(f"gpuvision seed {seed}: accuracy {r['accuracy']:.4f} in {r['time_s']:.2f} s (train call {r['train_s']:.2f}"
            f" s, loop {r['loop_s']:.2f} s, evaluate {r['eval_s']:.2f} s)")
    extra = {"warmup_s": warmup_s, "warmup": warm}
    if args.cli_run:
        extra["cli_wall_s"] = cli_run(args, data, work / "gv-cli")
        log(f"gpuvision CLI, process start to saved model: {extra['cli_wall_s']:.1f} s")
    return {"runs": runs, "precision": runs[0]["precision"], "times": [r["time_s"] for r in runs], **extra}


# ------------------------------------------------------------------------------------------ peers
def run_airbench(args, data: dict, work: Path) -> dict:
    import peer_airbench

    images = data["images"]
    root = peer_airbench.write_cifar_folder(work / "airbench", images.images, images.labels, images.classes,
                                            data["train_idx"], data["test_idx"])
    bf16 = {"auto": cpu_has_fast_bf16(), "bf16": True, "fp32": False}[args.peer_precision]
    warm_epochs = args.epochs if args.warmup == "full" else 0.1
    started = time.perf_counter()
    peer_airbench.run_train94(root, args.device, 10_000, warm_epochs, args.batch_size, bf16)
    warmup_s = time.perf_counter() - started
    log(f"airbench warm-up ({args.warmup}): {warmup_s:.1f} s")
    runs = []
    for seed in range(args.seeds):
        runs.append(peer_airbench.run_train94(root, args.device, seed, args.epochs, args.batch_size, bf16))
        r = runs[-1]
        log(f"airbench seed {seed}: accuracy {r['accuracy']:.4f} in {r['timer_s']:.2f} s of its timer "
            f"({r['wall_s']:.2f} s wall)")
    return {"runs": runs, "precision": peer_airbench.precision(args.device, bf16), "warmup_s": warmup_s,
            "times": [r["timer_s"] for r in runs]}


def run_plain(args, data: dict, work: Path) -> dict:
    import plain_pytorch

    r = plain_pytorch.run_plain(data["tree"], args.device, 0, args.plain_epochs or args.epochs, args.batch_size,
                                full_epochs=args.epochs)
    projected = r["steps"] != r["full_steps"]
    log(f"plain seed 0: accuracy {r['accuracy']:.4f} after {r['epochs']} epoch(s) in {r['wall_s']:.1f} s"
        + (f"; {r['projected_s']:.1f} s projected to {r['full_epochs']} epochs" if projected else ""))
    return {"runs": [r], "precision": "fp32", "projected": projected,
            "times": [r["projected_s"] if projected else r["wall_s"]]}


RUNNERS = {"gpuvision": run_gpuvision, "airbench": run_airbench, "plain": run_plain}


# ------------------------------------------------------------------------------------------ report
def table(results: dict, device: str) -> str:
    base = {name: np.mean(r["times"]) for name, r in results.items() if r.get("times")}
    rows = []
    for name, r in results.items():
        acc = benchlib.summary([run["accuracy"] for run in r["runs"]])
        t = base[name]
        label = f"{name} ({r['runs'][0]['epochs']} ep)" if r.get("projected") else name
        rows.append([label, device, r["precision"], len(r["runs"]), f"{100 * acc['mean']:.2f}",
                     f"{100 * acc['min']:.2f}", f"{100 * acc['max']:.2f}",
                     f"{t:.2f}" + (" (projected)" if r.get("projected") else ""),
                     f"{t / base['airbench']:.3f}" if "airbench" in base else "",
                     f"{base['plain'] / t:.2f}" if "plain" in base else ""])
    return benchlib.markdown_table(["tool", "device", "precision", "seeds", "acc % mean", "min", "max",
                                    "time s mean", "x airbench", "plain / tool"], rows)


def notes(results: dict, scale: dict) -> list[str]:
    lines = [f"scale: train {scale['n_train']} of {FULL_TRAIN} images, test {scale['n_test']} of {FULL_TEST}, "
             f"epochs {scale['epochs'] or 'tool default (9.9)'}, plain epochs {scale['plain_epochs']}, "
             f"batch size {scale['batch_size'] or 'tool default'}"]
    if "gpuvision" in results:
        g = results["gpuvision"]
        loop = np.mean([r["loop_s"] for r in g["runs"]])
        ev = np.mean([r["eval_s"] for r in g["runs"]])
        lines.append(f"gpuvision: warm-up/compile {g['warmup_s']:.1f} s; training loop alone {loop:.2f} s, "
                     f"evaluate {ev:.2f} s (means)"
                     + (f"; CLI process start to saved model {g['cli_wall_s']:.1f} s" if "cli_wall_s" in g else ""))
    if "airbench" in results:
        a = results["airbench"]
        wall = np.mean([r["wall_s"] for r in a["runs"]])
        lines.append(f"airbench: time is its own timer; wall per train94 call {wall:.2f} s (mean), "
                     f"warm-up {a['warmup_s']:.1f} s")
    if "plain" in results:
        p = results["plain"]["runs"][0]
        lines.append(f"plain: {p['epochs']} epoch(s) measured in {p['wall_s']:.1f} s ({p['images_per_s']:.0f} img/s "
                     f"training); time shown is for {p['full_epochs']} epochs"
                     + (" (projected from the per-step time)" if results["plain"]["projected"] else ""))
    return lines


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=benchlib.DEFAULT_DATA, help="CIFAR-10-JPEG archive")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seeds", type=int, default=5, help="seeds for gpuvision and airbench (plain runs one)")
    p.add_argument("--tools", default=",".join(TOOLS), help="comma-separated, run in this order")
    p.add_argument("--epochs", type=float, default=None, help="override every tool's epochs (default 9.9)")
    p.add_argument("--plain-epochs", type=float, default=None, help="epochs for the plain loop (time projected)")
    p.add_argument("--batch-size", type=int, default=None, help="override every tool's batch size")
    p.add_argument("--train-subset", type=int, default=None, help="train on N stratified training images")
    p.add_argument("--test-subset", type=int, default=None, help="score on N stratified test images")
    p.add_argument("--precision", default="auto", help="gpuvision's --precision")
    p.add_argument("--compile", default="auto", help="gpuvision's --compile")
    p.add_argument("--peer-precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="airbench on the CPU: bf16 autocast or fp32 (auto: bf16 where the CPU has it fast)")
    p.add_argument("--warmup", choices=["full", "short"], default=None,
                   help="warm-up run length: full (default on CUDA) or 0.1 epoch (default on the CPU)")
    p.add_argument("--cli-run", action=argparse.BooleanOptionalAction, default=True,
                   help="also time a fresh `python -m gpuvision train` process")
    p.add_argument("--cli-timeout", type=float, default=3600)
    p.add_argument("--results-dir", type=Path, default=None, help="default $GPUVISION_BENCH_RESULTS or "
                   "benchmarks/results")
    p.add_argument("--work-dir", type=Path, default=None, help="scratch space (default: a temporary folder)")
    args = p.parse_args(argv)
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(args.tools) - set(TOOLS)
    if unknown:
        p.error(f"unknown tool(s) {sorted(unknown)}; choose from {TOOLS}")
    args.warmup = args.warmup or ("full" if args.device.startswith("cuda") else "short")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="gpuvision-tta-", dir=args.work_dir))
    result = benchlib.header("time_to_accuracy", args.device, argv)
    path = benchlib.result_path(result, args.results_dir)
    try:
        data = prepare_data(args, work)
        scale = {"n_train": data["n_train"], "n_test": data["n_test"], "epochs": args.epochs,
                 "plain_epochs": args.plain_epochs or args.epochs or "tool default", "batch_size": args.batch_size,
                 "seeds": args.seeds, "decode_s": data["decode_s"]}
        result.update(scale=scale, tools={})
        for tool in args.tools:  # each tool's figure is printed and saved as soon as it is in
            result["tools"][tool] = RUNNERS[tool](args, data, work)
            benchlib.write_result(result, path)
            print("\n" + table(result["tools"], args.device), flush=True)
        result["load_average_end"] = benchlib.machine(args.device)["load_average"]
        benchlib.write_result(result, path)
        print("\n" + "\n".join(notes(result["tools"], scale)))
        print(f"\n{benchlib.describe_machine(result['machine'])}; commit {result['commit']}; {result['date']}")
        print(f"results: {path}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
