"""A rich progress bar on stderr, fed by the Trainer's events (host values only: it never syncs the device)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class TrainProgress:
    """Callable event sink for Trainer: one bar per epoch with loss, accuracy and images/s."""

    def __init__(self):
        self.console = Console(stderr=True)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=self.console,
                                 transient=False, disable=not sys.stderr.isatty())
        self.task = None
        self.loss = self.accuracy = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def _info(self, images_per_s: float) -> str:
        metrics = f"loss {self.loss:.4f} acc {self.accuracy:.4f} " if self.loss is not None else ""
        return f"{metrics}{images_per_s:,.0f} img/s"

    def __call__(self, event: str, **info) -> None:
        if event == "setup":
            self.console.print(
                f"training {info['model']} ({info['params']:,} parameters, recipe {info['recipe']}) "
                f"on {info['device']} "
                f"in {info['precision']}{', compiled' if info['compiled'] else ''}; split {info['split']}; "
                f"{info['epochs']} epochs of batch {info['batch_size']} ({info['steps']} steps) -> {info['out']}"
                + (f"; skipped {info['skipped']} unreadable image(s)" if info["skipped"] else ""))
        elif event == "epoch_start":
            self.task = self.progress.add_task(f"epoch {info['epoch'] + 1}", total=info["steps"], info="")
        elif event == "step":
            rate = info["images"] / max(info["seconds"], 1e-9)
            self.progress.update(self.task, completed=info["step"], info=self._info(rate))
        elif event == "log":
            self.loss, self.accuracy = info["loss"], info["accuracy"]
        elif event == "epoch_end":
            self.loss, self.accuracy = info["train_loss"], info["train_accuracy"]
            text = self._info(info["images_per_s"])
            if "val_accuracy" in info:
                text += f" val {info['val_accuracy']:.4f}"
            self.progress.update(self.task, info=text)
            if not sys.stderr.isatty():
                self.console.print(f"epoch {info['epoch']}: {text} ({info['seconds']:.1f} s)")
        elif event == "checkpoint":
            pass
