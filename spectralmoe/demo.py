"""``spectralmoe demo``: a complete domain-generalisation experiment on SYNTHETIC data, on CPU.

One command shows the product doing its job without downloading anything:

1. **World.** Generate (or reuse from the cache) the package's synthetic multi-sensor world
   (``spectralmoe.data.synthetic``): GF-2-, PlanetScope- and Sentinel-2-like NIR,R,G,B products of
   two regions (north, south), tiles of 256 × 256 pixels (a 16 × 16 token grid at patch 16). The
   source domain is ``gf2/north``; the five other (sensor, region) pairs are the unseen target
   domains. A second small world drawn with another seed holds ``gf2/north`` tiles never used in
   training: the **held-out source** score.
2. **Methods × seeds.** Fine-tune Freeze, Rein and SpectralMoE (paper variant) on the source domain,
   each with N seeds (``--seeds``; the world stays fixed, initialisation and data order change), on the
   frozen ``synthetic-dinov2`` backbone (SpectralMoE also reads the frozen ``synthetic-depth-anything``
   depth model) — small models pretrained on the synthetic world and shipped in
   ``spectralmoe/weights/`` — with the real ``SegmentationTask`` / ``DGDataModule`` / Lightning
   ``Trainer`` pipeline. A progress bar shows steps, losses and time left (terminals only).
3. **Evaluation.** Test every run on each target domain and on the held-out source tiles; report
   mean ± std over seeds and say, in words, which differences exceed the seed spread.
4. **A mapped scene.** Render one large target-domain scene (``planetscope/south``, 2048 × 2048 pixels
   at 3 m: 6.1 km of ground, a GeoTIFF with a CRS, and its ground truth), map it with
   ``spectralmoe.predict.predict_scene`` using the best method's model (highest mean target mIoU over
   seeds; its first seed), and draw the preview, the error map against the ground truth and
   SpectralMoE's routing map.
5. **Report.** ``<out>/report.md``, ``<out>/metrics.json``, figures in ``<out>/figures/`` (every column
   titled), the scene's map in ``<out>/scene/``.

Head: the light FPN head (64 channels), not Mask2Former. On two CPU cores a Mask2Former step at its
default sizes (256 wide, 10 decoder outputs, Hungarian matching and point-sampled mask losses on
each) costs 6–9 s on this tiny backbone (batch 8, 128 px, measured on loaded cores) against
0.1–0.2 s for the FPN, so Mask2Former would leave a few dozen steps in the time budget. With the
FPN head the adapters' Mask2Former query link is unused; every method gets the same head.

Everything is labelled SYNTHETIC: the numbers exercise the pipeline and compare methods at small
scale; they say nothing about real imagery or the paper's benchmarks.

The world and the scene are cached under ``$SPECTRALMOE_CACHE`` (default ``$XDG_CACHE_HOME/spectralmoe``
or ``~/.cache/spectralmoe``) in ``demo-worlds/<settings>/``, or under ``world_dir`` when given; a
second run with the same settings reuses them.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
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

from spectralmoe.demo_report import (
    MEAN_PLACE,
    METHOD_LABELS,  # noqa: F401  (re-exported: the demo's method names)
    SYNTHETIC_BANNER,
    MethodResult,
    RunResult,
    Sample,
    compare_methods,
    label_of,
    method_record,
    results_table,
    write_figures,
    write_json,
    write_report,
)

__all__ = [
    "DEMO_BACKBONE",
    "DEMO_DEPTH",
    "DEMO_METHODS",
    "DemoConfig",
    "DemoResult",
    "FULL",
    "QUICK",
    "REGIONS",
    "SENSORS",
    "SOURCE",
    "add_demo_parser",
    "default_cache_dir",
    "run_demo",
]

DEMO_BACKBONE = "synthetic-dinov2"
DEMO_DEPTH = "synthetic-depth-anything"
DEMO_METHODS: tuple[str, ...] = ("freeze", "rein", "spectralmoe")
SENSORS: tuple[str, ...] = ("gf2", "planetscope", "sentinel2")
REGIONS: tuple[str, ...] = ("north", "south")
SOURCE: tuple[str, str] = ("gf2", "north")
HOLDOUT_SEED_OFFSET = 7919
"""The held-out source tiles come from a world drawn with ``seed + HOLDOUT_SEED_OFFSET``: same
sensor and region as the source, other scenes."""
REPORT_FILES = ("report.md", "metrics.json", "figures/samples.png", "figures/routing.png", "figures/miou.png",
                "figures/scene.png", "figures/scene_confusion.png", "figures/scene_routing.png", "scene/map.tif",
                "scene/map.png")  # fmt: skip

Logger = Callable[[str], None]


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of a demo run (``FULL`` for ``make demo``, ``QUICK`` for the test suite).

    Args:
        tiles_per_domain: tiles of each (sensor, region) domain; the source domain's are the
            training set, each target domain's the test set.
        holdout_tiles: held-out source tiles (scored, never trained on).
        tile_size: tile width and height in pixels (a multiple of 16; 256 = a 16 × 16 token grid).
        steps: optimiser steps per run.
        batch_size: training batch.
        eval_batch_size: evaluation (and scene prediction) batch.
        lr: AdamW learning rate (higher than the paper's 1e-4: a few hundred steps, not 40k).
        head: decoder head (``"fpn"``; ``"mask2former"`` and ``"linear"`` work but see the module doc).
        head_channels: FPN width.
        routing_layer: SpectralMoE layer whose routing is drawn (negative counts from the end).
        seed: seed of the world and of the scene, and the first training seed.
        seeds: training seeds per method (``seed``, ``seed + 1``, …); the world stays fixed.
        scene_size: width and height of the mapped scene in pixels (0: no scene).
        scene_sensor, scene_region: the scene's target domain.
        scene_tile, scene_overlap: ``predict_scene`` tiling.
    """

    tiles_per_domain: int = 24
    holdout_tiles: int = 8
    tile_size: int = 256
    steps: int = 300
    batch_size: int = 4
    eval_batch_size: int = 8
    lr: float = 1e-3
    head: str = "fpn"
    head_channels: int = 64
    routing_layer: int = -1
    seed: int = 0
    seeds: int = 2
    scene_size: int = 2048
    scene_sensor: str = "planetscope"
    scene_region: str = "south"
    scene_tile: int = 256
    scene_overlap: int = 64

    def __post_init__(self) -> None:
        if self.tile_size % 16 or self.tile_size < 32:
            raise ValueError(f"tile_size must be a multiple of 16 and >= 32, got {self.tile_size}")
        if min(self.tiles_per_domain, self.holdout_tiles, self.steps, self.batch_size, self.eval_batch_size,
               self.seeds) < 1:  # fmt: skip
            raise ValueError(f"tiles, steps, batch sizes and seeds must be >= 1: {self}")
        if self.batch_size > self.tiles_per_domain:
            raise ValueError(
                f"batch_size={self.batch_size} exceeds the {self.tiles_per_domain} source tiles (the last incomplete "
                "batch is dropped, so no step would run)"
            )
        if not self.lr > 0 or self.seed < 0:
            raise ValueError(f"need lr > 0 and seed >= 0, got lr={self.lr}, seed={self.seed}")
        if self.scene_size:
            if (self.scene_sensor, self.scene_region) == SOURCE or self.scene_sensor not in SENSORS \
                    or self.scene_region not in REGIONS:  # fmt: skip
                raise ValueError(f"the scene must be a target domain of {SENSORS} x {REGIONS} other than "
                                 f"{'/'.join(SOURCE)}, got {self.scene_sensor}/{self.scene_region}")  # fmt: skip
            if self.scene_size < 16 or self.scene_tile % 16 or not 0 <= self.scene_overlap < self.scene_tile:
                raise ValueError(f"need scene_size >= 16, scene_tile a multiple of 16 and 0 <= scene_overlap < "
                                 f"scene_tile; got {self.scene_size}, {self.scene_tile}, {self.scene_overlap}")  # fmt: skip

    @property
    def training_seeds(self) -> list[int]:
        return [self.seed + k for k in range(self.seeds)]


