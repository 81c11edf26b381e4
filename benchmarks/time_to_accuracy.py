"""Time to accuracy on CIFAR-10-JPEG: gpuvision vs the airbench94 and airbench94_muon peers vs a plain PyTorch loop.

    python benchmarks/time_to_accuracy.py --device cuda --seeds 5                      # the GPU figure
    python benchmarks/time_to_accuracy.py --device cuda --seeds 20 --no-cli-run --tools airbench,airbench_muon,gpuvision
    python benchmarks/time_to_accuracy.py --device cpu --seeds 1 --tools airbench_muon,gpuvision --no-cli-run \
        --muon-peer ../peers/airbench94_muon.py                                        # a CPU pair (1-2 h here)
    python benchmarks/time_to_accuracy.py --device cpu --train-subset 2000 --test-subset 1000 \
        --epochs 1 --seeds 1 --plain-epochs 1 --batch-size 256                         # a smoke run (minutes)

The data set is decoded once with gpuvision's loader (into its cache); every tool then sees the same pixels:
gpuvision reads its cache, the airbench peers get the same uint8 arrays as train.pt/test.pt (airbench94_muon: its
own 8 epochs of 2,000 whatever --epochs and --batch-size say; see peer_airbench_muon.py), and the plain loop decodes
the very same JPEG files through ImageFolder. All three train on every training image (no validation split)
and are scored with TTA on the test images (the given 50,000 / 10,000 unless scaled down with the subset flags).

Two times per tool, like against like:
  span  what airbench's own timer covers: whitening initialisation + training loop + TTA evaluation.
        airbench: that timer (CUDA events; a wall clock on the CPU; see peer_airbench.py). gpuvision: perf_counter
        spans, each between two device syncs, in one process that drives the Trainer's phases itself: the model's
        data_init re-run on 5,000 training images (the work the Trainer's setup did), `Trainer.train()`, and TTA
        of the trained model over the device-resident test images, 2,000 at a time, with one sync at the end.
  wall  the whole call as a user makes it. airbench: `train94` (network, loaders, whitening, epochs, TTA; without
        its per-epoch test pass, which only feeds its printed table, as gpuvision runs with eval_every 0).
        gpuvision: `gpuvision.train` (cache load, split, split.json, training, saving the model directory; the
        Trainer's setup / train / save_model / cleanup) plus `gpuvision.evaluate(split="test")` (model directory,
        hashes, test images, TTA). plain: loaders to TTA accuracy (see plain_pytorch.py).
Each tool first makes one warm-up run (which pays torch.compile where it is on); then the seeds alternate between
the tools in the order of --tools (airbench seed 0, gpuvision seed 0, airbench seed 1, ...), and the result file
is rewritten after every seed. The plain loop runs one seed after them; the fresh `python -m gpuvision train`
process (--cli-run) is timed last of all, and a failure there loses nothing else. Ratios: "x airbench" is a
tool's time over airbench's (issue 4's target <= 0.8, span and wall), "x muon" over airbench94_muon's (issue 17's
target on the CPU <= 0.9); "plain / tool" is how many times faster than the plain loop by wall time (target >= 5).
"""

from __future__ import annotations

import argparse
import copy
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
from gpuvision.config import TrainConfig
from gpuvision.data import load_images
from gpuvision.data.safe_archive import iter_members
from gpuvision.device import bf16_is_fast, synchronize
from gpuvision.models import model_spec
from gpuvision.runtime.base import tta_logits
from gpuvision.runtime.torch_backends import EagerRuntime
from gpuvision.train.trainer import Trainer

TOOLS = ("airbench", "airbench_muon", "gpuvision", "plain")
FULL_TRAIN, FULL_TEST = 50_000, 10_000
WHITEN_IMAGES = 5_000  # the sample both tools whiten from
TTA_BATCH = 2_000  # airbench's evaluation batch


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


def _timed(device: torch.device, fn) -> tuple[object, float]:
    """fn's result and its seconds, between two syncs of the device."""
    synchronize(device)
    started = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - started


