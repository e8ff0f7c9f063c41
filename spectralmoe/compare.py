"""``spectralmoe compare RUN…``: several runs side by side — one table of per-domain scores, one figure of maps.

Why: choosing a method (or a checkpoint) for a mapping job means comparing runs on the same target
domains. Each RUN is a run folder (``runs/<task>/<method>/version_N``) or a run NAME folder
(``runs/<task>/<method>``, holding the ``version_N`` that ``fit``, ``test`` and ``predict`` wrote):

* **scores** come from ``metrics_test.json`` (the newest version holding one), else from the last
  validation file ``metrics_val_epoch*_step*.json`` (the highest step) — the ``engine.metrics``
  reports, per target domain, in percent;
* **maps** come from the ``predictions/`` folder of ``spectralmoe predict`` (the newest version
  holding one); image and ground truth from the prepared root named in that run's ``config.yaml``.

Writes ``<output>/compare.md`` (the table, also printed), ``compare.csv``, ``compare.json`` (which
file every number came from) and ``compare.png``: for a few target tiles present in every run's
predictions (one per domain first), the image (composite chosen by wavelength), the ground truth and
each run's map, one legend.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

__all__ = ["RunResult", "add_compare_parser", "compare_runs", "find_run"]

PathLike = str | os.PathLike[str]


@dataclass
class RunResult:
    """One compared run: its label, the metrics report and its file, the predictions folder (if any)."""

    label: str
    folder: Path
    metrics_file: Path | None
    report: dict[str, Any] | None
    predictions: Path | None
    prepared_root: Path | None
    notes: list[str] = field(default_factory=list)


def _versions(folder: Path) -> list[Path]:
    found = [(int(m.group(1)), p) for p in folder.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))]
    return [p for _, p in sorted(found, reverse=True)]  # newest first


def _last_val(folder: Path) -> Path | None:
    files = []
    for path in folder.glob("metrics_val_epoch*_step*.json"):
        m = re.fullmatch(r"metrics_val_epoch(\d+)_step(\d+)\.json", path.name)
        if m:
            files.append((int(m.group(2)), int(m.group(1)), path))
    return max(files)[2] if files else None


def _prepared_root(folder: Path) -> Path | None:
    config = folder / "config.yaml"
    if not config.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return None
    root = (data.get("data") or {}).get("root")
    return Path(root) if root else None


def find_run(path: PathLike, label: str | None = None) -> RunResult:
    """Locate the scores and the maps of one run (see the module docstring)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run folder")
    candidates = [path] if not _versions(path) else _versions(path)
    metrics = next((c / "metrics_test.json" for c in candidates if (c / "metrics_test.json").is_file()), None)
    if metrics is None:
        metrics = next((f for c in candidates if (f := _last_val(c)) is not None), None)
    predicted = next((c for c in candidates if (c / "predictions").is_dir()), None)
    if metrics is None and predicted is None:
        raise FileNotFoundError(f"{path}: no metrics_test.json, metrics_val_*.json or predictions/ in it or its "
                                "version_N folders: is it a run folder of spectralmoe fit/test/predict?")  # fmt: skip
    name = label or (path.parent.name if re.fullmatch(r"version_\d+", path.name) else path.name)
    report = json.loads(metrics.read_text()) if metrics is not None else None
    notes = [] if metrics is not None else [f"{path}: no metrics file"]
    return RunResult(name, path, metrics, report, predicted / "predictions" if predicted else None,
                     _prepared_root(predicted) if predicted else None, notes)  # fmt: skip


def _cell(value: Any) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.1f}"


