"""A decoded set three times larger than the bound on what a process may hold trains from the memory-mapped cache:
only the batches it reads are paged in. Measured: the peak of the process's anonymous memory, sampled as it runs,
against the same run holding the images (the device loader on the CPU). The process's own working memory (the
input statistics and whitening from fixed samples, the sample keys) is some 250 MB here, whatever the set's size:
what matters is that the set itself is not in it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

MIB = 1 << 20
SET = 600 * MIB
BOUND = SET // 3
CHILD = """
import json, re, sys, threading, time
import gpuvision
import torch  # in the baseline: gpuvision imports it only when first needed

def anon():
    return int(re.search(r"RssAnon:\\s+(\\d+) kB", open("/proc/self/status").read())[1]) << 10

settings = json.loads(sys.argv[1])
if settings.pop("decode_only", False):
    from gpuvision.data import load_images
    load_images(settings["data"], max_decoded_bytes="2G")
    raise SystemExit
peak, before = [0], anon()
def sample():
    while True:
        peak[0] = max(peak[0], anon())
        time.sleep(0.01)
threading.Thread(target=sample, daemon=True).start()
result = gpuvision.train(**settings)
time.sleep(0.05)
print(json.dumps({"before": before, "peak": peak[0], "loader": result.manifest.training.acceleration["loader"]}))
"""


def idx_set(root: Path, n_train: int, n_test: int, side: int = 64) -> Path:
    """An MNIST-style IDX folder of random grey side x side images (a cheap large source: decoding is a reshape)."""
    rng = np.random.default_rng(0)
    root.mkdir()
    for part, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, side, side), dtype=np.uint8)
        header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in images.shape)
        (root / f"{part}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        labels = (np.arange(n) % 4).astype(np.uint8)
        (root / f"{part}-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + labels.tobytes())
    return root


def run(settings: dict, env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(settings)], capture_output=True, text=True,
                          env={**os.environ, **env, "OMP_NUM_THREADS": "1"}, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1]) if proc.stdout.strip() else {}


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssAnon from Linux's /proc")
def test_a_set_three_times_the_bound_trains_from_the_memory_mapped_cache(tmp_path):
    source = idx_set(tmp_path / "idx", n_train=SET // 784, n_test=400, side=28)  # MNIST-sized images
    env = {"GPUVISION_CACHE": str(tmp_path / "cache")}
    run({"data": str(source), "decode_only": True}, env)  # decoded once, where the memory is (the cache persists)
    settings = dict(data=str(source), max_decoded_bytes=str(BOUND), epochs=0.0001, batch_size=32, val_fraction=0,
                    eval_every=0, checkpoint_every=0, device="cpu", precision="fp32", optimizer="sgd",
                    model_args={"widths": [8, 8, 8]})
    streamed = run({**settings, "out": str(tmp_path / "streamed")}, env)
    assert streamed["loader"] == "stream"  # chosen because the images exceed the bound
    held = run({**settings, "loader": "device", "out": str(tmp_path / "held")}, env)
    grew = {name: r["peak"] - r["before"] for name, r in (("streamed", streamed), ("held", held))}
    assert grew["streamed"] < SET / 2 and grew["held"] - grew["streamed"] > 0.8 * SET, grew
    assert json.loads((tmp_path / "streamed" / "manifest.json").read_text())["split"]["sizes"]["train"] == SET // 784
