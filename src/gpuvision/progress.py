"""Progress on stderr: rich bars on a terminal; in a log (CI, nohup, a scheduler) a plain line at most every 30 s.

`Heartbeat` is the log form for library code (it logs, never prints); `TrainProgress`, `StageProgress` and
`BenchProgress` are the CLI's event sinks for training, compression and `gpuvision bench`. They see host values
only: they never sync the device.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

EVERY_SECONDS = 30.0
log = logging.getLogger("gpuvision.progress")


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Heartbeat:
    """Logs "what: done/total (rate/s, ETA)" at most every `every` seconds, and always at the end."""

    def __init__(self, what: str, total: int | None = None, unit: str = "items", every: float = EVERY_SECONDS):
        self.what, self.total, self.unit, self.every = what, total, unit, every
        self.started = self.last = time.monotonic()

    def __call__(self, done: int, extra: str = "", final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < self.every:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        text = f"{self.what}: {done:,}" + (f"/{self.total:,}" if self.total else "") + f" {self.unit} ({rate:,.0f}/s"
        if self.total and not final:
            text += f", ETA {_duration((self.total - done) / max(rate, 1e-9))}"
        log.info(text + ")" + (f"; {extra}" if extra else ""))


class TrainProgress:
    """Callable event sink for Trainer: one bar per epoch with loss, accuracy and images/s on a terminal; plain
    lines otherwise (a line per epoch and, within long epochs, one at most every 30 s with an ETA)."""

    def __init__(self, every: float = EVERY_SECONDS):
        self.console = Console(stderr=True, soft_wrap=True)  # a log line stays one line
        self.tty = sys.stderr.isatty()
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=self.console,
                                 transient=False, disable=not self.tty)
        self.task = None
        self.loss = self.accuracy = None
        self.every, self.last_line = every, time.monotonic()
        self.run_started = time.monotonic()
        self.total_steps = self.done_steps = 0

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def _info(self, images_per_s: float) -> str:
        metrics = f"loss {self.loss:.4f} acc {self.accuracy:.4f} " if self.loss is not None else ""
        return f"{metrics}{images_per_s:,.0f} img/s"

    def _line(self, text: str) -> None:
        self.last_line = time.monotonic()
        self.console.print(text, highlight=False)

    def _eta(self, done_steps: int) -> str:
        elapsed = time.monotonic() - self.run_started
        left = (self.total_steps - done_steps) * elapsed / max(done_steps, 1)
        return f"ETA {_duration(left)}"

    def _setup(self, info: dict) -> None:
        self.total_steps, self.run_started = info["steps"], time.monotonic()
        given = "" if info.get("test_source", "carved") == "carved" else f"; test split = {info['test_source']}"
        self._line(
            f"training {info['model']} ({info['params']:,} parameters, recipe {info['recipe']}) "
            f"on {info['device']} "
            f"in {info['precision']}{', compiled' if info['compiled'] else ''}; split {info['split']}{given}; "
            f"{info['epochs']} epochs of batch {info['batch_size']} ({info['steps']} steps) -> {info['out']}"
            + (f"; skipped {info['skipped']} unreadable image(s)" if info["skipped"] else ""))
        if info.get("size_rule"):
            self._line(f"images at {'x'.join(map(str, info['image_size']))} px: {info['size_rule']}")
        if (info.get("pretrained") or {}).get("hub_id"):
            self._line(f"fine-tuning {info['pretrained']['hub_id']} (--pretrained {info['pretrained']['source']}) "
                       "with a new classifier for these classes")

    def __call__(self, event: str, **info) -> None:
        if event == "setup":
            self._setup(info)
        elif event == "estimate":
            self._line(f"estimated training time: {info['text']}")
        elif event == "calibrated":
            self._line(f"calibrated on {info['n']} validation images: temperature {info['temperature']:.2f}, "
                       f"expected calibration error {info['ece_before']:.3f} -> {info['ece_after']:.3f}")
        elif event == "epoch_start":
            self.done_steps = info.get("done_steps", 0)
            self.task = self.progress.add_task(f"epoch {info['epoch'] + 1}", total=info["steps"], info="")
        elif event == "step":
            rate = info["images"] / max(info["seconds"], 1e-9)
            self.progress.update(self.task, completed=info["step"], info=self._info(rate))
            if not self.tty and time.monotonic() - self.last_line >= self.every:
                done = self.done_steps + info["step"]
                self._line(f"epoch {info['epoch'] + 1} step {info['step']} ({done}/{self.total_steps}): "
                           f"{self._info(rate)}, {self._eta(done)}")
        elif event == "log":
            self.loss, self.accuracy = info["loss"], info["accuracy"]
        elif event == "epoch_end":
            self._epoch_end(info)
        elif event == "early_stop":
            self._line(f"stopped early after epoch {info['epoch']}: no better {info['metric']} since epoch "
                       f"{info['best_epoch']} ({info['value']:.4f}), whose weights are kept")


    def _epoch_end(self, info: dict) -> None:
        self.loss, self.accuracy = info["train_loss"], info["train_accuracy"]
        text = self._info(info["images_per_s"])
        if "val_accuracy" in info:
            text += f" val {info['val_accuracy']:.4f}"
        if "val_robust_accuracy" in info:
            text += f" robust {info['val_robust_accuracy']:.4f}"
        self.progress.update(self.task, info=text)
        if not self.tty:
            self._line(f"epoch {info['epoch']}: {text} ({info['seconds']:.1f} s, {self._eta(info['step'])})")


class StageProgress:
    """Event sink for compress: a line per stage, per fine-tuning epoch, and a heartbeat within long epochs."""

    def __init__(self):
        self.console = Console(stderr=True, soft_wrap=True)  # a log line stays one line
        self.train = TrainProgress()
        self.train.tty = False  # compress prints lines, no bars

    def __call__(self, event: str, **info) -> None:
        if event == "stage":
            self.console.print(info["text"], highlight=False)
        elif event == "train":
            self.train(info.pop("train_event"), **{k: v for k, v in info.items() if k != "stage"})


class BenchProgress:
    """Event sink for `gpuvision bench`: a bar over the rows on a terminal; in a log a line per row and, while one
    row runs long (a first compile takes minutes on a CPU), a line at most every 30 s saying it still runs."""

    def __init__(self, every: float = EVERY_SECONDS):
        self.console = Console(stderr=True, soft_wrap=True)
        self.tty = sys.stderr.isatty()
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=self.console, transient=False, disable=not self.tty)
        self.every, self.task, self.total = every, None, 0
        self.row: tuple[str, float] | None = None  # the running row's label and start
        self.last_line = time.monotonic()
        self.stop = threading.Event()
        self.ticker = threading.Thread(target=self._tick, daemon=True)

    def __enter__(self):
        self.progress.__enter__()
        self.ticker.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.ticker.join()
        self.progress.__exit__(*exc)

    def _line(self, text: str) -> None:
        self.last_line = time.monotonic()
        self.console.print(text, highlight=False)

    def _tick(self) -> None:
        while not self.stop.wait(min(1.0, self.every / 4)):
            row = self.row
            if not self.tty and row and time.monotonic() - self.last_line >= self.every:
                self._line(f"bench: still measuring {row[0]} ({_duration(time.monotonic() - row[1])})")

    def __call__(self, event: str, **info) -> None:
        if event == "bench_start":
            self.total = info["rows"]
            self._line(f"bench: {info['rows']} rows on {', '.join(info['devices'])} -> {info['out']}")
            self.task = self.progress.add_task("bench", total=info["rows"])
        elif event == "row_start":
            self.row = (info["label"], time.monotonic())
            self.progress.update(self.task, description=info["label"])
        elif event == "row_end":
            seconds = time.monotonic() - self.row[1]
            self.row = None
            self.progress.update(self.task, advance=1)
            if not self.tty:
                self._line(f"bench {info['index']}/{self.total}: {info['label']}: {info['text']} ({seconds:.1f} s)")