def _whitening(trainer: Trainer) -> None:
    """The model's data-dependent initialisation again, on a copy: the work the Trainer's setup did for it."""
    spec = model_spec(trainer.architecture["name"])
    if spec.data_init:
        sample = torch.from_numpy(trainer.images.images[trainer.stats_sample[:WHITEN_IMAGES]]).to(trainer.device)
        spec.data_init(copy.deepcopy(trainer.model), trainer.train_loader.normalise(sample))


@torch.no_grad()
def _tta_accuracy(trainer: Trainer, images: torch.Tensor, labels: torch.Tensor) -> float:
    """TTA accuracy of the trained model on device-resident uint8 test images; one host sync, at the end."""
    level = trainer.recipe.settings.tta_level
    runtime = EagerRuntime(trainer.model, trainer.spec, trainer.images.classes, level, trainer.device,
                           trainer.precision)
    correct = torch.zeros((), dtype=torch.long, device=trainer.device)
    for start in range(0, len(labels), TTA_BATCH):
        x = trainer.train_loader.normalise(images[start : start + TTA_BATCH])
        logits = tta_logits(runtime.run, x, level)
        correct += (logits.argmax(1) == labels[start : start + TTA_BATCH]).sum()
    return correct.item() / len(labels)


def gpuvision_once(args, data: dict, out: Path, seed: int, epochs: float | None) -> dict:
    dev = torch.device(args.device)
    before = _dynamo_stats()
    config = TrainConfig(data=data["source"], out=str(out), epochs=epochs, batch_size=args.batch_size,
                         optimizer=args.optimizer, val_fraction=0, eval_every=0, checkpoint_every=0,
                         device=args.device, precision=args.precision, compile=args.compile, seed=seed, overwrite=True)
    trainer = Trainer(config)  # what gpuvision.train runs: setup, train, save_model, cleanup
    _, setup_s = _timed(dev, trainer.setup)
    _, loop_s = _timed(dev, trainer.train)
    manifest, save_s = _timed(dev, trainer.save_model)
    # the span's parts outside the loop (not part of the wall time)
    _, whiten_s = _timed(dev, lambda: _whitening(trainer))
    test = trainer.split.test
    images = torch.from_numpy(trainer.images.images[test]).to(dev)
    labels = torch.from_numpy(trainer.images.labels[test]).to(dev)
    span_accuracy, tta_s = _timed(dev, lambda: _tta_accuracy(trainer, images, labels))
    _, cleanup_s = _timed(dev, trainer.cleanup)
    report, eval_s = _timed(dev, lambda: gpuvision.evaluate(str(out), split="test", plot=False))
    after = _dynamo_stats()
    train_s = setup_s + loop_s + save_s + cleanup_s
    return {"seed": seed, "accuracy": report["accuracy"], "span_accuracy": span_accuracy, "tta": report["tta"],
            "n_test": report["n"], "span_s": whiten_s + loop_s + tta_s, "wall_s": train_s + eval_s,
            "whiten_s": whiten_s, "loop_s": loop_s, "tta_s": tta_s, "train_s": train_s, "setup_s": setup_s,
            "save_s": save_s, "eval_s": eval_s, "precision": manifest.training.precision,
            "compiled": manifest.training.compiled, "optimizer": manifest.recipe["optimizer"],
            "epochs": manifest.recipe["epochs"], "batch_size": manifest.recipe["batch_size"],
            "dynamo": {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}}


def cli_run(args, data: dict, out: Path) -> float:
    """A fresh `python -m gpuvision train` process, timed from its start to the saved model."""
    cmd = [sys.executable, "-m", "gpuvision", "train", "--data", data["source"], "--out", str(out), "--overwrite",
           "--val-fraction", "0", "--eval-every", "0", "--checkpoint-every", "0", "--device", args.device,
           "--precision", args.precision, "--compile", args.compile, "--seed", "0", "--json"]
    cmd += ["--epochs", str(args.epochs)] if args.epochs else []
    cmd += ["--batch-size", str(args.batch_size)] if args.batch_size else []
    cmd += ["--optimizer", args.optimizer] if args.optimizer else []
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=args.cli_timeout)
    return time.perf_counter() - started


