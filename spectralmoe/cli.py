"""The ``spectralmoe`` command line: one entry point, one sub-command per job."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence


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
            raise SystemExit(f"{flag} expects key=value, got {item!r}")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spectralmoe",
        description="Domain-generalised segmentation of spectral imagery with frozen foundation models.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_params_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (KeyError, ValueError, TypeError) as error:
        print(f"spectralmoe {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
