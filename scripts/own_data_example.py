#!/usr/bin/env python
"""Write a SYNTHETIC stand-in for a mapping team's own data: the input of the README's "Your own data".

    python scripts/own_data_example.py --out own-data

It renders tiles with the package's synthetic world (``spectralmoe.data.synthetic``: land cover,
spectra, sensor response, haze, noise) and stores them the way real deliveries often come:

* ``siteA/images/*.tif`` — sensor A (GF-2-like), **B,G,R,NIR** 8-bit, band descriptions
  "Blue,Green,Red,NIR", georeferenced (UTM 50N), with ``siteA/labels/*.png`` (raw 0 = unlabelled,
  1..7 the classes of ``classes.txt``);
* ``siteB/images/*.tif`` — sensor B (PlanetScope-like), **NIR,R,G,B** 8-bit with another gain, offset,
  haze and GSD, NO band descriptions (the delivery note says the order), in another region (other
  season and soils), with ``siteB/labels/*.png``;
* ``scene_siteB.tif`` — one larger unlabelled scene of sensor B (640 × 512 px, NIR,R,G,B, band
  descriptions set this time), and ``scene_siteB_truth.tif`` its reference map (class indices 0..6);
* ``classes.txt`` — the class names.

Deterministic for a given ``--seed``. SYNTHETIC: it exercises the workflow and says nothing about
real imagery.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def _write(path: Path, array: np.ndarray, transform: object, descriptions: list[str] | None = None) -> None:
    import rasterio

    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "width": array.shape[-1], "height": array.shape[-2], "count": array.shape[0],
               "dtype": array.dtype.name, "crs": "EPSG:32650", "transform": transform, "compress": "deflate",
               "photometric": "minisblack"}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
        for i, name in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, name)


def _label(path: Path, label: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label.astype(np.uint8)).save(path)


def main(argv: list[str] | None = None) -> int:
    from rasterio.transform import Affine

    from spectralmoe.data.synthetic import CLASSES, render_tile

    p = argparse.ArgumentParser(prog="python scripts/own_data_example.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--tiles-a", type=int, default=48, help="tiles of site A (default 48)")
    p.add_argument("--tiles-b", type=int, default=24, help="tiles of site B (default 24)")
    p.add_argument("--tile", type=int, default=128, help="tile size in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out: Path = args.out
    gsd = 4.0
    for k in range(args.tiles_a):
        view = render_tile("gf2", "north", k, seed=args.seed, tile_size=args.tile)  # NIR,R,G,B uint8
        bgrn = np.ascontiguousarray(view.image[::-1])  # this product stores B,G,R,NIR
        transform = Affine(gsd, 0, 400_000 + (k % 8) * args.tile * gsd, 0, -gsd, 3_400_000 - (k // 8) * args.tile * gsd)
        _write(out / "siteA" / "images" / f"A_{k:03d}.tif", bgrn, transform, ["Blue", "Green", "Red", "NIR"])
        _label(out / "siteA" / "labels" / f"A_{k:03d}.png", view.label + 1)
    for k in range(args.tiles_b):
        view = render_tile("planetscope", "south", k, seed=args.seed, tile_size=args.tile)  # NIR,R,G,B uint8
        transform = Affine(3.0, 0, 600_000 + (k % 8) * args.tile * 3.0, 0, -3.0, 3_300_000 - (k // 8) * args.tile * 3.0)
        _write(out / "siteB" / "images" / f"B_{k:03d}.tif", view.image, transform)
        _label(out / "siteB" / "labels" / f"B_{k:03d}.png", view.label + 1)
    view = render_tile("planetscope", "south", 10_000, seed=args.seed, tile_size=640)
    transform = Affine(3.0, 0, 650_000, 0, -3.0, 3_250_000)
    _write(out / "scene_siteB.tif", view.image[:, :512, :], transform, ["NIR", "Red", "Green", "Blue"])
    _write(out / "scene_siteB_truth.tif", view.label[None, :512, :].astype(np.uint8), transform)
    (out / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    print(f"{out}: site A {args.tiles_a} tiles (B,G,R,NIR uint8), site B {args.tiles_b} tiles (NIR,R,G,B uint8), "
          f"scene_siteB.tif 640 × 512 px, classes.txt ({len(CLASSES)} classes) — SYNTHETIC")
    return 0


if __name__ == "__main__":
    sys.exit(main())
