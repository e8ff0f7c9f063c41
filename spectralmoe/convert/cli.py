"""``spectralmoe import-checkpoint``: the command-line face of :func:`~spectralmoe.convert.import_checkpoint`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_import_checkpoint_parser"]


def _assignment(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.replace("-", "_"), value


def add_import_checkpoint_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "import-checkpoint",
        help="turn the authors' (SpectralMoE) or Rein's mmseg checkpoint into an export folder",
        description="Read an mmengine/mmseg checkpoint of SpectralMoE (backbone.depthmoe.*) or Rein "
        "(backbone.reins.*) with its Mask2Former head (decode_head.*) — without mmengine, and without running "
        "code from the file — and write an export folder (spectralmoe.json + model.safetensors) that "
        "`spectralmoe test --model.export DIR` and `spectralmoe predict-scene --checkpoint DIR` take. The "
        "authors' converted backbone file (DINOv3 + Prompt Depth Anything) is converted and shipped inside it.",
    )
    p.add_argument("checkpoint", type=Path, help="the .pth file (mmengine checkpoint or plain state dict)")
    p.add_argument("--task", required=True,
                   help="DG task the model was trained for (built-in name, e.g. fbp-cross-sensor, or a task YAML)")
    p.add_argument("--out", required=True, type=Path, help="export folder to write")
    p.add_argument("--backbone-weights", default=None,
                   help="the authors' converted backbone file (convert_dinov3_depthmoe.py output) or Rein's converted "
                   "DINOv2, shipped inside the export; or a hub id / local folder (not shipped)")
    p.add_argument("--depth-weights", default=None,
                   help="the depth model's weights when the backbone file lacks them (PromptDA .ckpt, or a folder)")
    p.add_argument("--backbone", default=None, help="backbone preset (default: from the backbone file, else the "
                   "released one: dinov3-vitl16 for SpectralMoE, dinov2-vitl14 for Rein)")
    p.add_argument("--depth", default=None, help="depth model preset (default: prompt-depth-anything-large)")
    p.add_argument("--depth-input", choices=["official", "percentile", "scale"], default=None,
                   help="how the depth model is fed (default: official, the authors' x[:, 1:])")
    p.add_argument("--patch-embed", choices=["cmod3", "wavelength"], default=None,
                   help="rule for a 3-channel patch kernel on a model with more bands (asked for only then)")
    p.add_argument("--set", dest="adapter_options", action="append", default=[], type=_assignment,
                   metavar="KEY=VALUE", help="adapter setting the tensors do not show, e.g. --set gating=laplace")
    p.add_argument("--evaluation", default=None, type=json.loads,
                   help='evaluation protocol as JSON instead of the code base\'s, e.g. \'{"mode": "slide", '
                   '"crop": 512, "stride": 341}\'')
    p.set_defaults(func=_run_import_checkpoint)
    return p


def _run_import_checkpoint(args: argparse.Namespace) -> int:
    from spectralmoe.convert.importer import import_checkpoint

    result = import_checkpoint(
        args.checkpoint, args.out, task=args.task, backbone=args.backbone, backbone_weights=args.backbone_weights,
        depth=args.depth, depth_weights=args.depth_weights, depth_input=args.depth_input,
        patch_embed=args.patch_embed, adapter_options=dict(args.adapter_options), evaluation=args.evaluation,
    )  # fmt: skip
    print(result.summary())
    print(f"next: spectralmoe test -c configs/tasks/<task>.yaml --model.export {result.export}")
    print(f"      spectralmoe predict-scene --checkpoint {result.export} --input SCENE.tif --output MAP.tif")
    return 0
