"""The ``spectralmoe`` command line: one entry point, one sub-command per job."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
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


def _add_prepare_parser(subparsers: argparse._SubParsersAction) -> None:
    from spectralmoe.data.prepare import PREPARERS

    p = subparsers.add_parser(
        "prepare",
        help="convert a benchmark's raw download into tiles + splits.json",
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
        "in the files' band order: the pixel_mean / pixel_std a new dataset needs.",
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
    text, payload = format_stats(stats, band_names)
    print(json.dumps(payload, indent=2) if args.json else text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spectralmoe",
        description="Domain-generalised segmentation of spectral imagery with frozen foundation models.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_params_parser(subparsers)
    _add_prepare_parser(subparsers)
    _add_stats_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (KeyError, ValueError, TypeError, FileNotFoundError, FileExistsError) as error:
        print(f"spectralmoe {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