FULL = DemoConfig()
QUICK = DemoConfig(tiles_per_domain=4, holdout_tiles=2, tile_size=64, steps=3, batch_size=2, eval_batch_size=4,
                   head_channels=32, seeds=2, scene_size=96, scene_tile=64, scene_overlap=16)  # fmt: skip


@dataclass
class SceneResult:
    """The mapped scene: files, which model mapped it, its accuracy against the ground truth."""

    sensor: str
    region: str
    size: int
    gsd_m: float
    image: Path
    label: Path
    maps: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> {map, figure, accuracy, ...}
    best: str = ""
    render_seconds: float = 0.0
    cached: bool = False


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
    scene: SceneResult | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def table(self, key: str = "mIoU") -> str:
        """The Markdown results table of ``key`` (``"mIoU"`` or ``"mAcc"``): mean ± std over seeds."""
        return results_table(self.methods, "/".join(SOURCE), key)

    def comparisons(self, key: str = "mIoU") -> list[Any]:
        return compare_methods(self.methods, key)


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
    the demo's output (the demo prints its own progress lines and bars)."""
    import lightning.pytorch  # noqa: F401  (its first import sets its logger to INFO: import before changing it)
    from transformers.utils import logging as hf_logging

    names = ("lightning.pytorch", "lightning.fabric", "lightning")
    saved = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    with warnings.catch_warnings():
        for message in (r".*module\(s\) in eval mode.*", ".*does not have many workers.*",
                        ".*number of training batches.*", ".*LeafSpec.*", ".*isinstance.*treespec.*",
                        ".*GPU available.*", ".*tensorboardX.*"):  # fmt: skip
            warnings.filterwarnings("ignore", message=message)
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
    method: str, seed: int, config: DemoConfig, world: Path, holdout: Path, run_dir: Path, progress: bool,
    position: int = 0,
) -> tuple[Any, RunResult, dict[str, int]]:  # fmt: skip
    """Fit one method with one seed on the source domain, test it per target domain and on the held-out source."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from spectralmoe.data.datamodule import DGDataModule
    from spectralmoe.data.synthetic import synthetic_task
    from spectralmoe.demo_progress import StepBar
    from spectralmoe.engine import SegmentationTask
    from spectralmoe.models.accounting import parameter_report

    task_def = synthetic_task(world, max_iters=config.steps, batch_size=config.batch_size,
                              eval_batch_size=config.eval_batch_size)  # fmt: skip
    holdout_def = synthetic_task(holdout, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size)
    L.seed_everything(seed, workers=True, verbose=False)
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
        seed=seed,
    )
    data = DGDataModule(world, task_def, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size,
                        num_workers=0, seed=seed)  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=config.steps,
        max_epochs=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        callbacks=[StepBar(f"{label_of(method)} seed {seed}", position=position)] if progress else [],
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
                                eval_batch_size=config.eval_batch_size, num_workers=0, seed=seed)  # fmt: skip
    trainer.test(task, datamodule=holdout_data, verbose=False)
    source_report = task.last_metrics
    eval_seconds = time.perf_counter() - start
    assert targets_report is not None and source_report is not None
    counts = parameter_report(task.segmentor)
    (source_row,) = source_report["domains"].values()
    result = RunResult(
        seed=seed,
        source=_row(source_row),
        targets={name: _row(row) for name, row in targets_report["domains"].items()},
        mean_target=_row(targets_report["mean"]),
        train_seconds=round(train_seconds, 1),
        eval_seconds=round(eval_seconds, 1),
    )
    parameters = {"trainable": int(counts["method_trainable"] + counts["head_trainable"]),
                  "method": int(counts["method_trainable"])}  # fmt: skip
    return task, result, parameters


def _row(row: dict[str, Any]) -> dict[str, Any]:
    """The fields of a metrics row the demo reports (percent)."""
    return {"mIoU": float(row["mIoU"]), "mAcc": float(row["mAcc"]), "aAcc": float(row["aAcc"]),
            "IoU": {k: float(v) for k, v in row["IoU"].items()}}  # fmt: skip


# ------------------------------------------------------------------------------------------- samples
def _pick_sample(root: Path, domain: str, title: str) -> Sample:
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
    return Sample(domain, title, image, label, waves)


def _predict_samples(task: Any, method: str, samples: list[Sample], routing_layer: int) -> None:
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


# ---------------------------------------------------------------------------------------------- jobs
@dataclass
class _Job:
    """One (method, seed) run, as a worker process receives it."""

    method: str
    seed: int
    first: bool
    position: int
    config: DemoConfig
    world: Path
    holdout: Path
    run_dir: Path
    progress: bool
    samples: list[Sample]


@dataclass
class _JobResult:
    method: str
    seed: int
    run: RunResult
    parameters: dict[str, int]
    predictions: dict[str, np.ndarray]
    routing: dict[str, np.ndarray]
    export: Path | None
    num_experts: int | None = None
    routing_layer: int | None = None


def _single_thread() -> None:
    """Worker set-up: one torch thread per process. Two processes of one thread use two cores without
    the OpenMP barrier stalls that make two threads of one process several times slower as soon as
    anything else runs on the machine (measured: 0.18 s against 0.7–3.4 s per Freeze step)."""
    import torch

    torch.set_num_threads(1)


def _run_job(job: _Job) -> _JobResult:
    """Train, test, (first seed:) predict the figure tiles and export the model — in a worker process."""
    from spectralmoe.engine.export import export_trainable

    with _quiet_lightning():
        task, run, parameters = _train_and_test(job.method, job.seed, job.config, job.world, job.holdout, job.run_dir,
                                                job.progress, job.position)  # fmt: skip
        result = _JobResult(job.method, job.seed, run, parameters, {}, {}, None)
        if job.first:
            _predict_samples(task, job.method, job.samples, job.config.routing_layer)
            result.predictions = {s.domain: s.predictions[job.method] for s in job.samples}
            result.routing = {s.domain: s.routing for s in job.samples if s.routing is not None}
            result.export = export_trainable(task, job.run_dir / "export")
            adapter = task.segmentor.adapter
            if job.method == "spectralmoe":
                result.num_experts = int(adapter.num_experts)
                result.routing_layer = job.config.routing_layer % int(adapter.num_layers)
    return result


@contextlib.contextmanager
def _job_runner(workers: int) -> Iterator[Callable[..., Any]]:
    """``submit(fn, *args)`` → a future-like object with ``result()``: a pool of ``workers`` single-thread
    processes (spawned: no fork of a threaded parent), or in-process calls for ``workers`` = 1."""
    if workers <= 1:
        import torch

        before = torch.get_num_threads()
        _single_thread()

        class _Done:
            def __init__(self, value: Any) -> None:
                self.value = value

            def result(self) -> Any:
                return self.value

        try:
            yield lambda fn, *args: _Done(fn(*args))
        finally:
            torch.set_num_threads(before)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_single_thread) as pool:  # fmt: skip
        yield pool.submit


# --------------------------------------------------------------------------------------------- scene
def _render_scene(folder: Path, config: DemoConfig, progress: bool) -> SceneResult:
    from spectralmoe.data.synthetic.scene_raster import write_scene
    from spectralmoe.demo_progress import counter_bar

    update, close = counter_bar("scene: render", "window") if progress else (None, lambda: None)
    try:
        files = write_scene(folder / f"scene-{config.scene_sensor}-{config.scene_region}-{config.scene_size}px",
                            sensor=config.scene_sensor, region=config.scene_region, size=config.scene_size,
                            seed=config.seed, progress=update)  # fmt: skip
    finally:
        close()
    return SceneResult(config.scene_sensor, config.scene_region, config.scene_size, files.gsd_m, files.image,
                       files.label, render_seconds=files.seconds, cached=files.cached)  # fmt: skip


def _map_scene(scene: SceneResult, method: str, export: Path, out: Path, config: DemoConfig, progress: bool,
               routing: bool, position: int = 0) -> dict[str, Any]:  # fmt: skip
    """``predict_scene`` with ``method``'s exported model, then the figure against the ground truth."""
    with _quiet_lightning():  # transformers' weight-loading bars
        return _map_scene_quietly(scene, method, export, out, config, progress, routing)