class GpuvisionTool:
    def __init__(self, args, data: dict, work: Path):
        self.args, self.data, self.work = args, data, work

    def warm_up(self) -> dict:
        epochs = self.args.epochs if self.args.warmup == "full" else 0.1
        r = gpuvision_once(self.args, self.data, self.work / "gv-warmup", 10_000, epochs)
        return {"warmup_s": r["wall_s"], "warmup": r}

    def once(self, seed: int) -> dict:
        r = gpuvision_once(self.args, self.data, self.work / f"gv-{seed}", seed, self.args.epochs)
        log(f"gpuvision seed {seed}: accuracy {r['accuracy']:.4f}; span {r['span_s']:.2f} s (whitening "
            f"{r['whiten_s']:.2f}, loop {r['loop_s']:.2f}, TTA {r['tta_s']:.2f}); wall {r['wall_s']:.2f} s "
            f"(train {r['train_s']:.2f}, evaluate {r['eval_s']:.2f})")
        return r


def peer_folder(data: dict, work: Path) -> Path:
    """cifar10/{train,test}.pt, the files both airbench peers read (written once)."""
    import peer_airbench

    root = work / "airbench"
    if not (root / "cifar10" / "test.pt").exists():
        images = data["images"]
        peer_airbench.write_cifar_folder(root, images.images, images.labels, images.classes, data["train_idx"],
                                         data["test_idx"])
    return root


class AirbenchTool:
    def __init__(self, args, data: dict, work: Path):
        import peer_airbench

        self.peer, self.args = peer_airbench, args
        self.root = peer_folder(data, work)
        self.bf16 = {"auto": bf16_is_fast(torch.device("cpu")), "bf16": True, "fp32": False}[args.peer_precision]
        self.precision = peer_airbench.precision(args.device, self.bf16)

    def warm_up(self) -> dict:
        epochs = self.args.epochs if self.args.warmup == "full" else 0.1
        r = self.peer.run_train94(self.root, self.args.device, 10_000, epochs, self.args.batch_size, self.bf16,
                                  epoch_eval=False)
        return {"warmup_s": r["wall_s"]}

    def once(self, seed: int) -> dict:
        r = self.peer.run_train94(self.root, self.args.device, seed, self.args.epochs, self.args.batch_size, self.bf16,
                                  epoch_eval=False)
        r.update(span_s=r["timer_s"], precision=self.precision)
        log(f"airbench seed {seed}: accuracy {r['accuracy']:.4f}; span {r['span_s']:.2f} s (its timer); "
            f"wall {r['wall_s']:.2f} s")
        return r


class AirbenchMuonTool:
    """airbench94_muon (see peer_airbench_muon.py): its own 8 epochs of 2,000 whatever --epochs/--batch-size say."""

    def __init__(self, args, data: dict, work: Path):
        import peer_airbench
        import peer_airbench_muon

        self.args, self.root = args, peer_folder(data, work)
        bf16 = {"auto": bf16_is_fast(torch.device("cpu")), "bf16": True, "fp32": False}[args.peer_precision]
        self.peer = peer_airbench_muon.MuonPeer(args.muon_peer, args.device, bf16)
        self.precision = peer_airbench.precision(args.device, bf16)
        self.describe = peer_airbench_muon.describe(args.muon_peer)

    def warm_up(self) -> dict:
        if self.args.warmup != "full":  # eager on the CPU: nothing to compile, and its run has one length only
            return {"warmup_s": 0.0, "peer": self.describe}
        return {"warmup_s": self.peer.run(self.root, "warmup")["wall_s"], "peer": self.describe}

    def once(self, seed: int) -> dict:
        r = self.peer.run(self.root, seed)
        r.update(span_s=r["timer_s"], precision=self.precision)
        log(f"airbench_muon seed {seed}: accuracy {r['accuracy']:.4f}; span {r['span_s']:.2f} s (its timer); "
            f"wall {r['wall_s']:.2f} s")
        return r


