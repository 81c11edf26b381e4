"""The airbench94_muon peer: `airbench94_muon.py` of github.com/KellerJordan/cifar10-airbench, run from a path.

The file is not part of this repository: fetch it once (any commit's copy; the figures in BENCHMARKS.md name the one
used) and pass its path (`--muon-peer PATH`, default ../peers/airbench94_muon.py beside the repository, or
.local/airbench94_muon.py where fetch_wheels.sh put it for the GPU machine). It is imported as a module, never
edited; its `main(run, model)` trains one run (8 epochs of 2,000, Muon on the filters) and returns the TTA test
accuracy. Like the airbench94 peer it reads `cifar10/{train,test}.pt` relative to the working directory, the
files `peer_airbench.write_cifar_folder` writes (a seeded shuffle of the archive's images: it whitens from the first
5,000). Its timer (CUDA events) covers whitening, the training epochs and the final TTA; we report it as its time,
and the wall time of the whole call beside it. Its per-epoch test pass (untimed, for its printed table only) is
skipped, as for airbench94.

On CUDA it runs as its `__main__` does: the network compiled with mode="max-autotune", one warm-up run on random
labels, cuDNN autotuning on. On the CPU its CUDA-only calls are patched from here for the duration of a run:
`.cuda()`/`.half()` are no-ops (weights and inputs stay float32), `torch.load` maps to the CPU, CUDA events become
a wall clock, and the network runs eager (as gpuvision's does on the CPU) under bf16 autocast where the CPU has fast
bf16, its whitening in float32 (see `peer_airbench.in_fp32`). Its Newton-Schulz iteration stays in bf16 (its own
cast) but runs uncompiled there.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import sys
import time
from pathlib import Path

import torch
from peer_airbench import cpu_patches, in_directory, in_fp32, no_epoch_eval, replaced

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = (REPO.parent / "peers" / "airbench94_muon.py", REPO / ".local" / "airbench94_muon.py")
SOURCE = "https://github.com/KellerJordan/cifar10-airbench/blob/master/airbench94_muon.py"
BATCH_SIZE, EPOCHS = 2_000, 8  # fixed inside its main(); for FLOP counts and tables


def default_path() -> Path | None:
    return next((p for p in CANDIDATES if p.is_file()), None)


@functools.cache
def load(path: str | Path | None = None):
    """The peer's module, imported from its file (its top level only defines things and sets cuDNN autotuning,
    which is restored here: the peer's runs turn it on for themselves)."""
    path = Path(path) if path else default_path()
    if path is None or not path.is_file():
        raise SystemExit(f"the airbench94_muon peer needs its file: save {SOURCE} as {CANDIDATES[0]} or pass "
                         "--muon-peer PATH")
    spec = importlib.util.spec_from_file_location("airbench94_muon", path)
    module = importlib.util.module_from_spec(spec)
    autotune = torch.backends.cudnn.benchmark
    with replaced(sys, "argv", [str(path), *sys.argv[1:]]):  # it reads its own source from sys.argv[0]
        spec.loader.exec_module(module)
    torch.backends.cudnn.benchmark = autotune
    module.__peer_path__ = str(path)
    return module


def _load_to_cpu(original):
    def load_cpu(f, *args, map_location=None, **kwargs):
        return original(f, *args, map_location="cpu", **kwargs)

    return load_cpu


class MuonPeer:
    """One network reused across runs, as the peer's `__main__` does (main() resets its weights each run)."""

    def __init__(self, path: str | Path | None, device: str, bf16: bool = False):
        self.module, self.device, self.bf16 = load(path), device, bf16
        self.on_cpu = not device.startswith("cuda")
        with self._mode():
            self.model = self.module.CifarNet().to(device, memory_format=torch.channels_last)
        if not self.on_cpu:
            self.model.compile(mode="max-autotune")

    @contextlib.contextmanager
    def _mode(self):
        m = self.module
        if not self.on_cpu:
            with torch.backends.cudnn.flags(enabled=True, benchmark=True):
                yield
            return
        eager_ns = m.zeropower_via_newtonschulz5._torchdynamo_orig_callable  # no inductor compile on the CPU
        patches = [(torch, "load", _load_to_cpu(torch.load)), (m, "zeropower_via_newtonschulz5", eager_ns),
                   (m.CifarNet, "init_whiten", in_fp32(m.CifarNet.init_whiten))]
        with cpu_patches(patches, self.bf16):
            yield

    def run(self, root: Path, seed: int | str, epoch_eval: bool = False) -> dict:
        """One run of its main() in root (holding cifar10/*.pt): TTA accuracy, its own timer and wall time.
        seed "warmup" is its warm-up run (random labels; compiles on CUDA)."""
        m, captured = self.module, {}

        def record(variables: dict, is_final_entry: bool) -> None:  # replaces its table printer
            if is_final_entry:
                captured.update(accuracy=float(variables["tta_val_acc"]), timer_s=float(variables["time_seconds"]))

        torch.manual_seed(0 if seed == "warmup" else seed)
        started = time.perf_counter()
        with contextlib.ExitStack() as stack:
            stack.enter_context(in_directory(root))
            stack.enter_context(contextlib.redirect_stdout(sys.stderr))
            stack.enter_context(replaced(m, "print_training_details", record))
            if not epoch_eval:
                stack.enter_context(replaced(m, "evaluate", no_epoch_eval(m.evaluate)))
            stack.enter_context(self._mode())
            m.main(seed, self.model)
        if not self.on_cpu:
            torch.cuda.synchronize()
        return {**captured, "wall_s": time.perf_counter() - started, "seed": seed, "batch_size": BATCH_SIZE,
                "epochs": EPOCHS, "peer": m.__peer_path__}


def describe(path: str | Path | None = None) -> str:
    """The peer file's path and sha256 (which copy ran)."""
    import hashlib

    module = load(path)
    digest = hashlib.sha256(Path(module.__peer_path__).read_bytes()).hexdigest()[:12]
    return f"{os.path.abspath(module.__peer_path__)} (sha256 {digest})"
