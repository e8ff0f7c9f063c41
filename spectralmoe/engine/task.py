"""The Lightning task: train a Segmentor on the source domain, evaluate it per target domain.

``SegmentationTask`` is the one LightningModule of the product (DESIGN §6, §9): its constructor
arguments are the YAML keys of a LightningCLI config's ``model:`` section. Facts that belong to
the data (classes, palette, band wavelengths, normalisation) default to ``None`` and are read from
the trainer's ``DGDataModule`` when the model is built, so a config names its task once (under
``data:``); the final values are written into ``hparams`` and therefore into every checkpoint, so
``SegmentationTask.load_from_checkpoint(path)`` rebuilds the same model without the data.

What happens where:

* ``configure_model``: builds the Segmentor with ``build_segmentor`` (frozen backbone and depth
  model from their pretrained weights, trainable adapter + head).
* ``training_step``: ``Segmentor.loss`` → head terms + ``loss_aux``; each term, the head terms'
  sum (``train/loss_head``) and the total (``train/loss``) are logged under ``train/``; the head
  and balance losses show on the progress bar. Before every batch torch's global generator is re-seeded from
  (seed, global step, batch index, rank), so the randomness inside a step (Mask2Former's point
  sampling, noisy gating) depends only on where training is — a resumed run continues exactly
  as the uninterrupted one would.
* ``validation_step`` / ``test_step``: whole-tile (or sliding-window) inference per target domain
  (``dataloader_idx`` → ``target_domains[idx]``), argmax, one confusion matrix per domain
  (``engine.metrics``, mmseg ``IoUMetric`` semantics, summed across DDP ranks). At epoch end: per
  domain, mean over domains and pooled mIoU/mAcc/aAcc and per-class IoU/Acc (percent), logged as
  ``val/<domain>/mIoU``, ``val/mean/mIoU``, ``val/pooled/mIoU``… (``test/…`` for test) and written
  on rank 0 to ``metrics_dir`` as ``metrics_val_epoch{E}_step{S}.json/.csv`` and
  ``metrics_test.json/.csv``.
* ``predict_step``: class maps cropped to each tile's size, with the tile's path and domain.
* ``configure_optimizers``: AdamW (fused where torch has it) over the trainable parameters only,
  decay/no-decay groups of METHOD §5 (``engine.optim``), poly schedule stepped per optimiser step.
* Checkpoints hold the trainable tensors only (``on_save_checkpoint``); loading one rebuilds the
  frozen parts from their pretrained weights and checks the trainable names strictly
  (``on_load_checkpoint``).

Reproducibility: call ``lightning.seed_everything(seed, workers=True)`` before building the task
(LightningCLI: ``seed_everything: 42``) — it fixes the initialisation of the trainable weights (and
of the frozen ones when they are random, in tests); the datamodule's own ``seed`` fixes the data
order and augmentations (independently of the number of workers); the per-step re-seeding above
uses ``seed`` (default: the ``seed_everything`` value). Two CPU runs with the same seeds give
bit-identical weights (tested with ``num_workers=0``); GPU runs also need
``Trainer(deterministic=True)``. Exact resumption needs a checkpoint written during training
(``ModelCheckpoint``: every n steps or after a validation) at an epoch boundary, or a resumable
training loader for mid-epoch checkpoints (Lightning replays a non-resumable loader's epoch).

Multi-GPU: use ``Trainer(strategy="ddp_find_unused_parameters_true")`` like the authors'
``find_unused_parameters=True`` — top-k routing leaves some experts without gradient in a step,
and a light head leaves the adapter's query link unused.
"""

from __future__ import annotations

import contextvars
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from spectralmoe.engine.compile import compile_segmentor
from spectralmoe.engine.export import (
    export_evaluation,
    frozen_weights_path,
    load_exported,
    read_export_config,
    trainable_state_keys,
)
from spectralmoe.engine.metrics import SegConfusion, summarize, write_report
from spectralmoe.engine.optim import build_adamw, build_param_groups, build_poly_scheduler
from spectralmoe.errors import InputError
from spectralmoe.models.accounting import parameter_report
from spectralmoe.models.factory import DEFAULT_DEPTH, build_segmentor, resolve_wavelengths
from spectralmoe.models.segmentor import Segmentor, min_input_size

__all__ = ["SegmentationTask"]

#: True while ``SegmentationTask.load_from_checkpoint`` builds a model (see ``configure_model``).
_LOADING_CHECKPOINT: contextvars.ContextVar[bool] = contextvars.ContextVar("loading_checkpoint", default=False)


def _check_architecture(architecture: str, adapter: str | None, head: str | None, depth: str | None) -> None:
    """The segmentor needs an adapter and a head; DSTC is complete and takes neither (explicit nulls)."""
    if architecture == "segmentor":
        if adapter is None or head is None:
            raise ValueError(f"architecture 'segmentor' needs an adapter and a head, got adapter={adapter!r}, "
                             f"head={head!r} (use adapter 'freeze' for no adapter)")  # fmt: skip
    elif architecture == "dstc":
        given = {k: v for k, v in (("adapter", adapter), ("head", head), ("depth", depth)) if v is not None}
        if given:
            raise ValueError(f"architecture 'dstc' is a complete model: set model.adapter, model.head and model.depth "
                             f"to null (got {given})")  # fmt: skip
    else:
        raise ValueError(f"architecture must be 'segmentor' or 'dstc', got {architecture!r}")

