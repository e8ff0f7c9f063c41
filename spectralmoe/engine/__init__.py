"""Training and evaluation engine: the Lightning task, optimiser groups and schedule, metrics,
trainable-only export and its callbacks (DESIGN §3, §6).

Names are imported on first use: loading an export (``spectralmoe predict-scene``) should not pay for
importing Lightning, which only the task and the callbacks need."""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "AtomicCheckpointIO": "callbacks",
    "ExportBest": "callbacks",
    "ExportOnFitEnd": "callbacks",
    "LastCheckpoint": "callbacks",
    "SegConfusion": "metrics",
    "SegmentationTask": "task",
    "build_param_groups": "optim",
    "build_poly_scheduler": "optim",
    "decay_table": "optim",
    "export_trainable": "export",
    "load_exported": "export",
    "poly_factor": "optim",
    "read_export_config": "export",
    "scores_from_confusion": "metrics",
    "summarize": "metrics",
    "trainable_state_dict": "export",
    "write_report": "metrics",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value
    return value