def _map_scene_quietly(scene: SceneResult, method: str, export: Path, out: Path, config: DemoConfig, progress: bool,
                       routing: bool) -> dict[str, Any]:  # fmt: skip
    from spectralmoe.predict import predict_scene
    from spectralmoe.viz import viz_figure

    folder = out / "scene"
    folder.mkdir(parents=True, exist_ok=True)
    stem = "map" if method == scene.best else f"map_{method}"
    map_path = folder / f"{stem}.tif"
    routing_path = folder / f"routing_{method}.tif" if routing else None
    summary = predict_scene(export, scene.image, map_path, sensor=config.scene_sensor, tile=config.scene_tile,
                            overlap=config.scene_overlap, batch_size=config.eval_batch_size, routing=routing_path,
                            progress=progress)  # fmt: skip
    figure_name = "scene.png" if method == scene.best else f"scene_{method}.png"
    viz = viz_figure(map_path, out / "figures" / figure_name, ground_truth=scene.label, image=scene.image,
                     sensor=config.scene_sensor, routing=routing_path)  # fmt: skip
    routing_figure = viz.routing_figure
    if routing_figure is not None and routing_figure.name != "scene_routing.png":  # one name whoever mapped best
        routing_figure = routing_figure.replace(routing_figure.with_name("scene_routing.png"))
    record = {
        "method": method, "checkpoint": str(export), "map": str(map_path),
        "preview": str(summary.preview) if summary.preview else None,
        "routing": str(routing_path) if routing_path else None,
        "figure": str(viz.figure), "confusion_figure": str(viz.confusion_figure) if viz.confusion_figure else None,
        "routing_figure": str(routing_figure) if routing_figure else None,
        "overall_accuracy": None if viz.overall_accuracy is None else 100.0 * viz.overall_accuracy,
        "mIoU": None if viz.mean_iou is None else 100.0 * viz.mean_iou,
        "tiles": summary.tiles, "seconds": round(summary.seconds, 1),
    }  # fmt: skip
    return record