_PREFIX = "segmentor."


def _canonical(name: str) -> str:
    """Class names compared without case, spaces, underscores or hyphens ("bare_land" == "bareland")."""
    return "".join(ch for ch in str(name).lower() if ch not in " _-")


_DATA_FIELDS = ("num_classes", "class_names", "palette", "wavelengths", "in_bandwidths", "gsd_m", "pixel_mean",
                "pixel_std", "value_scale")  # fmt: skip
#: Task arguments that decide which model a checkpoint holds: a checkpoint loaded into a task that
#: differs in one of them would silently run (or train) another model than the one asked for.
IDENTITY_FIELDS = ("architecture", "backbone", "adapter", "head", "depth", "adapter_options", "head_options",
                   "backbone_options", "out_indices", "kernel_resize", "depth_input")  # fmt: skip


def _json_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def identity_conflicts(stored: Mapping[str, Any], wanted: Mapping[str, Any],
                       fields: Sequence[str] = IDENTITY_FIELDS) -> list[str]:  # fmt: skip
    """``field: checkpoint X, config Y`` for every identity field present in both that differs (the depth
    model only when the adapter uses one; empty option dicts equal ``None``)."""
    from spectralmoe.models.adapters import adapter_uses_depth

    conflicts = []
    for field in fields:
        if field not in stored or field not in wanted:
            continue
        if field == "depth" and (stored.get("adapter") is None or not adapter_uses_depth(
                str(stored.get("adapter")), **(stored.get("adapter_options") or {}))):  # fmt: skip
            continue
        a, b = stored[field], wanted[field]
        if field in ("adapter_options", "head_options", "backbone_options"):
            a, b = a or {}, b or {}
        if _json_key(a) != _json_key(b):
            conflicts.append(f"{field}: checkpoint {a!r}, config {b!r}")
    return conflicts


NO_CLASS = 255
IGNORE = 255


class NonFiniteError(InputError, FloatingPointError):
    """The model produced NaN/inf (a loss, or scores of labelled pixels): almost always extreme input
    values or a learning rate that made training diverge; the message names the tiles."""


def _classes(scores: torch.Tensor) -> torch.Tensor:
    """Argmax over classes; 255 where any score of the pixel is NaN/inf."""
    classes = scores.argmax(1)
    return classes.masked_fill(~torch.isfinite(scores).all(1), NO_CLASS)


