"""The ``spectralmoe`` command line: one entry point, one sub-command per job.

``params``, ``prepare`` and ``stats`` are plain argparse commands. ``fit``, ``validate``, ``test`` and
``predict`` go to Lightning's ``LightningCLI`` (jsonargparse), so every constructor argument of
``SegmentationTask`` (``model:``), ``DGDataModule`` (``data:``) and ``Trainer`` (``trainer:``) is a
YAML key and a ``--section.key`` flag, configs compose with repeated ``-c``, and
``--print_config`` shows the merged result. ``SpectralMoECLI`` adds what every run of this product
needs: a ``ModelCheckpoint`` on the mean target mIoU (``checkpoint:``), the trainable-only export at
the end of ``fit`` (``export:``), georeferenced class maps from ``predict`` (``predictions:``), CSV +
TensorBoard loggers in one run folder (``run:``), seed 42 and a learning-rate monitor.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn, Sequence

from spectralmoe.errors import (
    EXIT_INPUT,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    InputError,
    debug_requested,
    describe,
    interrupts_raise,
    is_expected,
    received_signal,
    warnings_as_lines,
)

if TYPE_CHECKING:  # Lightning is imported only by the commands that train (see _trainer_classes)
    import lightning as L
    from lightning.pytorch.cli import LightningArgumentParser

#: Sub-commands run by LightningCLI (the Trainer method of the same name).
TRAINER_COMMANDS = ("fit", "validate", "test", "predict")
_TRAINER_HELP = {
    "fit": "train a method on a task's source domain, validating per target domain",
    "validate": "evaluate a model on every target domain (metrics_val_*.json/.csv)",
    "test": "evaluate a model on every target domain (metrics_test.json/.csv)",
    "predict": "write a georeferenced class-map GeoTIFF for every target tile",
}


def _parse_value(text: str) -> Any:
    """``key=value`` values: JSON when it parses (numbers, lists, true/false), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_assignments(items: Sequence[str], flag: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"{flag} expects key=value, got {item!r}")
        options[key.replace("-", "_")] = _parse_value(value)
    return options


def _add_params_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "params",
        help="count trainable parameters of a method on a backbone (meta device: no download, no memory)",
        description="Build backbone + adapter + head on the meta device and print parameter counts. "
        "The method count excludes the decoder, as in the paper's Params column.",
    )
    p.add_argument("--backbone", default="dinov3-vitl16", help="backbone preset (default: dinov3-vitl16)")
    p.add_argument("--adapter", default="spectralmoe", help="method name (default: spectralmoe)")
    p.add_argument("--head", default="mask2former", help="decoder head (default: mask2former)")
    p.add_argument("--depth", default="prompt-depth-anything-large", help="depth model preset for depth methods")
    p.add_argument("--num-classes", type=int, default=24, help="number of classes (default: 24)")
    p.add_argument("--sensor", default=None, help="input sensor (band count); default RGB")
    p.add_argument("--set", dest="adapter_options", action="append", default=[], metavar="KEY=VALUE",
                   help="adapter option, repeatable, e.g. --set num_experts=3 --set token_length=512")
    p.add_argument("--architecture", choices=["segmentor", "dstc"], default="segmentor",
                   help="'dstc': the complete DSTC model (--backbone resnet18; adapter/head/depth unused)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--compare", action="store_true",
                   help="one Markdown row per method of the paper: our count next to the paper's Params column")
    p.set_defaults(func=_run_params)


def _run_params(args: argparse.Namespace) -> int:
    from spectralmoe.models.accounting import PAPER_PARAMS_M_VIT_L, build_on_meta, parameter_report

    if args.compare:
        print(f"| method | ours ({args.backbone}) | paper (ViT-L) |\n|---|---:|---:|")
        for method, paper in PAPER_PARAMS_M_VIT_L.items():
            model = build_on_meta(backbone=args.backbone, adapter=method, head=args.head, depth=args.depth,
                                  num_classes=args.num_classes, sensor=args.sensor)  # fmt: skip
            print(f"| {method} | {parameter_report(model)['method_trainable']:,} | {paper:.2f} M |")
        return 0
    if args.architecture == "dstc":
        return _print_dstc_params(args, build_on_meta, parameter_report)
    model = build_on_meta(
        backbone=args.backbone,
        adapter=args.adapter,
        head=args.head,
        depth=args.depth,
        num_classes=args.num_classes,
        sensor=args.sensor,
        adapter_kwargs=_parse_assignments(args.adapter_options, "--set"),
    )
    report = {"backbone": args.backbone, "adapter": args.adapter, "head": args.head, **parameter_report(model)}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"backbone {args.backbone}, method {args.adapter}, head {args.head}")
    print(f"  method (trainable, decoder excluded): {report['method_trainable']:>14,}")
    for part, n in report["method_breakdown"].items():
        print(f"    {part:<34}{n:>14,}")
    print(f"  head (trainable):                     {report['head_trainable']:>14,}")
    print(f"  total trainable:                      {report['total_trainable']:>14,}")
    print(f"  frozen backbone:                      {report['backbone_frozen']:>14,}")
    if report["depth_frozen"]:
        print(f"  frozen depth model:                   {report['depth_frozen']:>14,}")
    return 0


