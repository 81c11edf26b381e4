"""Training on several processes through a real torchrun with gloo on 127.0.0.1: N processes reproduce one, a
checkpoint moves between process counts, a killed worker is restarted and resumes, two "nodes" train one model."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("distributed_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = ["--data", "digits", "--device", "cpu", "--precision", "fp32", "--optimizer", "sgd", "--seed", "4",
        "--config"]


def torchrun(*args, nproc: int = 2, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc-per-node={nproc}", *map(str, args)], env=ENV, **popen)


def gpuvision(*args, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gpuvision", *map(str, args)], env=ENV, **popen)


def finished(process: subprocess.Popen, timeout: float = 600) -> str:
    _, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return err or ""


def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"model_args": {"widths": [8, 16, 16]}}))
    return path


def test_two_processes_reproduce_one_step_for_step(tmp_path):
    runs = {}
    for nproc in (1, 2):
        out, losses = tmp_path / f"run{nproc}", tmp_path / f"losses{nproc}.json"
        finished(torchrun(WORKER, out, losses, nproc=nproc, stderr=subprocess.PIPE, text=True))
        runs[nproc] = (json.loads(losses.read_text()), load_file(out / "model.safetensors"), out)
    (one, weights1, _), (two, weights2, out2) = runs[1], runs[2]
    assert one["world_size"] == 1 and two["world_size"] == 2 and len(one["losses"]) == 3
    assert all(abs(a - b) < 1e-5 for a, b in zip(one["losses"], two["losses"], strict=True)), (one, two)
    assert all((weights1[k].float() - weights2[k].float()).abs().max() < 1e-5 for k in weights1)
    manifest = json.loads((out2 / "manifest.json").read_text())
    assert manifest["training"]["world_size"] == 2
    assert sorted(p.name for p in out2.iterdir()) == ["curves.png", "manifest.json", "metrics.jsonl",
                                                      "model.safetensors", "split.json"]  # rank 0 alone wrote it


def test_a_two_process_checkpoint_resumes_in_one_process(tmp_path):
    out = tmp_path / "run"
    launcher = gpuvision("train", *TINY, tiny_config(tmp_path), "--nproc", 2, "--epochs", 3, "--checkpoint-every",
                         "1e", "--out", out, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not list((out / "checkpoints").glob("epoch-0001-*/state.json")):
        assert launcher.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    for pid in [*_workers(launcher.pid), launcher.pid]:  # the workers run in sessions of their own
        os.kill(pid, signal.SIGKILL)
    launcher.wait(timeout=60)
    assert not (out / "manifest.json").exists()
    finished(gpuvision("train", "--resume", "--out", out, stderr=subprocess.PIPE, text=True))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["world_size"] == 1 and manifest["metrics"]["epoch"] == 3
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def _workers(launcher_pid: int) -> list[int]:
    """The worker processes an elastic agent started (its children running gpuvision)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == launcher_pid:
            found.append(int(stat.parent.name))
    return found


def test_a_killed_worker_is_restarted_and_the_run_resumes(tmp_path):
    out = tmp_path / "run"
    launcher = gpuvision("train", *TINY, tiny_config(tmp_path), "--nproc", 2, "--max-restarts", 1, "--epochs", 3,
                         "--checkpoint-every", "1e", "--out", out, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not list((out / "checkpoints").glob("epoch-0001-*/state.json")):
        assert launcher.poll() is None and time.monotonic() < deadline, "the run ended before a worker was killed"
        time.sleep(0.05)
    workers = _workers(launcher.pid)
    assert len(workers) == 2
    os.kill(workers[-1], signal.SIGKILL)
    err = finished(launcher)
    assert "torchrun restarted the workers (restart 1): resuming from the last checkpoint" in err
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]  # no epoch twice
    assert json.loads((out / "manifest.json").read_text())["training"]["world_size"] == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_one_machine_train_one_model(tmp_path):
    out, endpoint = tmp_path / "run", f"127.0.0.1:{_free_port()}"
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
                               "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", "--rdzv-id=two-nodes",
                               "-m", "gpuvision", "train", *TINY, str(tiny_config(tmp_path)), "--epochs", "1",
                               "--checkpoint-every", "0", "--out", str(out)],
                              env={**ENV, "TORCHELASTIC_MAX_RESTARTS": "0"}, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for node in nodes:
        finished(node)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["world_size"] == 2
    assert len(list(out.glob("model.safetensors"))) == 1


@pytest.mark.parametrize("env, expected", [
    ({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, (1, 4, 1, 0)),
    ({"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
     (3, 8, 1, 0)),
    ({"RANK": "0", "WORLD_SIZE": "2", "TORCHELASTIC_RESTART_COUNT": "2"}, (0, 2, 0, 2)),
    ({}, (0, 1, 0, 0)),
])
def test_the_world_comes_from_torchrun_a_pytorchjob_or_slurm(env, expected):
    from gpuvision.train.distributed import world_from_env

    world = world_from_env(env)
    assert (world.rank, world.size, world.local_rank, world.restarts) == expected


def test_slurm_without_a_master_address_is_a_clear_error():
    from gpuvision.errors import UserError
    from gpuvision.train.distributed import world_from_env

    with pytest.raises(UserError, match="MASTER_ADDR"):
        world_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})