# ----------------------------------------------------------------------------------------------- run
def run_demo(
    out: str | os.PathLike[str] = "demo-report",
    *,
    world_dir: str | os.PathLike[str] | None = None,
    methods: Sequence[str] = DEMO_METHODS,
    quick: bool = False,
    config: DemoConfig | None = None,
    workers: int | None = None,
    progress: bool | None = None,
    log: Logger | None = print,
    started: float | None = None,
    **overrides: Any,
) -> DemoResult:
    """Run the demo experiment and write its report folder ``out`` (see the module docstring).

    Args:
        out: report folder (created; files in it are overwritten).
        world_dir: cache root of the generated worlds and scenes (default ``default_cache_dir() / "demo-worlds"``).
        methods: adapters to compare (any of ``spectralmoe.models.adapters.ADAPTERS``).
        quick: the reduced sizes of ``QUICK`` (tiny world, 3 steps) instead of ``FULL``.
        config: explicit sizes (overrides ``quick``).
        workers: processes that train the runs (and render the world, map the scene) side by side, one
            torch thread each (default: one per CPU core, at most one per run; 1 = in this process).
        progress: progress bars on stderr (default: on a terminal outside CI, ``demo_progress.bars_wanted``).
        log: where progress lines go (``None``: silent).
        started: wall-clock time (``time.time()``) at which the whole command started, e.g. before
            ``make demo`` set the environment up: the report then gives the time since.
        overrides: ``DemoConfig`` fields to change, e.g. ``steps=100, seeds=3``.
    """
    import torch

    from spectralmoe.demo_progress import bars_wanted

    total_start = time.perf_counter()
    say: Logger = log if log is not None else (lambda message: None)
    config = replace(config or (QUICK if quick else FULL), **overrides)
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise ValueError("no method to run")
    runs = len(methods) * config.seeds
    workers = max(1, min(os.cpu_count() or 1, runs) if workers is None else int(workers))
    threads_before = torch.get_num_threads()
    seed_env = {name: os.environ.get(name) for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")}
    try:
        return _run(out, world_dir, methods, quick, config, workers, bars_wanted() if progress is None else progress,
                    say, total_start, started)  # fmt: skip
    finally:  # leave the caller's process as it was (seed_everything writes these variables)
        torch.set_num_threads(threads_before)
        for name, value in seed_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _run(
    out: str | os.PathLike[str], world_dir: str | os.PathLike[str] | None, methods: list[str], quick: bool,
    config: DemoConfig, workers: int, progress: bool, say: Logger, total_start: float, started: float | None,
) -> DemoResult:  # fmt: skip
    """The body of ``run_demo`` (which restores the process state)."""
    from spectralmoe.data.synthetic import generate_world, synthetic_task

    out = Path(out)
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    say(f"spectralmoe demo — {SYNTHETIC_BANNER}")
    seconds: dict[str, float] = {}

    # 1. the world (cached), the held-out source tiles and the scene
    folder = _world_folder(world_dir, config)
    start = time.perf_counter()
    index = generate_world(folder / "world", regions=REGIONS, sensors=SENSORS, tiles_per_domain=config.tiles_per_domain,
                           tile_size=config.tile_size, seed=config.seed, source=SOURCE, progress=progress,
                           workers=workers)  # fmt: skip
    generate_world(folder / "source-holdout", regions=REGIONS, sensors=(SOURCE[0],), source=(SOURCE[0], REGIONS[1]),
                   tiles_per_domain=config.holdout_tiles, tile_size=config.tile_size,
                   seed=config.seed + HOLDOUT_SEED_OFFSET, progress=progress, workers=workers)  # fmt: skip
    seconds["world"] = round(time.perf_counter() - start, 1)
    say(f"world: {folder} ({seconds['world']:.1f} s; {len(index.tiles)} tiles of {config.tile_size} px)")
    scene = None
    if config.scene_size:
        start = time.perf_counter()
        scene = _render_scene(folder, config, progress)
        seconds["scene_render"] = round(time.perf_counter() - start, 1)
        took = "cached" if scene.cached else f"{seconds['scene_render']:.1f} s"
        say(f"scene: {scene.image} ({config.scene_size}x{config.scene_size} px at {scene.gsd_m:g} m; {took})")
    world_parameters = {**index.options.get("parameters", {}), "gsd_m": index.options.get("gsd_m", {})}

    # 2. figure tiles: one per domain, the held-out source first
    source_name = "/".join(SOURCE)
    samples = [_pick_sample(folder / "source-holdout", source_name, f"{source_name}\n(source, held out)")]
    target_domains = sorted(synthetic_task(folder / "world").target_domains)
    samples += [_pick_sample(folder / "world", domain, domain) for domain in target_domains]

    # 3. train and test every method with every seed (in parallel single-thread processes); export
    #    and draw each method's first-seed model
    results: dict[str, MethodResult] = {method: MethodResult(method) for method in methods}
    exports: dict[str, Path] = {}
    num_experts = routing_layer = None
    for method in methods:
        method_dir = out / "runs" / method
        if method_dir.is_dir():  # this demo's own output of an earlier run: replaced, not mixed
            shutil.rmtree(method_dir)
    jobs = [_Job(method, seed, k == 0, k % max(1, workers), config, folder / "world", folder / "source-holdout",
                 out / "runs" / method / f"seed{seed}", progress, samples)
            for method in methods for k, seed in enumerate(config.training_seeds)]  # fmt: skip
    say(f"training {len(jobs)} runs ({', '.join(label_of(m) for m in methods)} x seeds "
        f"{', '.join(map(str, config.training_seeds))}; {config.steps} steps each on {source_name}) in {workers} "
        f"process(es) of one thread …")  # fmt: skip
    start = time.perf_counter()
    with _job_runner(workers) as submit:
        futures = [submit(_run_job, job) for job in jobs]
        for future in futures:
            done: _JobResult = future.result()
            run = done.run
            result = results[done.method]
            result.runs.append(run)
            result.trainable_parameters = done.parameters["trainable"]
            result.method_parameters = done.parameters["method"]
            if done.export is not None:
                exports[done.method] = done.export
                for sample in samples:
                    sample.predictions[done.method] = done.predictions[sample.domain]
                    if done.method == "spectralmoe":
                        sample.routing = done.routing.get(sample.domain)
            if done.num_experts is not None:
                num_experts, routing_layer = done.num_experts, done.routing_layer
            say(f"{label_of(done.method)} seed {done.seed}: source (held out) mIoU {run.source['mIoU']:.1f}, mean "
                f"target mIoU {run.mean_target['mIoU']:.1f} (train {run.train_seconds:.0f} s, test "
                f"{run.eval_seconds:.0f} s)")  # fmt: skip
        seconds["train_and_test_wall"] = round(time.perf_counter() - start, 1)
        seconds["train"] = round(sum(r.train_seconds for r in results.values()), 1)
        seconds["test"] = round(sum(r.eval_seconds for r in results.values()), 1)

        # 4. map the scene with the best method (and SpectralMoE for its routing map), in parallel too
        if scene is not None:
            start = time.perf_counter()
            scene.best = max(results, key=lambda m: results[m].mean(MEAN_PLACE))
            mapped = [scene.best] + (["spectralmoe"] if "spectralmoe" in results and scene.best != "spectralmoe"
                                     else [])  # fmt: skip
            say(f"scene: mapping with {' and '.join(label_of(m) for m in mapped)} (seed {config.seed}) …")
            maps = [submit(_map_scene, scene, method, exports[method], out, config, progress, method == "spectralmoe",
                           position) for position, method in enumerate(mapped)]  # fmt: skip
            for method, future in zip(mapped, maps):
                record = scene.maps[method] = future.result()
                say(f"scene: {label_of(method)} overall accuracy {record['overall_accuracy']:.1f} %, mIoU "
                    f"{record['mIoU']:.1f} % against the ground truth ({record['tiles']} tiles, "
                    f"{record['seconds']:.0f} s)")  # fmt: skip
            seconds["scene_map"] = round(time.perf_counter() - start, 1)

    # 5. figures, metrics, report
    start = time.perf_counter()
    figures = write_figures(samples, methods, results, index.classes, index.palette, num_experts, routing_layer,
                            figures_dir, source_name)  # fmt: skip
    result = DemoResult(out=out, report=out / "report.md", metrics=out / "metrics.json", figures=figures,
                        methods=results, config=config, world=folder, scene=scene, seconds=seconds)  # fmt: skip
    command = _command(out, config, methods, quick and config == QUICK)
    seconds["report"] = round(time.perf_counter() - start, 1)
    seconds["total"] = round(time.perf_counter() - total_start, 1)
    if started is not None:
        seconds["since_start"] = round(time.time() - started, 1)
    machine = {"workers": workers, "threads_per_worker": 1, "cpus": os.cpu_count(), "load_start": [round(v, 2) for v in load_start],
               "load_end": [round(v, 2) for v in os.getloadavg()]}  # fmt: skip
    _write_metrics(result, world_parameters, command, machine)
    write_report(result, world_parameters, command, machine, _provenance(), _versions())
    say(f"report: {result.report} (total {seconds['total']:.0f} s)\n\n{result.table('mIoU')}")
    return result


def _write_metrics(result: DemoResult, world_parameters: dict[str, Any], command: str, machine: dict[str, Any]
                   ) -> None:  # fmt: skip
    scene = result.scene
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
        "seeds": result.config.training_seeds,
        "methods": {method: method_record(r) for method, r in result.methods.items()},
        "comparisons": [c.to_dict() for c in result.comparisons("mIoU")],
        "scene": None if scene is None else {
            "sensor": scene.sensor, "region": scene.region, "size": scene.size, "gsd_m": scene.gsd_m,
            "image": str(scene.image), "ground_truth": str(scene.label), "best_method": scene.best,
            "maps": scene.maps, "render_seconds": scene.render_seconds, "cached": scene.cached},  # fmt: skip
        "seconds": result.seconds,
        "machine": machine,
        "weights": _provenance(),
        "versions": _versions(),
    }
    write_json(result.metrics, payload)