def _print_dstc_params(args: argparse.Namespace, build_on_meta: Any, parameter_report: Any) -> int:
    backbone = "resnet18" if args.backbone == "dinov3-vitl16" else args.backbone
    model = build_on_meta(architecture="dstc", backbone=backbone, num_classes=args.num_classes, sensor=args.sensor,
                          backbone_kwargs=_parse_assignments(args.adapter_options, "--set"))  # fmt: skip
    report = {"architecture": "dstc", "backbone": backbone, **parameter_report(model)}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"DSTC ({backbone} encoder), {model.num_bands} bands, {args.num_classes} classes: every parameter trains")
    for part, n in report["method_breakdown"].items():
        print(f"    {part:<34}{n:>14,}")
    print(f"  total trainable:                      {report['total_trainable']:>14,}")
    print(f"  with the authors' unused position rows ({report['authors_position_rows']:,} rows instead of "
          f"{report['position_rows']:,}): {report['authors_total']:,}")
    return 0


def _add_prepare_parser(subparsers: argparse._SubParsersAction) -> None:
    from spectralmoe.data.prepare import PREPARERS

    p = subparsers.add_parser(
        "prepare",
        help="convert a benchmark's raw download, or your own GeoTIFF folders (prepare folder), into tiles + splits.json",
        description="Read a benchmark as its owners distribute it (zips or unpacked folders), convert labels "
        "to class indices, tile, and write image/label tiles with a splits.json. Resumable: a rerun skips "
        "finished tiles. Refuses an output folder that holds another benchmark.",
    )
    benchmarks = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, preparer in PREPARERS.items():
        b = benchmarks.add_parser(name, help=preparer.description, description=preparer.description)
        b.add_argument("--raw", required=True, type=Path, help="folder holding the raw download")
        b.add_argument("--out", required=True, type=Path, help="output folder (empty, or an earlier run of it)")
        b.add_argument("--quiet", action="store_true", help="no progress line")
        for option, (kind, default, text) in preparer.options.items():
            flag = "--" + option.replace("_", "-")
            if kind is bool:
                b.add_argument(flag, dest=option, action=argparse.BooleanOptionalAction, default=default, help=text)
            else:
                b.add_argument(flag, dest=option, type=kind, default=default,
                               help=f"{text} (default: {default})")  # fmt: skip
        b.set_defaults(func=_run_prepare, preparer=preparer)
    from spectralmoe.data.prepare.folder import add_prepare_folder_parser

    add_prepare_folder_parser(benchmarks)  # a team's own GeoTIFF folders


def _run_prepare(args: argparse.Namespace) -> int:
    preparer = args.preparer
    options = {name: getattr(args, name) for name in preparer.options}
    index = preparer.prepare(args.raw, args.out, progress=not args.quiet, **options)
    counts = {split: len(index.select(split)) for split in ("source", "target")}
    print(f"{preparer.name}: {len(index.tiles)} tiles ({counts['source']} source, {counts['target']} target) "
          f"in {args.out}; domains: {', '.join(index.domains())}")  # fmt: skip
    return 0


def _add_stats_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "stats",
        help="per-band mean/std/min/max of a prepared benchmark or a folder of GeoTIFFs (streaming)",
        description="Per-band statistics over valid pixels (NaN/inf and nodata skipped), one tile at a time, "
        "in the files' band order (bands named by the files' descriptions, else band 1..N): the pixel_mean / "
        "pixel_std a new dataset needs (`spectralmoe prepare folder` computes them for you).",
    )
    p.add_argument("--data", required=True, type=Path, help="prepared root (with splits.json) or a GeoTIFF folder")
    p.add_argument("--split", choices=["source", "target"], default=None, help="prepared roots: one split only")
    p.add_argument("--max-samples", type=int, default=None, help="read at most N evenly spaced tiles")
    p.add_argument("--nodata", type=float, default=None, help="nodata value when the files do not declare one")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_run_stats)


