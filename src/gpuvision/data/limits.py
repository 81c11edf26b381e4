"""Bounds on what reading a source may cost in memory, read from the environment when they are used.

GPUVISION_MAX_ARCHIVE_BYTES bounds an archive's uncompressed size (default 8 GiB); GPUVISION_MAX_DECODED_BYTES
bounds the decoded image set, N x C x H x W bytes (default 8 GiB: fits a 24 GiB machine with room for training).
Both take plain bytes or a number with a K, M, G or T suffix (powers of 1024), e.g. `8G`.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np

from ..errors import require

DEFAULT_MAX_BYTES = 8 << 30
_UNITS = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}


def parse_bytes(text: str | int, what: str) -> int:
    """A positive byte count from "8G", "512M", "1000000" or an int; `what` names the setting in the error."""
    text = str(text).strip()
    match = re.fullmatch(r"(\d+)\s*([KMGT]?)", text, re.IGNORECASE)
    require(match is not None and int(match[1]) > 0,
            f"{what}={text!r} is not a size; give bytes or a number with K, M, G or T (e.g. 8G)")
    return int(match[1]) << _UNITS[match[2].upper()]


def env_bytes(name: str, default: int = DEFAULT_MAX_BYTES) -> int:
    """A byte count from environment variable `name`, or default when unset."""
    text = os.environ.get(name, "").strip()
    return parse_bytes(text, name) if text else default


def available_memory() -> int | None:
    """Bytes of memory the kernel says can be allocated without swapping (Linux), or None where unknown."""
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:  # not Linux: only the configured bound applies
        return None
    match = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.MULTILINE)
    return int(match[1]) << 10 if match else None


def allocate(shape: tuple[int, ...], max_bytes: int | None, what: str) -> np.ndarray:
    """An empty uint8 array for a decoded set, after checking its size against the bound and against half the
    available memory (training holds a second copy of its split beside the set, and more)."""
    need = math.prod(shape)
    bound = env_bytes("GPUVISION_MAX_DECODED_BYTES") if max_bytes is None else max_bytes
    dims = " x ".join(str(s) for s in shape)
    require(need <= bound, f"{what}: the decoded images ({dims}) need {_gib(need)}, more than the bound of "
            f"{_gib(bound)}; use a smaller --image-size, or raise GPUVISION_MAX_DECODED_BYTES if the memory exists")
    free = available_memory()
    require(free is None or need <= free // 2, f"{what}: the decoded images ({dims}) need {_gib(need)}, more than "
            f"half of the {_gib(free or 0)} of memory available (training keeps a second copy of them); use a "
            "smaller --image-size or free some memory")
    return np.empty(shape, dtype=np.uint8)


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"
