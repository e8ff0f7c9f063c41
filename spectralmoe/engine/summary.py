"""What ``fit``, ``validate`` and ``test`` print when they end: scores per target domain and next steps.

Why: Lightning's own results table repeats every metric in one column per dataloader, with
truncated names, and ``fit`` ended with a bare path. Here one table has one row per target
domain (full names), the mean over domains and the pooled row, in percent like every other number
the product prints; ``fit`` adds the best and last validation per domain, where the checkpoints and
the export are, and the commands to run next.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["eval_table", "fit_summary", "percent"]


def percent(value: Any) -> str:
    """A score in percent with one decimal (the product's one convention); ``n/a`` when undefined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{float(value):.1f}"


def eval_table(report: Mapping[str, Any], title: str) -> str:
    """Per-domain mIoU / mAcc / aAcc (percent) and labelled pixels of an ``engine.metrics`` report."""
    rows = [(name, row) for name, row in report["domains"].items()]
    rows += [("mean over domains", report["mean"]), ("pooled", report["pooled"])]
    width = max(len("target domain"), *(len(name) for name, _ in rows))
    lines = [title, f"  {'target domain':<{width}}  {'mIoU':>6}  {'mAcc':>6}  {'aAcc':>6}  {'labelled px':>12}"]
    for name, row in rows:
        pixels = row.get("labelled_pixels")
        count = f"{pixels:>12,}" if isinstance(pixels, int) else f"{'':>12}"
        lines.append(f"  {name:<{width}}  {percent(row['mIoU']):>6}  {percent(row['mAcc']):>6}  "
                     f"{percent(row['aAcc']):>6}  {count}")  # fmt: skip
    lines.append("  (percent; mean = unweighted mean of the domains' scores, pooled = all target pixels as one set)")
    return "\n".join(lines)


def _command(words: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(w)) for w in words)


def fit_summary(
    *,
    run_folder: Path | None,
    history: Sequence[Mapping[str, Any]],
    steps: int,
    best_checkpoint: str | None,
    last_checkpoint: str | None,
    export: Path | None,
    config_file: Path | None,
    predict_scene_options: Sequence[str] = (),
) -> str:
    """The end-of-fit report: best and last validation per domain, files, next commands."""
    lines = [f"spectralmoe fit: {steps} optimiser steps done; run folder {run_folder}"]
    if history:
        last = history[-1]
        best = max(history, key=lambda h: -math.inf if h["mean"] is None or math.isnan(h["mean"]) else h["mean"])
        names = list(last["domains"])
        width = max(len("target domain"), *(len(n) for n in names), len("mean over domains"))
        best_head, last_head = f"best (step {best['step']})", f"last (step {last['step']})"
        lines.append(f"  validation mIoU (%)  {'':<{max(0, width - 19)}}  {best_head:>16}  {last_head:>16}")
        for name in names:
            lines.append(f"  {name:<{width}}  {percent(best['domains'].get(name)):>16}  "
                         f"{percent(last['domains'].get(name)):>16}")  # fmt: skip
        lines.append(f"  {'mean over domains':<{width}}  {percent(best['mean']):>16}  {percent(last['mean']):>16}")
        lines.append("  (the validation set is the target set: report `last` for a strict protocol)")
    else:
        lines.append("  no validation ran (val_check_interval beyond max_steps, or limit_val_batches 0)")
    if best_checkpoint:
        lines.append(f"  best checkpoint: {best_checkpoint}")
    if last_checkpoint:
        lines.append(f"  last checkpoint: {last_checkpoint}")
    if export is not None:
        lines.append(f"  export (for predict-scene): {export}")
    checkpoint = last_checkpoint or best_checkpoint
    if config_file is not None and checkpoint:
        lines.append("next:")
        lines.append("  " + _command(["spectralmoe", "test", "-c", config_file, "--ckpt_path", checkpoint]))
        if export is not None and run_folder is not None:
            lines.append("  " + _command(["spectralmoe", "predict-scene", "--checkpoint", run_folder, "--input",
                                          "SCENE.tif", "--output", "map.tif", *predict_scene_options]))  # fmt: skip
            lines.append("    (add --sensor NAME|FILE.yaml when SCENE.tif's band descriptions do not name its bands)")
    return "\n".join(lines)