def run_plain(args, data: dict) -> dict:
    import plain_pytorch

    r = plain_pytorch.run_plain(data["tree"], args.device, 0, args.plain_epochs or args.epochs, args.batch_size,
                                full_epochs=args.epochs)
    projected = r["steps"] != r["full_steps"]
    log(f"plain seed 0: accuracy {r['accuracy']:.4f} after {r['epochs']} epoch(s) in {r['wall_s']:.1f} s"
        + (f"; {r['projected_s']:.1f} s projected to {r['full_epochs']} epochs" if projected else ""))
    r["wall_s"] = r["projected_s"] if projected else r["wall_s"]
    return {"runs": [r], "precision": "fp32", "projected": projected}


TOOL_CLASSES = {"gpuvision": GpuvisionTool, "airbench": AirbenchTool, "airbench_muon": AirbenchMuonTool}


# ------------------------------------------------------------------------------------------ report
def table(results: dict, device: str) -> str:
    def mean(name, key):
        values = [r[key] for r in results[name]["runs"] if r.get(key) is not None]
        return float(np.mean(values)) if values else None

    span = {name: mean(name, "span_s") for name in results}
    wall = {name: mean(name, "wall_s") for name in results}
    rows = []
    for name, r in results.items():
        if not r["runs"]:
            continue
        acc = benchlib.summary([run["accuracy"] for run in r["runs"]])
        label = f"{name} ({r['runs'][0]['epochs']} ep)" if r.get("projected") else name

        def ratio(times, key, base):
            t, b = times[key], times.get(base)
            return f"{t / b:.3f}" if t is not None and b else ""

        rows.append([label, device, r["precision"], len(r["runs"]), f"{100 * acc['mean']:.2f}",
                     f"{100 * acc['min']:.2f}", f"{100 * acc['max']:.2f}",
                     f"{span[name]:.2f}" if span[name] is not None else "-", ratio(span, name, "airbench"),
                     ratio(span, name, "airbench_muon"),
                     f"{wall[name]:.2f}" + (" (projected)" if r.get("projected") else ""),
                     ratio(wall, name, "airbench"), ratio(wall, name, "airbench_muon"),
                     f"{wall['plain'] / wall[name]:.2f}" if "plain" in wall else ""])
    return benchlib.markdown_table(["tool", "device", "precision", "seeds", "acc % mean", "min", "max", "span s",
                                    "span x airbench", "span x muon", "wall s", "wall x airbench", "wall x muon",
                                    "plain / tool"], rows)


