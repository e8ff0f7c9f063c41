"""The training progress bar: optimiser steps out of the schedule, head loss and balance loss apart.

Why not Lightning's default bar: the product trains by iterations (``max_steps``), so the default
"Epoch 9/-2" with a per-epoch bar says nothing about how far a run is; and SpectralMoE's total loss
is dominated by its balance term (coefficient 1e3: values of 50–100 while the head loss is below
1), which reads as divergence. This bar shows ``step s/max_steps`` over the whole run and the two
losses side by side.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

__all__ = ["PROGRESS_BAR_NAMES", "StepProgressBar"]

#: Logged metric → its name on the bar (the task logs ``train/loss_head`` and ``train/loss_aux``).
PROGRESS_BAR_NAMES: dict[str, str] = {"train/loss_head": "head loss", "train/loss_aux": "balance loss"}


class StepProgressBar(TQDMProgressBar):
    """One training bar over optimiser steps (``step/max_steps``), with the head and balance losses.

    Args:
        refresh_rate: update the bar every this many batches.
    """

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)

    def _total_steps(self, trainer: L.Trainer) -> int | None:
        if trainer.max_steps is not None and trainer.max_steps > 0:
            return int(trainer.max_steps)
        total = trainer.estimated_stepping_batches
        return int(total) if total == total and total not in (float("inf"),) else None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.reset(total=self._total_steps(trainer))
        self.train_progress_bar.initial = 0
        self.train_progress_bar.n = int(trainer.global_step)  # a resumed run starts where it stopped
        self.train_progress_bar.set_description("train step")

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        """One bar for the whole run: nothing to reset per epoch."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        bar = self.train_progress_bar
        step = int(trainer.global_step)
        if bar is not None and not bar.disable and self._should_update(step, bar.total or 0):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Only the two losses, named for a reader (no version number, no total)."""
        shown: dict[str, Any] = {}
        for key, name in PROGRESS_BAR_NAMES.items():
            value = trainer.progress_bar_metrics.get(key)
            if value is not None:
                shown[name] = f"{float(value):.4g}"
        return shown