def _run_stats(args: argparse.Namespace) -> int:
    from spectralmoe.data.layout import INDEX_FILE, PreparedIndex
    from spectralmoe.data.stats import compute_band_stats, format_stats

    stats = compute_band_stats(args.data, max_samples=args.max_samples, nodata=args.nodata, split=args.split)
    band_names = None
    if (args.data / INDEX_FILE).is_file():
        index = PreparedIndex.load(args.data)
        used = {t.sensor for t in index.select(args.split)}
        if len(used) == 1:
            band_names = index.sensors[used.pop()].band_names
    else:  # a folder of GeoTIFFs: the files' own band descriptions ("band N" where a file has none)
        from spectralmoe.data.io import RASTERIO_SUFFIXES, read_band_info

        files = [args.data] if args.data.is_file() else sorted(
            p for p in args.data.rglob("*") if p.is_file() and p.suffix.lower() in RASTERIO_SUFFIXES)
        if files:
            band_names = read_band_info(files[0]).names()
    text, payload = format_stats(stats, band_names)
    print(json.dumps(payload, indent=2) if args.json else text)
    return 0


# ------------------------------------------------------------------------------------- training
def _next_version(folder: Path) -> int:
    """One past the largest N of the ``version_N`` folders in ``folder`` (Lightning's rule)."""
    numbers = [int(m.group(1)) for p in folder.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))]
    return max(numbers) + 1 if numbers else 0


_TRAINER_CLASSES: dict[str, type] = {}
_PARSERS: dict[tuple[Any, ...], tuple[Any, Any, Any]] = {}


