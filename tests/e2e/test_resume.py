"""A training process killed mid-run resumes from its checkpoint to bitwise the same weights (CPU, fp32), from an
epoch's end or from within an epoch (a step cadence)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

ARGS = ["--data", "digits", "--device", "cpu", "--precision", "fp32", "--epochs", "6", "--eval-every", "2",
        "--seed", "3"]


def train(out, *extra):
    config = out.parent / "narrow.json"  # a narrow net: the test is about resuming, not about learning
    config.write_text(json.dumps({"model_args": {"widths": [16, 32, 32]}}))
    return subprocess.Popen([sys.executable, "-m", "gpuvision", "train", *ARGS, "--config", str(config), "--out",
                             str(out), *map(str, extra)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("cadence, killed_after", [("1", "epoch-0003-*"),
                                                   ("7st", "epoch-0001-step-000000035")])
def test_killed_run_resumes_bitwise(tmp_path, cadence, killed_after):
    """digits trains 20 steps an epoch: "7st" checkpoints within epochs (step 35: the 15th of epoch 2)."""
    whole = train(tmp_path / "whole", "--checkpoint-every", cadence)
    assert whole.wait(timeout=900) == 0, whole.stderr.read()

    killed = train(tmp_path / "killed", "--checkpoint-every", cadence)
    deadline = time.monotonic() + 600
    while not list((tmp_path / "killed" / "checkpoints").glob(f"{killed_after}/state.json")):
        assert killed.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=60)
    assert not (tmp_path / "killed" / "manifest.json").exists()

    resumed = train(tmp_path / "killed", "--resume")
    assert resumed.wait(timeout=900) == 0, resumed.stderr.read()
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "killed" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(a[k].equal(b[k]) for k in a)
    records = [[json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
               for name in ("whole", "killed")]
    assert [r["epoch"] for r in records[1]] == [1, 2, 3, 4, 5, 6]
    assert [r["train_loss"] for r in records[0]] == pytest.approx([r["train_loss"] for r in records[1]], rel=1e-6)