def _table(runs: Sequence[RunResult], key: str) -> tuple[str, list[str], list[list[Any]]]:
    domains: list[str] = []
    for run in runs:
        for name in (run.report or {}).get("domains", {}):
            if name not in domains:
                domains.append(name)
    header = ["run", *domains, "mean", "pooled"]
    rows = []
    for run in runs:
        report = run.report or {}
        row: list[Any] = [run.label]
        row += [report.get("domains", {}).get(d, {}).get(key) for d in domains]
        row += [report.get("mean", {}).get(key), report.get("pooled", {}).get(key)]
        rows.append(row)
    lines = [f"| {' | '.join(header)} |", "|---|" + "---:|" * (len(header) - 1)]
    lines += [f"| {row[0]} | " + " | ".join(_cell(v) for v in row[1:]) + " |" for row in rows]
    return "\n".join(lines), header, rows


def _pick_tiles(runs: Sequence[RunResult], count: int) -> list[str]:
    """Relative map paths present in every run's predictions: one per domain folder first, then more."""
    sets = [{p.relative_to(r.predictions).as_posix() for p in r.predictions.rglob("*.tif")}  # type: ignore[union-attr]
            for r in runs]  # fmt: skip
    common = sorted(set.intersection(*sets)) if sets else []
    by_folder: dict[str, list[str]] = {}
    for rel in common:
        by_folder.setdefault(rel.rsplit("/", 1)[0] if "/" in rel else "", []).append(rel)
    picked: list[str] = []
    depth = 0
    while len(picked) < count and any(len(v) > depth for v in by_folder.values()):
        for tiles in by_folder.values():
            if len(tiles) > depth and len(picked) < count:
                picked.append(tiles[depth])
        depth += 1
    return picked


def _figure(runs: Sequence[RunResult], tiles: Sequence[str], path: Path) -> Path:
    import numpy as np

    from spectralmoe.data.io import read_image, read_label
    from spectralmoe.data.layout import PreparedIndex
    from spectralmoe.viz import _figure as new_figure
    from spectralmoe.viz import _show, add_legend, colorize, composite, read_class_info, save_figure

    root = runs[0].prepared_root
    index = PreparedIndex.load(root) if root is not None and (root / "splits.json").is_file() else None
    records = {Path(t.image).with_suffix("").as_posix(): t for t in index.tiles} if index is not None else {}
    names, palette = read_class_info(runs[0].predictions / tiles[0])  # type: ignore[operator]
    if index is not None:
        names, palette = list(index.classes), [tuple(c) for c in index.palette]
    names = list(names or [])
    palette = list(palette or [])
    columns = 2 + len(runs)
    fig = new_figure(2.6 * columns + 2.0, 2.7 * len(tiles) + 0.3)
    axes = fig.subplots(len(tiles), columns, squeeze=False)
    for r, rel in enumerate(tiles):
        stem = rel[: -len(".tif")]
        record = records.get(f"image/{stem}")
        image_ax, truth_ax = axes[r][0], axes[r][1]
        if record is not None:
            data = read_image(root / record.image)  # type: ignore[operator]
            waves = index.sensors[record.sensor].wavelengths_um  # type: ignore[union-attr]
            rgba, label = composite(data.array, waves, nodata=data.nodata)
            _show(image_ax, rgba, f"{record.domain}: {Path(stem).name}\n{label}")
            truth = read_label(root / record.label)  # type: ignore[operator]
            _show(truth_ax, colorize(truth, palette), "ground truth")
        else:
            for ax, title in ((image_ax, f"{stem}\n(image not found)"), (truth_ax, "(no ground truth)")):
                _show(ax, np.zeros((8, 8, 4), dtype=np.uint8), title)
        for c, run in enumerate(runs):
            with _quiet_open(run.predictions / rel) as src:  # type: ignore[operator]
                labels = src.read(1)
            _show(axes[r][2 + c], colorize(labels, palette), run.label)
    if names:
        add_legend(axes[0][-1], names, palette, title="classes")
    return save_figure(fig, path)


def _quiet_open(path: Path) -> Any:
    import warnings

    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        return rasterio.open(path)


