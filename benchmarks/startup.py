"""Start-up: how long each command takes to say anything, for two source trees side by side (issue 21).

    python benchmarks/startup.py --before ../main/src --after src --repeat 5 --model-dir runs/digits

Each row runs `python -m gpuvision ARGS` in a fresh process, its stderr a (pseudo-)terminal as a user's is, and
times, from the process's start, its first byte of output (stdout or stderr) and its end (or its kill, once it has
said something: a training run is not waited for), with its CPU time (user + system, from wait4). The two trees run
alternately, `repeat` times each, with the same interpreter and environment; medians are reported. On a CPU shared
with other work, wall times grow with the load (the load average is recorded); the CPU times and the before/after
ratios of one run are the figures to compare.
"""

from __future__ import annotations

import argparse
import os
import pty
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

import benchlib

WAIT_S = 300.0  # the longest a command may take to say something


def first_output(argv: list[str], src: str, stop_after_first: bool) -> dict:
    """Seconds to the first byte of output, to the end, and CPU seconds, of `python -m gpuvision argv`, with its
    stderr on a terminal (a pseudo-terminal), as a user sees it."""
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve()), "OMP_NUM_THREADS": "1"}
    terminal, child_side = pty.openpty()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "gpuvision", *argv], stdout=subprocess.PIPE, stderr=child_side,
                            env=env)
    os.close(child_side)
    first = None
    streams = [proc.stdout.fileno(), terminal]
    while streams:
        ready, _, _ = select.select(streams, [], [], max(0.0, WAIT_S - (time.perf_counter() - started)))
        if not ready:
            break
        for fd in ready:
            try:
                data = os.read(fd, 1 << 16)
            except OSError:  # the terminal's other side closed (Linux answers EIO)
                data = b""
            if not data:
                streams.remove(fd)
            elif first is None:
                first = time.perf_counter() - started
        if first is not None and stop_after_first:
            proc.kill()
            break
    _, _, usage = os.wait4(proc.pid, 0)
    ended = time.perf_counter() - started
    os.close(terminal)
    proc.stdout.close()
    return {"first_output_s": first, "end_s": ended, "cpu_s": usage.ru_utime + usage.ru_stime}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the older source tree (its src/)")
    parser.add_argument("--after", default=str(benchlib.REPO / "src"), help="the newer source tree")
    parser.add_argument("--model-dir", required=True, help="a model directory both trees read")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default=None, help="results directory")
    args = parser.parse_args()
    commands = {"--version": (["--version"], False), "--help": (["--help"], False),
                "train --help": (["train", "--help"], False),
                "predict (bad image)": (["predict", args.model_dir, "/nonexistent.png"], False),
                "train --data digits (first line)": (["train", "--data", "digits", "--out", str(Path(
                    args.model_dir).parent / "startup-scratch"), "--overwrite"], True)}
    trees = {"before": args.before, "after": args.after}
    runs = {(c, t): [] for c in commands for t in trees}
    load = [os.getloadavg()]
    for _ in range(args.repeat):
        for name, (argv, stop) in commands.items():
            for tree, src in trees.items():
                runs[name, tree].append(first_output(argv, src, stop))
    load.append(os.getloadavg())
    rows = []
    for name in commands:
        row = {"command": f"gpuvision {name}"}
        for tree in trees:
            for key in ("first_output_s", "end_s", "cpu_s"):
                values = [r[key] for r in runs[name, tree] if r[key] is not None]
                row[f"{tree}_{key}"] = statistics.median(values) if values else None
        row["first_output_ratio"] = row["before_first_output_s"] / row["after_first_output_s"]
        rows.append(row)
    result = {**benchlib.header("startup", "cpu"), "repeat": args.repeat, "load_average_start_end": load,
              "before": args.before, "after": args.after, "rows": rows}
    path = benchlib.write_result(result, benchlib.result_path(result, args.out))
    print("| command | before: first output / CPU s | after: first output / CPU s | ratio |\n|---|---|---|---|")
    for r in rows:
        print(f"| `{r['command']}` | {r['before_first_output_s']:.2f} / {r['before_cpu_s']:.2f} | "
              f"{r['after_first_output_s']:.2f} / {r['after_cpu_s']:.2f} | {r['first_output_ratio']:.1f}x |")
    print(f"load average at start and end: {load}; {path}")


if __name__ == "__main__":
    main()