def notes(results: dict, scale: dict) -> list[str]:
    lines = [f"scale: train {scale['n_train']} of {FULL_TRAIN} images, test {scale['n_test']} of {FULL_TEST}, "
             f"epochs {scale['epochs'] or 'tool default'}, plain epochs {scale['plain_epochs']}, "
             f"batch size {scale['batch_size'] or 'tool default'}"]
    if results.get("gpuvision", {}).get("runs"):
        g = results["gpuvision"]
        m = {k: np.mean([r[k] for r in g["runs"]]) for k in ("whiten_s", "loop_s", "tta_s", "setup_s", "save_s",
                                                               "eval_s")}
        lines.append(f"gpuvision ({g['runs'][0]['optimizer']}, {g['runs'][0]['epochs']} epochs of "
                     f"{g['runs'][0]['batch_size']}): span = whitening {m['whiten_s']:.2f} + loop {m['loop_s']:.2f} "
                     f"+ TTA {m['tta_s']:.2f} s; wall adds setup {m['setup_s']:.2f}, saving {m['save_s']:.2f} and "
                     f"evaluate {m['eval_s']:.2f} s (means); warm-up {g['warmup_s']:.1f} s"
                     + (f"; CLI process start to saved model {g['cli_wall_s']:.1f} s" if "cli_wall_s" in g else ""))
    if results.get("airbench", {}).get("runs"):
        a = results["airbench"]
        lines.append(f"airbench: span is its own timer; warm-up {a['warmup_s']:.1f} s")
    if results.get("airbench_muon", {}).get("runs"):
        a = results["airbench_muon"]
        lines.append(f"airbench_muon ({a['peer']}): 8 epochs of 2,000 (its own); span is its own timer; warm-up "
                     f"{a['warmup_s']:.1f} s")
    if results.get("plain", {}).get("runs"):
        p = results["plain"]["runs"][0]
        lines.append(f"plain: {p['epochs']} epoch(s) measured ({p['images_per_s']:.0f} img/s training); time shown is "
                     f"for {p['full_epochs']} epochs" + (" (projected from the per-step time)"
                                                         if results["plain"]["projected"] else ""))
    return lines


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=benchlib.DEFAULT_DATA, help="CIFAR-10-JPEG archive")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seeds", type=int, default=5, help="seeds for gpuvision and airbench (plain runs one)")
    p.add_argument("--tools", default=",".join(TOOLS), help="comma-separated; seeds alternate in this order")
    p.add_argument("--epochs", type=float, default=None, help="override every tool's epochs")
    p.add_argument("--plain-epochs", type=float, default=None, help="epochs for the plain loop (time projected)")
    p.add_argument("--batch-size", type=int, default=None, help="override every tool's batch size")
    p.add_argument("--optimizer", default=None, help="gpuvision's --optimizer (default: the recipe's)")
    p.add_argument("--train-subset", type=int, default=None, help="train on N stratified training images")
    p.add_argument("--test-subset", type=int, default=None, help="score on N stratified test images")
    p.add_argument("--precision", default="auto", help="gpuvision's --precision")
    p.add_argument("--compile", default="auto", help="gpuvision's --compile")
    p.add_argument("--peer-precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="the airbench peers on the CPU: bf16 autocast or fp32 (auto: bf16 where the CPU has it fast)")
    p.add_argument("--muon-peer", default=None, help="path of airbench94_muon.py (see peer_airbench_muon.py)")
    p.add_argument("--warmup", choices=["full", "short"], default=None,
                   help="warm-up run length: full (default on CUDA) or 0.1 epoch (default on the CPU)")
    p.add_argument("--cli-run", action=argparse.BooleanOptionalAction, default=True,
                   help="last, also time a fresh `python -m gpuvision train` process")
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
        tools = {name: TOOL_CLASSES[name](args, data, work) for name in args.tools if name in TOOL_CLASSES}
        for name, tool in tools.items():
            result["tools"][name] = {"runs": [], **tool.warm_up()}
            result["tools"][name]["precision"] = getattr(tool, "precision", None)
            log(f"{name} warm-up ({args.warmup}): {result['tools'][name]['warmup_s']:.1f} s")
        for seed in range(args.seeds):
            for name, tool in tools.items():
                run = tool.once(seed)
                entry = result["tools"][name]
                entry["runs"].append(run)
                entry["precision"] = entry["precision"] or run["precision"]
                benchlib.write_result(result, path)  # after every seed: a cut-off run keeps what it measured
        if tools:
            print("\n" + table(result["tools"], args.device), flush=True)
        if "plain" in args.tools:
            result["tools"]["plain"] = run_plain(args, data)
            benchlib.write_result(result, path)
            print("\n" + table(result["tools"], args.device), flush=True)
        if args.cli_run and "gpuvision" in tools:
            try:
                result["tools"]["gpuvision"]["cli_wall_s"] = cli_run(args, data, work / "gv-cli")
                log(f"gpuvision CLI, process start to saved model: {result['tools']['gpuvision']['cli_wall_s']:.1f} s")
            except (subprocess.SubprocessError, OSError) as e:
                log(f"gpuvision CLI run failed ({e}); every other figure is saved")
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
