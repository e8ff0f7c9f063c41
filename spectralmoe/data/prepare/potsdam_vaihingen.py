"""ISPRS Potsdam (RGB) → Vaihingen (IRRG) converter: the ISPRS downloads → prepared 512² tiles (DATA.md §6).

Source
    ISPRS 2D Semantic Labeling Contest, Potsdam and Vaihingen (ISPRS WG II/4; download on request
    from ISPRS, or the mirrors listed by mmsegmentation's dataset guide). Aerial true orthophotos:
    Potsdam 38 tiles of 6000×6000 px at 5 cm; Vaihingen 33 labelled areas of about 2000×2500 px at
    9 cm.

Raw layout read (each archive as a ``.zip`` or already unzipped; found anywhere below ``--raw``)::

    2_Ortho_RGB.zip                      [2_Ortho_RGB/]top_potsdam_<r>_<c>_RGB.tif       R,G,B uint8
    4_Ortho_RGBIR.zip  (--potsdam-product rgbir)  top_potsdam_<r>_<c>_RGBIR.tif      R,G,B,NIR uint8
    5_Labels_all_noBoundary.zip          top_potsdam_<r>_<c>_label_noBoundary.tif       RGB colour labels
    5_Labels_all.zip   (--potsdam-labels all)     top_potsdam_<r>_<c>_label.tif
    ISPRS_semantic_labeling_Vaihingen.zip               top/top_mosaic_09cm_area<N>.tif   NIR,R,G uint8
    ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip
                                                        top_mosaic_09cm_area<N>_noBoundary.tif
    ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip  (--vaihingen-labels full)
                                                        top_mosaic_09cm_area<N>.tif

Zip members are extracted one scene at a time into ``OUT/.raw-work`` and deleted after use.

Prepared layout written (``spectralmoe.data.layout``)::

    image/potsdam/<r>_<c>_<x0>_<y0>_<x1>_<y1>.tif      e.g. image/potsdam/2_10_0_0_512_512.tif
    image/vaihingen/area<N>_<x0>_<y0>_<x1>_<y1>.tif    e.g. image/vaihingen/area1_0_0_512_512.tif
    label/<same>.png                                   uint8 class indices 0..5, 255 = ignore

Tiling follows mmsegmentation's ISPRS converters (facts, not code): 512×512 windows on a 512 step
(their declared 256 stride is not what the grid uses); the last row and column are shifted inward
so every window lies inside the scene (no padding); coinciding windows collapse into one. A 6000²
Potsdam scene gives 12×12 = 144 tiles; x is the column, y the row, ``x1``/``y1`` exclusive.

Bands (kept in the file's order; the authors' cv2 loader gives the model B,G,R / G,R,NIR instead,
DATA.md §8.1, a concern of the model side, not of the data)
    Potsdam ``2_Ortho_RGB``: R, G, B (sensor ``potsdam-rgb``); ``4_Ortho_RGBIR``: R, G, B, NIR
    (``potsdam-rgbir``). Vaihingen: NIR, R, G (sensor ``vaihingen``; there is no blue band).

Classes (colour labels, exact RGB match; every other colour — the black eroded-boundary pixels
and stray off-table colours such as (254, 0, 0) — becomes 255, ignored)
    0 impervious surfaces (255,255,255), 1 building (0,0,255), 2 low vegetation (0,255,255),
    3 tree (0,255,0), 4 car (255,255,0), 5 clutter/background (255,0,0). Clutter is a scored
    class (SMoE ``num_classes=6``).

DG split
    * source = domain ``potsdam``: all 38 labelled tiles (``--potsdam-tiles all``) [I: the authors'
      schedule implies 5472 = 38 × 144 source tiles, DATA.md §0.4], from 2_Ortho_RGB [I].
    * target = domain ``vaihingen``: all 33 labelled areas (``--vaihingen-areas all``) [UNVERIFIED;
      ``test`` gives mmseg's 17 validation areas]. Every tile records ``isprs_split`` (the official
      train/test membership) so a task can keep the test areas only without re-converting.
    * labels: the eroded "noBoundary" ground truth for both [V: the mmseg converters SMoE used].

Citation
    F. Rottensteiner, G. Sohn, J. Jung, M. Gerke, C. Baillard, S. Benitez, U. Breitkopf. "The ISPRS
    benchmark on urban object classification and 3D building reconstruction". ISPRS Annals I-3,
    2012. https://www.isprs.org/education/benchmarks/UrbanSemLab/
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from typing import Any, Sequence

import numpy as np

from spectralmoe.bands import get_sensor
from spectralmoe.data.io import RasterData, colours_to_index, read_colour_label
from spectralmoe.data.layout import IGNORE_INDEX, PreparedIndex
from spectralmoe.data.prepare.common import PrepareRun, TileArrays, check_choice, parse_list
from spectralmoe.data.prepare.raw import LazyScene, RawSource, RawTree, read_pair

logger = logging.getLogger(__name__)

BENCHMARK = "potsdam-vaihingen"
CLASSES: list[str] = ["impervious_surface", "building", "low_vegetation", "tree", "car", "clutter"]
PALETTE: list[tuple[int, int, int]] = [
    (255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0),
]  # fmt: skip
ISPRS_COLOURS = PALETTE  # the label colours ARE the class palette, in class-index order

# Official ISPRS splits [V DATA.md §6.1].
POTSDAM_TRAIN: tuple[str, ...] = (
    "2_10", "2_11", "2_12", "3_10", "3_11", "3_12", "4_10", "4_11", "4_12", "5_10", "5_11", "5_12",
    "6_10", "6_11", "6_12", "6_7", "6_8", "6_9", "7_10", "7_11", "7_12", "7_7", "7_8", "7_9",
)  # fmt: skip
POTSDAM_TEST: tuple[str, ...] = (
    "5_15", "6_15", "6_13", "3_13", "4_14", "6_14", "5_14", "2_13", "4_15", "2_14", "5_13", "4_13", "3_14", "7_13",
)  # fmt: skip
VAIHINGEN_TRAIN: tuple[str, ...] = tuple(str(n) for n in (1, 3, 5, 7, 11, 13, 15, 17, 21, 23, 26, 28, 30, 32, 34, 37))
VAIHINGEN_TEST: tuple[str, ...] = tuple(
    str(n) for n in (2, 4, 6, 8, 10, 12, 14, 16, 20, 22, 24, 27, 29, 31, 33, 35, 38)
)

POTSDAM_PRODUCTS = {  # option value → (archive, file-name pattern, sensor, bands)
    "rgb": ("2_Ortho_RGB.zip", re.compile(r"(?:^|/)top_potsdam_(\d+_\d+)_RGB\.tif$", re.I), "potsdam-rgb", 3),
    "rgbir": ("4_Ortho_RGBIR.zip", re.compile(r"(?:^|/)top_potsdam_(\d+_\d+)_RGBIR\.tif$", re.I), "potsdam-rgbir", 4),
}  # fmt: skip
POTSDAM_LABELS = {
    "noBoundary": ("5_Labels_all_noBoundary.zip", re.compile(r"(?:^|/)top_potsdam_(\d+_\d+)_label_noBoundary\.tif$", re.I)),
    "all": ("5_Labels_all.zip", re.compile(r"(?:^|/)top_potsdam_(\d+_\d+)_label\.tif$", re.I)),
}  # fmt: skip
VAIHINGEN_IMAGES = ("ISPRS_semantic_labeling_Vaihingen.zip", re.compile(r"(?:^|/)top/top_mosaic_09cm_area(\d+)\.tif$", re.I))
VAIHINGEN_LABELS = {
    "eroded": ("ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip",
               re.compile(r"(?:^|/)top_mosaic_09cm_area(\d+)_noBoundary\.tif$", re.I)),
    "full": ("ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip",
             re.compile(r"(?:^|/)top_mosaic_09cm_area(\d+)\.tif$", re.I)),
}  # fmt: skip
# Folders of the image archive that hold same-named files which are NOT the complete ground truth.
_NOT_VAIHINGEN_GT = re.compile(r"(?:^|/)(?:top|dsm|gts_for_participants)/[^/]+$", re.I)

def clip_windows(height: int, width: int, size: int, where: str = "raster") -> list[tuple[int, int]]:
    """``(top, left)`` of the ``size``² windows of mmseg's ISPRS clipping grid, row-major.

    Offsets step by ``size``; the last offset is pulled back to ``dim - size`` so the window stays
    inside; duplicates collapse. Raises if the raster is smaller than one window.
    """
    if height < size or width < size:
        raise ValueError(f"{where}: {height}x{width} (HxW) is smaller than one {size}x{size} tile")

    def offsets(dim: int) -> list[int]:
        return sorted({min(k * size, dim - size) for k in range(math.ceil(dim / size))})

    return [(top, left) for top in offsets(height) for left in offsets(width)]


def _find(tree: RawTree, archive: str) -> RawSource:
    """The archive (zip or unzipped folder) if present, else the whole raw folder (flat unzip)."""
    found = tree.find(archive)
    return found if found is not None else tree.whole()


def _members(source: RawSource, pattern: re.Pattern[str], what: str, exclude: re.Pattern[str] | None = None
             ) -> dict[str, str]:  # fmt: skip
    """Scene id → member name; a scene found twice is an error."""
    found: dict[str, str] = {}
    for hit, name in source.match(pattern):
        if exclude is not None and exclude.search(name):
            continue
        key = hit.group(1)
        if key in found:
            raise ValueError(f"{what} {key} found twice: {source.describe(found[key])} and {source.describe(name)}")
        found[key] = name
    return found


def _select(option: str, presets: dict[str, Sequence[str]], found: dict[str, str], what: str) -> list[str]:
    """Scenes to convert: a preset (missing scenes warned about) or an explicit list (missing = error)."""
    if option in presets:
        wanted = list(presets[option])
        absent = [w for w in wanted if w not in found]
        if absent:
            warnings.warn(
                f"{what}: {len(absent)} of the {len(wanted)} scenes of preset {option!r} are not in the "
                f"download and are left out: {', '.join(absent)}",
                stacklevel=3,
            )
    else:
        wanted = [w[4:] if w.lower().startswith("area") else w for w in parse_list(option, what)]
        absent = [w for w in wanted if w not in found]
        if absent:
            raise FileNotFoundError(f"{what}: scene(s) {', '.join(absent)} requested but not in the download")
    selected = [w for w in wanted if w in found]
    if not selected:
        raise FileNotFoundError(f"{what}: none of the requested scenes ({option}) is in the download")
    skipped = sorted(set(found) - set(selected))
    if skipped:
        logger.info("%s: %d scene(s) in the download not selected: %s", what, len(skipped), ", ".join(skipped))
    return selected


def _load_scene(image_src: RawSource, image_name: str, label_src: RawSource, label_name: str,
                bands: int, band_names: Sequence[str]) -> tuple[RasterData, np.ndarray]:  # fmt: skip
    image, rgb, _ = read_pair(image_src, image_name, label_src, label_name, bands=bands, band_names=band_names,
                              read_label=read_colour_label)  # fmt: skip
    return image, colours_to_index(rgb, ISPRS_COLOURS, unmatched=IGNORE_INDEX)


def _isprs_split(scene: str, train: Sequence[str], test: Sequence[str]) -> str:
    return "train" if scene in train else "test" if scene in test else "unlisted"


def prepare(
    raw: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    progress: bool = True,
    potsdam_product: str = "rgb",
    potsdam_labels: str = "noBoundary",
    potsdam_tiles: str = "all",
    vaihingen_labels: str = "eroded",
    vaihingen_areas: str = "all",
    tile_size: int = 512,
) -> PreparedIndex:
    """Convert the ISPRS Potsdam and Vaihingen downloads in ``raw`` into prepared tiles in ``out``.

    Both datasets' archives live in the one ``raw`` folder (any sub-folders). See the module
    docstring for layouts, bands, classes and the split.

    Raises:
        FileNotFoundError: an archive, or a scene named in an explicit list, is missing.
        ValueError: a scene without its label, a label of another size, an image with the wrong
            band count or dtype, a scene smaller than one tile (each naming the file), bad options,
            or ``potsdam_product`` / ``potsdam_labels`` / ``vaihingen_labels`` differing from a previous
            run into ``out`` (they change what a tile file holds).
    """
    check_choice(potsdam_product, "potsdam_product", tuple(POTSDAM_PRODUCTS))
    check_choice(potsdam_labels, "potsdam_labels", tuple(POTSDAM_LABELS))
    check_choice(vaihingen_labels, "vaihingen_labels", tuple(VAIHINGEN_LABELS))
    tile_size = int(tile_size)
    if tile_size <= 0:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    options = dict(potsdam_product=potsdam_product, potsdam_labels=potsdam_labels, potsdam_tiles=potsdam_tiles,
                   vaihingen_labels=vaihingen_labels, vaihingen_areas=vaihingen_areas, tile_size=tile_size)  # fmt: skip
    image_archive, image_pattern, potsdam_sensor_name, potsdam_bands = POTSDAM_PRODUCTS[potsdam_product]
    potsdam_sensor, vaihingen_sensor = get_sensor(potsdam_sensor_name), get_sensor("vaihingen")

    tree = RawTree(raw, out)
    # Tile names hold the scene and the window (so tile_size and the scene selections only decide
    # which files exist); the imagery product and the label sets decide what a file holds.
    tile_options = dict(potsdam_product=potsdam_product, potsdam_labels=potsdam_labels,
                        vaihingen_labels=vaihingen_labels)  # fmt: skip
    run = PrepareRun(BENCHMARK, out, progress=progress, raw=raw, tile_options=tile_options)
    with tree:
        # Pass 1: find and pair every scene of both datasets before writing anything.
        jobs: list[dict[str, Any]] = []
        for dataset in ("potsdam", "vaihingen"):
            if dataset == "potsdam":
                images_src = _find(tree, image_archive)
                label_archive, label_pattern = POTSDAM_LABELS[potsdam_labels]
                labels_src, exclude = _find(tree, label_archive), None
                presets = {"all": POTSDAM_TRAIN + POTSDAM_TEST, "train": POTSDAM_TRAIN, "test": POTSDAM_TEST}
                option, train, test = potsdam_tiles, POTSDAM_TRAIN, POTSDAM_TEST
                archive, pattern, sensor = image_archive, image_pattern, potsdam_sensor
            else:
                archive, pattern = VAIHINGEN_IMAGES
                images_src = _find(tree, archive)
                label_archive, label_pattern = VAIHINGEN_LABELS[vaihingen_labels]
                labels_src = _find(tree, label_archive)
                exclude = _NOT_VAIHINGEN_GT if vaihingen_labels == "full" else None
                presets = {"all": VAIHINGEN_TRAIN + VAIHINGEN_TEST, "train": VAIHINGEN_TRAIN, "test": VAIHINGEN_TEST}
                option, train, test, sensor = vaihingen_areas, VAIHINGEN_TRAIN, VAIHINGEN_TEST, vaihingen_sensor
            images = _members(images_src, pattern, f"{dataset} image")
            if not images:
                raise FileNotFoundError(f"{tree.raw}: no {dataset} images found (expected {archive} or its folder)")
            labels = _members(labels_src, label_pattern, f"{dataset} label", exclude)
            if not labels:
                option_name = "potsdam_labels" if dataset == "potsdam" else "vaihingen_labels"
                raise FileNotFoundError(
                    f"{tree.raw}: no {dataset} labels found (expected {label_archive} or its unzipped folder); "
                    f"option {option_name} chooses between {', '.join(POTSDAM_LABELS if dataset == 'potsdam' else VAIHINGEN_LABELS)}"
                )
            selected = _select(option, presets, images, f"{dataset} scenes")
            missing = [s for s in selected if s not in labels]
            if missing:
                shown = ", ".join(images_src.describe(images[s]) for s in missing[:5])
                raise ValueError(
                    f"missing label: {len(missing)} {dataset} scene(s) have no label in {label_archive} "
                    f"(or its folder): {shown}"
                )
            unused = sorted(set(labels) - set(images))
            if unused:
                logger.info("%s: labels without an image ignored: %s", dataset, ", ".join(unused))
            for scene in selected:
                jobs.append(dict(dataset=dataset, scene=scene, images_src=images_src, image=images[scene],
                                 labels_src=labels_src, label=labels[scene], sensor=sensor,
                                 isprs_split=_isprs_split(scene, train, test)))  # fmt: skip

        # Pass 2: tiles; a scene is read (and extracted) only if one of its tiles is missing.
        for job in jobs:
            images_src, labels_src, sensor = job["images_src"], job["labels_src"], job["sensor"]
            image_name, label_name = job["image"], job["label"]
            where = images_src.describe(image_name)
            _, height, width, _ = images_src.raster_shape(image_name)
            scene = LazyScene(
                lambda i=images_src, n=image_name, l=labels_src, m=label_name, s=sensor:  # noqa: E741
                _load_scene(i, n, l, m, s.num_bands, s.band_names),
                lambda i=images_src, n=image_name, l=labels_src, m=label_name: (i.release(n), l.release(m)),  # noqa: E741
            )
            prefix = job["scene"] if job["dataset"] == "potsdam" else f"area{job['scene']}"
            domain, side = job["dataset"], "source" if job["dataset"] == "potsdam" else "target"
            for top, left in clip_windows(height, width, tile_size, where):
                name = f"{prefix}_{left}_{top}_{left + tile_size}_{top + tile_size}"

                def make(scene: LazyScene = scene, top: int = top, left: int = left,
                         shape: tuple[int, int] = (height, width), where: str = where) -> TileArrays:  # fmt: skip
                    image, _ = scene.get()
                    if image.shape != shape:  # header and pixels disagree: never write a wrong tile
                        raise ValueError(f"{where}: read {image.shape} but the header said {shape}")
                    return scene.tile(top, left, tile_size, tile_size)

                run.add_tile(f"{domain}/{name}", make, split=side, domain=domain, sensor=sensor.name,  # type: ignore[arg-type]
                             attributes={"dataset": domain, "scene": prefix, "isprs_split": job["isprs_split"]},
                             band_names=sensor.band_names)  # fmt: skip
            scene.release()
        return run.finish(classes=CLASSES, palette=PALETTE,
                          sensors={potsdam_sensor.name: potsdam_sensor, vaihingen_sensor.name: vaihingen_sensor},
                          options=options)  # fmt: skip
