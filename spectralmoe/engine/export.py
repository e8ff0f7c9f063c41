"""Trainable-only model export: ``model.safetensors`` + ``spectralmoe.json`` in one folder.

A trained model is a few MB (adapter + head, ≈23 MB for SpectralMoE at ViT-L) on top of frozen
foundation models that anyone can rebuild from their published weights. The export therefore
stores only what training changed, under the names of the ``Segmentor`` state dict, plus
everything needed to rebuild the rest::

    <folder>/
      model.safetensors   trainable parameters (+ persistent buffers of the trained parts)
      spectralmoe.json    format, package version, build_segmentor kwargs (backbone, adapter, head,
                          depth, their options, wavelengths, normalisation, num_classes…),
                          class names, palette, tensor names, free metadata; for imported models
                          also their evaluation protocol and source file (name, SHA-256)
      frozen/<part>/      frozen weights shipped with the model (``save_pretrained`` folders), when
                          they are not published anywhere else (the authors' converted backbone)

``load_exported(folder)`` rebuilds the model with ``build_segmentor`` (frozen parts from their
pretrained weights, or random with ``pretrained=False`` in tests) and loads the trainable tensors
strictly. The folder is written as a whole: into a temporary sibling folder, then renamed into
place, so a reader never sees a half-written export.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors.torch import load_file, save_file

import spectralmoe
from spectralmoe.errors import InputError, check_int, check_number, describe
from spectralmoe.models.dstc import DSTC
from spectralmoe.files import follow_umask, staging_folder
from spectralmoe.models.factory import build_segmentor
from spectralmoe.models.segmentor import Segmentor, check_normalisation
from spectralmoe.outputs import sweep_stale, temporary_path

#: The model classes a task builds (``architecture`` "segmentor" / "dstc").
_MODELS = (Segmentor, DSTC)

__all__ = [
    "CONFIG_FILE",
    "EXPORT_FORMAT",
    "FROZEN_MODULES",
    "WEIGHTS_FILE",
    "export_trainable",
    "load_exported",
    "read_export_config",
    "trainable_state_dict",
    "trainable_state_keys",
    "export_evaluation",
    "frozen_weights_path",
]

EXPORT_FORMAT = "spectralmoe-export/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "spectralmoe.json"
#: Top-level Segmentor children whose buffers are rebuilt, never stored (their parameters are
#: frozen too, except methods living inside the backbone such as LoRA, which ARE stored).
FROZEN_MODULES = ("backbone", "depth_encoder")
#: Folder of the frozen weights an export may ship, and the parts it may hold.
FROZEN_DIR = "frozen"
_FROZEN_PARTS = {"backbone": "backbone_weights", "depth": "depth_weights"}
#: Keywords of an export's evaluation protocol (``Segmentor.predict_logits`` arguments).
EVALUATION_KEYS = {"mode": str, "crop": int, "stride": int, "pad": bool}
#: build_segmentor arguments that are runtime choices, not part of a model's identity.
_RUNTIME_KWARGS = {"pretrained", "backbone_weights", "depth_weights", "gradient_checkpointing"}


def trainable_state_keys(model: Segmentor) -> list[str]:
    """State-dict names that training changes: parameters that require grad, plus persistent buffers
    outside the frozen backbone and depth model (e.g. a head's class weights). State-dict order."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    parameters = {name for name, _ in model.named_parameters()}
    keys = []
    for name in model.state_dict():
        if name in trainable:
            keys.append(name)
        elif name not in parameters and name.split(".", 1)[0] not in FROZEN_MODULES:
            keys.append(name)
    return keys


def trainable_state_dict(model: Segmentor) -> dict[str, torch.Tensor]:
    """The tensors of ``trainable_state_keys`` (detached, on their current device)."""
    state = model.state_dict()
    return {name: state[name] for name in trainable_state_keys(model)}


def _resolve(obj: Any) -> tuple[Segmentor, dict[str, Any] | None, list[str] | None, list[Any] | None]:
    """A Segmentor, or a task exposing ``segmentor`` / ``build_config()`` / ``hparams``."""
    if isinstance(obj, _MODELS):
        return obj, None, None, None
    segmentor = getattr(obj, "segmentor", None)
    if not isinstance(segmentor, _MODELS):
        raise TypeError(
            f"export_trainable needs a Segmentor or a SegmentationTask whose model is built, got {type(obj).__name__}"
        )
    hparams = getattr(obj, "hparams", {})
    return segmentor, obj.build_config(), hparams.get("class_names"), hparams.get("palette")


def _check_build_config(config: Mapping[str, Any], where: str) -> dict[str, Any]:
    allowed = set(inspect.signature(build_segmentor).parameters) - _RUNTIME_KWARGS
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise InputError(f"{where}: unknown build_segmentor argument(s) {unknown}; allowed: {sorted(allowed)}")
    for required in ("backbone", "num_classes"):
        if config.get(required) is None:
            raise InputError(f"{where}: build config lacks {required!r}")
    return dict(config)


def export_trainable(
    model: Any,
    folder: str | os.PathLike[str],
    *,
    build_config: Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    metadata: Mapping[str, Any] | None = None,
    evaluation: Mapping[str, Any] | None = None,
    imported_from: Mapping[str, Any] | None = None,
    frozen_models: Mapping[str, Any] | None = None,
) -> Path:
    """Write the trainable tensors of ``model`` and its build recipe into ``folder``.

    Args:
        model: a ``SegmentationTask`` (build config, class names and palette are taken from it)
            or a bare ``Segmentor`` (then ``build_config`` is required).
        folder: output folder; an existing export there is replaced as a whole. A non-empty
            folder that is not an export is refused (never deleted).
        build_config: ``build_segmentor`` keyword arguments (without ``pretrained`` and weight
            paths); overrides the task's.
        class_names, palette: override the task's.
        metadata: free JSON-serialisable facts (epoch, step, monitored metric…).
        evaluation: the evaluation protocol the model was validated with, as ``Segmentor.predict_logits``
            keywords (``mode``, ``crop``, ``stride``, ``pad``); ``spectralmoe test`` applies it.
        imported_from: where an imported model came from (file name, SHA-256, format).
        frozen_models: frozen parts to ship inside the export, ``{"backbone" | "depth": model}`` (objects
            with ``save_pretrained``); ``load_exported`` then loads them unless told otherwise.

    Returns:
        The folder.
    """
    segmentor, task_config, task_classes, task_palette = _resolve(model)
    config = build_config if build_config is not None else task_config
    if config is None:
        raise ValueError("export_trainable of a bare Segmentor needs build_config= (build_segmentor kwargs)")
    config = _check_build_config(config, "export_trainable")
    class_names = list(class_names if class_names is not None else task_classes or [])
    palette = palette if palette is not None else task_palette
    num_classes = int(config["num_classes"])
    if class_names and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    if palette is not None and len(palette) != num_classes:
        raise ValueError(f"{len(palette)} palette colours for {num_classes} classes")

    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in trainable_state_dict(segmentor).items()}
    info = {
        "format": EXPORT_FORMAT,
        "spectralmoe_version": spectralmoe.__version__,
        "build": config,
        "classes": class_names or [f"class{i}" for i in range(num_classes)],
        "palette": [list(map(int, c)) for c in palette] if palette is not None else None,
        "tensors": list(tensors),
        "trainable_parameters": int(sum(v.numel() for k, v in tensors.items())),
        "metadata": dict(metadata or {}),
    }
    if evaluation is not None:
        info["evaluation"] = _check_evaluation(evaluation, "export_trainable")
    if imported_from is not None:
        info["imported_from"] = dict(imported_from)
    unknown_parts = sorted(set(frozen_models or {}) - set(_FROZEN_PARTS))
    if unknown_parts:
        raise ValueError(f"export_trainable: frozen_models may hold {list(_FROZEN_PARTS)}, got {unknown_parts}")
    if frozen_models:
        info["frozen_weights"] = {part: f"{FROZEN_DIR}/{part}" for part in frozen_models}
    text = json.dumps(info, indent=2, allow_nan=False)  # fails here, before touching the disk

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not (folder / CONFIG_FILE).is_file():
        raise FileExistsError(f"{folder}: exists, is not empty and is not a spectralmoe export; choose another folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(folder.parent)  # what a killed export left (a retired copy is put back first)
    staging = staging_folder(folder)
    try:
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format": EXPORT_FORMAT})
        for part, frozen in (frozen_models or {}).items():
            frozen.save_pretrained(str(staging / FROZEN_DIR / part))
        (staging / CONFIG_FILE).write_text(text + "\n")
        follow_umask(staging)
        if folder.exists():
            retired = temporary_path(folder, "old")  # same pid and target: a sweep can finish the swap
            os.replace(folder, retired)
            os.replace(staging, folder)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _check_evaluation(evaluation: Mapping[str, Any], where: str) -> dict[str, Any]:
    unknown = sorted(set(evaluation) - set(EVALUATION_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown evaluation setting(s) {unknown}; allowed: {sorted(EVALUATION_KEYS)}")
    for key, value in evaluation.items():
        kind = EVALUATION_KEYS[key]
        if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            raise ValueError(f"{where}: evaluation {key!r} must be {kind.__name__}, got {value!r}")
    if evaluation.get("mode") not in (None, "whole", "slide"):
        raise ValueError(f"{where}: evaluation mode must be 'whole' or 'slide', got {evaluation['mode']!r}")
    return dict(evaluation)


def export_evaluation(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The evaluation protocol recorded in an export (``predict_logits`` keywords; empty when none)."""
    info = read_export_config(folder)
    return _check_evaluation(info.get("evaluation") or {}, str(Path(folder) / CONFIG_FILE))


def frozen_weights_path(folder: str | os.PathLike[str], part: str) -> str | None:
    """The folder of the frozen ``part`` ("backbone" | "depth") shipped inside an export, else None.

    The path in ``spectralmoe.json`` must stay inside the export folder (a shared export cannot point a
    reader at files elsewhere on their machine).
    """
    folder = Path(folder)
    info = read_export_config(folder)
    relative = (info.get("frozen_weights") or {}).get(part)
    if relative is None:
        return None
    root = folder.resolve()
    target = (root / str(relative)).resolve()
    if Path(str(relative)).is_absolute() or root not in target.parents or not target.is_dir():
        raise ValueError(
            f"{folder / CONFIG_FILE}: frozen {part} weights {relative!r} are not a folder inside the export"
        )
    return str(target)


def read_export_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The contents of ``<folder>/spectralmoe.json``, checked: format, a ``build`` mapping whose
    ``backbone`` and ``num_classes`` are usable, finite normalisation, and as many class names and
    palette colours as classes. Every problem is an ``InputError`` naming the file and the field."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no spectralmoe export here (missing {CONFIG_FILE})")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not a text file ({error.reason})") from error
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})") from error
    if not isinstance(info, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(info).__name__}")
    if info.get("format") != EXPORT_FORMAT:
        raise InputError(f"{path}: format {info.get('format')!r}, expected {EXPORT_FORMAT!r}")
    build = info.get("build")
    if not isinstance(build, dict):
        raise InputError(f"{path}: field 'build' (the build_segmentor arguments) is missing or not an object")
    _check_build_values(build, str(path))
    count = int(build["num_classes"])
    names = info.get("classes")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InputError(f"{path}: field 'classes' must be a list of class names")
        if len(names) != count:
            raise InputError(f"{path}: {len(names)} class names in 'classes' for num_classes={count}; "
                             "every class needs its name")  # fmt: skip
    palette = info.get("palette")
    if palette is not None:
        if not isinstance(palette, list) or len(palette) != count:
            raise InputError(f"{path}: 'palette' must hold {count} colours (one per class)")
        for i, colour in enumerate(palette):
            if not isinstance(colour, list) or len(colour) != 3 or not all(
                isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in colour
            ):
                raise InputError(f"{path}: palette entry {i} must be three integers 0..255, got {colour!r}")
    return info


def _check_build_values(build: Mapping[str, Any], where: str) -> None:
    """The build values a loader relies on before building: names, class count, band facts."""
    _check_build_config(build, where)
    for key in ("backbone", "adapter", "head", "depth", "sensor"):
        value = build.get(key)
        if value is not None and not isinstance(value, str):
            raise InputError(f"{where}: build field {key!r} must be a name, got {value!r}")
    check_int("build field 'num_classes'", build["num_classes"], minimum=1, where=where)
    for key in ("adapter_kwargs", "head_kwargs"):
        if build.get(key) is not None and not isinstance(build[key], dict):
            raise InputError(f"{where}: build field {key!r} must be an object, got {build[key]!r}")
    waves = build.get("wavelengths")
    if waves is not None:
        if not isinstance(waves, list) or not waves or not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) for w in waves
        ):
            raise InputError(f"{where}: build field 'wavelengths' must be a list of numbers (µm), got {waves!r}")
    count = len(waves) if isinstance(waves, list) else None
    for key in ("pixel_mean", "pixel_std"):
        values = build.get(key)
        if values is None:
            continue
        if not isinstance(values, list):
            raise InputError(f"{where}: build field {key!r} must be a list with one value per band, got {values!r}")
        if count is not None and len(values) != count:
            raise InputError(f"{where}: build field {key!r} has {len(values)} values for {count} bands")
    check_normalisation(build.get("pixel_mean"), build.get("pixel_std"), where=where)
    if build.get("value_scale") is not None:
        check_number("build field 'value_scale'", build["value_scale"], positive=True, where=where)


def load_exported(
    folder: str | os.PathLike[str],
    *,
    backbone_weights: str | None = None,
    depth_weights: str | None = None,
    pretrained: bool = True,
    map_location: str | torch.device = "cpu",
) -> Segmentor:
    """Rebuild the Segmentor of an export and load its trainable tensors strictly.

    Frozen parts come from their pretrained weights: the local ``backbone_weights`` /
    ``depth_weights`` folders when given, else the frozen weights shipped inside the export
    (``frozen/``, e.g. from ``spectralmoe import-checkpoint``), else the preset's hub id;
    ``pretrained=False`` builds them randomly (tests). Missing or unexpected trainable tensors, or a
    shape mismatch, raise an error that names them. The model is returned in eval mode on ``map_location``.
    """
    folder = Path(folder)
    info = read_export_config(folder)
    config_path = folder / CONFIG_FILE
    config = _check_build_config(info["build"], str(config_path))
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path}: missing weights file")
    try:
        tensors = load_file(str(weights_path), device="cpu")
    except Exception as error:  # noqa: BLE001 - safetensors' own error types vary: name the file
        raise InputError(f"{weights_path}: unreadable or truncated safetensors file ({describe(error)})") from error
    broken = [name for name, tensor in tensors.items()
              if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]  # fmt: skip
    if broken:
        raise InputError(f"{weights_path}: tensors {broken[:10]} hold NaN or infinite values; the model is unusable")
    # A complete model (DSTC) stores every tensor: nothing comes from pretrained weights (no ImageNet download).
    complete = config.get("architecture", "segmentor") != "segmentor"
    if pretrained and not complete:
        backbone_weights = backbone_weights or frozen_weights_path(folder, "backbone")
        depth_weights = depth_weights or frozen_weights_path(folder, "depth")
    try:
        model = build_segmentor(
            **config, pretrained=pretrained and not complete, backbone_weights=None if complete else backbone_weights,
            depth_weights=depth_weights,
        )
    except InputError as error:
        raise InputError(f"{config_path}: {error}") from error
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(f"{config_path}: the model cannot be built from field 'build' ({describe(error)})") from error
    expected = trainable_state_keys(model)
    missing = [k for k in expected if k not in tensors]
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise InputError(
            f"{weights_path}: trainable tensors do not match the model {config_path} describes "
            f"(missing {missing[:20]}{'…' if len(missing) > 20 else ''}, "
            f"unexpected {unexpected[:20]}{'…' if len(unexpected) > 20 else ''})"
        )
    state = model.state_dict()
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(state[k].shape)}" for k, v in tensors.items()
             if tuple(v.shape) != tuple(state[k].shape)]  # fmt: skip
    if wrong:
        raise InputError(f"{weights_path}: shape mismatch for {wrong[:20]}")
    result = model.load_state_dict(tensors, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    return model.to(map_location).eval()
