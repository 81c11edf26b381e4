"""The package version, in a module of its own so that any layer can read it; and, when gpuvision runs from a
checkout, that checkout's commit (benchmark reports name it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

__version__ = "0.2.0"

CHECKOUT = Path(__file__).resolve().parents[2]  # the repository root, when gpuvision runs from a checkout


def commit() -> str | None:
    """The checkout's short commit (+dirty); on a machine the checkout reached without .git, the one
    benchmarks/fetch_wheels.sh saved in .local/COMMIT; None where neither exists."""
    if (CHECKOUT / ".git").exists():
        try:
            head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=CHECKOUT, capture_output=True,
                                  text=True, timeout=10)
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=CHECKOUT,
                                   capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            head, dirty = None, ""
        if head is not None and head.returncode == 0 and head.stdout.strip():
            return head.stdout.strip() + ("+dirty" if dirty else "")
    saved = CHECKOUT / ".local" / "COMMIT"
    return f"{saved.read_text().strip()} (from .local/COMMIT)" if saved.is_file() else None