def _trainer_classes() -> dict[str, type]:
    """Define ``ClassMapWriter`` and ``SpectralMoECLI`` on first use.

    Importing Lightning takes seconds; ``spectralmoe --help``, ``params``, ``prepare`` and ``stats`` should
    not pay for it. The classes still live at ``spectralmoe.cli.ClassMapWriter`` /
    ``spectralmoe.cli.SpectralMoECLI`` (module ``__getattr__``), so config ``class_path`` entries and
    pickling for ``ddp_spawn`` find them.
    """
    if _TRAINER_CLASSES:
        return _TRAINER_CLASSES
    import lightning as L
    from lightning.pytorch.callbacks import BasePredictionWriter, LearningRateMonitor
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from lightning.pytorch.utilities import rank_zero_info

    class ClassMapWriter(BasePredictionWriter):
        """Save each class map of ``predict`` as a georeferenced GeoTIFF (or a palette PNG), so that
        ``spectralmoe predict`` leaves files a GIS places correctly (whole scenes: ``predict-scene``).

        Files go to ``<dirpath>/<tile path under the prepared root's image/ folder>.tif``: the tile's CRS
        and transform, ``uint8`` class indices with 255 = nodata where the input tile had no data, the
        palette as colour table, the class names in the ``CLASS_NAMES`` tag
        (``spectralmoe.engine.class_maps``). Each rank writes the tiles it predicted.

        Args:
            dirpath: output folder (default: ``<run folder>/predictions``).
            format: ``tif`` (georeferenced GeoTIFF) or ``png`` (palette PNG, no georeference, nodata transparent).
        """

        def __init__(self, dirpath: str | None = None, format: Literal["tif", "png"] = "tif") -> None:  # noqa: A002
            super().__init__(write_interval="batch")
            if format not in ("tif", "png"):
                raise ValueError(f"predictions.format must be 'tif' or 'png', got {format!r}")
            self.dirpath = dirpath
            self.format = format
            self.folder: Path | None = None
            self.written: list[Path] = []

        def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            # trainer.log_dir is a collective: resolve it once here, on every rank, never per batch.
            if self.dirpath is not None:
                self.folder = Path(self.dirpath)
            else:
                log_dir = trainer.log_dir
                self.folder = Path(log_dir if log_dir is not None else trainer.default_root_dir) / "predictions"
            self.written = []

        def _relative(self, trainer: L.Trainer, path: str | None) -> Path:
            """The tile's path under the prepared root's ``image/`` folder, without suffix."""
            if path is None:
                return Path(f"rank{trainer.global_rank}_tile{len(self.written):06d}")
            image_root = getattr(getattr(trainer, "datamodule", None), "root", None)
            source = Path(path)
            if image_root is not None:
                try:
                    return source.relative_to(Path(image_root) / "image").with_suffix("")
                except ValueError:
                    pass
            return Path(source.stem)

        def write_on_batch_end(
            self,
            trainer: L.Trainer,
            pl_module: L.LightningModule,
            prediction: Any,
            batch_indices: Sequence[int] | None,
            batch: Any,
            batch_idx: int,
            dataloader_idx: int,
        ) -> None:
            from spectralmoe.engine.class_maps import write_class_map

            assert self.folder is not None
            palette = getattr(pl_module.hparams, "palette", None)
            names = getattr(pl_module.hparams, "class_names", None)
            paths = prediction.get("path") or [None] * len(prediction["pred"])
            for path, pred in zip(paths, prediction["pred"]):
                target = self.folder / self._relative(trainer, path)
                target = target.with_name(target.name + f".{self.format}")
                if ".." in target.relative_to(self.folder).parts:  # a tile path from a file never leaves the folder
                    raise InputError(f"{path}: its prediction would be written outside {self.folder}")
                written = write_class_map(target, pred.numpy(), palette=palette, class_names=names, source=path,
                                          fmt=self.format)  # fmt: skip
                self.written.append(written)

    class SpectralMoECLI(LightningCLI):
        """LightningCLI for ``SegmentationTask`` + ``DGDataModule`` with this product's defaults.

        Extra config sections (each key also a ``--section.key`` flag):

        * ``checkpoint:`` the ``ModelCheckpoint`` (best ``val/mean/mIoU`` + ``last.ckpt``);
        * ``export:`` ``ExportOnFitEnd`` (``model.safetensors`` + ``spectralmoe.json`` when fit ends);
        * ``predictions:`` ``ClassMapWriter`` (georeferenced GeoTIFF class maps from ``predict``);
        * ``run:`` where the run folder goes: ``<run.root>/<run.name>/<run.version>``, default
          ``runs/<task>/<adapter>_<backbone>/version_N``.

        With ``trainer.logger`` left ``null`` the run logs to a ``CSVLogger`` and a ``TensorBoardLogger``
        sharing that folder (plus a ``LearningRateMonitor``); ``trainer.logger: false`` logs nothing.
        """

        def __init__(self, *args: Any, subcommand: str | None = None, **kwargs: Any) -> None:
            #: build the parser of this sub-command only: each one costs a full signature walk of the
            #: Trainer, task, datamodule and callbacks (about half a second), and a run needs one
            self.only_subcommand = subcommand
            super().__init__(*args, **kwargs)

        def setup_parser(
            self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
        ) -> None:
            """Reuse the parser of an earlier run in this process (Python sweeps, tests): building one walks
            every signature again, about as long as a tiny training run."""
            key = (
                type(self), self.only_subcommand, add_subcommands, self._model_class, self._datamodule_class,
                self.trainer_class, repr(self.trainer_defaults), repr(self.seed_everything_default),
                repr(main_kwargs), repr(subparser_kwargs), self.auto_configure_optimizers,
            )  # fmt: skip
            cached = _PARSERS.get(key)
            if cached is None:
                super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
                cached = _PARSERS[key] = (
                    self.parser, getattr(self, "_subcommand_parsers", None),
                    getattr(self, "_subcommand_method_arguments", None),
                )  # fmt: skip
            self.parser, subcommand_parsers, method_arguments = cached
            if subcommand_parsers is not None:
                self._subcommand_parsers, self._subcommand_method_arguments = subcommand_parsers, method_arguments

        def subcommands(self) -> dict[str, set[str]]:  # type: ignore[override]
            every = LightningCLI.subcommands()
            if self.only_subcommand is None:
                return every
            return {self.only_subcommand: every[self.only_subcommand]}

        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            from spectralmoe.engine.callbacks import ExportOnFitEnd, LastCheckpoint

            # last.ckpt = the latest weights (Lightning's own keeps it at the last top-k save)
            parser.add_lightning_class_args(LastCheckpoint, "checkpoint")
            parser.set_defaults(
                {
                    "checkpoint.monitor": "val/mean/mIoU",
                    "checkpoint.mode": "max",
                    "checkpoint.save_last": True,
                    "checkpoint.save_top_k": 1,
                    # the metric names hold "/": Lightning must not insert them into the file name
                    "checkpoint.auto_insert_metric_name": False,
                    "checkpoint.filename": "best_epoch{epoch}_step{step}_mIoU{val/mean/mIoU:.2f}",
                }
            )
            parser.add_lightning_class_args(ExportOnFitEnd, "export")
            parser.add_lightning_class_args(ClassMapWriter, "predictions")
            parser.add_argument(
                "--run.root", type=str, default="runs",
                help="parent folder of the run folders (the default loggers' place: used when trainer.logger is null)",
            )  # fmt: skip
            parser.add_argument(
                "--run.name", type=str | None, default=None,
                help="run name, may contain '/' (default: <data.task name>/<model.adapter>_<model.backbone>)",
            )  # fmt: skip
            parser.add_argument(
                "--run.version", type=str | None, default=None,
                help="run subfolder (default: the next free version_N); an existing one loses its metrics.csv",
            )  # fmt: skip

        def _run_folder(self) -> tuple[str, str, int | str]:
            config = self.config[self.subcommand] if self.subcommand else self.config
            run = config.get("run")
            root = run.root if run is not None else "runs"
            name = run.name if run is not None else None
            version = run.version if run is not None else None
            if name is None:
                task = getattr(self.datamodule, "task", None)
                task_name = getattr(task, "name", "task")
                hp = self.model.hparams
                method = hp.adapter if hp.get("architecture", "segmentor") == "segmentor" else hp.architecture
                name = f"{task_name}/{method}_{hp.backbone}"
            if version is None:
                version = _next_version(Path(root) / name)
            return root, name, version

        def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
            self._raw_args = args  # kept to tell given settings from defaults (_parse_ckpt_path)
            super().parse_arguments(parser, args)

        def _explicit_model_keys(self, subcommand: str) -> set[str] | None:
            """``model:`` keys set on the command line or in a ``-c`` file (a parse without defaults)."""
            args = getattr(self, "_raw_args", None)
            if isinstance(args, dict) or hasattr(args, "as_dict"):
                return None
            try:
                bare = self.parser.parse_args(args, defaults=False)
            except (SystemExit, Exception):  # noqa: BLE001 - the full parse succeeded: nothing to compare
                return None
            model = (bare.get(subcommand) or {}).get("model") if bare.get(subcommand) is not None else None
            if model is None:
                return set()
            return set(model.as_dict() if hasattr(model, "as_dict") else dict(model))

        def _parse_ckpt_path(self) -> None:
            """With ``--ckpt_path``, the checkpoint decides the architecture and data facts, and the
            ``--model.*`` values given here (eval_mode, eval_crop, band_wavelengths…) apply; a flag that
            would change the architecture (``--model.adapter spectralmoe`` with a Rein checkpoint) is refused
            (``engine.checkpoint_settings``), as is a missing or unreadable file. Lightning's own version let
            the checkpoint overwrite every flag silently."""
            import torch

            from spectralmoe.engine.checkpoint_settings import merge_checkpoint_settings, task_defaults

            subcommand = self.config.get("subcommand")
            if not subcommand:
                return
            ckpt_path = self.config[subcommand].get("ckpt_path")
            if not ckpt_path or ckpt_path in ("last", "best", "hpc", "registry"):
                return
            path = Path(ckpt_path)
            if not path.is_file():
                raise InputError(f"--ckpt_path {path}: no such checkpoint file")
            try:
                stored = torch.load(path, weights_only=True, map_location="cpu")
            except Exception as error:  # noqa: BLE001 - any unpickling failure: name the file
                raise InputError(f"--ckpt_path {path}: unreadable checkpoint "
                                 f"({describe(error).splitlines()[0]})") from error  # fmt: skip
            hparams = stored.get("hyper_parameters") if isinstance(stored, dict) else None
            if not isinstance(hparams, dict) or "state_dict" not in stored:
                raise InputError(f"--ckpt_path {path}: not a spectralmoe training checkpoint (no state_dict and "
                                 "hyper_parameters)")  # fmt: skip
            hparams = {k: v for k, v in hparams.items() if not k.startswith("_")}
            if not hparams:
                return
            model = self.config[subcommand].get("model")
            given = model.as_dict() if hasattr(model, "as_dict") else dict(model or {})
            merged, applied = merge_checkpoint_settings(given, hparams, task_defaults(self._model_class),
                                                        checkpoint=str(path),
                                                        explicit=self._explicit_model_keys(subcommand))  # fmt: skip
            self.config = self.parser.parse_object({subcommand: {"model": merged}}, self.config)
            for note in applied:
                rank_zero_info(f"spectralmoe {subcommand}: {path}: applying {note}")

        def before_instantiate_classes(self) -> None:
            if self.subcommand == "fit":
                self._task_schedule(self.config["fit"])

        def _task_schedule(self, config: Any) -> None:
            """The task's schedule (``max_iters``, ``val_interval``) unless the trainer is given one, and
            a logging interval that suits the run's length."""
            from spectralmoe.data.benchmarks import load_task

            trainer = config.trainer
            if trainer.get("fast_dev_run"):
                return
            task_value = config.data.task
            if hasattr(task_value, "as_dict"):  # jsonargparse read a complete task file into DGTask fields
                from spectralmoe.data.benchmarks import DGTask

                fields = task_value.as_dict()
                path = fields.pop("__path__", None)
                task = load_task(str(path)) if path else DGTask.from_dict(fields, source="--data.task")
            else:
                task = load_task(task_value)
            given = (trainer.get("max_steps") not in (None, -1) or trainer.get("max_epochs") is not None
                     or trainer.get("max_time") is not None)  # fmt: skip
            if not given:
                trainer.max_steps = task.max_iters
                rank_zero_info(f"spectralmoe fit: the schedule of task {task.name!r}: {task.max_iters} steps "
                               "(--trainer.max_steps to change)")  # fmt: skip
            steps = trainer.get("max_steps")
            step_based = steps is not None and steps > 0 and trainer.get("max_epochs") is None
            if step_based and trainer.get("val_check_interval") is None and trainer.get("check_val_every_n_epoch") == 1:
                trainer.val_check_interval = min(task.val_interval, steps)
                trainer.check_val_every_n_epoch = None
                rank_zero_info(f"spectralmoe fit: validation every {trainer.val_check_interval} steps (task "
                               f"{task.name!r}; --trainer.val_check_interval to change)")  # fmt: skip
            if trainer.get("log_every_n_steps") is None and step_based:
                trainer.log_every_n_steps = max(1, min(50, steps // 20))  # short runs log too

        def _run_dir(self, root: str, name: str, version: int | str) -> Path:
            return Path(root) / name / (f"version_{version}" if isinstance(version, int) else str(version))

        def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
            """Add the default loggers (CSV + TensorBoard in one run folder) when ``trainer.logger`` is null,
            the step progress bar, and a run folder for ``fast_dev_run`` too (Lightning drops its loggers)."""
            from lightning.pytorch.callbacks import ProgressBar

            from spectralmoe.engine.progress import StepProgressBar

            trainer_config = self._get(self.config_init, "trainer", default={})
            fast_dev_run = bool(trainer_config.get("fast_dev_run"))
            if trainer_config.get("logger") is None and "logger" not in kwargs:
                root, name, version = self._run_folder()
                kwargs["logger"] = [
                    CSVLogger(root, name=name, version=version),
                    TensorBoardLogger(root, name=name, version=version, default_hp_metric=False),
                ]
                if fast_dev_run:  # every file of the run (config, metrics, export) goes to the run folder
                    kwargs.setdefault("default_root_dir", str(self._run_dir(root, name, version)))
            callbacks = list(kwargs.get("callbacks", trainer_config.get("callbacks")) or [])
            if trainer_config.get("enable_progress_bar", True) is not False and not any(
                isinstance(c, ProgressBar) for c in callbacks
            ):
                kwargs["callbacks"] = [*callbacks, StepProgressBar()]
            trainer = super().instantiate_trainer(**kwargs)
            from lightning.pytorch.plugins.io import TorchCheckpointIO

            from spectralmoe.engine.callbacks import AtomicCheckpointIO

            if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # whole checkpoints, or none
                trainer.strategy.checkpoint_io = AtomicCheckpointIO()
            if fast_dev_run:
                trainer.loggers = []  # Lightning's stand-in logger has no folder: log_dir = default_root_dir
                if self.save_config_callback:  # LightningCLI skips config.yaml under fast_dev_run: keep it
                    config = self.config.get(str(self.subcommand), self.config)
                    trainer.callbacks.append(self.save_config_callback(self._parser(self.subcommand), config,
                                                                       **self.save_config_kwargs))  # fmt: skip
            if trainer.loggers and not any(isinstance(c, LearningRateMonitor) for c in trainer.callbacks):
                trainer.callbacks.append(LearningRateMonitor(logging_interval="step"))
            return trainer

        def predict(self, **kwargs: Any) -> Any:
            """``trainer.predict`` without collecting every map in memory unless asked: the writer saves them."""
            if kwargs.get("return_predictions") is None:
                kwargs["return_predictions"] = False
            return self.trainer.predict(**kwargs)

        def validate(self, **kwargs: Any) -> Any:
            """``trainer.validate`` printing one table per target domain (``after_validate``), not Lightning's."""
            kwargs["verbose"] = False
            return self.trainer.validate(**kwargs)

        def test(self, **kwargs: Any) -> Any:
            """``trainer.test`` printing one table per target domain (``after_test``), not Lightning's."""
            kwargs["verbose"] = False
            return self.trainer.test(**kwargs)

        def _folder(self) -> Path | None:
            """The run folder (``trainer.log_dir`` is a collective: every rank calls this)."""
            log_dir = self.trainer.log_dir
            return Path(log_dir) if log_dir is not None else None

        def _report(self) -> None:
            folder = self._folder()
            if self.trainer.is_global_zero:
                rank_zero_info(f"spectralmoe {self.subcommand}: run folder {folder}")

        def after_fit(self) -> None:
            from spectralmoe.engine.summary import fit_summary

            folder = self._folder()
            if not self.trainer.is_global_zero:
                return
            checkpoint = self.trainer.checkpoint_callback
            export = next((c for c in self.trainer.callbacks if type(c).__name__ == "ExportOnFitEnd"), None)
            hp = self.model.hparams
            options = [] if hp.get("pretrained", True) else ["--random-frozen"]
            for flag, key in (("--backbone-weights", "backbone_weights"), ("--depth-weights", "depth_weights")):
                if hp.get(key):
                    options += [flag, str(hp[key])]
            config_file = folder / "config.yaml" if folder is not None and (folder / "config.yaml").is_file() else None
            rank_zero_info(fit_summary(
                run_folder=folder, history=getattr(self.model, "val_history", []), steps=int(self.trainer.global_step),
                best_checkpoint=getattr(checkpoint, "best_model_path", None) or None,
                last_checkpoint=getattr(checkpoint, "last_model_path", None) or None,
                export=getattr(export, "last_path", None), config_file=config_file, predict_scene_options=options,
            ))  # fmt: skip

        def _eval_report(self, stage: str, stem: str) -> None:
            from spectralmoe.engine.summary import eval_table

            folder = self._folder()
            report = getattr(self.model, "last_metrics", None)
            if not self.trainer.is_global_zero or report is None:
                self._report()
                return
            metrics = Path(self.model.hparams.get("metrics_dir") or folder or ".") / f"{stem}.json"
            rank_zero_info(eval_table(report, f"spectralmoe {stage}: per target domain — {metrics}"))
            rank_zero_info(f"spectralmoe {stage}: run folder {folder}")

        def after_validate(self) -> None:
            report = getattr(self.model, "last_metrics", None) or {}
            self._eval_report("validate", f"metrics_val_epoch{report.get('epoch')}_step{report.get('step')}")

        def after_test(self) -> None:
            self._eval_report("test", "metrics_test")

        def after_predict(self) -> None:
            self._report()

    for cls in (ClassMapWriter, SpectralMoECLI):
        cls.__qualname__ = cls.__name__  # importable as spectralmoe.cli.<name>
    _TRAINER_CLASSES.update(ClassMapWriter=ClassMapWriter, SpectralMoECLI=SpectralMoECLI)
    return _TRAINER_CLASSES


def __getattr__(name: str) -> Any:
    if name in ("ClassMapWriter", "SpectralMoECLI"):
        return _trainer_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check_config_files(words: Sequence[str]) -> None:
    """Every ``-c``/``--config`` file exists and is YAML, checked before LightningCLI (whose parse errors
    do not name the file)."""
    import yaml

    from spectralmoe.errors import yaml_problem

    for i, word in enumerate(words):
        if word in ("-c", "--config") and i + 1 < len(words):
            value = words[i + 1]
        elif word.startswith("--config="):
            value = word.split("=", 1)[1]
        else:
            continue
        path = Path(value)
        if value.lstrip().startswith("{") or "\n" in value:  # an inline config string, not a file
            continue
        if not path.is_file():
            raise InputError(f"-c {path}: no such config file")
        try:
            yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise InputError(yaml_problem(path, error)) from error
        except UnicodeDecodeError as error:
            raise InputError(f"{path}: not a text file ({error.reason})") from error


def _run_trainer_command(command: str, argv: Sequence[str] | None) -> int:
    """Run ``command`` (fit|validate|test|predict) through ``SpectralMoECLI``; ``argv`` None: ``sys.argv``."""
    from spectralmoe.data.datamodule import DGDataModule

    _check_config_files(list(sys.argv[1:] if argv is None else argv))
    from spectralmoe.engine.task import SegmentationTask

    _trainer_classes()["SpectralMoECLI"](
        SegmentationTask,
        DGDataModule,
        args=None if argv is None else list(argv),
        subcommand=command,
        seed_everything_default=42,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,  # the task's own AdamW groups + poly schedule (METHOD §5)
        # the task saves its own (resolved) arguments, so load_from_checkpoint needs no copy of the CLI
        # config in every checkpoint (and dumping it costs a parse of the whole config per instantiation)
        load_from_checkpoint_support=False,
        # parse errors raise (one line from main) instead of printing the whole usage block
        parser_kwargs={"prog": "spectralmoe", "exit_on_error": False, command: {"exit_on_error": False}},
    )
    return 0


def _add_trainer_parser(subparsers: argparse._SubParsersAction, command: str) -> None:
    """List ``command`` in ``spectralmoe --help``; ``main`` hands it to LightningCLI before argparse."""
    subparsers.add_parser(
        command,
        add_help=False,
        help=f"{_TRAINER_HELP[command]} (LightningCLI: spectralmoe {command} --help)",
        description=f"spectralmoe {command} -c CONFIG.yaml [-c MORE.yaml] [--section.key VALUE ...]",
    )


def build_parser() -> argparse.ArgumentParser:
    from spectralmoe.convert.cli import add_import_checkpoint_parser
    from spectralmoe.compare import add_compare_parser
    from spectralmoe.demo import add_demo_parser
    from spectralmoe.predict import add_predict_scene_parser
    from spectralmoe.viz import add_viz_parser

    parser = _Parser(
        prog="spectralmoe",
        description="Domain-generalised segmentation of spectral imagery with frozen foundation models.",
        epilog="fit/validate/test/predict take LightningCLI options: -c CONFIG.yaml (repeatable), "
        "--model.KEY, --data.KEY, --trainer.KEY, --print_config; see `spectralmoe fit --help`. "
        "--debug (any command) shows the traceback of an error.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in TRAINER_COMMANDS:
        _add_trainer_parser(subparsers, command)
    _add_params_parser(subparsers)
    _add_prepare_parser(subparsers)
    _add_stats_parser(subparsers)
    add_predict_scene_parser(subparsers)
    add_viz_parser(subparsers)
    add_compare_parser(subparsers)
    add_demo_parser(subparsers)
    add_import_checkpoint_parser(subparsers)
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``error`` raises instead of printing the usage block, and
    ``main`` prints ``spectralmoe <command>: error: <message>`` like every other refused input."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # "-3.4e38" (a float fill value) is a number, not an option
        self._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.?\d+(?:[eE][-+]?\d+)?$")

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise _UsageError(f"{message} (see {self.prog} --help)")


class _UsageError(InputError):
    """A command line argparse refused."""


def _command_of(words: Sequence[str]) -> str:
    """``spectralmoe <command>`` for messages (the first word that is not an option)."""
    first = next((w for w in words if not w.startswith("-")), None)
    return f"spectralmoe {first}" if first else "spectralmoe"


def _dispatch(words: list[str], argv_given: bool) -> int:
    if words and words[0] in TRAINER_COMMANDS:
        return _run_trainer_command(words[0], words if argv_given else None)
    args = build_parser().parse_args(words)
    return args.func(args)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``spectralmoe`` command; returns the exit status.

    Expected failures (bad input, refused outputs, no space…) print one line naming the file, band or
    argument and return 2; ``--debug`` anywhere on the command line (or ``SPECTRALMOE_DEBUG=1``) adds the
    traceback. Ctrl-C and SIGTERM interrupt the command the same way (each command removes what it was
    writing) and return 130 / 143. Other exceptions are bugs and propagate with their traceback.
    """
    raw = list(sys.argv[1:] if argv is None else argv)
    words, debug = debug_requested(raw)
    command = _command_of(words)
    with interrupts_raise(), warnings_as_lines(command):
        try:
            return _dispatch(words, argv is not None or len(words) != len(raw))
        except KeyboardInterrupt:
            return _interrupted(command)
        except SystemExit:
            if received_signal() is not None:  # Lightning turns an interrupted fit into SystemExit(1)
                return _interrupted(command)
            raise
        except Exception as error:  # noqa: BLE001 - sorted into input errors and bugs just below
            if not is_expected(error):
                raise
            print(f"{command}: error: {describe(error)}", file=sys.stderr)
            if debug:
                traceback.print_exception(error)
            return EXIT_INPUT


def _interrupted(command: str) -> int:
    number = received_signal()
    name = "SIGTERM" if number == signal.SIGTERM else "Ctrl-C"
    print(f"{command}: interrupted ({name}); files being written were removed, earlier outputs are intact",
          file=sys.stderr)  # fmt: skip
    return EXIT_SIGTERM if number == signal.SIGTERM else EXIT_SIGINT


if __name__ == "__main__":
    sys.exit(main())
