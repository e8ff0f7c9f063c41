"""Training and evaluation engine: the Lightning task, optimiser groups and schedule, metrics,
trainable-only export and its callbacks (DESIGN §3, §6)."""

from spectralmoe.engine.callbacks import ExportBest, ExportOnFitEnd, LastCheckpoint
from spectralmoe.engine.export import export_trainable, load_exported, read_export_config, trainable_state_dict
from spectralmoe.engine.metrics import SegConfusion, scores_from_confusion, summarize, write_report
from spectralmoe.engine.optim import build_param_groups, build_poly_scheduler, decay_table, poly_factor
from spectralmoe.engine.task import SegmentationTask

__all__ = [
    "ExportBest",
    "ExportOnFitEnd",
    "LastCheckpoint",
    "SegConfusion",
    "SegmentationTask",
    "build_param_groups",
    "build_poly_scheduler",
    "decay_table",
    "export_trainable",
    "load_exported",
    "poly_factor",
    "read_export_config",
    "scores_from_confusion",
    "summarize",
    "trainable_state_dict",
    "write_report",
]
