"""Helpers shared by the benchmark scripts: where things are, what machine this is, tables and JSON results."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
# gpu.sh points this at $OUT so results come back from the GPU machine; otherwise benchmarks/results (git-ignored).
RESULTS_ENV = "GPUVISION_BENCH_RESULTS"


def default_results_dir() -> Path:
    return Path(os.environ.get(RESULTS_ENV) or REPO / "benchmarks" / "results")


def git_commit() -> str:
    """The short commit (+dirty); on a machine the repository reached without .git, what fetch_wheels.sh saved."""
    from gpuvision.version import commit

    return commit() or "unknown"


def machine(device: str) -> dict:
    """What the figures were measured on: gpuvision's one machine description, plus this moment's load."""
    import torch

    from gpuvision.device import machine as this_machine

    info = {**this_machine().to_json(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def describe_machine(info: dict) -> str:
    where = info.get("gpu") or f"{info['cpu']}, {info['cores']} cores"
    return f"{where}; python {info['python']}, torch {info['torch']}"


def header(name: str, device: str, argv: list[str] | None = None) -> dict:
    """The common head of every result file: what, when, where, which commit, which command."""
    return {"benchmark": name, "date": datetime.now().astimezone().isoformat(timespec="seconds"),
            "commit": git_commit(), "command": " ".join([Path(sys.executable).name, *(argv or sys.argv)]),
            "device": device, "machine": machine(device)}


def result_path(result: dict, directory: Path | None = None) -> Path:
    """Where a run's JSON goes: <results dir>/<benchmark>-<device>-<date-time>.json."""
    directory = Path(directory or default_results_dir())
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return directory / f"{result['benchmark']}-{result['device'].replace(':', '')}-{stamp}.json"


def write_result(result: dict, path: Path) -> Path:
    """Write (or rewrite, as figures come in) one JSON result file atomically; returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table (pastes straight into BENCHMARKS.md); floats are printed as given by the caller."""
    cells = [headers] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def stratified_subset(labels: np.ndarray, candidates: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n of the candidate indices, spread evenly over the classes (seeded), sorted; all of them if n >= len."""
    if n >= len(candidates):
        return np.sort(candidates)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels[candidates])
    quota = np.full(len(classes), n // len(classes))
    quota[: n % len(classes)] += 1
    picked = []
    for c, q in zip(classes, quota):
        members = candidates[labels[candidates] == c]
        picked.append(members[rng.permutation(len(members))[:q]])
    return np.sort(np.concatenate(picked))


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries the tables."""
    print(message, file=sys.stderr, flush=True)


def summary(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {"n": 0}
    return {"n": int(arr.size), "mean": float(arr.mean()), "min": float(arr.min()), "max": float(arr.max()),
            "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0}
