"""Progress bars of ``spectralmoe demo``: steps, loss and time left while a method trains, batches
while it is tested, windows while the scene is rendered — on a terminal only.

Why a bar of its own: the demo trains by optimiser steps on a small source domain (an "epoch" is a
few batches), so Lightning's per-epoch bar restarts every second and never says how long is left.
This bar counts the run's ``max_steps`` and shows the running head loss (cross-entropy) and the
adapter's auxiliary loss apart, with tqdm's elapsed / remaining time. Bars are off when stderr is
not a terminal or ``CI`` is set (logs stay clean), and whenever the caller says so.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

import lightning as L
from lightning.pytorch.callbacks import Callback

__all__ = ["StepBar", "bars_wanted", "counter_bar"]

#: Where the task logs the head's loss (the FPN head's cross-entropy; a task that sums the head's terms
#: may log ``train/loss_head``).
_HEAD_LOSS_KEYS = ("train/loss_head", "train/loss_ce")


def bars_wanted(stream: Any = None) -> bool:
    """True on an interactive terminal outside CI (``CI`` unset or ``false``/``0``)."""
    stream = sys.stderr if stream is None else stream
    ci = os.environ.get("CI", "").strip().lower()
    return bool(getattr(stream, "isatty", lambda: False)()) and ci in ("", "0", "false", "no")


def _tqdm(**kwargs: Any) -> Any:
    from tqdm.auto import tqdm

    return tqdm(dynamic_ncols=True, leave=False, file=sys.stderr, **kwargs)


class StepBar(Callback):
    """One bar over the training run's optimiser steps (loss, time left), one over the test batches."""

    def __init__(self, description: str, position: int = 0) -> None:
        super().__init__()
        self.description = description
        self.position = position  # its line on the terminal when several runs train side by side
        self._train: Any = None
        self._test: Any = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self._train = _tqdm(total=total, desc=f"{self.description}: train", unit="step", position=self.position)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        if self._train is None:
            return
        self._train.n = int(trainer.global_step)
        metrics = trainer.callback_metrics
        shown = {}
        for keys, name in (_HEAD_LOSS_KEYS, "head loss"), (("train/loss_aux",), "aux loss"):
            key = next((k for k in keys if k in metrics), None)
            if key is not None:
                shown[name] = f"{float(metrics[key]):.3f}"
        self._train.set_postfix(shown, refresh=False)
        self._train.refresh()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._train is not None:
            self._train.close()
            self._train = None

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = sum(int(n) for n in trainer.num_test_batches) if trainer.num_test_batches else None
        self._test = _tqdm(total=total, desc=f"{self.description}: test", unit="batch", position=self.position)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        if self._test is not None:
            self._test.update(1)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._test is not None:
            self._test.close()
            self._test = None


def counter_bar(description: str, unit: str) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """(``progress(done, total)`` callback, ``close()``) of a bar for code that reports counts."""
    state: dict[str, Any] = {}

    def progress(done: int, total: int) -> None:
        bar = state.get("bar")
        if bar is None:
            bar = state["bar"] = _tqdm(total=total, desc=description, unit=unit)
        bar.n = done
        bar.refresh()

    def close() -> None:
        if state.get("bar") is not None:
            state.pop("bar").close()

    return progress, close
