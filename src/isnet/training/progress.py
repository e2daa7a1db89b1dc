"""Training progress on the console: Lightning's bar on a terminal, one line per epoch in a log file.

Lightning's progress bar redraws itself with carriage returns; written to a file (a batch
job's ``> train.log``) every redraw stays, hundreds of kilobytes per run. When standard output
is not a terminal (nor a notebook), :func:`console_progress` gives the Trainer
:class:`EpochLines`, a Lightning progress bar that prints one line at the end of each epoch::

    epoch 3/30 train loss 0.412, train acc 0.871, val acc 0.906, val bg share 0.084 (12 s)

:func:`epoch_line` is the text of such a line; the benchmarks' progress lines use it too.
"""

from __future__ import annotations

import sys
import time

import lightning as L
from lightning.pytorch.callbacks import Callback, ProgressBar

__all__ = ["EPOCH_METRICS", "EpochLines", "console_progress", "epoch_line", "interactive"]

EPOCH_METRICS = (("train loss", "train/loss_epoch"), ("train acc", "train/acc_epoch"), ("val acc", "val/acc"),
                 ("val bg share", "val/bg_share"), ("val dice", "val/dice"))
"""The label and logged name of each epoch metric an epoch line shows (those the run logs)."""


def epoch_line(trainer: L.Trainer) -> str:
    """``epoch i/n`` and the :data:`EPOCH_METRICS` of the epoch that ends (call from ``on_train_epoch_end``)."""
    metrics = trainer.callback_metrics
    shown = [f"{label} {float(metrics[key]):.3f}" for label, key in EPOCH_METRICS if key in metrics]
    return f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} {', '.join(shown)}".rstrip()


def interactive() -> bool:
    """Whether progress is watched live: standard output (where Lightning's bar draws) is a terminal, or
    this runs in a Jupyter kernel."""
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty is not None and isatty()) or "ipykernel" in sys.modules


class EpochLines(ProgressBar):
    """A Lightning progress bar for log files: one line per training epoch on standard output (global rank 0)."""

    def __init__(self) -> None:
        super().__init__()
        self._enabled, self._began = True, 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._began = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled:
            print(f"{epoch_line(trainer)} ({time.perf_counter() - self._began:.0f} s)", flush=True)


def console_progress(quiet: bool) -> list[Callback]:
    """The progress callbacks of a Trainer: none when ``quiet`` or interactive (Lightning's own bar), else
    :class:`EpochLines`."""
    return [] if quiet or interactive() else [EpochLines()]
