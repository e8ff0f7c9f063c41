"""Trainable-only model export: ``model.safetensors`` + ``spectralmoe.json`` in one folder.

A trained model is a few MB (adapter + head, ≈23 MB for SpectralMoE at ViT-L) on top of frozen
foundation models that anyone can rebuild from their published weights. The export therefore
stores only what training changed, under the names of the ``Segmentor`` state dict, plus
everything needed to rebuild the rest::

    <folder>/
      model.safetensors   trainable parameters (+ persistent buffers of the trained parts)
      spectralmoe.json    format, package version, build_segmentor kwargs (backbone, adapter, head,
                          depth, their options, wavelengths, normalisation, num_classes…),
                          class names, palette, tensor names, free metadata

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
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors.torch import load_file, save_file

import spectralmoe
from spectralmoe.files import follow_umask, staging_folder
from spectralmoe.models.factory import build_segmentor
from spectralmoe.models.segmentor import Segmentor

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
]

EXPORT_FORMAT = "spectralmoe-export/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "spectralmoe.json"
#: Top-level Segmentor children whose buffers are rebuilt, never stored (their parameters are
#: frozen too, except methods living inside the backbone such as LoRA, which ARE stored).
FROZEN_MODULES = ("backbone", "depth_encoder")
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
    if isinstance(obj, Segmentor):
        return obj, None, None, None
    segmentor = getattr(obj, "segmentor", None)
    if not isinstance(segmentor, Segmentor):
        raise TypeError(
            f"export_trainable needs a Segmentor or a SegmentationTask whose model is built, got {type(obj).__name__}"
        )
    hparams = getattr(obj, "hparams", {})
    return segmentor, obj.build_config(), hparams.get("class_names"), hparams.get("palette")


def _check_build_config(config: Mapping[str, Any], where: str) -> dict[str, Any]:
    allowed = set(inspect.signature(build_segmentor).parameters) - _RUNTIME_KWARGS
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown build_segmentor argument(s) {unknown}; allowed: {sorted(allowed)}")
    for required in ("backbone", "num_classes"):
        if config.get(required) is None:
            raise ValueError(f"{where}: build config lacks {required!r}")
    return dict(config)


def export_trainable(
    model: Any,
    folder: str | os.PathLike[str],
    *,
    build_config: Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    metadata: Mapping[str, Any] | None = None,
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
    text = json.dumps(info, indent=2, allow_nan=False)  # fails here, before touching the disk

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not (folder / CONFIG_FILE).is_file():
        raise FileExistsError(f"{folder}: exists, is not empty and is not a spectralmoe export; choose another folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(folder)
    try:
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format": EXPORT_FORMAT})
        (staging / CONFIG_FILE).write_text(text + "\n")
        follow_umask(staging)
        if folder.exists():
            retired = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(folder, retired)
            os.replace(staging, folder)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def read_export_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The contents of ``<folder>/spectralmoe.json`` (checked format)."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no spectralmoe export here (missing {CONFIG_FILE})")
    info = json.loads(path.read_text())
    if info.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path}: format {info.get('format')!r}, expected {EXPORT_FORMAT!r}")
    return info


def load_exported(
    folder: str | os.PathLike[str],
    *,
    backbone_weights: str | None = None,
    depth_weights: str | None = None,
    pretrained: bool = True,
    map_location: str | torch.device = "cpu",
) -> Segmentor:
    """Rebuild the Segmentor of an export and load its trainable tensors strictly.

    Frozen parts come from their pretrained weights (hub id of the preset, or the local
    ``backbone_weights`` / ``depth_weights`` folders); ``pretrained=False`` builds them randomly
    (tests). Missing or unexpected trainable tensors, or a shape mismatch, raise an error that
    names them. The model is returned in eval mode on ``map_location``.
    """
    folder = Path(folder)
    info = read_export_config(folder)
    config = _check_build_config(info["build"], str(folder / CONFIG_FILE))
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path}: missing weights file")
    tensors = load_file(str(weights_path), device="cpu")
    model = build_segmentor(
        **config, pretrained=pretrained, backbone_weights=backbone_weights, depth_weights=depth_weights
    )
    expected = trainable_state_keys(model)
    missing = [k for k in expected if k not in tensors]
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise KeyError(
            f"{weights_path}: trainable tensors do not match the rebuilt model "
            f"(missing {missing[:20]}{'…' if len(missing) > 20 else ''}, "
            f"unexpected {unexpected[:20]}{'…' if len(unexpected) > 20 else ''})"
        )
    state = model.state_dict()
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(state[k].shape)}" for k, v in tensors.items()
             if tuple(v.shape) != tuple(state[k].shape)]  # fmt: skip
    if wrong:
        raise ValueError(f"{weights_path}: shape mismatch for {wrong[:20]}")
    result = model.load_state_dict(tensors, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    return model.to(map_location).eval()
