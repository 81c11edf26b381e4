"""Predicting many image files: files, folders and glob patterns in, one row per image out (CSV or JSON lines).

An input that cannot be read (missing, not an image, a pattern that matches nothing) is a row with an `error`, and
the rest go on: `gpuvision predict` reports each such file and exits with code 2 at the end, with their count.
Images are decoded and run in batches, so a folder of any size needs memory for one batch only.
"""

from __future__ import annotations

import csv
import glob
import io
import json
from collections.abc import Iterator
from pathlib import Path

from ..data.images import IMAGE_SUFFIXES, decode_image
from ..errors import BadInput, require
from ..files import atomic_write

OUT_FORMATS = (".csv", ".jsonl", ".json")
NOT_AN_IMAGE = "not an image (or an unreadable one); give a PNG or JPEG file"


def expand(inputs: list[str]) -> list[tuple[str, str | None]]:
    """Each input as (image file, error or None): a file as itself, a folder as every image file under it (by
    suffix, sorted), a glob pattern (`*`, `?`, `[...]`, recursive `**`) as its matches, sorted."""
    found: list[tuple[str, str | None]] = []
    for item in map(str, inputs):
        path = Path(item)
        if path.is_file():
            found.append((item, None))
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            found += [(str(p), None) for p in files] or [(item, "a folder with no image files in it")]
        elif any(c in item for c in "*?["):
            matches = sorted(m for m in glob.glob(item, recursive=True) if Path(m).is_file())
            found += [(m, None) for m in matches] or [(item, "no file matches this pattern")]
        else:
            found.append((item, "no such image file"))
    return found


def predict_files(model, found: list[tuple[str, str | None]], top_k: int = 1, tta: bool | None = None,
                  batch_size: int = 64) -> Iterator[dict]:
    """One row per image of `found` (what `expand` found), in order: {"image", "top": [{class, probability}]}, or
    {"image", "error"} for one that cannot be read."""
    pending: list[tuple[str, object]] = []

    def flush() -> Iterator[dict]:
        good = [(name, a) for name, a in pending if not isinstance(a, str)]
        tops = iter(model.predict([a for _, a in good], top_k=top_k, tta=tta) if good else [])
        for name, a in pending:
            yield {"image": name, "error": a} if isinstance(a, str) else {"image": name, "top": next(tops)}
        pending.clear()

    for name, error in found:
        array = None if error else decode_image(Path(name))
        pending.append((name, error or (NOT_AN_IMAGE if array is None else array)))
        if len(pending) >= batch_size:
            yield from flush()
    yield from flush()


def check_out(out: str | None) -> None:
    if out is not None:
        require(Path(out).suffix.lower() in OUT_FORMATS, f"--out {out}: give a .csv or a .jsonl file", BadInput)
        require(not Path(out).is_dir(), f"--out {out} is a directory; give a .csv or .jsonl file name", BadInput)


def write_rows(rows: list[dict], out: str, top_k: int) -> None:
    """The rows as CSV (image, class, probability, then class_2, probability_2, ... to top_k, and error) or as JSON
    lines (by the file's suffix), written atomically."""
    check_out(out)
    if Path(out).suffix.lower() == ".csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        ranks = [""] + [f"_{i}" for i in range(2, top_k + 1)]
        writer.writerow(["image", *(f"{k}{r}" for r in ranks for k in ("class", "probability")), "error"])
        for row in rows:
            cells = [v for t in row.get("top", []) for v in (t["class"], f"{t['probability']:.6f}")]
            writer.writerow([row["image"], *cells, *[""] * (2 * top_k - len(cells)), row.get("error", "")])
        text = buffer.getvalue()
    else:
        text = "".join(json.dumps(row) + "\n" for row in rows)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda p: Path(p).write_text(text, newline=""))