def _provenance() -> dict[str, Any]:
    """The packaged weights' PROVENANCE.json files (error entries when absent)."""
    import json

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


_CLI_FIELDS = ("steps", "tiles_per_domain", "holdout_tiles", "tile_size", "batch_size", "lr", "seed", "seeds",
               "scene_size")  # fmt: skip


def _command(out: Path, config: DemoConfig, methods: Sequence[str], quick: bool) -> str:
    words = ["spectralmoe", "demo", "--out", str(out)]
    if quick:
        words.append("--quick")
    reference = QUICK if quick else FULL
    for name in _CLI_FIELDS:
        value = getattr(config, name)
        if value != getattr(reference, name):
            words += [f"--{name.replace('_', '-')}", str(value)]
    if tuple(methods) != DEMO_METHODS:
        words += ["--methods", *methods]
    return shlex.join(words)


# ----------------------------------------------------------------------------------------------- CLI
def add_demo_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``spectralmoe demo`` (its ``func`` returns an exit code)."""
    p = subparsers.add_parser(
        "demo",
        help="run a complete domain-generalisation experiment on the SYNTHETIC world (CPU, minutes, no download)",
        description="Generate the synthetic multi-sensor world (cached), fine-tune Freeze, Rein and SpectralMoE on "
        "gf2/north with several seeds on the packaged synthetic-pretrained backbone and depth model, test them on the "
        "unseen sensors/regions, map a large target-sensor scene with the best model and write a report (Markdown, "
        "metrics JSON, PNG figures, GeoTIFF map). SYNTHETIC data only.",
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
    kinds = {"lr": float}
    for name in _CLI_FIELDS:
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kinds.get(name, int), default=None,
                       help=f"default {getattr(FULL, name)} ({getattr(QUICK, name)} with --quick)"
                       + ("; 0: no scene" if name == "scene_size" else ""))  # fmt: skip
    p.add_argument("--workers", type=int, default=None,
                   help="processes of one torch thread each that train the runs side by side (default: one per CPU "
                   "core; 1: in the demo's own process)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bars (they are shown on a terminal outside CI)")
    p.add_argument("--started", type=float, default=None,
                   help="time.time() at which the whole command started (make demo passes it, so the report gives "
                   "the wall time with the set-up included)")


def _run_demo_command(args: argparse.Namespace) -> int:
    overrides = {name: getattr(args, name) for name in _CLI_FIELDS if getattr(args, name) is not None}
    run_demo(args.out, world_dir=args.world_dir, methods=args.methods, quick=args.quick, workers=args.workers,
             progress=args.progress, started=args.started, **overrides)  # fmt: skip
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m spectralmoe.demo`` (same options as ``spectralmoe demo``)."""
    parser = argparse.ArgumentParser(prog="python -m spectralmoe.demo", description=__doc__.split("\n")[0])
    _add_demo_arguments(parser)
    return _run_demo_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
