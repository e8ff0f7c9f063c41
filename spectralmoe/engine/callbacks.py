"""Lightning callbacks that write the trainable-only export (``engine.export``) during a fit, and the
checkpoint callback whose ``last.ckpt`` is always the latest weights.

``ExportOnFitEnd`` writes ``<dir>/export`` when fit ends (the final weights); ``ExportBest`` writes
``<dir>/export_best`` whenever a monitored validation metric improves (e.g. ``val/mean/mIoU``),
and remembers the best value in checkpoints so a resumed run keeps comparing against it. ``<dir>``
defaults to the trainer's log dir. Files are written by rank 0 only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

from spectralmoe.engine.export import export_trainable
from spectralmoe.outputs import atomic_open, sweep_stale

__all__ = ["AtomicCheckpointIO", "ExportBest", "ExportOnFitEnd", "LastCheckpoint"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written whole or not at all.

    Lightning's own writer stages a checkpoint in the system temp folder and moves it into place,
    which degrades to a plain copy when that folder is another file system — a kill during the copy
    leaves a truncated ``last.ckpt`` and a temp file nothing removes. Here the checkpoint is written
    to a recognisable temporary sibling (``spectralmoe.outputs``), flushed and renamed; temporaries
    of killed runs in the checkpoint folder are swept before the first write."""

    def __init__(self) -> None:
        super().__init__()
        self._swept: set[Path] = set()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        import torch

        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.parent not in self._swept:
            sweep_stale(target.parent)
            self._swept.add(target.parent)
        with atomic_open(target) as handle:
            torch.save(checkpoint, handle)


def _folder(trainer: L.Trainer, dirpath: str | None, name: str) -> Path:
    """Target folder; ``trainer.log_dir`` is a collective, so every rank must call this."""
    if dirpath is not None:
        return Path(dirpath) / name
    log_dir = trainer.log_dir
    return Path(log_dir if log_dir is not None else trainer.default_root_dir) / name


def _context(trainer: L.Trainer) -> dict[str, Any]:
    return {"epoch": int(trainer.current_epoch), "step": int(trainer.global_step), **_training_facts(trainer)}


def _training_facts(trainer: L.Trainer) -> dict[str, Any]:
    """How the model was trained, for the export (``training``): task, tile crop and zoom, band order."""
    dm = getattr(trainer, "datamodule", None)
    task = getattr(dm, "task", None)
    if task is None:
        return {}
    from spectralmoe.data.transforms import PIPELINE_A_SCALES, PIPELINE_B_SCALES

    scales = task.resize_scales or {"A": PIPELINE_A_SCALES, "B": PIPELINE_B_SCALES}.get(task.train_pipeline)
    return {"training": {
        "task": task.name, "train_pipeline": task.train_pipeline, "crop_size": task.crop_size,
        "resize_shortest_edge": list(scales) if scales else None, "batch_size": getattr(dm, "batch_size", None),
        "source_domains": list(task.source_domains) if task.source_domains else None,
        "band_matching": task.band_matching, "source_tile_size": getattr(dm, "source_tile_size", None),
    }}  # fmt: skip


class ExportOnFitEnd(Callback):
    """Export the trainable weights + build recipe when ``fit`` ends.

    Args:
        dirpath: parent folder (default: the trainer's log dir).
        name: export folder name inside ``dirpath``.
    """

    def __init__(self, dirpath: str | None = None, name: str = "export") -> None:
        self.dirpath = dirpath
        self.name = name
        self.last_path: Path | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = _folder(trainer, self.dirpath, self.name)
        if trainer.is_global_zero:
            self.last_path = export_trainable(pl_module, folder, metadata={"reason": "fit end", **_context(trainer)})
        trainer.strategy.barrier("ExportOnFitEnd")


class ExportBest(Callback):
    """Export the trainable weights whenever ``monitor`` reaches a new best after a validation.

    Args:
        monitor: logged metric to watch (e.g. ``"val/mean/mIoU"``).
        mode: ``"max"`` or ``"min"``.
        dirpath: parent folder (default: the trainer's log dir).
        name: export folder name inside ``dirpath``.
    """

    def __init__(
        self,
        monitor: str = "val/mean/mIoU",
        mode: Literal["max", "min"] = "max",
        dirpath: str | None = None,
        name: str = "export_best",
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.monitor = monitor
        self.mode = mode
        self.dirpath = dirpath
        self.name = name
        self.best: float | None = None
        self.best_step: int | None = None
        self._warned = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    def _improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            if not self._warned:
                rank_zero_warn(f"ExportBest: metric {self.monitor!r} was not logged; nothing exported")
                self._warned = True
            return
        value = float(value)
        if not self._improves(value):
            return
        self.best, self.best_step = value, int(trainer.global_step)
        folder = _folder(trainer, self.dirpath, self.name)
        if trainer.is_global_zero:
            facts = {"reason": "best", "monitor": self.monitor, "value": value, **_context(trainer)}
            export_trainable(pl_module, folder, metadata=facts)
        trainer.strategy.barrier("ExportBest")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")
        self.best_step = state_dict.get("best_step")


class LastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` always holds the latest weights.

    Lightning 2.6 rewrites ``last.ckpt`` only at a step where it also wrote a top-k checkpoint: once
    the monitored metric stops improving, ``last.ckpt`` stays at the best step, and ``test --ckpt_path
    last.ckpt`` — what a strict DG protocol reports — would silently evaluate the best weights. Here
    ``last.ckpt`` is rewritten after every validation (and at the end of every epoch when checkpoints
    follow epochs) and when training ends. Same arguments as ``ModelCheckpoint``.
    """

    def _refresh_last(self, trainer: L.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and not trainer.fast_dev_run and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