class SegmentationTask(L.LightningModule):
    """Domain-generalised semantic segmentation with a frozen foundation model.

    Args:
        backbone: frozen backbone preset (``spectralmoe.models.backbones``), e.g.
            ``"dinov3-vitl16"``, ``"dofa-vitl"``, ``"tiny-dinov3"`` (tests).
        adapter: trainable method (``spectralmoe.models.adapters.ADAPTERS``): ``"spectralmoe"``,
            ``"rein"``, ``"depthforge"``, ``"lora"``, ``"adaptformer"``, ``"vpt"``, ``"set"``,
            ``"fada"`` or ``"freeze"``.
        head: decoder, ``"mask2former"`` (the paper's), ``"fpn"`` or ``"linear"``.
        depth: frozen depth model preset, used only by adapters that need depth.
        adapter_options: keyword arguments of the adapter (e.g. ``num_experts``, ``rank``,
            ``variant``, ablation switches).
        head_options: keyword arguments of the head (e.g. Mask2Former sizes).
        pretrained: load the frozen models' pretrained weights (``False``: random, for tests).
        backbone_weights: local folder or hub id of the backbone weights (default: the preset's).
        depth_weights: local folder or hub id of the depth model weights (default: the preset's).
        depth_input: how R, G, B reach the depth model: per-image 2–98 % ``"percentile"``
            stretch, or division by ``value_scale`` (``"scale"``); ``"official"`` is the authors' released
            code (bands 2–4 of the normalised input, for their checkpoints; see ``Segmentor``).
        kernel_resize: rule for resizing pretrained patch kernels (``"bicubic"``, the authors'; or
            ``"pi"``, the pseudo-inverse resize).
        out_indices: backbone blocks whose tokens form the feature pyramid (default: preset's).
        gradient_checkpointing: recompute the frozen blocks in backward to save memory.
        backbone_options: options of the backbone family (Galileo: ``month``, ``patch_size``,
            ``normalization``; SenPa-MAE: ``response_curves``; DSTC: its sizes, e.g. ``fold``). A
            ``gsd_m`` or ``in_bandwidths`` given here overrides ``model.gsd_m`` / ``model.in_bandwidths``.
        architecture: ``"segmentor"`` (frozen backbone + adapter + head) or ``"dstc"``: the complete
            DSTC model (``models/dstc.py``), where ``backbone`` names its preset (``resnet18``),
            ``backbone_weights`` the ImageNet ResNet-18 file, and ``adapter``, ``head``, ``depth``
            must be null.
        compile: ``torch.compile`` the segmentor in place (``engine.compile``; parameter names and
            checkpoints unchanged). Pays off on GPUs for long runs; the first steps compile.
        compile_options: ``torch.compile`` keyword arguments (``mode``, ``backend``, ``fullgraph``,
            ``dynamic``, ``options``), e.g. ``{mode: max-autotune}``.
        fused_adamw: AdamW's fused single-kernel step: ``None`` (default) where torch has it for the
            parameters' device (CUDA, CPU…), ``true`` demand it, ``false`` never.
        lr: AdamW learning rate (METHOD §5: 1e-4).
        weight_decay: AdamW weight decay of the decayed group (0.05); see ``engine.optim``.
        betas: AdamW betas.
        eps: AdamW epsilon.
        warmup_iters: linear warm-up steps (0 = none, as every released config).
        warmup_ratio: learning-rate factor at the first warm-up step.
        poly_power: power of the poly decay.
        min_lr: learning rate reached at the last step.
        eval_mode: ``"whole"`` tiles (the authors') or ``"slide"`` windows at validation/test/predict.
        eval_crop: window size for ``"slide"``.
        eval_stride: window stride for ``"slide"`` (default 2/3 of ``eval_crop``).
        eval_pad: pad inputs to a multiple of the patch size (False: the authors' mmseg test, where a
            size that is not a multiple is an error).
        export: an export folder whose model this task evaluates (e.g. written by ``spectralmoe
            import-checkpoint``): its build recipe replaces ``backbone``, ``adapter``, ``head``, ``depth``,
            their options and the normalisation, its tensors are loaded, and its frozen weights are used
            unless ``backbone_weights``/``depth_weights`` are given. Its classes must be the data's.
        eval_protocol: ``"model"`` (default): a model that records the evaluation protocol it was tested
            with (an imported model does: whole images without padding for SpectralMoE, 512/341 windows
            for Rein) is evaluated with it, in place of ``eval_mode``/``eval_crop``/``eval_stride``/
            ``eval_pad``; ``"task"``: always use those four settings.
        metrics_dir: folder of the metrics JSON/CSV files (default: the trainer's log dir).
        band_wavelengths: which wavelengths describe a batch's bands. ``"model"`` (default, the
            paper's protocol): every tile is fed as if it had the training sensor's bands — an
            unseen sensor is a pure domain shift (e.g. Vaihingen's NIR,R,G fed where Potsdam's
            R,G,B were), and DOFA keeps the training wave list as the authors' configs do.
            ``"data"``: the tile's own sensor wavelengths are used — DOFA generates its patch
            kernels for them and the depth model gets the bands nearest R, G, B (an error when a
            target sensor lacks one, e.g. Vaihingen has no blue band).
        seed: base seed of the per-step re-seeding (default: ``seed_everything``'s value, else the
            datamodule's ``seed``, else 0).
        num_classes: number of classes (default: the datamodule's).
        class_names: class names (default: the datamodule's ``classes``).
        palette: one ``[r, g, b]`` per class (default: the datamodule's).
        wavelengths: centre wavelengths (µm) of the input bands (default: the datamodule's).
        in_bandwidths: FWHM (µm) of the input bands, null for a non-spectral band (default: the
            datamodule's source sensor record, else ``spectralmoe.bands.default_bandwidths_um``); used by
            Copernicus-FM's kernels and SoftCon's slot matching.
        gsd_m: ground sampling distance (m) of the input (default: the datamodule's source sensor record,
            else 10 m); used by Copernicus-FM's patch-area token.
        pixel_mean: per-band mean in raw units (default: the datamodule's).
        pixel_std: per-band std in raw units (default: the datamodule's).
        value_scale: raw value of full brightness (default: the datamodule's).
    """

    def __init__(
        self,
        backbone: str = "dinov3-vitl16",
        adapter: str | None = "spectralmoe",
        head: str | None = "mask2former",
        depth: str | None = DEFAULT_DEPTH,
        adapter_options: dict[str, Any] | None = None,
        head_options: dict[str, Any] | None = None,
        pretrained: bool = True,
        backbone_weights: str | None = None,
        depth_weights: str | None = None,
        depth_input: Literal["percentile", "scale", "official"] = "percentile",
        kernel_resize: Literal["bicubic", "pi"] = "bicubic",
        out_indices: list[int] | None = None,
        gradient_checkpointing: bool = False,
        backbone_options: dict[str, Any] | None = None,
        architecture: Literal["segmentor", "dstc"] = "segmentor",
        compile: bool = False,  # noqa: A002 - the config key `model.compile`
        compile_options: dict[str, Any] | None = None,
        fused_adamw: bool | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        warmup_iters: int = 0,
        warmup_ratio: float = 1e-6,
        poly_power: float = 0.9,
        min_lr: float = 0.0,
        eval_mode: Literal["whole", "slide"] = "whole",
        eval_crop: int = 512,
        eval_stride: int | None = None,
        eval_pad: bool = True,
        export: str | None = None,
        eval_protocol: Literal["model", "task"] = "model",
        metrics_dir: str | None = None,
        band_wavelengths: Literal["model", "data"] = "model",
        seed: int | None = None,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        palette: list[tuple[int, int, int]] | None = None,
        wavelengths: list[float] | None = None,
        in_bandwidths: list[float | None] | None = None,
        gsd_m: float | None = None,
        pixel_mean: list[float] | None = None,
        pixel_std: list[float] | None = None,
        value_scale: float | None = None,
    ) -> None:
        super().__init__()
        if lr <= 0 or not 0 <= min_lr <= lr:
            raise ValueError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={lr}, min_lr={min_lr}")
        if weight_decay < 0 or eps <= 0 or len(betas) != 2:
            raise ValueError(f"invalid AdamW settings: weight_decay={weight_decay}, eps={eps}, betas={betas}")
        if warmup_iters < 0 or not 0 <= warmup_ratio <= 1 or poly_power < 0:
            raise ValueError(f"invalid schedule: warmup_iters={warmup_iters}, warmup_ratio={warmup_ratio}, "
                             f"poly_power={poly_power}")  # fmt: skip
        if eval_mode not in ("whole", "slide"):
            raise ValueError(f"eval_mode must be 'whole' or 'slide', got {eval_mode!r}")
        if eval_crop < 1 or (eval_stride is not None and not 0 < eval_stride <= eval_crop):
            raise ValueError(f"need eval_crop >= 1 and 0 < eval_stride <= eval_crop, got {eval_crop}, {eval_stride}")
        if eval_protocol not in ("model", "task"):
            raise ValueError(f"eval_protocol must be 'model' or 'task', got {eval_protocol!r}")
        if band_wavelengths not in ("model", "data"):
            raise ValueError(f"band_wavelengths must be 'model' or 'data', got {band_wavelengths!r}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        _check_architecture(architecture, adapter, head, depth)
        self.save_hyperparameters()
        self.segmentor: Segmentor | None = None
        #: the evaluation protocol recorded in ``export`` (``predict_logits`` keywords), once built
        self._recorded_evaluation: dict[str, Any] = {}
        self._confusions: list[SegConfusion] = []
        #: The report of the last validation/test epoch (what the JSON file holds).
        self.last_metrics: dict[str, Any] | None = None
        #: One entry per validation of this process: step, epoch, per-domain and mean mIoU (the fit summary).
        self.val_history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------------ building
    @classmethod
    def load_from_checkpoint(cls, *args: Any, **kwargs: Any) -> "SegmentationTask":  # type: ignore[override]
        """Lightning's ``load_from_checkpoint``; while it runs, a complete model (DSTC) skips its ImageNet
        initialisation, since every one of its tensors comes from the checkpoint."""
        token = _LOADING_CHECKPOINT.set(True)
        try:
            return super().load_from_checkpoint(*args, **kwargs)
        finally:
            _LOADING_CHECKPOINT.reset(token)

    def _datamodule(self) -> Any:
        trainer = self._trainer
        return getattr(trainer, "datamodule", None) if trainer is not None else None

    def _fill_data_fields(self) -> None:
        """Take every data fact left ``None`` from the datamodule; check the ones given against it."""
        hp = self.hparams
        dm = self._datamodule()
        if dm is not None:
            found: dict[str, Any] = {}
            for field, attribute in (("num_classes", "num_classes"), ("class_names", "classes"),
                                     ("palette", "palette"), ("wavelengths", "wavelengths"),
                                     ("pixel_mean", "pixel_mean"), ("pixel_std", "pixel_std"),
                                     ("value_scale", "value_scale"), ("in_bandwidths", "bandwidths"),
                                     ("gsd_m", "gsd_m")):  # fmt: skip
                value = getattr(dm, attribute, None)
                if value is None:
                    continue
                if isinstance(value, torch.Tensor):
                    value = value.tolist()
                if field == "num_classes":
                    value = int(value)
                elif field == "class_names":
                    value = [str(v) for v in value]
                elif field == "palette":
                    value = [[int(c) for c in colour] for colour in value]
                elif field in ("value_scale", "gsd_m"):
                    value = float(value)
                elif field == "in_bandwidths":  # JSON-safe: null for a non-spectral band
                    value = [None if math.isnan(float(v)) else round(float(v), 6) for v in value]
                else:
                    value = [round(float(v), 6) for v in value]
                found[field] = value
            for field, value in found.items():
                if hp.get(field) is None:
                    hp[field] = value
            if "num_classes" in found and hp.num_classes != found["num_classes"]:
                raise ValueError(
                    f"SegmentationTask num_classes={hp.num_classes} but the datamodule has {found['num_classes']}"
                )
        if hp.num_classes is None:
            raise ValueError(
                "SegmentationTask: num_classes is unknown; pass num_classes= or train/evaluate with a datamodule "
                "that has num_classes (DGDataModule)"
            )
        if hp.class_names is None:
            hp.class_names = [f"class{i}" for i in range(hp.num_classes)]
        if len(hp.class_names) != hp.num_classes:
            raise ValueError(f"{len(hp.class_names)} class names for num_classes={hp.num_classes}")
        if hp.palette is not None and len(hp.palette) != hp.num_classes:
            raise ValueError(f"{len(hp.palette)} palette colours for num_classes={hp.num_classes}")
        hp.betas = [float(b) for b in hp.betas]  # plain YAML in hparams.yaml (no python/tuple tag)
        self.save_hyperparameters(dict(hp))  # the resolved values also reach the loggers' hparams

    def build_config(self) -> dict[str, Any]:
        """``build_segmentor`` keyword arguments that define this model (what an export stores)."""
        hp = self.hparams
        architecture = hp.get("architecture", "segmentor")
        return {
            "architecture": architecture,
            "backbone": hp.backbone,
            "backbone_kwargs": dict(hp.get("backbone_options") or {}),
            "adapter": hp.adapter,
            "head": hp.head,
            "depth": hp.depth,
            "adapter_kwargs": dict(hp.adapter_options or {}),
            "head_kwargs": dict(hp.head_options or {}),
            "num_classes": hp.num_classes,
            "wavelengths": None if hp.wavelengths is None else [float(w) for w in hp.wavelengths],
            "in_bandwidths": None if hp.get("in_bandwidths") is None else list(hp.in_bandwidths),
            "gsd_m": None if hp.get("gsd_m") is None else float(hp.gsd_m),
            "pixel_mean": None if hp.pixel_mean is None else [float(v) for v in hp.pixel_mean],
            "pixel_std": None if hp.pixel_std is None else [float(v) for v in hp.pixel_std],
            "value_scale": None if hp.value_scale is None else float(hp.value_scale),
            "depth_input": hp.depth_input,
            "kernel_resize": hp.kernel_resize,
            "out_indices": None if hp.out_indices is None else [int(i) for i in hp.out_indices],
        }

    def setup(self, stage: str) -> None:
        """Sizes the model cannot take (crop or tiles smaller than its minimum input) are refused before
        the first step, naming the option or the tile."""
        dm = self._datamodule()
        smallest = min_input_size(self.hparams.head)
        task = getattr(dm, "task", None)
        crop = getattr(task, "crop_size", None)
        batch = int(getattr(dm, "batch_size", 1) or 1)
        if stage == "fit" and crop is not None and int(crop) < min_input_size(self.hparams.head, batch):
            raise InputError(f"task {task.name!r}: crop_size {crop} is smaller than the "
                             f"{min_input_size(self.hparams.head, batch)} pixels a model with a {self.hparams.head} "
                             f"head needs in batches of {batch}")  # fmt: skip
        if self.hparams.eval_mode == "slide" and self.hparams.eval_crop < smallest:
            raise InputError(f"--model.eval_crop {self.hparams.eval_crop} is smaller than the {smallest} pixels a "
                             f"model with a {self.hparams.head} head needs")  # fmt: skip
        report = getattr(dm, "validation", None)
        if self.hparams.eval_mode == "whole" and report is not None and report.smallest is not None:
            # whole tiles run in evaluation batches; does a batch of a single tile occur?
            size = int(getattr(dm, "eval_batch_size", 1) or 1)
            counts = [len(d) for d in (getattr(dm, "target_datasets", None) or {}).values()]
            counts += [sum(counts)] if stage == "predict" else []
            lone = size == 1 or any(n % size == 1 for n in counts) or not counts
            smallest = min_input_size(self.hparams.head, 1 if lone else 2)
            if min(report.smallest) < smallest:
                raise InputError(f"{getattr(dm, 'root', 'the data')}: a tile of {report.smallest[0]}x{report.smallest[1]}"
                                 f" pixels is smaller than the {smallest} pixels a model with a {self.hparams.head} "
                                 "head needs (use --model.eval_mode slide, or larger tiles)")  # fmt: skip

    def configure_model(self) -> None:
        """Build the Segmentor once (Lightning calls this in every fit/validate/test/predict)."""
        if self.segmentor is not None:
            return
        self._fill_data_fields()
        hp = self.hparams
        if hp.export is not None:
            self._adopt_export()
        dm = self._datamodule()
        if hp.wavelengths is not None and hasattr(dm, "set_model_wavelengths"):
            dm.set_model_wavelengths(hp.wavelengths)  # feed every tile in THIS model's band order
        if hp.export is not None:
            self.segmentor = load_exported(hp.export, backbone_weights=hp.backbone_weights,
                                           depth_weights=hp.depth_weights, pretrained=hp.pretrained)  # fmt: skip
            if hp.gradient_checkpointing and hasattr(self.segmentor, "backbone"):
                self.segmentor.backbone.gradient_checkpointing = True
        else:
            # A complete model (DSTC) loaded from a checkpoint gets every tensor from it: no ImageNet download.
            restoring_complete = _LOADING_CHECKPOINT.get() and hp.get("architecture") == "dstc"
            self.segmentor = build_segmentor(
                **self.build_config(),
                pretrained=hp.pretrained and not restoring_complete,
                backbone_weights=hp.backbone_weights,
                depth_weights=hp.depth_weights,
                gradient_checkpointing=hp.gradient_checkpointing,
            )
        if hp.get("compile"):
            compile_segmentor(self.segmentor, hp.get("compile_options"))
        report = parameter_report(self.segmentor)
        what = (f"{hp.adapter} on {hp.backbone} with a {hp.head} head" if hp.get("architecture") != "dstc"
                else f"DSTC ({hp.backbone} encoder)")  # fmt: skip
        rank_zero_info(
            f"SegmentationTask: {what} — "
            f"{report['method_trainable']:,} method + {report['head_trainable']:,} head trainable parameters, "
            f"{report['backbone_frozen'] + report['depth_frozen']:,} frozen"
        )

    def _adopt_export(self) -> None:
        """Take the model-defining settings from ``export`` (after the data's facts were filled in) and check
        that the export predicts the data's classes with the data's bands."""
        hp = self.hparams
        info = read_export_config(hp.export)
        build = info["build"]
        where = f"export {hp.export}"
        if int(build["num_classes"]) != int(hp.num_classes):
            raise ValueError(f"{where} predicts {build['num_classes']} classes, the data has {hp.num_classes}")
        theirs, ours = [_canonical(c) for c in info.get("classes") or []], [_canonical(c) for c in hp.class_names]
        if theirs and theirs != ours:
            raise ValueError(
                f"{where}: classes {info['classes']} are not the data's {list(hp.class_names)} (same order)"
            )
        waves, scale = resolve_wavelengths(build.get("sensor"), build.get("wavelengths"))
        data_waves = self._datamodule_wavelengths()
        if data_waves is not None and (len(data_waves) != len(waves) or
                                       any(abs(a - b) > 1e-4 for a, b in zip(data_waves, waves))):  # fmt: skip
            raise ValueError(f"{where} was built for bands {waves} µm, the data's source sensor has {data_waves} µm")
        hp.backbone, hp.adapter = build["backbone"], build.get("adapter", "spectralmoe")
        hp.head = build.get("head", "mask2former")
        hp.depth = build.get("depth")
        hp.adapter_options, hp.head_options = build.get("adapter_kwargs") or {}, build.get("head_kwargs") or {}
        hp.wavelengths = [float(w) for w in waves]
        for field in ("pixel_mean", "pixel_std", "out_indices"):
            hp[field] = build.get(field)
        hp.value_scale = float(build.get("value_scale") or scale)
        hp.depth_input = build.get("depth_input", "percentile")
        hp.kernel_resize = build.get("kernel_resize", "bicubic")
        hp.architecture = build.get("architecture", "segmentor")
        hp.backbone_options = build.get("backbone_kwargs") or {}
        hp.in_bandwidths, hp.gsd_m = build.get("in_bandwidths"), build.get("gsd_m")
        # Record the shipped frozen weights in the hparams, so checkpoints of a fine-tuning run reload them too.
        hp.backbone_weights = hp.backbone_weights or frozen_weights_path(hp.export, "backbone")
        hp.depth_weights = hp.depth_weights or frozen_weights_path(hp.export, "depth")
        self._recorded_evaluation = export_evaluation(hp.export)
        if self._recorded_evaluation and hp.eval_protocol == "model":
            rank_zero_info(f"SegmentationTask: evaluating {hp.export} with its recorded protocol "
                           f"{self._recorded_evaluation} (--model.eval_protocol task: use eval_mode/eval_crop/…)")
        self.save_hyperparameters(dict(hp))

    def _datamodule_wavelengths(self) -> list[float] | None:
        waves = getattr(self._datamodule(), "wavelengths", None)
        if waves is None:
            return None
        return [float(w) for w in (waves.tolist() if isinstance(waves, torch.Tensor) else waves)]

    def evaluation_settings(self) -> dict[str, Any]:
        """The ``predict_logits`` keywords used by validation/test/predict (see ``eval_protocol``)."""
        hp = self.hparams
        settings = {"mode": hp.eval_mode, "crop": hp.eval_crop, "stride": hp.eval_stride, "pad": hp.eval_pad}
        if hp.eval_protocol == "model" and self._recorded_evaluation:
            settings.update(self._recorded_evaluation)
        return settings

    def _model(self) -> Segmentor:
        if self.segmentor is None:
            raise RuntimeError("the Segmentor is not built yet: call configure_model() (Lightning does it in fit/test)")
        return self.segmentor

    # ------------------------------------------------------------------------------- inputs
    def _wavelengths(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """The batch's band wavelengths when they differ from the model's (``None`` = the model's)."""
        waves = batch.get("wavelengths")
        if waves is None or self.hparams.band_wavelengths == "model":
            return None
        waves = torch.as_tensor(waves)
        if waves.ndim == 2:
            if not torch.equal(waves, waves[:1].expand_as(waves)):
                raise ValueError(
                    "this batch mixes band layouts (different wavelengths per sample); batch one sensor at a time"
                )
            waves = waves[0]
        own = self._model().wavelengths
        if waves.shape == own.shape and torch.allclose(waves.to(own), own, atol=1e-5):
            return None
        return waves

    def _reseed(self, batch_idx: int) -> None:
        entropy = [self._base_seed(), int(self.global_step), int(batch_idx), int(self.global_rank)]
        state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)
        torch.manual_seed(int(state[0]) & 0x7FFF_FFFF_FFFF_FFFF)

    def _base_seed(self) -> int:
        if self.hparams.seed is not None:
            return int(self.hparams.seed)
        env = os.environ.get("PL_GLOBAL_SEED")
        if env is not None:
            return int(env)
        dm_seed = getattr(self._datamodule(), "seed", None)
        return int(dm_seed) if dm_seed is not None else 0

    # ------------------------------------------------------------------------------ training
    def forward(self, image: torch.Tensor, wavelengths: torch.Tensor | None = None) -> torch.Tensor:
        """Per-class scores ``[B, K, H, W]`` with the evaluation settings (``eval_mode`` …)."""
        return self._model().predict_logits(image, wavelengths, **self.evaluation_settings())

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._reseed(batch_idx)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        image, mask = batch["image"], batch["mask"]
        terms = self._model().loss(image, mask, self._wavelengths(batch))
        total: torch.Tensor = sum(terms.values())  # type: ignore[assignment]
        if not bool(torch.isfinite(total.detach())):
            values = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
            tiles = [str(p) for p in (batch.get("path") or [])][:8]
            raise NonFiniteError(
                f"non-finite training loss at step {self.global_step} ({values}) on tiles {tiles}: a tile holds "
                "extreme values (check them with `spectralmoe stats`) or --model.lr is too high"
            )
        batch_size = image.shape[0]
        for name, value in terms.items():
            # the balance loss on the progress bar next to the head loss, not hidden in their sum
            self.log(f"train/{name}", value.detach(), batch_size=batch_size, prog_bar=name == "loss_aux")
        head = sum(value.detach() for name, value in terms.items() if name != "loss_aux")
        self.log("train/loss_head", head, batch_size=batch_size, prog_bar=True)  # type: ignore[arg-type]
        self.log("train/loss", total.detach(), batch_size=batch_size)
        return total

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = build_param_groups(self._model(), hp.weight_decay)
        optimizer = build_adamw(groups, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps, weight_decay=hp.weight_decay,
                                fused=hp.get("fused_adamw"))
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total) or total < 1:
            raise ValueError(
                f"the poly schedule needs a finite number of steps, got {total}; set Trainer(max_steps=…) "
                "(the released configs are iteration-based) or max_epochs"
            )
        scheduler = build_poly_scheduler(
            optimizer,
            int(total),
            power=hp.poly_power,
            min_lr=hp.min_lr,
            warmup_steps=hp.warmup_iters,
            warmup_ratio=hp.warmup_ratio,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # ---------------------------------------------------------------------------- evaluation
    def _predict_classes(self, batch: dict[str, Any]) -> torch.Tensor:
        """Argmax class map ``[B, H, W]``; a batch mixing band layouts is run one layout at a time.
        Pixels whose scores are not finite are 255 (no class), never the argmax of NaNs."""
        image = batch["image"]
        waves = batch.get("wavelengths")
        if isinstance(waves, torch.Tensor) and waves.ndim == 2 and not torch.equal(waves, waves[:1].expand_as(waves)):
            out = torch.empty(image.shape[0], *image.shape[-2:], dtype=torch.long, device=image.device)
            for row in torch.unique(waves, dim=0):
                index = (waves == row).all(dim=1).nonzero().flatten()
                sub = {"image": image[index], "wavelengths": waves[index]}
                out[index] = _classes(self(sub["image"], self._wavelengths(sub)))
            return out
        return _classes(self(image, self._wavelengths(batch)))

    def _start_eval(self, count: int) -> None:
        classes = int(self.hparams.num_classes)
        self._confusions = [SegConfusion(classes).to(self.device) for _ in range(count)]

    def _eval_step(self, batch: dict[str, Any], dataloader_idx: int) -> None:
        if "mask" not in batch:
            raise ValueError("validation/test batches need a 'mask' (use predict for unlabelled tiles)")
        while len(self._confusions) <= dataloader_idx:
            self._confusions.append(SegConfusion(int(self.hparams.num_classes)).to(self.device))
        predicted = self._predict_classes(batch)
        unscored = (predicted == NO_CLASS) & (batch["mask"] != IGNORE)
        if bool(unscored.any()):
            tiles = [str(p) for p in (batch.get("path") or [])][:8]
            raise NonFiniteError(
                f"the model gave non-finite scores for {int(unscored.sum()):,} labelled pixels of tiles {tiles}: the "
                "metrics would be wrong (extreme input values, or diverged weights)"
            )
        self._confusions[dataloader_idx].update(predicted, batch["mask"])

    def _domain_names(self, count: int) -> list[str]:
        names = getattr(self._datamodule(), "target_domains", None)
        if names is not None and len(names) == count:
            return [str(n) for n in names]
        return [f"target{i}" for i in range(count)]

    def _metrics_folder(self) -> Path:
        """Folder for the metrics files; evaluated on every rank (``log_dir`` is a collective)."""
        if self.hparams.metrics_dir is not None:
            return Path(self.hparams.metrics_dir)
        log_dir = self.trainer.log_dir
        return Path(log_dir if log_dir is not None else self.trainer.default_root_dir)

    def _finish_eval(self, stage: Literal["val", "test"]) -> dict[str, Any]:
        names = self._domain_names(len(self._confusions))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")  # a rank may see no tile
            confusions = {name: metric.compute() for name, metric in zip(names, self._confusions)}
        for metric in self._confusions:
            metric.reset()
        report = summarize(
            confusions, list(self.hparams.class_names), stage=stage, epoch=int(self.current_epoch),
            step=int(self.global_step),
        )  # fmt: skip
        self.last_metrics = report
        if stage == "val":
            self.val_history.append({"step": int(self.global_step), "epoch": int(self.current_epoch),
                                     "domains": {n: report["domains"][n]["mIoU"] for n in names},
                                     "mean": report["mean"]["mIoU"]})  # fmt: skip
        rows = [(name, report["domains"][name]) for name in names]
        rows += [("mean", report["mean"]), ("pooled", report["pooled"])]
        scalars = {f"{stage}/{scope}/{key}": row[key] for scope, row in rows for key in ("mIoU", "mAcc", "aAcc")}
        scalars.update({f"{stage}/mean/IoU/{name}": value for name, value in report["mean"]["IoU"].items()})
        for key, value in scalars.items():
            # Every rank already holds the same value (torchmetrics summed the matrices); "max" keeps it
            # bit-exact where a mean over ranks might round, and quiets Lightning's epoch-level sync warning.
            self.log(key, float(value), sync_dist=True, reduce_fx="max", add_dataloader_idx=False)
        folder = self._metrics_folder()
        if self.trainer.is_global_zero:
            stem = f"metrics_val_epoch{self.current_epoch}_step{self.global_step}" if stage == "val" else "metrics_test"
            write_report(report, folder, stem)
        return report

    def on_validation_epoch_start(self) -> None:
        batches = self.trainer.num_sanity_val_batches if self.trainer.sanity_checking else self.trainer.num_val_batches
        self._start_eval(len(batches))

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # a smoke test of the loop: no numbers, no files
            self._confusions = []
            return
        self._finish_eval("val")

    def on_test_epoch_start(self) -> None:
        self._start_eval(len(self.trainer.num_test_batches))

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._finish_eval("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Class maps, one per tile at its stored size: ``uint8`` with 255 = nodata up to 255 classes,
        else ``int32`` with -1 = nodata. Pixels without data in the input (``sample["nodata"]``) are
        nodata in the map, never a class."""
        classes = self._predict_classes(batch)
        small = int(self.hparams.num_classes) <= 255
        dtype, nodata_value = (torch.uint8, 255) if small else (torch.int32, -1)
        sizes: Sequence[Sequence[int]] = batch.get("size") or [classes.shape[-2:]] * classes.shape[0]
        masks = batch.get("nodata") or [None] * classes.shape[0]
        maps = []
        for c, (h, w), nodata in zip(classes, sizes, masks):
            tile = c[: int(h), : int(w)].to("cpu", dtype)
            if nodata is not None:
                tile[torch.as_tensor(nodata, dtype=torch.bool)[: int(h), : int(w)]] = nodata_value
            maps.append(tile)
        return {key: batch.get(key) for key in ("path", "domain", "group")} | {"pred": maps}

    # ---------------------------------------------------------------------------- checkpoints
    def _trainable_keys(self) -> set[str]:
        return {_PREFIX + key for key in trainable_state_keys(self._model())}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only the trainable tensors: the frozen models are rebuilt from their own weights."""
        keep = self._trainable_keys()
        state = checkpoint["state_dict"]
        checkpoint["state_dict"] = {key: value for key, value in state.items() if key in keep}
        checkpoint["spectralmoe"] = {"trainable_only": True, "dropped_frozen_tensors": len(state) - len(keep)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check the stored trainable names strictly, then complete the state with the frozen tensors
        of the freshly built model so Lightning's strict ``load_state_dict`` succeeds."""
        stored = checkpoint.get("hyper_parameters")
        if isinstance(stored, Mapping):
            conflicts = identity_conflicts(stored, self.hparams)
            if conflicts:
                raise InputError("the checkpoint holds another model than this task builds (" + "; ".join(conflicts)
                                 + "): use the checkpoint's settings or a matching checkpoint")  # fmt: skip
        self.configure_model()
        state = checkpoint["state_dict"]
        current = self.state_dict()
        missing = sorted(self._trainable_keys() - set(state))
        unexpected = sorted(set(state) - set(current))
        if missing or unexpected:
            raise InputError(
                f"checkpoint does not match this model's trainable tensors: missing {missing[:20]}, "
                f"unexpected {unexpected[:20]} (was it trained with other adapter/head options?)"
            )
        wrong = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(current[k].shape)}" for k, v in state.items()
                 if k in current and hasattr(v, "shape") and tuple(v.shape) != tuple(current[k].shape)]  # fmt: skip
        if wrong:
            raise InputError(f"checkpoint tensors do not fit this model (another class count or band count?): "
                             f"{wrong[:10]}")  # fmt: skip
        broken = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
                  and not bool(torch.isfinite(v).all())]  # fmt: skip
        if broken:
            raise InputError(f"checkpoint tensors {broken[:10]} hold NaN or infinite values; the model is unusable")
        for key, value in current.items():
            state.setdefault(key, value)
