"""LoveDA (Rural → Urban) converter: the Zenodo download → prepared 512² tiles (DATA.md §5).

Source
    LoveDA: A Remote Sensing Land-Cover Dataset for Domain Adaptive Semantic Segmentation,
    Zenodo record 5706578 (``Train.zip``, ``Val.zip``, ``Test.zip``). Google Earth imagery of
    Nanjing, Changzhou and Wuhan, 0.3 m, 1024×1024 RGB PNG tiles, "Urban" and "Rural" scenes.

Raw layout read (each archive as a ``.zip`` or already unzipped; found anywhere below ``--raw``)::

    Train.zip  Train/{Urban,Rural}/images_png/<int>.png    RGB uint8 PNG
               Train/{Urban,Rural}/masks_png/<int>.png     mode L uint8 index mask 0..7
    Val.zip    Val/{Urban,Rural}/{images_png,masks_png}/<int>.png
    Test.zip   Test/{Urban,Rural}/images_png/<int>.png     (no masks: never used here)

Prepared layout written (``spectralmoe.data.layout``)::

    image/<scene>/<Split>/<stem>_q<k>.tif   3-band uint8 GeoTIFF (no georeference), R,G,B as in the PNG
    label/<scene>/<Split>/<stem>_q<k>.png   uint8 class indices 0..6, 255 = ignore

``<scene>`` is ``rural`` or ``urban``; ``q0..q3`` are the top-left, top-right, bottom-left and
bottom-right quarters (``--*-tiling quarters``); with ``whole`` the name is ``<stem>`` alone.

Bands
    R, G, B (sensor ``"rgb"``), in the PNG's order. The authors' cv2 loader hands the model
    B,G,R (DATA.md §8.1); that is the task's business, the data stay as stored.

Classes (raw mask value → index)
    0 no-data → 255 (ignored); 1 background → 0, 2 building → 1, 3 road → 2, 4 water → 3,
    5 barren → 4, 6 forest → 5, 7 agriculture → 6. Any other raw value is an error.

DG split (defaults; the [U] ones are options)
    * source = domain ``rural``: Train/Rural + Val/Rural (``--source-splits Train,Val``). [I/U: the
      authors' schedule implies 9432 = 4 × (1366 + 992) source samples, DATA.md §0.4, §5.4]
    * target = domain ``urban``: Val/Urban (``--target-splits Val``). [V: SMoE config]
    * tiling: four 512² quarters of every 1024² image for BOTH source and target
      (``--source-tiling`` / ``--target-tiling quarters|whole``). [U: the source count suggests
      quarters; whether the target was quartered is unknown; quarters give equal-sized 512 tiles.]
    * the city of a tile is not recorded in the files: attribute ``city`` is ``"unknown"``.

Citation
    Junjue Wang, Zhuo Zheng, Ailong Ma, Xiaoyan Lu, Yanfei Zhong. "LoveDA: A Remote Sensing
    Land-Cover Dataset for Domain Adaptive Semantic Segmentation". NeurIPS Datasets and
    Benchmarks, 2021. https://doi.org/10.5281/zenodo.5706578
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from spectralmoe.bands import get_sensor
from spectralmoe.data.io import RasterData, read_label
from spectralmoe.data.layout import PreparedIndex
from spectralmoe.data.prepare.common import (
    PrepareRun,
    TileArrays,
    check_choice,
    index_lookup,
    map_labels,
    parse_list,
)
from spectralmoe.data.prepare.raw import LazyScene, RawSource, RawTree, read_pair

BENCHMARK = "loveda"
CLASSES: list[str] = ["background", "building", "road", "water", "barren", "forest", "agricultural"]
PALETTE: list[tuple[int, int, int]] = [
    (255, 255, 255), (255, 0, 0), (255, 255, 0), (0, 0, 255), (159, 129, 183), (0, 255, 0), (255, 195, 128),
]  # fmt: skip
SENSOR = "rgb"
SCENES = {"rural": "Rural", "urban": "Urban"}
LABELLED_SPLITS = ("Train", "Val")
TILINGS = ("quarters", "whole")

_MEMBER = re.compile(r"(?:^|/)(Urban|Rural)/(images_png|masks_png)/([^/]+)\.png$")
_LOOKUP = index_lookup(len(CLASSES))


def stem_order(name: str) -> tuple[int, str]:
    """Sort key: integer stems numerically, then by text."""
    stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return (int(stem), stem) if stem.isdigit() else (1 << 62, stem)


@dataclass(frozen=True)
class _Part:
    """One (split, scene) folder that feeds a side of the DG split."""

    side: str  # "source" | "target"
    split: str  # "Train" | "Val"
    scene: str  # "rural" | "urban"
    tiling: str


def _load_scene(source: RawSource, image_name: str, mask_name: str) -> tuple[RasterData, np.ndarray]:
    image, raw, mask_where = read_pair(source, image_name, source, mask_name, bands=3,
                                       band_names=get_sensor(SENSOR).band_names, read_label=read_label)  # fmt: skip
    return image, map_labels(raw, _LOOKUP, mask_where)


def _quarter_box(shape: tuple[int, int], quarter: int | None, where: str) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of quarter ``0..3`` (row-major), or of the whole image for ``None``."""
    height, width = shape
    if quarter is None:
        return 0, 0, height, width
    if height % 2 or width % 2:
        raise ValueError(f"{where}: {height}x{width} (HxW) cannot be cut into four equal quarters; use tiling=whole")
    h, w = height // 2, width // 2
    return (quarter // 2) * h, (quarter % 2) * w, h, w


def prepare(
    raw: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    progress: bool = True,
    source_scene: str = "rural",
    target_scene: str = "urban",
    source_splits: str = "Train,Val",
    target_splits: str = "Val",
    source_tiling: str = "quarters",
    target_tiling: str = "quarters",
) -> PreparedIndex:
    """Convert the LoveDA download in ``raw`` into prepared tiles in ``out`` (see the module docstring).

    Raises:
        FileNotFoundError: a needed archive (``Train.zip``/``Val.zip`` or its folder) is missing.
        ValueError: an image without its mask, a mask of another size, an image that is not 3-band
            uint8, a mask value outside 0..7 (each naming the file), or contradictory options.
    """
    source_scene = check_choice(source_scene, "source_scene", tuple(SCENES))
    target_scene = check_choice(target_scene, "target_scene", tuple(SCENES))
    source_tiling = check_choice(source_tiling, "source_tiling", TILINGS)
    target_tiling = check_choice(target_tiling, "target_tiling", TILINGS)
    parts = [_Part("source", s, source_scene, source_tiling)
             for s in parse_list(source_splits, "source_splits", LABELLED_SPLITS)]
    parts += [_Part("target", s, target_scene, target_tiling)
              for s in parse_list(target_splits, "target_splits", LABELLED_SPLITS)]  # fmt: skip
    if not any(p.side == "source" for p in parts) or not any(p.side == "target" for p in parts):
        raise ValueError("loveda: source_splits and target_splits must each name at least one split")
    seen: dict[tuple[str, str], str] = {}
    for part in parts:
        key = (part.split, part.scene)
        if key in seen:
            raise ValueError(f"loveda: {part.split}/{SCENES[part.scene]} would feed both source and target")
        seen[key] = part.side
    options = dict(source_scene=source_scene, target_scene=target_scene, source_splits=source_splits,
                   target_splits=target_splits, source_tiling=source_tiling, target_tiling=target_tiling)  # fmt: skip

    tree = RawTree(raw, out)  # checks the raw folder before the output folder is claimed
    # No option changes what a tile file holds: scene, split and quarter are all in its name.
    run = PrepareRun(BENCHMARK, out, progress=progress, raw=raw, tile_options={})
    sensor = get_sensor(SENSOR)
    with tree:
        # Pass 1: find every archive and pair every image with its mask before writing anything.
        sources: dict[str, RawSource] = {}
        for split in dict.fromkeys(p.split for p in parts):
            source = tree.find(f"{split}.zip")
            if source is None:
                raise FileNotFoundError(f"{tree.raw}: neither {split}.zip nor an unzipped {split}/ folder found")
            sources[split] = source
        plan: list[tuple[_Part, RawSource, str, str, str]] = []
        for part in parts:
            source = sources[part.split]
            images: dict[str, str] = {}
            masks: dict[str, str] = {}
            for hit, name in source.match(_MEMBER):
                if hit.group(1) != SCENES[part.scene]:
                    continue
                (images if hit.group(2) == "images_png" else masks)[hit.group(3)] = name
            if not images:
                raise FileNotFoundError(
                    f"{source.path}: no {SCENES[part.scene]}/images_png/*.png found (is this LoveDA {part.split}?)"
                )
            missing = [images[s] for s in images if s not in masks]
            if missing:
                shown = ", ".join(source.describe(n) for n in sorted(missing, key=stem_order)[:5])
                raise ValueError(f"missing label: {len(missing)} LoveDA image(s) without a masks_png/ mask: {shown}")
            for stem in sorted(images, key=lambda s: stem_order(s)):
                plan.append((part, source, stem, images[stem], masks[stem]))

        # Pass 2: tiles (an image is read only if one of its tiles is not on disk yet).
        for part, source, stem, image_name, mask_name in plan:
            where = source.describe(image_name)
            scene = LazyScene(lambda s=source, i=image_name, m=mask_name: _load_scene(s, i, m),
                              lambda s=source, i=image_name, m=mask_name: (s.release(i), s.release(m)))  # fmt: skip
            for quarter in [None] if part.tiling == "whole" else [0, 1, 2, 3]:
                name = stem if quarter is None else f"{stem}_q{quarter}"
                attributes = {"scene": part.scene, "loveda_split": part.split, "image": stem, "city": "unknown"}
                if quarter is not None:
                    attributes["quarter"] = str(quarter)

                def make(scene: LazyScene = scene, quarter: int | None = quarter, where: str = where) -> TileArrays:
                    return scene.tile(*_quarter_box(scene.get()[0].shape, quarter, where))

                run.add_tile(f"{part.scene}/{part.split}/{name}", make, split=part.side,  # type: ignore[arg-type]
                             domain=part.scene, sensor=SENSOR, attributes=attributes,
                             band_names=sensor.band_names)  # fmt: skip
            scene.release()
        return run.finish(classes=CLASSES, palette=PALETTE, sensors={SENSOR: sensor}, options=options)

