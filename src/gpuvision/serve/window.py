"""The prediction window of one served model: the latest predictions, their labels once given, and the file that
keeps them across restarts (`--monitor-dir`).

Predictions live in ring arrays of `size` slots (predicted class, top-1 confidence, brightness, label or -1) with
a dict from prediction id to slot, so a window of 100,000 costs a few MB and its statistics are vectorised. A
repeated id names the latest prediction: the older one keeps counting for drift but can no longer be labelled.

The file is JSON lines, one per prediction (`{"id", "p", "c", "b"}`) or label (`{"id", "y"}`), appended per batch.
It is bounded: past COMPACT_AT x size lines it is rewritten (atomically) with just the window, at most two lines a
prediction. An OS lock on a file beside it keeps a second server from writing the same one.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path

import numpy as np

from ..errors import NotFound, UserError
from ..files import atomic_write

log = logging.getLogger(__name__)

COMPACT_AT = 4  # lines per window slot before the file is rewritten (a compacted file has at most 2 per slot)


class Conflict(UserError):
    """A prediction that already has its label."""

    http_status = 409


class Window:
    """The latest `size` predictions and their labels; `path` (a JSON-lines file) keeps them across restarts."""

    def __init__(self, size: int, classes: int, path: Path | None = None):
        self.size, self.classes, self.path = size, classes, path
        self.ids: list[str | None] = [None] * size
        self.slot: dict[str, int] = {}
        self.predicted = np.zeros(size, np.int64)
        self.label = np.full(size, -1, np.int64)
        self.confidence = np.zeros(size, np.float32)
        self.brightness = np.zeros(size, np.float32)
        self.added = 0  # predictions ever added; the next goes to slot added % size
        self._file = self._lock = None
        self._lines = 0
        if path is not None:
            self._open(path)

    @property
    def count(self) -> int:
        """Predictions in the window."""
        return min(self.added, self.size)

    def recent(self, n: int) -> np.ndarray:
        """The slots of the latest n predictions (at most the window), oldest first."""
        n = min(n, self.count)
        return (self.added - n + np.arange(n)) % self.size

    def add(self, ids: list[str], predicted: np.ndarray, confidence: np.ndarray, brightness: np.ndarray,
            write: bool = True) -> None:
        """Record predictions (one id each), evicting the oldest beyond the window."""
        slots = (self.added + np.arange(len(ids))) % self.size
        for prediction_id, slot in zip(ids, slots.tolist()):
            evicted = self.ids[slot]
            if evicted is not None and self.slot.get(evicted) == slot:
                del self.slot[evicted]
            earlier = self.slot.get(prediction_id)
            if earlier is not None:  # a repeated id: only the latest prediction can be labelled
                self.ids[earlier] = None
            self.ids[slot], self.slot[prediction_id] = prediction_id, slot
        self.predicted[slots], self.label[slots] = predicted, -1
        self.confidence[slots], self.brightness[slots] = confidence, brightness
        self.added += len(ids)
        if write and self._file is not None:
            self._write([{"id": i, "p": int(p), "c": round(float(c), 5), "b": round(float(b), 5)}
                         for i, p, c, b in zip(ids, predicted, confidence, brightness)])

    def give_label(self, prediction_id: str, label: int, write: bool = True) -> int:
        """Label a prediction in the window; returns the class it predicted."""
        slot = self.slot.get(prediction_id)
        if slot is None:
            raise NotFound(f"no prediction with id {prediction_id[:100]!r} in the window (unknown, or older than "
                           f"the latest {self.size:,} predictions: --feedback-window)")
        if self.label[slot] >= 0:
            raise Conflict(f"prediction {prediction_id[:100]!r} already has a label")
        self.label[slot] = label
        if write and self._file is not None:
            self._write([{"id": prediction_id, "y": label}])
        return int(self.predicted[slot])

    # ------------------------------------------------------------------------------------------ the file
    def _open(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = open(path.with_name(f".{path.name}.lock"), "a")  # held while serving
        except OSError as e:
            raise UserError(f"--monitor-dir {path.parent}: cannot write there ({e.strerror})") from e
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            self._lock.close()
            raise UserError(f"--monitor-dir: {path} is in use by another server; give each its own directory") \
                from e
        if path.exists():
            self._restore(path)
        self._file = open(path, "a", encoding="utf-8")  # appended to per batch while serving
        if self._file.tell() and not _ends_a_line(path):  # a crash's half line: the next record starts afresh
            self._file.write("\n")

    def _restore(self, path: Path) -> None:
        """Replay the file into the window; lines that are not ours (a crash's half line, a hand edit) are
        skipped and counted."""
        skipped = 0
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                self._lines += 1
                try:
                    record = json.loads(line)
                    prediction_id = record["id"]
                    if not isinstance(prediction_id, str):
                        raise TypeError("id")
                    if "y" in record:
                        self.give_label(prediction_id, self._class(record["y"]), write=False)
                    else:
                        self.add([prediction_id], np.array([self._class(record["p"])]),
                                 np.array([float(record["c"])]), np.array([float(record["b"])]), write=False)
                except (ValueError, KeyError, TypeError, UserError):
                    skipped += 1
        log.info("%s: %d predictions restored (%d labelled)%s", path, self.count, int((self.label >= 0).sum()),
                 f"; {skipped} lines skipped" if skipped else "")

    def _class(self, value) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < self.classes:
            raise ValueError(f"class {value!r}")
        return value

    def _write(self, records: list[dict]) -> None:
        self._file.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
        self._file.flush()  # in the OS's hands at once: a killed server loses nothing it answered
        self._lines += len(records)
        if self._lines > COMPACT_AT * self.size:
            self._compact()

    def _compact(self) -> None:
        """Rewrite the file with only the window (oldest first), atomically, and append to the new one."""
        lines = []
        for slot in self.recent(self.count).tolist():
            common = {"id": self.ids[slot] or ""}  # an overwritten repeated id stays, unlabellable, for drift
            lines.append({**common, "p": int(self.predicted[slot]), "c": round(float(self.confidence[slot]), 5),
                          "b": round(float(self.brightness[slot]), 5)})
            if self.label[slot] >= 0 and self.ids[slot] is not None:
                lines.append({**common, "y": int(self.label[slot])})
        text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in lines)
        self._file.close()
        atomic_write(self.path, lambda p: Path(p).write_text(text, encoding="utf-8"))
        self._file, self._lines = open(self.path, "a", encoding="utf-8"), len(lines)

    def close(self) -> None:
        for f in (self._file, self._lock):
            if f is not None:
                f.close()
        self._file = self._lock = None


def _ends_a_line(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def window_file(directory: str | os.PathLike, model: str, version: str) -> Path:
    """Where a model's window is kept: one file per model version (another version starts afresh)."""
    return Path(directory) / f"{model}-{version}.jsonl"
