"""``spectralmoe demo``: a complete domain-generalisation experiment on SYNTHETIC data, on CPU.

One command shows the product doing its main job without downloading anything:

1. **World.** Generate (or reuse from the cache) the package's synthetic multi-sensor world
   (``spectralmoe.data.synthetic``): GF-2-, PlanetScope- and Sentinel-2-like NIR,R,G,B products of
   two regions (north, south). The source domain is ``gf2/north``; the five other (sensor, region)
   pairs are the unseen target domains. A second small world drawn with another seed holds
   ``gf2/north`` tiles never used in training: the **held-out source** score.
2. **Methods.** Fine-tune Freeze, Rein and SpectralMoE (paper variant) on the source domain, each on
   the frozen ``synthetic-dinov2`` backbone (SpectralMoE also reads the frozen
   ``synthetic-depth-anything`` depth model) — small models pretrained on the synthetic world and
   shipped in ``spectralmoe/weights/`` — with the real ``SegmentationTask`` / ``DGDataModule`` /
   Lightning ``Trainer`` pipeline.
3. **Evaluation.** Test every method on each target domain and on the held-out source tiles.
4. **Report.** ``<out>/report.md`` (per-domain mIoU / mAcc tables, source→target drop, run times,
   the commands that reproduce it, the weights' provenance), ``<out>/metrics.json`` and PNG figures
   in ``<out>/figures/``: false-colour composites, ground truth and every method's prediction of
   one tile per domain, SpectralMoE's top-1 expert per patch at one layer, and a bar chart.

Head: the light FPN head (64 channels), not Mask2Former. On two CPU cores a Mask2Former step at its
default sizes (256 wide, 10 decoder outputs, Hungarian matching and point-sampled mask losses on
each) costs 6–9 s on this tiny backbone (batch 8, 128 px, measured on loaded cores) against
0.1–0.2 s for the FPN, so Mask2Former would leave a few dozen steps in the time budget. With the
FPN head the adapters' Mask2Former query link is unused; every method gets the same head.

Everything is labelled SYNTHETIC: the numbers exercise the pipeline and compare methods at small
scale; they say nothing about real imagery or the paper's benchmarks.

The world is cached under ``$SPECTRALMOE_CACHE`` (default ``$XDG_CACHE_HOME/spectralmoe`` or
``~/.cache/spectralmoe``) in ``demo-worlds/<settings>/``, or under ``world_dir`` when given; a second
run with the same settings reuses it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import shlex
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

__all__ = [
    "DEMO_BACKBONE",
    "DEMO_DEPTH",
    "DEMO_METHODS",
    "DemoConfig",
    "DemoResult",
    "FULL",
    "QUICK",
    "add_demo_parser",
    "default_cache_dir",
    "run_demo",
]

DEMO_BACKBONE = "synthetic-dinov2"
DEMO_DEPTH = "synthetic-depth-anything"
DEMO_METHODS: tuple[str, ...] = ("freeze", "rein", "spectralmoe")
METHOD_LABELS = {"freeze": "Freeze", "rein": "Rein", "spectralmoe": "SpectralMoE"}
SENSORS: tuple[str, ...] = ("gf2", "planetscope", "sentinel2")
REGIONS: tuple[str, ...] = ("north", "south")
SOURCE: tuple[str, str] = ("gf2", "north")
HOLDOUT_SEED_OFFSET = 7919
"""The held-out source tiles come from a world drawn with ``seed + HOLDOUT_SEED_OFFSET``: same
sensor and region as the source, other scenes."""
SYNTHETIC_BANNER = "SYNTHETIC DATA — not real imagery; numbers say nothing about real benchmarks"
REPORT_FILES = ("report.md", "metrics.json", "figures/samples.png", "figures/routing.png", "figures/miou.png")

Logger = Callable[[str], None]


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of a demo run (``FULL`` for ``make demo``, ``QUICK`` for the test suite).

    Args:
        tiles_per_domain: tiles of each (sensor, region) domain; the source domain's are the
            training set, each target domain's the test set.
        holdout_tiles: held-out source tiles (scored, never trained on).
        tile_size: tile width and height in pixels (a multiple of 16).
        steps: optimiser steps per method.
        batch_size: training batch.
        eval_batch_size: evaluation batch.
        lr: AdamW learning rate (higher than the paper's 1e-4: a few hundred steps, not 40k).
        head: decoder head (``"fpn"``; ``"mask2former"`` and ``"linear"`` work but see the module doc).
        head_channels: FPN width.
        routing_layer: SpectralMoE layer whose routing is drawn (negative counts from the end).
        seed: seed of the world, the weight initialisation and the data order.
    """

    tiles_per_domain: int = 96
    holdout_tiles: int = 16
    tile_size: int = 128
    steps: int = 500
    batch_size: int = 8
    eval_batch_size: int = 16
    lr: float = 1e-3
    head: str = "fpn"
    head_channels: int = 64
    routing_layer: int = -1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.tile_size % 16 or self.tile_size < 32:
            raise ValueError(f"tile_size must be a multiple of 16 and >= 32, got {self.tile_size}")
        if min(self.tiles_per_domain, self.holdout_tiles, self.steps, self.batch_size, self.eval_batch_size) < 1:
            raise ValueError(f"tiles, steps and batch sizes must be >= 1: {self}")
        if self.batch_size > self.tiles_per_domain:
            raise ValueError(
                f"batch_size={self.batch_size} exceeds the {self.tiles_per_domain} source tiles (the last incomplete "
                "batch is dropped, so no step would run)"
            )
        if not self.lr > 0 or self.seed < 0:
            raise ValueError(f"need lr > 0 and seed >= 0, got lr={self.lr}, seed={self.seed}")