def _json_safe(value: Any) -> Any:
    """NaN (an undefined score) → ``None``; paths → strings."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value) if isinstance(value, Path) else value


def compare_runs(
    runs: Sequence[PathLike], output: PathLike, *, labels: Sequence[str] | None = None, key: str = "mIoU",
    tiles: int = 4,
) -> dict[str, Any]:  # fmt: skip
    """Compare runs (see the module docstring); returns what was written and the table."""
    from spectralmoe.files import atomic_write_bytes

    if not runs:
        raise ValueError("compare: give at least one run folder")
    if labels is not None and len(labels) != len(runs):
        raise ValueError(f"compare: {len(labels)} --names for {len(runs)} runs")
    if key not in ("mIoU", "mAcc", "aAcc"):
        raise ValueError(f"compare: --metric must be mIoU, mAcc or aAcc, got {key!r}")
    found = [find_run(r, labels[i] if labels else None) for i, r in enumerate(runs)]
    seen: dict[str, int] = {}
    for run in found:  # two runs of one method (other versions, other tasks) keep distinct labels
        seen[run.label] = seen.get(run.label, 0) + 1
        if seen[run.label] > 1:
            run.label = f"{run.label} ({seen[run.label]})"
    output = Path(output)
    text, header, rows = _table(found, key)
    title = f"{key} (%) per target domain; mean = over domains, pooled = all target pixels"
    atomic_write_bytes(output / "compare.md", f"{title}\n\n{text}\n".encode())
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([row[0], *("" if v is None else repr(float(v)) for v in row[1:])])
    atomic_write_bytes(output / "compare.csv", buffer.getvalue().encode())
    figure = None
    notes = [n for run in found for n in run.notes]
    with_maps = [r for r in found if r.predictions is not None]
    if with_maps and len(with_maps) == len(found):
        picked = _pick_tiles(found, tiles)
        if picked:
            figure = _figure(found, picked, output / "compare.png")
        else:
            notes.append("no tile has a map in every run's predictions/: no figure")
    else:
        missing = [r.label for r in found if r.predictions is None]
        notes.append(f"no predictions/ for {missing}: run `spectralmoe predict ... --ckpt_path ...` for their maps "
                     "(no figure)")  # fmt: skip
    summary = {
        "metric": key, "units": "percent", "table": {"header": header, "rows": rows},
        "runs": [{"label": r.label, "folder": str(r.folder), "metrics_file": str(r.metrics_file) if r.metrics_file
                  else None, "predictions": str(r.predictions) if r.predictions else None} for r in found],
        "figure": str(figure) if figure else None, "notes": notes,
    }  # fmt: skip
    atomic_write_bytes(output / "compare.json", (json.dumps(_json_safe(summary), indent=2) + "\n").encode())
    return {"text": f"{title}\n\n{text}", "figure": figure, "notes": notes, "output": output}


def add_compare_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``spectralmoe compare``."""
    p = subparsers.add_parser(
        "compare",
        help="one table of per-domain scores across runs, and their maps side by side",
        description="Compare runs: each RUN is a run folder (version_N) or a run name folder holding version_N "
        "folders. Scores from metrics_test.json (else the last validation); maps from predictions/ of "
        "`spectralmoe predict`. Writes compare.md/.csv/.json and compare.png into --output.",
    )
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run folders to compare")
    p.add_argument("--names", nargs="+", default=None, help="a label per run (default: the run's name)")
    p.add_argument("--output", type=Path, default=Path("compare"), help="output folder (default ./compare)")
    p.add_argument("--metric", choices=["mIoU", "mAcc", "aAcc"], default="mIoU", help="score in the table")
    p.add_argument("--tiles", type=int, default=4, help="tiles in the figure (default 4)")
    p.set_defaults(func=_run_compare)
    return p


def _run_compare(args: argparse.Namespace) -> int:
    result = compare_runs(args.runs, args.output, labels=args.names, key=args.metric, tiles=args.tiles)
    print(result["text"])
    print(f"written: {result['output']}/compare.md, compare.csv, compare.json"
          + (f", {result['figure']}" if result["figure"] else ""))  # fmt: skip
    for note in result["notes"]:
        print(f"note: {note}")
    return 0
