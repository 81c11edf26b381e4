"""Progress in a log: `gpuvision bench` writes a line per row and, while a row runs long, one at least every
`every` seconds (30 in use; shortened here)."""

from __future__ import annotations

import time

from gpuvision.progress import BenchProgress


def test_bench_progress_logs_each_row_and_a_line_while_a_long_row_runs(capsys):
    with BenchProgress(every=0.2) as progress:
        progress.tty = False  # as in a log (CI, nohup), whatever runs the test
        progress("bench_start", rows=2, devices=["cpu"], out="runs/bench")
        progress("row_start", index=1, label="training on cpu: + torch.compile")
        time.sleep(1.5)  # a first compile
        progress("row_end", index=1, label="training on cpu: + torch.compile", text="99.00 img/s")
        progress("row_start", index=2, label="inference on cpu: eager fp32")
        progress("row_end", index=2, label="inference on cpu: eager fp32", text="skipped: why")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "bench: 2 rows on cpu -> runs/bench"
    still = [line for line in lines if line.startswith("bench: still measuring training on cpu: + torch.compile")]
    assert 2 <= len(still) <= 8  # about one per 0.2 s of the 1.5 s, never one per tick of the ticker
    assert lines[-2].startswith("bench 1/2: training on cpu: + torch.compile: 99.00 img/s (1.")
    assert lines[-1].startswith("bench 2/2: inference on cpu: eager fp32: skipped: why (")
