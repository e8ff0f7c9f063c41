"""predict_scene tiles/s with and without the background tile reader, interleaved, as ONE JSON.

    python benchmarks/predict_read_ahead.py --size 3072 --tile 512 --overlap 128 --batch-size 4 \\
        --rounds 5 [--threads 1] [--ahead 0,2]

Writes a synthetic 4-band uint16 GeoTIFF (``scene_memory.write_scene``: tiled, deflate, as a real
scene) once, builds the tiny 4-class SpectralMoE of ``scene_memory.py`` (random frozen weights: the
point is the tile loop, not the model), and runs ``predict_scene`` on it ``--rounds`` times for each
``read_ahead`` in ``--ahead``, alternating, in one process. Prints each setting's median and min
tiles/s (the tile loop only: reading, model, blending, writing) and the ratio of the medians to the
first setting (``read_ahead=0``, reading in turn).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scene_memory import export_model, write_scene  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=3072, help="scene height = width (pixels)")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ahead", default="0,2", help="comma list of read_ahead settings; the first is the base")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, deleted after")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, object]:
    from spectralmoe.engine.export import load_exported
    from spectralmoe.predict import predict_scene

    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = [int(a) for a in args.ahead.split(",")]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="spectralmoe-read-ahead-"))
    try:
        scene = workdir / "scene.tif"
        write_scene(scene, args.size, args.size, 4)
        torch.manual_seed(0)
        model = load_exported(export_model(workdir / "export"), pretrained=False).eval()
        options = {"tile": args.tile, "overlap": args.overlap, "batch_size": args.batch_size, "device": "cpu",
                   "precision": "fp32", "pretrained": False, "progress": False, "preview": False,
                   "overviews": False}  # fmt: skip
        rates: dict[int, list[float]] = {a: [] for a in settings}
        tiles = 0
        for round_index in range(args.rounds + 1):  # round 0 warms up
            order = settings if round_index % 2 == 0 else settings[::-1]
            for ahead in order:
                summary = predict_scene(model, scene, workdir / f"map{ahead}.tif", read_ahead=ahead, **options)
                tiles = summary.tiles
                if round_index > 0:
                    rates[ahead].append(summary.tiles_per_second)
        base = statistics.median(rates[settings[0]])
        result: dict[str, object] = {
            "scene": f"{args.size}x{args.size}x4 uint16 GeoTIFF (synthetic, deflate)", "tiles": tiles,
            "tile": args.tile, "overlap": args.overlap, "batch_size": args.batch_size, "rounds": args.rounds,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "model": "tiny SpectralMoE (tiny DINOv3 + tiny Depth Anything, FPN head), random frozen weights",
            "timing": "settings alternated round by round in one process; median (and min) over rounds",
        }  # fmt: skip
        for ahead in settings:
            median = statistics.median(rates[ahead])
            result[f"read_ahead={ahead}"] = {"tiles_per_s_median": round(median, 3),
                                             "tiles_per_s_min": round(min(rates[ahead]), 3),
                                             "speedup_vs_first": round(median / base, 3)}  # fmt: skip
        print(json.dumps(result, indent=2))
        return result
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
