"""Peak memory and speed of scene-scale inference (``spectralmoe.predict.predict_scene``).

    python benchmarks/scene_memory.py --height 20000 --width 20000 --bands 4 \\
        --tile 512 --overlap 128 --batch-size 4 --workdir /tmp/scene-bench [--threads 2] [--device cpu] \\
        [--read-ahead 2]

1. Writes a synthetic georeferenced ``uint16`` GeoTIFF of that size (tiled 512, deflate) block row by
   block row, so the scene never exists in RAM: smooth "land cover" patterns per band, plus a nodata
   triangle in the top-left corner as real scene footprints have. An existing file of the right shape
   is reused (``--reuse``).
2. Exports a tiny SpectralMoE model (tiny DINOv3 + tiny Depth Anything, random frozen weights, FPN head,
   4 classes): the point is the scene machinery's memory, not the model's quality.
3. In a fresh child process (its own peak RSS): builds the model, warms up on a small scene, records
   the resident set size, runs ``predict_scene`` on the big scene, and reports the peak.

Prints one JSON object: ``peak_rss_mb`` (the child's ``VmHWM`` during the scene run, reset just
before it), ``ru_maxrss_mb`` (``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the child: the same
peak unless an earlier step was higher — on Linux it also counts the parent's RSS at fork, which is
why ``VmHWM`` is the primary figure), ``rss_before_mb`` (after model build and warm-up),
``growth_mb`` (peak minus that: what the scene costs), ``warmup_growth_mb`` (peak growth of the
warm-up on a 300 × 300 scene with the same tile and batch: mostly the model's activations for one
batch, which ``growth_mb`` also contains), ``bound_mb`` (predict.py's stated strip-buffer bound for
this width), wall time, tiles/s and megapixels/s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NUM_CLASSES = 4


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=20000)
    parser.add_argument("--width", type=int, default=20000)
    parser.add_argument("--bands", type=int, default=4, help="4 = GF-2 NIR,R,G,B (the model's bands)")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--read-ahead", type=int, default=2,
                        help="batches read ahead by predict_scene's background reader (0: read in turn)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/spectralmoe-scene-bench"))
    parser.add_argument("--reuse", action="store_true", help="reuse an existing scene of the right shape")
    parser.add_argument("--keep", action="store_true", help="keep the scene and outputs (default: delete them)")
    parser.add_argument("--progress", action="store_true", help="show the tile progress bar")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # internal: the measured process
    return parser.parse_args(argv)


def _rss_mb() -> float:
    """Current resident set size (Linux /proc), MB."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _ru_maxrss_mb() -> float:
    """``getrusage`` peak RSS. On Linux it also counts the parent's RSS at fork (kept across exec), so a
    child of a big process reports at least that; ``_peak_mb`` does not."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _peak_mb() -> float:
    """This process's peak RSS since start or the last ``_reset_peak`` (``VmHWM``)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_peak() -> None:
    """Reset ``VmHWM`` to the current RSS (Linux ≥ 4.0), so the next peak is the next step's."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def write_scene(path: Path, height: int, width: int, bands: int, rows_per_write: int = 512) -> None:
    """Synthetic scene written strip by strip (memory: one strip). Values ~ GF-2 8-bit ranges, stored uint16."""
    import numpy as np
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    profile = {
        "driver": "GTiff", "height": height, "width": width, "count": bands, "dtype": "uint16", "nodata": 0,
        "crs": "EPSG:32650", "transform": Affine(0.8, 0.0, 400000.0, 0.0, -0.8, 3500000.0), "tiled": True,
        "blockxsize": 512, "blockysize": 512, "compress": "deflate", "predictor": 2, "BIGTIFF": "YES",
        "interleave": "pixel",
    }  # fmt: skip
    x = np.arange(width, dtype=np.float32)[None, :]
    with rasterio.Env(GDAL_CACHEMAX=256), rasterio.open(tmp, "w", **profile) as dst:
        for top in range(0, height, rows_per_write):
            n = min(rows_per_write, height - top)
            y = np.arange(top, top + n, dtype=np.float32)[:, None]
            field = np.sin(x / 311.0 + 0.7 * np.sin(y / 523.0)) + np.cos(y / 197.0 - 0.5 * np.sin(x / 401.0))
            strip = np.empty((bands, n, width), dtype=np.uint16)
            for b in range(bands):
                strip[b] = np.clip(110 + 60 * np.sin(field * (1.0 + 0.3 * b) + b), 1, 65535).astype(np.uint16)
            corner = (x + y) < min(height, width) / 8  # nodata triangle: a scene footprint's edge
            strip[:, corner] = 0
            dst.write(strip, window=Window(0, top, width, n))
    os.replace(tmp, path)


def export_model(folder: Path) -> Path:
    import torch

    from spectralmoe.engine.export import export_trainable
    from spectralmoe.models.factory import build_segmentor

    build = {
        "backbone": "tiny-dinov3", "adapter": "spectralmoe", "head": "fpn", "depth": "tiny-depth-anything",
        "sensor": "gf2", "num_classes": NUM_CLASSES, "pixel_mean": [110.0, 110.0, 110.0, 110.0],
        "pixel_std": [45.0, 45.0, 45.0, 45.0],
        "adapter_kwargs": {"token_length": 8, "query_dim": 32, "num_experts": 3, "rank": 4},
        "head_kwargs": {"channels": 64},
    }  # fmt: skip
    torch.manual_seed(0)
    model = build_segmentor(**build, pretrained=False)
    return export_trainable(model, folder, build_config=build, class_names=["water", "field", "forest", "urban"],
                            palette=[(0, 90, 200), (230, 200, 90), (20, 130, 40), (200, 40, 40)])  # fmt: skip


def child(args: argparse.Namespace) -> dict[str, object]:
    """The measured run (fresh process)."""
    import torch

    from spectralmoe.predict import predict_scene

    if args.threads:
        torch.set_num_threads(args.threads)
    export, scene, out = args.workdir / "export", args.workdir / "scene.tif", args.workdir / "out"
    small = args.workdir / "warmup.tif"
    write_scene(small, 300, 300, args.bands)
    options = {"tile": args.tile, "overlap": args.overlap, "batch_size": args.batch_size, "device": args.device,
               "precision": args.precision, "pretrained": False, "read_ahead": args.read_ahead}  # fmt: skip
    torch.manual_seed(0)
    start = _rss_mb()
    _reset_peak()
    predict_scene(export, small, out / "warmup_map.tif", progress=False, preview=False, **options)
    warmup_growth = _peak_mb() - start  # one batch of tiles through the model: activations, no scene
    before = _rss_mb()
    _reset_peak()
    started = time.perf_counter()
    torch.manual_seed(0)
    summary = predict_scene(export, scene, out / "map.tif", progress=args.progress, **options)
    wall = time.perf_counter() - started
    peak = _peak_mb()
    pixels = args.height * args.width
    # predict.py's strip bound: accumulators + weights + nodata mask over tile+256 rows, one block row being written
    rows = min(args.height, args.tile + 256)
    bound = ((4 * NUM_CLASSES + 5) * rows + 4 * NUM_CLASSES * 256) * args.width / 2**20
    return {
        "scene": {"height": args.height, "width": args.width, "bands": args.bands, "dtype": "uint16",
                  "uncompressed_gb": round(pixels * args.bands * 2 / 1e9, 2),
                  "file_gb": round(scene.stat().st_size / 1e9, 3)},
        "tile": args.tile, "overlap": args.overlap, "batch_size": args.batch_size, "read_ahead": args.read_ahead,
        "device": summary.device,
        "precision": summary.precision, "torch_threads": torch.get_num_threads(),
        "tiles": summary.tiles, "tiles_skipped": summary.tiles_skipped,
        "wall_s": round(wall, 1), "tiles_per_s": round(summary.tiles / wall, 2),
        "megapixels_per_s": round(pixels / wall / 1e6, 3),
        "rss_before_mb": round(before, 1), "peak_rss_mb": round(peak, 1), "growth_mb": round(peak - before, 1),
        "ru_maxrss_mb": round(_ru_maxrss_mb(), 1),
        "warmup_growth_mb": round(warmup_growth, 1), "bound_mb": round(bound, 1),
        "output_mb": round((out / "map.tif").stat().st_size / 2**20, 2),
        "nodata_pixels": summary.nodata_pixels,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    scene = args.workdir / "scene.tif"
    started = time.perf_counter()
    reuse = False
    if args.reuse and scene.is_file():
        import rasterio

        with rasterio.open(scene) as src:
            reuse = (src.height, src.width, src.count) == (args.height, args.width, args.bands)
    if not reuse:
        write_scene(scene, args.height, args.width, args.bands)
    written = time.perf_counter() - started
    export_model(args.workdir / "export")
    command = [sys.executable, __file__, "--child", *(argv if argv is not None else sys.argv[1:])]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        return result.returncode
    report = json.loads(result.stdout.strip().splitlines()[-1])
    report["scene_write_s"] = round(written, 1) if not reuse else "reused"
    if not args.keep:
        import shutil

        shutil.rmtree(args.workdir, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
