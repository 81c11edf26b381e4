"""Bombs that once took gigabytes are refused within 1 GiB of peak memory, each measured in a fresh process.

The child imports only the data layer (the package's __init__ would add torch, some 500 MB, to every figure) and
reports its peak RSS from /proc/self/status (VmHWM): getrusage's ru_maxrss would not do, as Linux carries the
high-water mark of the forking process (this one, torch loaded) across exec.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ZipEntry, image_bytes, make_tree, png_of_zeros, raw_zip, tar_gz_of_zeros

import gpuvision.data

PACKAGE = Path(gpuvision.data.__file__).resolve().parents[1]
CHILD = f"""
import json, re, sys, types
package = types.ModuleType("gpuvision")
package.__path__ = [{str(PACKAGE)!r}]
sys.modules["gpuvision"] = package
from gpuvision.data.sources import load_images
from gpuvision.errors import UserError
try:
    load_images(sys.argv[1], **json.loads(sys.argv[2]))
    outcome = "loaded"
except UserError as e:
    outcome = "UserError: " + str(e)
status = open("/proc/self/status").read()
print(json.dumps({{"outcome": outcome, "peak_bytes": int(re.search(r"VmHWM:\\s+(\\d+) kB", status)[1]) << 10}}))
"""
GIB = 1 << 30
SAFE = [(f"{c}/{i}.png", image_bytes(10 * k + i)) for k, c in enumerate(("cat", "dog")) for i in range(2)]


def run_child(src: Path | str, env: dict | None = None, **kwargs) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(src), json.dumps(kwargs)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def tar_gz_1gib(tmp_path: Path) -> Path:
    return tar_gz_of_zeros(tmp_path / "one-gib.tar.gz", "cat/big.png", 1024, before=SAFE)  # about 1 MB


def zip_1536_mib(tmp_path: Path) -> Path:
    mib = bytes(1 << 20)
    entries = [ZipEntry(n, d) for n, d in SAFE] + [ZipEntry(f"dog/{i:04d}.png", mib) for i in range(1536)]
    return raw_zip(tmp_path / "many.zip", entries)  # about 1.7 MB


def eight_big_pngs(tmp_path: Path) -> Path:
    root = make_tree(tmp_path / "big", per_class=1)
    png = png_of_zeros(tmp_path / "big.png", 8000, 8192).read_bytes()  # 64 MiB decoded, 64 kB on disk
    for i in range(8):
        (root / ("cat", "dog")[i % 2] / f"big{i}.png").write_bytes(png)
    return root


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from Linux's /proc")
@pytest.mark.parametrize("build,env,kwargs,words", [
    (tar_gz_1gib, {}, {}, "decompression bomb"),
    (zip_1536_mib, {}, {}, "decompression bomb"),
    (eight_big_pngs, {"GPUVISION_MAX_DECODED_BYTES": "256M"}, {}, "the decoded images (10 x 3 x 8192 x 8000) need"),
    (lambda _: "digits", {"GPUVISION_MAX_DECODED_BYTES": "1G"}, {"image_size": 2048}, "1797 x 1 x 2048 x 2048"),
], ids=["tar.gz-1GiB-member", "zip-1536x1MiB", "8-pngs-8000x8192", "digits-2048px"])
def test_bombs_are_refused_within_1_gib(tmp_path, build, env, kwargs, words):
    result = run_child(build(tmp_path), {"GPUVISION_CACHE": str(tmp_path / "cache"), **env}, **kwargs)
    assert result["outcome"].startswith("UserError: ") and words in result["outcome"], result
    assert result["peak_bytes"] < GIB, result


def test_a_cached_archive_is_refused_under_a_lower_archive_bound(monkeypatch, tmp_path):
    """The cache entry of an archive stands for it only under the bound it was read with (issue 22)."""
    from helpers import write_tar

    from gpuvision.data import load_images
    from gpuvision.errors import UserError

    monkeypatch.setenv("GPUVISION_CACHE", str(tmp_path / "cache"))
    archive = write_tar(tmp_path / "small.tar", SAFE)
    assert len(load_images(str(archive))) == 4  # decoded and cached under the default bound
    monkeypatch.setenv("GPUVISION_MAX_ARCHIVE_BYTES", "1K")
    with pytest.raises(UserError, match="more than 0 MiB uncompressed"):
        load_images(str(archive))
