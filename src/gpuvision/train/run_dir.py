"""The run directory `train --out` writes: what it may be, the lock held while a run writes it, and the marker
that tells a run in progress from a user's own directory.

`--overwrite` replaces only a directory gpuvision wrote (a model directory, recognised by its manifest, or an
unfinished run, recognised by the marker); an `--out` that is, contains or lies inside the data source is refused.
"""

from __future__ import annotations

from dataclasses import fields, replace
from datetime import datetime
from pathlib import Path

from ..artifact import MANIFEST, check_outside_models
from ..config import RESUMABLE_SETTINGS, TrainConfig
from ..errors import BadInput, UserError, require
from ..files import OutputLock, empty_dir

RunLock = OutputLock  # the lock every writer takes (files.py); a run holds it on its directory while it writes

MARKER = ".gpuvision-run"  # present from the start of a run until its manifest is written


def written_by_gpuvision(path: Path) -> bool:
    return (path / MANIFEST).is_file() or (path / MARKER).is_file()


def check_out(out: Path, data: str | None, overwrite: bool) -> None:
    """Refuse an --out that would lose data, before anything is written."""
    require(not out.is_file(), f"--out {out} is a file; give a directory", BadInput)
    check_outside_models(out)
    if data and data != "digits":
        source, target = Path(data).resolve(), out.resolve()
        require(not (target == source or target.is_relative_to(source) or source.is_relative_to(target)),
                f"--out {out} is, contains or lies inside the data source {data}; choose another directory", BadInput)
    if out.is_dir() and any(out.iterdir()):
        require(overwrite, f"--out {out} exists and is not empty; add --overwrite to replace it, or --resume", BadInput)
        require(written_by_gpuvision(out), f"--out {out} is not a directory gpuvision wrote (no {MANIFEST} and no "
                "run marker); --overwrite replaces only those: choose another --out", BadInput)


def start(out: Path) -> None:
    """Empty a locked run directory for a new run (it was checked to be gpuvision's) and mark it as in progress."""
    try:
        empty_dir(out)
        (out / MARKER).write_text("a gpuvision training run writes this directory\n")
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there ({e.strerror}); choose a writable directory") from e


def finish(out: Path) -> None:
    (out / MARKER).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ settings of a run
def default_out(data_name: str) -> Path:
    return Path("runs") / f"{data_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def absolute_data(data: str) -> str:
    return data if data == "digits" else str(Path(data).expanduser().resolve())


def resumed_config(given: TrainConfig, saved: dict) -> TrainConfig:
    """The checkpoint's settings; a given setting that differs from both its default and the checkpoint's value
    would change the run, so it is refused (only RESUMABLE_SETTINGS may change)."""
    try:
        default, saved_config = TrainConfig(), TrainConfig(**saved)
    except TypeError as e:
        raise UserError(f"--resume: the checkpoint's settings do not fit this gpuvision ({e}); start again with "
                        "--overwrite") from e
    conflicts = [f.name for f in fields(TrainConfig) if f.name not in RESUMABLE_SETTINGS
                 and getattr(given, f.name) != getattr(default, f.name)
                 and getattr(given, f.name) != getattr(saved_config, f.name)]
    require(not conflicts, f"--resume continues the run as it was started; these settings differ from its "
            f"checkpoint: {', '.join('--' + c.replace('_', '-') for c in conflicts)} (drop them, or start a new run)",
            BadInput)
    kept = {name: getattr(given, name) for name in RESUMABLE_SETTINGS
            if name not in ("resume", "overwrite") and getattr(given, name) != getattr(default, name)}
    return replace(saved_config, **kept, resume=True, overwrite=False).validate()