FULL = DemoConfig()
QUICK = DemoConfig(tiles_per_domain=4, holdout_tiles=2, tile_size=64, steps=3, batch_size=2, eval_batch_size=4,
                   head_channels=32)  # fmt: skip


@dataclass
class MethodResult:
    """One method's scores (percent) and costs."""

    method: str
    source: dict[str, Any]
    targets: dict[str, dict[str, Any]]
    mean_target: dict[str, float]
    train_seconds: float
    eval_seconds: float
    trainable_parameters: int
    method_parameters: int

    @property
    def drop(self) -> dict[str, float]:
        """Held-out source score minus the mean target score (percentage points)."""
        return {key: self.source[key] - self.mean_target[key] for key in ("mIoU", "mAcc")}


@dataclass
class DemoResult:
    """What ``run_demo`` wrote and measured."""

    out: Path
    report: Path
    metrics: Path
    figures: list[Path]
    methods: dict[str, MethodResult]
    config: DemoConfig
    world: Path
    seconds: dict[str, float] = field(default_factory=dict)

    def table(self, key: str = "mIoU") -> str:
        """The Markdown results table of ``key`` (``"mIoU"`` or ``"mAcc"``)."""
        return _results_table(self.methods, key)


# ---------------------------------------------------------------------------------------------- setup
def default_cache_dir() -> Path:
    """``$SPECTRALMOE_CACHE``, else ``$XDG_CACHE_HOME/spectralmoe``, else ``~/.cache/spectralmoe``."""
    if os.environ.get("SPECTRALMOE_CACHE"):
        return Path(os.environ["SPECTRALMOE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spectralmoe"


def _world_folder(world_dir: str | os.PathLike[str] | None, config: DemoConfig) -> Path:
    root = Path(world_dir).expanduser() if world_dir is not None else default_cache_dir() / "demo-worlds"
    return root / f"{config.tile_size}px-{config.tiles_per_domain}tiles-{config.holdout_tiles}holdout-seed{config.seed}"


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Keep Lightning's start-up chatter, transformers' loading bars and small-data warnings out of
    the demo's output (the demo prints its own progress lines)."""
    import lightning.pytorch  # noqa: F401  (its first import sets its logger to INFO: import before changing it)
    from transformers.utils import logging as hf_logging

    names = ("lightning.pytorch", "lightning.fabric", "lightning")
    saved = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*number of training batches.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*isinstance.*treespec.*")
        warnings.filterwarnings("ignore", message=".*GPU available.*")
        warnings.filterwarnings("ignore", message=".*tensorboardX.*")
        try:
            yield
        finally:
            for name, level in saved.items():
                logging.getLogger(name).setLevel(level)
            if bars:
                hf_logging.enable_progress_bar()


def _adapter_options(method: str) -> dict[str, Any]:
    """SpectralMoE in its paper variant (the default) with every other option at the paper's values."""
    return {"variant": "paper"} if method == "spectralmoe" else {}


def _head_options(config: DemoConfig) -> dict[str, Any]:
    return {"channels": config.head_channels} if config.head == "fpn" else {}


# ------------------------------------------------------------------------------------------ training
def _train_and_test(
    method: str,
    config: DemoConfig,
    world: Path,
    holdout: Path,
    run_dir: Path,
    progress: bool,
) -> tuple[Any, MethodResult]:
    """Fit one method on the source domain, test it per target domain and on the held-out source."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from spectralmoe.data.datamodule import DGDataModule
    from spectralmoe.data.synthetic import synthetic_task
    from spectralmoe.engine import SegmentationTask
    from spectralmoe.models.accounting import parameter_report

    task_def = synthetic_task(world, max_iters=config.steps, batch_size=config.batch_size,
                              eval_batch_size=config.eval_batch_size)  # fmt: skip
    holdout_def = synthetic_task(holdout, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size)
    L.seed_everything(config.seed, workers=True, verbose=False)
    task = SegmentationTask(
        backbone=DEMO_BACKBONE,
        adapter=method,
        head=config.head,
        depth=DEMO_DEPTH,
        adapter_options=_adapter_options(method),
        head_options=_head_options(config),
        pretrained=True,
        lr=config.lr,
        metrics_dir=str(run_dir / "target"),
        seed=config.seed,
    )
    data = DGDataModule(world, task_def, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size,
                        num_workers=0, seed=config.seed)  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=config.steps,
        max_epochs=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        logger=CSVLogger(run_dir, name="", version="logs"),
        log_every_n_steps=max(1, min(10, config.steps)),
        default_root_dir=run_dir,
    )
    start = time.perf_counter()
    trainer.fit(task, datamodule=data)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    trainer.test(task, datamodule=data, verbose=False)
    targets_report = task.last_metrics
    task.hparams.metrics_dir = str(run_dir / "source-holdout")
    holdout_data = DGDataModule(holdout, holdout_def, batch_size=config.batch_size,
                                eval_batch_size=config.eval_batch_size, num_workers=0, seed=config.seed)  # fmt: skip
    trainer.test(task, datamodule=holdout_data, verbose=False)
    source_report = task.last_metrics
    eval_seconds = time.perf_counter() - start
    assert targets_report is not None and source_report is not None
    counts = parameter_report(task.segmentor)
    (source_row,) = source_report["domains"].values()
    result = MethodResult(
        method=method,
        source=_row(source_row),
        targets={name: _row(row) for name, row in targets_report["domains"].items()},
        mean_target=_row(targets_report["mean"]),
        train_seconds=round(train_seconds, 1),
        eval_seconds=round(eval_seconds, 1),
        trainable_parameters=int(counts["method_trainable"] + counts["head_trainable"]),
        method_parameters=int(counts["method_trainable"]),
    )
    return task, result


def _row(row: dict[str, Any]) -> dict[str, Any]:
    """The fields of a metrics row the demo reports (percent)."""
    return {"mIoU": float(row["mIoU"]), "mAcc": float(row["mAcc"]), "aAcc": float(row["aAcc"]),
            "IoU": {k: float(v) for k, v in row["IoU"].items()}}  # fmt: skip


# ------------------------------------------------------------------------------------------- samples
@dataclass
class _Sample:
    """One tile shown in the figures: its domain, raw image, label and the sensor's wavelengths."""

    domain: str
    title: str
    image: np.ndarray
    label: np.ndarray
    wavelengths: list[float]
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    routing: np.ndarray | None = None


def _pick_sample(root: Path, domain: str, title: str) -> _Sample:
    """The tile of ``domain`` with the most classes present (first such tile): a telling picture."""
    from spectralmoe.data.io import read_image, read_label
    from spectralmoe.data.layout import PreparedIndex

    index = PreparedIndex.load(root)
    records = [t for t in index.tiles if t.domain == domain]
    if not records:
        raise ValueError(f"{root}: no tile of domain {domain!r}")
    best = max(records[:8], key=lambda r: len(np.unique(read_label(root / r.label))))
    image = read_image(root / best.image).array
    label = read_label(root / best.label)
    waves = list(index.sensors[best.sensor].wavelengths_um)
    return _Sample(domain, title, image, label, waves)


def _predict_samples(task: Any, method: str, samples: list[_Sample], routing_layer: int) -> None:
    """Class map of every sample by ``task``'s model (and SpectralMoE's routing at ``routing_layer``)."""
    import torch

    model = task.segmentor
    model.eval()
    adapter = model.adapter
    records = method == "spectralmoe" and hasattr(adapter, "record_routing")
    if records:
        adapter.record_routing = True
    try:
        for sample in samples:
            image = torch.from_numpy(sample.image.astype(np.float32))[None]
            with torch.no_grad():
                logits = model.predict_logits(image)
            sample.predictions[method] = logits.argmax(1)[0].numpy().astype(np.uint8)
            if records:
                layer = routing_layer % adapter.num_layers
                grid = (image.shape[-2] // model.backbone.patch_size, image.shape[-1] // model.backbone.patch_size)
                sample.routing = adapter.last_routing[layer][0].reshape(grid).numpy().astype(np.uint8)
    finally:
        if records:
            adapter.record_routing = False
            adapter.last_routing.clear()


# ------------------------------------------------------------------------------------------- figures
def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _panel(ax: Any, rgba: np.ndarray, title: str | None = None) -> None:
    ax.imshow(rgba, interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _upsample(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour enlargement of a patch grid to the tile's pixel size."""
    rows = np.arange(size[0]) * grid.shape[0] // size[0]
    cols = np.arange(size[1]) * grid.shape[1] // size[1]
    return grid[rows[:, None], cols[None, :]]


def _routing_rgba(sample: _Sample, num_experts: int, background: np.ndarray) -> np.ndarray:
    from spectralmoe.viz import colorize_routing

    assert sample.routing is not None
    rgba = colorize_routing(_upsample(sample.routing, sample.label.shape), num_experts).astype(np.float32)
    blended = 0.65 * rgba[..., :3] + 0.35 * background[..., :3].astype(np.float32)
    out = np.empty_like(background)
    out[..., :3] = np.round(blended).astype(np.uint8)
    out[..., 3] = 255
    return out


def _write_figures(
    samples: list[_Sample], methods: Sequence[str], results: dict[str, MethodResult], classes: Sequence[str],
    palette: Sequence[Sequence[int]], num_experts: int | None, routing_layer: int | None, figures: Path,
) -> list[Path]:  # fmt: skip
    """samples.png (composite, truth, predictions, routing per domain), routing.png, miou.png."""
    from spectralmoe.viz import add_legend, colorize, composite, routing_palette, save_figure

    written: list[Path] = []
    routed = num_experts is not None and all(s.routing is not None for s in samples)
    columns = 2 + len(methods) + (1 if routed else 0)
    fig = _figure(1.7 * columns + 1.6, 1.75 * len(samples) + 0.9)
    axes = fig.subplots(len(samples), columns, squeeze=False)
    composites = []
    for row, sample in zip(axes, samples):
        rgba, _ = composite(sample.image, sample.wavelengths, mode="false")
        composites.append(rgba)
        first = row is axes[0]
        _panel(row[0], rgba, "false colour (NIR,R,G)" if first else None)
        row[0].set_ylabel(sample.title, fontsize=8)
        _panel(row[1], colorize(sample.label, palette), "ground truth" if first else None)
        for col, method in enumerate(methods, start=2):
            _panel(row[col], colorize(sample.predictions[method], palette), METHOD_LABELS.get(method, method) if first
                   else None)  # fmt: skip
        if routed:
            assert num_experts is not None
            _panel(row[-1], _routing_rgba(sample, num_experts, rgba),
                   f"SpectralMoE experts\n(layer {routing_layer}, 0-based)" if first else None)  # fmt: skip
    add_legend(axes[0][-1], list(classes), palette, title="classes")
    fig.suptitle(f"spectralmoe demo — {SYNTHETIC_BANNER}\none tile per domain; trained on "
                 f"{SOURCE[0]}/{SOURCE[1]} only", fontsize=9)  # fmt: skip
    written.append(save_figure(fig, figures / "samples.png"))

    # Routing: top-1 expert per patch token over each sample's composite, with an expert legend.
    fig = _figure(2.1 * len(samples) + 1.4, 2.8)
    axes = fig.subplots(1, len(samples), squeeze=False)[0]
    if routed:
        assert num_experts is not None
        for ax, sample, rgba in zip(axes, samples, composites):
            _panel(ax, _routing_rgba(sample, num_experts, rgba), sample.title)
        add_legend(axes[-1], [f"expert {e}" for e in range(num_experts)], routing_palette(num_experts),
                   title="top-1 expert")  # fmt: skip
        title = (f"SpectralMoE visual-router top-1 expert per 16×16 patch, layer {routing_layer} (0-based) — "
                 f"{SYNTHETIC_BANNER}")
    else:
        for ax, sample, rgba in zip(axes, samples, composites):
            _panel(ax, rgba, sample.title)
        title = f"SpectralMoE was not run: no routing map — {SYNTHETIC_BANNER}"
    fig.suptitle(title, fontsize=8)
    written.append(save_figure(fig, figures / "routing.png"))

    # mIoU per domain and method.
    domains = [samples[0].domain] + list(next(iter(results.values())).targets)
    fig = _figure(1.1 * len(domains) + 3.0, 3.2)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(results))
    for k, (method, result) in enumerate(results.items()):
        values = [result.source["mIoU"]] + [result.targets[d]["mIoU"] for d in domains[1:]]
        ax.bar(np.arange(len(domains)) + (k - (len(results) - 1) / 2) * width, values, width,
               label=METHOD_LABELS.get(method, method))  # fmt: skip
    ax.set_xticks(np.arange(len(domains)), [f"{domains[0]}\n(source, held out)"] + domains[1:], fontsize=7)
    ax.set_ylabel("mIoU (%)")
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(f"mIoU per domain — {SYNTHETIC_BANNER}", fontsize=8)
    written.append(save_figure(fig, figures / "miou.png"))
    return written


# -------------------------------------------------------------------------------------------- report
def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def _results_table(results: dict[str, MethodResult], key: str) -> str:
    domains = list(next(iter(results.values())).targets)
    header = ["method", f"{SOURCE[0]}/{SOURCE[1]} (source, held out)", *domains, "mean target", "drop"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for method, result in results.items():
        cells = [METHOD_LABELS.get(method, method), _fmt(result.source[key])]
        cells += [_fmt(result.targets[d][key]) for d in domains]
        cells += [f"**{_fmt(result.mean_target[key])}**", _fmt(result.drop[key])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _provenance() -> dict[str, Any]:
    """The packaged weights' PROVENANCE.json files (empty entries when absent)."""
    from spectralmoe.weights import packaged_weights

    found: dict[str, Any] = {}
    for name in (DEMO_BACKBONE, DEMO_DEPTH):
        try:
            found[name] = json.loads((packaged_weights(name) / "PROVENANCE.json").read_text())
        except (OSError, ValueError) as err:
            found[name] = {"error": str(err)}
    return found


def _versions() -> dict[str, str]:
    import lightning
    import torch
    import transformers

    from spectralmoe import __version__

    return {"spectralmoe": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "lightning": lightning.__version__, "numpy": np.__version__,
            "python": platform.python_version()}  # fmt: skip


def _command(out: Path, config: DemoConfig, methods: Sequence[str], quick: bool) -> str:
    words = ["spectralmoe", "demo", "--out", str(out)]
    if quick:
        words.append("--quick")
    reference = QUICK if quick else FULL
    for name in ("steps", "tiles_per_domain", "holdout_tiles", "tile_size", "batch_size", "lr", "seed"):
        value = getattr(config, name)
        if value != getattr(reference, name):
            words += [f"--{name.replace('_', '-')}", str(value)]
    if tuple(methods) != DEMO_METHODS:
        words += ["--methods", *methods]
    return shlex.join(words)


def _write_report(
    result: DemoResult, world_parameters: dict[str, Any], command: str, threads: int, figures: list[Path],
) -> None:  # fmt: skip
    config = result.config
    provenance = _provenance()
    targets = list(next(iter(result.methods.values())).targets)
    target_list = ", ".join(f"`{d}`" for d in targets)
    gsds = ", ".join(f"{k} {v:g} m" for k, v in world_parameters.get("gsd_m", {}).items())
    head = f"`{config.head}` head" + (f" ({config.head_channels} channels)" if config.head == "fpn" else "")
    lines = [
        "# spectralmoe demo — **SYNTHETIC DATA**",
        "",
        f"> **SYNTHETIC.** Every image, label and number here comes from the package's own synthetic world "
        f"(`spectralmoe.data.synthetic`) and from small models pretrained on it (`spectralmoe/weights/`). It exercises "
        f"the real pipeline and compares methods at small scale; it is not real imagery and says nothing about the "
        f"paper's benchmarks.",
        "",
        "## Experiment",
        "",
        f"* **Task:** train on `{SOURCE[0]}/{SOURCE[1]}` only, test on the unseen domains {target_list} "
        f"(other regions and other sensors with the same NIR,R,G,B bands), and on {config.holdout_tiles} held-out "
        f"`{SOURCE[0]}/{SOURCE[1]}` tiles drawn with another seed (the *source* column).",
        f"* **World:** sensors {', '.join(SENSORS)}; regions {', '.join(REGIONS)}; {config.tiles_per_domain} tiles of "
        f"{config.tile_size}×{config.tile_size} px per domain at each sensor's GSD "
        f"({gsds}); 7 classes; seed {config.seed}.",
        f"* **Frozen models:** backbone `{DEMO_BACKBONE}`, depth model `{DEMO_DEPTH}` (SpectralMoE only), both "
        f"pretrained on the synthetic world (provenance below).",
        f"* **Methods:** {', '.join(METHOD_LABELS.get(m, m) for m in result.methods)} (SpectralMoE: paper variant, "
        f"paper defaults), each with a {head}; {config.steps} AdamW steps of batch {config.batch_size}, "
        f"lr {config.lr:g}, poly decay; seed {config.seed}.",
        f"* **Metrics:** mIoU / mAcc in percent over the 7 classes, whole-tile inference; *mean target* is the mean "
        f"over the {len(targets)} target domains; *drop* = source − mean target (percentage points).",
        "",
        "## Results: mIoU (%)",
        "",
        result.table("mIoU"),
        "",
        "## Results: mAcc (%)",
        "",
        result.table("mAcc"),
        "",
        "## Run times",
        "",
        f"CPU, {threads} torch thread(s), {os.cpu_count()} logical cores visible.",
        "",
        "| step | seconds | trainable parameters (method + head) |",
        "|---|---:|---:|",
        f"| world generation (0 when cached) | {result.seconds.get('world', 0.0):.1f} | |",
    ]
    for method, r in result.methods.items():
        lines.append(f"| {METHOD_LABELS.get(method, method)}: train | {r.train_seconds:.1f} | "
                     f"{r.method_parameters:,} + {r.trainable_parameters - r.method_parameters:,} |")  # fmt: skip
        lines.append(f"| {METHOD_LABELS.get(method, method)}: test (targets + held-out source) | "
                     f"{r.eval_seconds:.1f} | |")  # fmt: skip
    lines += [
        f"| figures and report | {result.seconds.get('report', 0.0):.1f} | |",
        f"| **total** | **{result.seconds.get('total', 0.0):.1f}** | |",
        "",
        "## Figures",
        "",
        "One tile per domain (false-colour composite, ground truth, each method's prediction, SpectralMoE's routing):",
        "",
        "![samples](figures/samples.png)",
        "",
        "SpectralMoE's visual router, top-1 expert per 16×16 patch:",
        "",
        "![routing](figures/routing.png)",
        "",
        "![mIoU per domain](figures/miou.png)",
        "",
        "## Reproduce",
        "",
        "```sh",
        "make demo                       # set-up included; writes demo-report/",
        command,
        "python scripts/pretrain_synthetic.py --out spectralmoe/weights --seed 0   # the packaged weights",
        "```",
        "",
        f"Per-method logs and metrics JSON/CSV: `runs/<method>/`. World cache: `{result.world}`.",
        "",
        "## Pretrained weights (SYNTHETIC)",
        "",
    ]
    for name, record in provenance.items():
        if "error" in record:
            lines.append(f"* `{name}`: provenance unavailable ({record['error']})")
            continue
        sha = record.get("sha256", {}).get("model.safetensors", "?")
        lines.append(f"* `{name}`: `{record.get('command', '?')}` (seed {record.get('seed', '?')}); "
                     f"model.safetensors SHA-256 `{sha}`")  # fmt: skip
    lines += ["", f"Versions: {', '.join(f'{k} {v}' for k, v in _versions().items())}.", ""]
    result.report.write_text("\n".join(lines), encoding="utf-8")


def _write_metrics(result: DemoResult, world_parameters: dict[str, Any], command: str, threads: int) -> None:
    payload = {
        "SYNTHETIC": True,
        "note": SYNTHETIC_BANNER,
        "command": command,
        "config": asdict(result.config),
        "backbone": DEMO_BACKBONE,
        "depth": DEMO_DEPTH,
        "source": "/".join(SOURCE),
        "world": {"folder": str(result.world), "parameters": world_parameters},
        "units": "percent",
        "methods": {
            method: {
                "source_holdout": r.source,
                "targets": r.targets,
                "mean_target": r.mean_target,
                "drop": r.drop,
                "train_seconds": r.train_seconds,
                "eval_seconds": r.eval_seconds,
                "trainable_parameters": r.trainable_parameters,
                "method_parameters": r.method_parameters,
            }
            for method, r in result.methods.items()
        },
        "seconds": result.seconds,
        "threads": threads,
        "weights": _provenance(),
        "versions": _versions(),
    }
    text = json.dumps(payload, indent=2, allow_nan=True)
    result.metrics.write_text(text + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------- run
def run_demo(
    out: str | os.PathLike[str] = "demo-report",
    *,
    world_dir: str | os.PathLike[str] | None = None,
    methods: Sequence[str] = DEMO_METHODS,
    quick: bool = False,
    config: DemoConfig | None = None,
    threads: int | None = None,
    progress: bool | None = None,
    log: Logger | None = print,
    **overrides: Any,
) -> DemoResult:
    """Run the demo experiment and write its report folder ``out`` (see the module docstring).

    Args:
        out: report folder (created; files in it are overwritten).
        world_dir: cache root of the generated worlds (default ``default_cache_dir() / "demo-worlds"``).
        methods: adapters to compare (any of ``spectralmoe.models.adapters.ADAPTERS``).
        quick: the reduced sizes of ``QUICK`` (tiny world, 3 steps) instead of ``FULL``.
        config: explicit sizes (overrides ``quick``).
        threads: torch intra-op threads (default: torch's own choice).
        progress: show Lightning progress bars (default: when stderr is a terminal).
        log: where progress lines go (``None``: silent).
        overrides: ``DemoConfig`` fields to change, e.g. ``steps=100, seed=1``.
    """
    import torch

    total_start = time.perf_counter()
    say: Logger = log if log is not None else (lambda message: None)
    config = replace(config or (QUICK if quick else FULL), **overrides)
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise ValueError("no method to run")
    threads_before = torch.get_num_threads()
    seed_env = {name: os.environ.get(name) for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")}
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        return _run(out, world_dir, methods, quick, config, torch.get_num_threads(),
                    sys.stderr.isatty() if progress is None else progress, say, total_start)  # fmt: skip
    finally:  # leave the caller's process as it was (seed_everything writes these variables)
        torch.set_num_threads(threads_before)
        for name, value in seed_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _run(
    out: str | os.PathLike[str], world_dir: str | os.PathLike[str] | None, methods: list[str], quick: bool,
    config: DemoConfig, threads_used: int, progress: bool, say: Logger, total_start: float,
) -> DemoResult:  # fmt: skip
    """The body of ``run_demo`` (which owns the thread setting)."""
    from spectralmoe.data.synthetic import generate_world, synthetic_task

    out = Path(out)
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    say(f"spectralmoe demo — {SYNTHETIC_BANNER}")

    # 1. the world (cached) and the held-out source tiles
    folder = _world_folder(world_dir, config)
    start = time.perf_counter()
    index = generate_world(folder / "world", regions=REGIONS, sensors=SENSORS, tiles_per_domain=config.tiles_per_domain,
                           tile_size=config.tile_size, seed=config.seed, source=SOURCE)  # fmt: skip
    generate_world(folder / "source-holdout", regions=REGIONS, sensors=(SOURCE[0],), source=(SOURCE[0], REGIONS[1]),
                   tiles_per_domain=config.holdout_tiles, tile_size=config.tile_size,
                   seed=config.seed + HOLDOUT_SEED_OFFSET)  # fmt: skip
    world_seconds = time.perf_counter() - start
    say(f"world: {folder} ({world_seconds:.1f} s; {len(index.tiles)} tiles)")
    world_parameters = {**index.options.get("parameters", {}), "gsd_m": index.options.get("gsd_m", {})}

    # 2. figure tiles: one per domain, the held-out source first
    source_name = "/".join(SOURCE)
    samples = [_pick_sample(folder / "source-holdout", source_name, f"{source_name}\n(source, held out)")]
    target_domains = sorted(synthetic_task(folder / "world").target_domains)
    samples += [_pick_sample(folder / "world", domain, domain) for domain in target_domains]

    # 3. train and test every method
    results: dict[str, MethodResult] = {}
    num_experts = routing_layer = None
    with _quiet_lightning():
        for method in methods:
            say(f"{METHOD_LABELS.get(method, method)}: training {config.steps} steps on {source_name} …")
            run_dir = out / "runs" / method
            if run_dir.is_dir():  # this demo's own output of an earlier run: replaced, not mixed
                shutil.rmtree(run_dir)
            task, result = _train_and_test(method, config, folder / "world", folder / "source-holdout", run_dir,
                                           progress)  # fmt: skip
            _predict_samples(task, method, samples, config.routing_layer)
            if method == "spectralmoe":
                adapter = task.segmentor.adapter
                num_experts = int(adapter.num_experts)
                routing_layer = config.routing_layer % int(adapter.num_layers)
            results[method] = result
            say(f"{METHOD_LABELS.get(method, method)}: source (held out) mIoU {result.source['mIoU']:.1f}, mean target "
                f"mIoU {result.mean_target['mIoU']:.1f} (train {result.train_seconds:.0f} s, test "
                f"{result.eval_seconds:.0f} s)")  # fmt: skip
            del task

    # 4. figures, metrics, report
    start = time.perf_counter()
    figures = _write_figures(samples, methods, results, index.classes, index.palette, num_experts, routing_layer,
                             figures_dir)  # fmt: skip
    result = DemoResult(out=out, report=out / "report.md", metrics=out / "metrics.json", figures=figures,
                        methods=results, config=config, world=folder,
                        seconds={"world": round(world_seconds, 1)})  # fmt: skip
    command = _command(out, config, methods, quick and config == QUICK)
    result.seconds["report"] = round(time.perf_counter() - start, 1)
    result.seconds["total"] = round(time.perf_counter() - total_start, 1)
    _write_metrics(result, world_parameters, command, threads_used)
    _write_report(result, world_parameters, command, threads_used, figures)
    say(f"report: {result.report} (total {result.seconds['total']:.0f} s)\n\n{result.table('mIoU')}")
    return result


# ----------------------------------------------------------------------------------------------- CLI
def add_demo_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``spectralmoe demo`` (its ``func`` returns an exit code)."""
    p = subparsers.add_parser(
        "demo",
        help="run a complete domain-generalisation experiment on the SYNTHETIC world (CPU, minutes, no download)",
        description="Generate the synthetic multi-sensor world (cached), fine-tune Freeze, Rein and SpectralMoE on "
        "gf2/north with the packaged synthetic-pretrained backbone and depth model, test them on the unseen "
        "sensors/regions and write a report (Markdown, metrics JSON, PNG figures). SYNTHETIC data only.",
    )
    _add_demo_arguments(p)
    p.set_defaults(func=_run_demo_command)
    return p


def _add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("demo-report"), help="report folder (default: demo-report)")
    p.add_argument("--world-dir", type=Path, default=None,
                   help=f"cache root of the generated worlds (default: {default_cache_dir() / 'demo-worlds'})")
    p.add_argument("--methods", nargs="+", default=list(DEMO_METHODS), help="methods to compare (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="tiny world and 3 steps: checks the pipeline in seconds")
    for name, kind in (("steps", int), ("tiles_per_domain", int), ("holdout_tiles", int), ("tile_size", int),
                       ("batch_size", int), ("lr", float), ("seed", int)):  # fmt: skip
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None,
                       help=f"default {getattr(FULL, name)} ({getattr(QUICK, name)} with --quick)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")


def _run_demo_command(args: argparse.Namespace) -> int:
    names = ("steps", "tiles_per_domain", "holdout_tiles", "tile_size", "batch_size", "lr", "seed")
    overrides = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    run_demo(args.out, world_dir=args.world_dir, methods=args.methods, quick=args.quick, threads=args.threads,
             **overrides)  # fmt: skip
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m spectralmoe.demo`` (same options as ``spectralmoe demo``)."""
    parser = argparse.ArgumentParser(prog="python -m spectralmoe.demo", description=__doc__.split("\n")[0])
    _add_demo_arguments(parser)
    return _run_demo_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
