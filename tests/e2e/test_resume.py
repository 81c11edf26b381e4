"""A training process killed mid-run resumes from its checkpoint to bitwise the same weights (CPU, fp32)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from safetensors.torch import load_file

ARGS = ["--data", "digits", "--device", "cpu", "--precision", "fp32", "--epochs", "6", "--checkpoint-every", "1",
        "--eval-every", "2", "--seed", "3"]


def train(*extra):
    return subprocess.Popen([sys.executable, "-m", "gpuvision", "train", *ARGS, *map(str, extra)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_killed_run_resumes_bitwise(tmp_path):
    whole = train("--out", tmp_path / "whole")
    assert whole.wait(timeout=600) == 0, whole.stderr.read()

    killed = train("--out", tmp_path / "killed")
    deadline = time.monotonic() + 600
    while not (tmp_path / "killed" / "checkpoints" / "epoch-0003").exists():
        assert killed.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=60)
    assert not (tmp_path / "killed" / "manifest.json").exists()

    resumed = train("--out", tmp_path / "killed", "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "killed" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(a[k].equal(b[k]) for k in a)
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6  # one line per epoch, none repeated by the resume
