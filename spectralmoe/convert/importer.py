"""``import_checkpoint``: the authors' (or Rein's) mmseg checkpoint → our export folder.

One call reads the ``.pth`` without mmengine (restricted unpickler), routes its keys (head, adapter),
reads every size from the tensors, loads the weights into our Mask2Former head and SpectralMoE
(``variant="official"``) / Rein adapter, converts the frozen models of the authors' ``--backbone`` file
when one is given, and writes the normal export (``spectralmoe.json`` + ``model.safetensors`` [+
``frozen/``]) that ``spectralmoe test``, ``predict-scene`` and ``load_exported`` take like any model
trained here. The export records where it came from (file names, SHA-256) and the evaluation protocol
of the code base it came from, which ``spectralmoe test`` applies by default.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from spectralmoe.bands import get_sensor
from spectralmoe.convert.frozen import FrozenModels, PatchEmbedRule, convert_frozen_file, detect_visual_family
from spectralmoe.convert.mask2former import HeadSpec, convert_head_state_dict, infer_head_spec, load_head_weights
from spectralmoe.convert.mmseg import config_hints, rein_options, route_state_dict, spectralmoe_options
from spectralmoe.convert.safe_pickle import read_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_EVALUATION", "ImportResult", "import_checkpoint", "sha256_of"]

#: The test protocol of each code base (CHECKPOINT_IMPORT.md §3): SpectralMoE's configs test whole images
#: with no test-time padding; Rein's slide 512-px windows every 341 px.
DEFAULT_EVALUATION: dict[str, dict[str, Any]] = {
    "spectralmoe": {"mode": "whole", "pad": False},
    "rein": {"mode": "slide", "crop": 512, "stride": 341, "pad": False},
}
#: Backbone of each code base's released configs (and of the converted file's family).
DEFAULT_BACKBONE = {"spectralmoe": "dinov3-vitl16", "rein": "dinov2-vitl14"}
FAMILY_BACKBONE = {"dinov3": "dinov3-vitl16", "dinov2": "dinov2-vitl14"}
DEFAULT_DEPTH_MODEL = "prompt-depth-anything-large"


@dataclass
class ImportResult:
    """What ``import_checkpoint`` wrote and decided."""

    export: Path
    adapter: str
    build: dict[str, Any]
    evaluation: dict[str, Any]
    imported_from: dict[str, Any]
    head: HeadSpec
    frozen: list[str] = field(default_factory=list)  # parts shipped inside the export
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the command line."""
        lines = [
            f"imported {self.imported_from['file']} ({self.adapter}, {self.head.num_classes} classes) → {self.export}",
            f"  backbone {self.build['backbone']}, depth {self.build.get('depth')}, depth input "
            f"{self.build.get('depth_input')}; head: {self.head.decoder_layers} decoder / {self.head.encoder_layers} "
            f"encoder layers, {self.head.num_heads} heads, width {self.head.hidden_dim}",
            f"  evaluation protocol: {self.evaluation}",
            f"  frozen weights shipped: {', '.join(self.frozen) or 'none (the presets load theirs)'}",
        ]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def sha256_of(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _canonical(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(name).lower())


def _is_file(value: str | os.PathLike[str] | None) -> bool:
    return value is not None and Path(value).is_file()


def import_checkpoint(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    task: Any,
    backbone: str | None = None,
    backbone_weights: str | os.PathLike[str] | None = None,
    depth: str | None = None,
    depth_weights: str | os.PathLike[str] | None = None,
    depth_input: str | None = None,
    patch_embed: PatchEmbedRule | None = None,
    adapter_options: Mapping[str, Any] | None = None,
    evaluation: Mapping[str, Any] | None = None,
) -> ImportResult:
    """Import an mmengine/mmseg checkpoint of SpectralMoE or Rein (or a plain state-dict file of one).

    Args:
        checkpoint: the ``.pth`` (``{'meta', 'state_dict', …}``) or a flat state dict.
        out: export folder to write (replaced as a whole if it holds an export already).
        task: the DG task (built-in name, YAML path or ``DGTask``) the model was trained for: its classes,
            palette, source sensor bands and the authors' normalisation go into the export.
        backbone: backbone preset (default: the converted file's family, else the code base's released
            backbone — ``dinov3-vitl16`` for SpectralMoE, ``dinov2-vitl14`` for Rein).
        backbone_weights: the authors' converted backbone file (``convert_dinov3_depthmoe.py`` output:
            DINOv3 + Prompt Depth Anything; or Rein's converted DINOv2) — converted and shipped inside the
            export — or a hub id / local folder of our presets (then only used at load time: pass it again
            to ``test`` / ``predict-scene``).
        depth: depth model preset (SpectralMoE; default ``prompt-depth-anything-large``).
        depth_weights: a file holding the depth model's DINOv2 encoder (PromptDA's ``.ckpt``) when the
            backbone file does not, or a hub id / local folder.
        depth_input: how the depth model is fed; default ``"official"`` (the authors' ``x[:, 1:]``).
        patch_embed: rule for a 3-channel patch kernel on a model with another band count (see
            ``convert.frozen.adapt_patch_kernel``); required only then.
        adapter_options: adapter settings the tensors cannot show (``gating``, ``top_k``); checked against
            the checkpoint's config text when it holds one.
        evaluation: evaluation protocol (``predict_logits`` keywords) instead of the code base's.
    """
    from spectralmoe.data.benchmarks import load_task
    from spectralmoe.engine.export import export_trainable, trainable_state_keys
    from spectralmoe.models.accounting import build_on_meta
    from spectralmoe.models.adapters import build_adapter
    from spectralmoe.models.backbones.presets import BACKBONE_PRESETS
    from spectralmoe.models.depth import DEPTH_PRESETS
    from spectralmoe.models.heads import build_head

    path = Path(checkpoint)
    contents = read_checkpoint(path)
    routed = route_state_dict(contents.state_dict, str(path))
    notes = list(routed.notes)
    kind = routed.adapter
    spec = infer_head_spec(routed.head_state, f"{path}: decode_head")

    # -- adapter settings: tensors, then the config text, then the caller ---------------------------------
    options = (spectralmoe_options if kind == "spectralmoe" else rein_options)(routed.adapter_state)
    layers, width = options.pop("_layers"), options.pop("_width")
    hints = config_hints(contents.meta)
    if "replace_query_feat" in hints and hints["replace_query_feat"] != spec.replace_query_feat:
        raise ValueError(f"{path}: config says replace_query_feat={hints['replace_query_feat']} but the head tensors "
                         f"say {spec.replace_query_feat}")  # fmt: skip
    for name in ("gating", "top_k"):
        if name in hints and name in options:
            notes.append(f"{name}={hints[name]!r} read from the checkpoint's config")
            options[name] = hints[name]
    for name, value in (adapter_options or {}).items():
        if name in hints and hints[name] != value:
            raise ValueError(f"{path}: {name}={value!r} given, but the checkpoint's config says {hints[name]!r}")
        options[name] = value

    # -- task: classes, bands, normalisation -------------------------------------------------------------
    dg = load_task(task)
    if dg.num_classes != spec.num_classes:
        raise ValueError(f"{path}: the head predicts {spec.num_classes} classes, task {dg.name!r} has {dg.num_classes}")
    stored = (contents.meta.get("dataset_meta") or {}).get("classes")
    if stored and [_canonical(c) for c in stored] != [_canonical(c) for c in dg.classes]:
        raise ValueError(
            f"{path}: the checkpoint's classes {list(stored)} are not task {dg.name!r}'s {list(dg.classes)} "
            "(same order)"
        )
    sensor = get_sensor(dg.source_sensors[0])
    mean, std = dg.stats("authors")

    # -- frozen models -----------------------------------------------------------------------------------
    uses_depth = kind == "spectralmoe" and options.get("use_depth", True)
    depth_name = (depth or DEFAULT_DEPTH_MODEL) if uses_depth else None
    frozen = FrozenModels()
    family = None
    if _is_file(backbone_weights):
        file_state = read_checkpoint(backbone_weights).state_dict
        detected = detect_visual_family(file_state)
        name = backbone or (FAMILY_BACKBONE[detected] if detected else DEFAULT_BACKBONE[kind])
        preset = BACKBONE_PRESETS.get(name)
        if preset is None:
            raise ValueError(f"backbone {name!r}: only transformers presets can take a converted backbone file")
        frozen = convert_frozen_file(
            file_state, str(backbone_weights),
            backbone_config=preset.config, backbone_family=None if backbone is None else preset.family,
            depth_config=DEPTH_PRESETS[depth_name].backbone if depth_name else None,
            num_bands=sensor.num_bands, patch_embed=patch_embed,
        )  # fmt: skip
        family = frozen.family
        if frozen.unused:
            notes.append(f"{len(frozen.unused)} keys of the backbone file not needed (depth model's DPT head, "
                         f"ImageNet buffers): {frozen.unused[:3]}…")  # fmt: skip
    if _is_file(depth_weights):
        if frozen.depth is not None:
            raise ValueError(
                f"{backbone_weights} already holds the depth encoder; drop --depth-weights {depth_weights}"
            )
        if depth_name is None:
            raise ValueError(f"depth weights {depth_weights} given, but a {kind} model uses no depth model")
        depth_only = convert_frozen_file(
            read_checkpoint(depth_weights).state_dict, str(depth_weights), backbone_config=None,
            backbone_family=None, depth_config=DEPTH_PRESETS[depth_name].backbone, num_bands=sensor.num_bands,
        )  # fmt: skip
        frozen.depth = depth_only.depth
    backbone_name = backbone or (FAMILY_BACKBONE[family] if family else DEFAULT_BACKBONE[kind])
    if backbone_name.startswith("dofa"):
        raise ValueError(
            f"backbone {backbone_name!r}: the authors' DOFA wrapper hands all four maps to the head at stride 16 (its "
            "rescaling is skipped, METHOD §3.4); our pyramid is 4/8/16/32, so a DOFA checkpoint would not run as "
            "trained"
        )
    expected_family = {"spectralmoe": "dinov3", "rein": "dinov2"}[kind]
    preset_family = getattr(BACKBONE_PRESETS.get(backbone_name), "family", None)
    if preset_family != expected_family:
        notes.append(f"the released {kind} checkpoints use a {expected_family} backbone; {backbone_name} is UNVERIFIED")
    if frozen.depth is not None and frozen.depth.config.patch_size != 16:
        notes.append(f"depth encoder stored at patch {frozen.depth.config.patch_size}: its kernel is resized to 16 "
                     "bicubically and its position table interpolated when loaded (as the authors' converter "
                     "does)")  # fmt: skip

    # -- build the model on the meta device, put the real adapter and head in -----------------------------
    head_kwargs = spec.head_kwargs()
    tokens = int(options["token_length"])
    if spec.num_queries is not None and spec.num_queries != tokens:
        raise ValueError(f"{path}: {spec.num_queries} content queries but {tokens} adapter tokens (they must match)")
    head_kwargs["num_queries"] = tokens
    if int(options["query_dim"]) != spec.hidden_dim:
        raise ValueError(f"{path}: adapter queries are {options['query_dim']}-wide, the head is {spec.hidden_dim}")
    build: dict[str, Any] = {
        "backbone": backbone_name, "adapter": kind, "head": "mask2former", "depth": depth_name,
        "wavelengths": [float(w) for w in sensor.wavelengths_um], "num_classes": spec.num_classes,
        "adapter_kwargs": options, "head_kwargs": head_kwargs, "pixel_mean": [float(v) for v in mean],
        "pixel_std": [float(v) for v in std], "value_scale": float(dg.value_scale),
        "depth_input": depth_input or ("official" if uses_depth else "percentile"),
    }  # fmt: skip
    segmentor = build_on_meta(**build)
    if (segmentor.backbone.num_layers, segmentor.backbone.embed_dim) != (layers, width):
        raise ValueError(f"{path}: the adapter has {layers} layers of width {width}, backbone {backbone_name} has "
                         f"{segmentor.backbone.num_layers} of width {segmentor.backbone.embed_dim}")  # fmt: skip
    if spec.in_channels != (width,) * 4:
        raise ValueError(f"{path}: the head reads features of {spec.in_channels} channels, the backbone gives {width}")
    depth_dim = segmentor.depth_encoder.embed_dim if segmentor.depth_encoder is not None else None
    adapter = build_adapter(kind, embed_dim=width, num_layers=layers, depth_dim=depth_dim,
                            num_prefix_tokens=segmentor.backbone.num_prefix_tokens, **options)  # fmt: skip
    adapter.load_official_state_dict(routed.adapter_state)
    head = build_head("mask2former", num_classes=spec.num_classes, in_channels=spec.in_channels, **head_kwargs)
    converted, _ = convert_head_state_dict(routed.head_state, f"{path}: decode_head")
    load_head_weights(head, converted, spec.replace_query_feat)
    for part, real in (("adapter", adapter), ("head", head)):
        meta_shapes = {k: tuple(v.shape) for k, v in getattr(segmentor, part).state_dict().items()}
        real_shapes = {k: tuple(v.shape) for k, v in real.state_dict().items()}
        if meta_shapes != real_shapes:
            raise RuntimeError(f"internal: the imported {part} differs from the one build_segmentor makes")
        setattr(segmentor, part, real.eval())
    trainable = set(trainable_state_keys(segmentor))
    if any(v.is_meta for k, v in segmentor.state_dict().items() if k in trainable):
        raise RuntimeError("internal: a trainable tensor of the imported model was not filled")

    evaluation = dict(evaluation if evaluation is not None else DEFAULT_EVALUATION[kind])
    imported_from = {
        "file": path.name, "sha256": sha256_of(path),
        "adapter_keys": "backbone.depthmoe.*" if kind == "spectralmoe" else "backbone.reins.*",
        "format": "mmengine checkpoint" if contents.dropped or contents.meta else "state dict",
        "legacy_query_link": routed.legacy_query_link,
    }  # fmt: skip
    for label, source in (("backbone_weights", backbone_weights), ("depth_weights", depth_weights)):
        if source is not None:
            imported_from[label] = ({"file": Path(source).name, "sha256": sha256_of(source)} if _is_file(source)
                                    else {"given": os.fspath(source), "shipped": False})  # fmt: skip
    shipped = {part: model for part, model in (("backbone", frozen.backbone), ("depth", frozen.depth)) if model}
    metadata = {"imported": True, "checkpoint_meta": {k: contents.meta[k] for k in ("seed", "iter", "epoch")
                                                      if k in contents.meta}}  # fmt: skip
    folder = export_trainable(
        segmentor, out, build_config=build, class_names=list(dg.classes), palette=[list(c) for c in dg.palette],
        metadata=metadata, evaluation=evaluation, imported_from=imported_from, frozen_models=shipped,
    )  # fmt: skip
    for part, source in (("backbone", backbone_weights), ("depth", depth_weights)):
        if source is not None and not _is_file(source):
            notes.append(f"{part} weights {os.fspath(source)!r} are not shipped: pass them again to test/predict-scene")
    result = ImportResult(folder, kind, build, evaluation, imported_from, spec, sorted(shipped), notes)
    logger.info(result.summary())
    return result
