"""Cold and warm load time of a data source through gpuvision's decode cache.

    python benchmarks/load_time.py                                  # CIFAR-10-JPEG, 3 warm loads
    python benchmarks/load_time.py --data some/folder --repeat 5

cold: the first `load_images` into a fresh, empty GPUVISION_CACHE (read the archive, decode every image, write the
cache entry); warm: later loads of the same source from that cache (the archive's bytes are still hashed to find
the entry). Also timed: a cold and a warm load with the settings `gpuvision.evaluate` asks for (the model's image
size and channel count), which form a different cache key than `gpuvision train`'s defaults. All in one process,
so the operating system's file cache is warm after the first read of the archive.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import benchlib

from gpuvision.data import load_images


def _timed(src: str, **kwargs) -> tuple[float, int]:
    started = time.perf_counter()
    images = load_images(src, **kwargs)
    return time.perf_counter() - started, len(images)


def measure(src: str, repeat: int) -> list[dict]:
    rows = []
    for label, kwargs in (("train settings", {}), ("evaluate settings", {"image_size": 32, "channels": 3})):
        cold, n = _timed(src, **kwargs)
        warm = [_timed(src, **kwargs)[0] for _ in range(repeat)]
        rows.append({"what": f"cold, {label}", "seconds": cold, "images": n})
        rows.append({"what": f"warm, {label} (median of {repeat})", "seconds": statistics.median(warm),
                     "images": n, "all": warm})
        benchlib.log(f"{label}: cold {cold:.2f} s, warm {statistics.median(warm):.3f} s")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=benchlib.DEFAULT_DATA)
    p.add_argument("--repeat", type=int, default=3, help="warm loads to time (the median is reported)")
    p.add_argument("--results-dir", type=Path, default=None)
    args = p.parse_args(argv)
    result = benchlib.header("load_time", "cpu", argv)
    saved = os.environ.get("GPUVISION_CACHE")
    with tempfile.TemporaryDirectory(prefix="gpuvision-cache-") as cache:
        os.environ["GPUVISION_CACHE"] = cache  # cold means an empty cache of our own
        try:
            rows = measure(str(args.data), max(1, args.repeat))
        finally:
            if saved is None:
                os.environ.pop("GPUVISION_CACHE", None)
            else:
                os.environ["GPUVISION_CACHE"] = saved
    result.update(data=str(args.data), data_bytes=args.data.stat().st_size if args.data.is_file() else None,
                  rows=rows)
    path = benchlib.write_result(result, benchlib.result_path(result, args.results_dir))
    table = [[r["what"], f"{r['seconds']:.3f}", r["images"], f"{r['images'] / r['seconds']:,.0f}"] for r in rows]
    print(benchlib.markdown_table(["load", "seconds", "images", "images/s"], table))
    print(f"\n{args.data}; {benchlib.describe_machine(result['machine'])}; commit {result['commit']}; "
          f"{result['date']}\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
