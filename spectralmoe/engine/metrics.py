"""Segmentation metrics with mmseg ``IoUMetric`` semantics (DATA §0.1), per target domain.

A target set is reduced to one confusion matrix per domain, accumulated over the whole set
(intersection and union are summed over all tiles before dividing — not a mean of per-tile
scores). The matrix has ``num_classes + 1`` rows and ``num_classes`` columns: rows are ground
truth, columns predictions, and the extra last row collects pixels whose label is outside
``[0, num_classes)`` but not ``ignore_index``. That row reproduces mmseg's ``intersect_and_union``
(``histc`` over ``[0, C-1]``): such pixels are absent from the label histogram, yet the
predictions made there count in the prediction histogram, i.e. as false positives.

From the matrix, per class c (mmseg's ``total_area_*``)::

    intersection_c = M[c, c]          label_c = sum_j M[c, j] (valid rows only)
    pred_c = sum_i M[i, c] (all rows) union_c = pred_c + label_c - intersection_c
    IoU_c = intersection_c / union_c  (NaN when union_c = 0: excluded from mIoU)
    Acc_c = intersection_c / label_c  (NaN when label_c = 0: excluded from mAcc)
    aAcc  = sum_c intersection_c / sum_c label_c

A class absent from a domain's ground truth but predicted there has IoU 0 (counted, as in
mmseg) and Acc NaN (not counted). All scores are reported in percent, like mmseg and the paper.

Report rows: one per domain; ``mean`` = the mean over target domains (mIoU/mAcc/aAcc averaged
over the domains; per-class IoU/Acc averaged over the domains where they are defined); ``pooled``
= the scores of the summed confusion matrices (all target pixels as one set, as some papers
report).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torchmetrics import Metric

from spectralmoe.data.layout import IGNORE_INDEX, atomic_write_bytes

__all__ = ["SegConfusion", "scores_from_confusion", "summarize", "report_to_csv", "write_report"]


class SegConfusion(Metric):
    """Confusion matrix ``[C + 1, C]`` (rows: label, last row = label ≥ C; columns: prediction).

    The state is summed across processes (DDP) when ``compute()`` is called.

    Args:
        num_classes: number of classes C.
        ignore_index: label value whose pixels are dropped.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.add_state(
            "confmat", default=torch.zeros(num_classes + 1, num_classes, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        """Add class maps ``preds`` (values in ``[0, C)``) against labels ``target`` of the same shape."""
        if preds.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(preds.shape)} differs from label shape {tuple(target.shape)}")
        preds, target = preds.reshape(-1).long(), target.reshape(-1).long()
        valid = target != self.ignore_index
        preds, target = preds[valid], target[valid]
        if preds.numel() and (int(preds.min()) < 0 or int(preds.max()) >= self.num_classes):
            raise ValueError(
                f"predictions must be class indices in [0, {self.num_classes}), got range "
                f"[{int(preds.min())}, {int(preds.max())}]"
            )
        c = self.num_classes
        rows = torch.where((target >= 0) & (target < c), target, torch.full_like(target, c))
        counts = torch.bincount(rows * c + preds, minlength=(c + 1) * c)
        self.confmat += counts.view(c + 1, c)

    def compute(self) -> torch.Tensor:
        return self.confmat.clone()


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def scores_from_confusion(confusion: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """mIoU, mAcc, aAcc (percent) and per-class IoU/Acc arrays from a ``[C(+1), C]`` matrix."""
    matrix = confusion.detach().cpu().numpy() if isinstance(confusion, torch.Tensor) else np.asarray(confusion)
    matrix = matrix.astype(np.float64)
    num_classes = matrix.shape[1]
    if matrix.ndim != 2 or matrix.shape[0] not in (num_classes, num_classes + 1):
        raise ValueError(f"confusion matrix must be [C, C] or [C + 1, C], got shape {matrix.shape}")
    valid_rows = matrix[:num_classes]
    intersection = np.diag(valid_rows)
    label_area = valid_rows.sum(axis=1)
    pred_area = matrix.sum(axis=0)
    union = pred_area + label_area - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersection / union, np.nan) * 100.0
        acc = np.where(label_area > 0, intersection / label_area, np.nan) * 100.0
    total = label_area.sum()
    return {
        "mIoU": _nanmean(iou),
        "mAcc": _nanmean(acc),
        "aAcc": float(intersection.sum() / total * 100.0) if total > 0 else math.nan,
        "IoU": iou,
        "Acc": acc,
        "labelled_pixels": int(total),
        "out_of_range_label_pixels": int(matrix[num_classes:].sum()),
    }


def _clean(value: Any) -> Any:
    """JSON-safe: NaN → None, numpy → Python."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _row(scores: Mapping[str, Any], class_names: Sequence[str]) -> dict[str, Any]:
    return {
        "mIoU": scores["mIoU"],
        "mAcc": scores["mAcc"],
        "aAcc": scores["aAcc"],
        "IoU": dict(zip(class_names, np.asarray(scores["IoU"], dtype=np.float64).tolist())),
        "Acc": dict(zip(class_names, np.asarray(scores["Acc"], dtype=np.float64).tolist())),
        **{k: scores[k] for k in ("labelled_pixels", "out_of_range_label_pixels") if k in scores},
    }


def summarize(
    confusions: Mapping[str, np.ndarray | torch.Tensor],
    class_names: Sequence[str],
    **context: Any,
) -> dict[str, Any]:
    """The report of one evaluation: per-domain rows, the ``mean`` over domains, the ``pooled`` row.

    ``context`` (stage, epoch, step…) is stored as is. Values are percent; undefined ones NaN.
    """
    if not confusions:
        raise ValueError("no confusion matrix to summarise (no target domain was evaluated)")
    matrices = {
        name: (m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m)).astype(np.int64)
        for name, m in confusions.items()
    }
    num_classes = len(class_names)
    for name, m in matrices.items():
        if m.shape[1] != num_classes:
            raise ValueError(f"domain {name!r}: confusion matrix {m.shape} but {num_classes} class names")
    per_domain = {name: scores_from_confusion(m) for name, m in matrices.items()}
    empty = [name for name, s in per_domain.items() if s["labelled_pixels"] == 0]
    if empty:
        warnings.warn(f"target domain(s) {empty} have no labelled pixel: their scores are NaN", stacklevel=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN, as intended
        mean = {
            "mIoU": _nanmean(np.array([s["mIoU"] for s in per_domain.values()])),
            "mAcc": _nanmean(np.array([s["mAcc"] for s in per_domain.values()])),
            "aAcc": _nanmean(np.array([s["aAcc"] for s in per_domain.values()])),
            "IoU": np.array([_nanmean(col) for col in np.stack([s["IoU"] for s in per_domain.values()]).T]),
            "Acc": np.array([_nanmean(col) for col in np.stack([s["Acc"] for s in per_domain.values()]).T]),
        }
    pooled = scores_from_confusion(sum(matrices.values()))
    return {
        **context,
        "units": "percent",
        "ignore_index": IGNORE_INDEX,
        "classes": list(class_names),
        "domains": {name: _row(s, class_names) for name, s in per_domain.items()},
        "mean": _row(mean, class_names),
        "pooled": _row(pooled, class_names),
        "confusion": {name: m.tolist() for name, m in matrices.items()},
        "confusion_layout": "rows = label (last row: label outside [0, C) and not ignore), columns = prediction",
    }


def report_to_csv(report: Mapping[str, Any]) -> str:
    """CSV text: one row per domain, then ``mean`` and ``pooled``; per-class IoU/Acc columns."""
    classes = list(report["classes"])
    header = ["row", "kind", "mIoU", "mAcc", "aAcc"] + [f"IoU/{c}" for c in classes] + [f"Acc/{c}" for c in classes]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)

    def number(v: Any) -> str:
        return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else repr(float(v))

    rows = [(name, "domain", row) for name, row in report["domains"].items()]
    rows += [("mean", "mean", report["mean"]), ("pooled", "pooled", report["pooled"])]
    for name, kind, row in rows:
        values = [row["mIoU"], row["mAcc"], row["aAcc"]] + [row["IoU"][c] for c in classes]
        values += [row["Acc"][c] for c in classes]
        writer.writerow([name, kind] + [number(v) for v in values])
    return buffer.getvalue()


def write_report(report: Mapping[str, Any], folder: str | os.PathLike[str], stem: str) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.csv`` into ``folder``, each atomically (temp + rename)."""
    folder = Path(folder)
    json_path, csv_path = folder / f"{stem}.json", folder / f"{stem}.csv"
    text = json.dumps(_clean(dict(report)), indent=2, allow_nan=False)
    atomic_write_bytes(json_path, (text + "\n").encode())
    atomic_write_bytes(csv_path, report_to_csv(report).encode())
    return json_path, csv_path
