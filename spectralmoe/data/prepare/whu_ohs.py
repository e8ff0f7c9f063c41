"""WHU-OHS (Orbita hyperspectral) → prepared tiles, for the cross-region DG benchmark ``whu-ohs``.

Source:
    WHU-OHS, http://irsip.whu.edu.cn/resources/WHU_OHS_show.php; the dataset authors' code
    github.com/zjjerica/WHU-OHS-Pytorch. 42 OHS (Zhuhai-1) scenes over > 40 locations in China,
    10 m GSD, cut into 512×512 sub-images: tr 4822 / val 513 / ts 2460 (DATA.md §1).

Raw layout read (``raw`` is the ``WHU-OHS`` folder or any folder above it)::

    WHU-OHS/{tr,val,ts}/image/<P><k>_<nnnn>.tif     32-band GeoTIFF, reflectance × 10000 (int16/uint16)
    WHU-OHS/{tr,val,ts}/label/<P><k>_<nnnn>.tif     1-band uint8, 0 = unlabeled, 1..24 classes

    P = S (source scene) / T (target scene) / O (other scene), k = scene index, nnnn = sub-image.

Output (``spectralmoe.data.layout``): ``image/<raw split>/<stem>.tif`` (all 32 bands in file order,
dtype and values as stored: the model divides by ``value_scale`` 10000, sensor ``ohs``) and
``label/<raw split>/<stem>.png``. Sub-images are kept at their stored size (512², no re-tiling).
Every tile's ``domain`` is its scene ID (``S1``, ``T3``…); attributes: ``scene``, ``prefix``,
``raw_split`` (tr/val/ts), ``name``.

Bands: 32, ascending wavelength 0.466–0.940 µm (``spectralmoe.bands`` sensor ``ohs``).

Classes: SpectralMoE trains on 7 merged classes — Farmland, Forest, Grassland, Waterbody,
Built-up land, Unused land, Ocean — after merging the 24 raw classes (table
``splits/whu_ohs_merge_24to7_UNVERIFIED.txt``, overridable) and ``reduce_zero_label``
(raw 0 → 255 ignore, merged k → k−1).

Split (UNVERIFIED, DATA.md §1.4): by scene, never splitting a scene. Default: scenes with prefix
``S`` → source, ``T`` → target, others left out (``splits/whu_ohs_{source,target}_UNVERIFIED.txt``).

Citation:
    Li, J., Huang, X., Tu, L. "WHU-OHS: A benchmark dataset for large-scale Hersepctral [sic] Image
    classification." International Journal of Applied Earth Observation and Geoinformation 113
    (2022) 103022.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spectralmoe.bands import get_sensor
from spectralmoe.data import io
from spectralmoe.data.layout import IGNORE_INDEX, PreparedIndex
from spectralmoe.data.prepare import lists
from spectralmoe.data.prepare.common import PrepareRun, TileArrays, map_labels

logger = logging.getLogger(__name__)

BENCHMARK = "whu-ohs"
SENSOR = "ohs"
RAW_SPLITS: tuple[str, ...] = ("tr", "val", "ts")
IMAGE_SUFFIXES: tuple[str, ...] = (".tif", ".tiff")

RAW_CLASSES: tuple[str, ...] = (
    "Paddy field", "Dry farm", "Woodland", "Shrubbery", "Sparse woodland", "Other forest land",
    "High-covered grassland", "Medium-covered grassland", "Low-covered grassland", "River canal", "Lake",
    "Reservoir pond", "Beach land", "Shoal", "Urban built-up", "Rural settlement", "Other construction land",
    "Sand", "Gobi", "Saline-alkali soil", "Marshland", "Bare land", "Bare rock", "Ocean",
)  # fmt: skip
"""The 24 raw classes, raw ids 1..24 (raw 0 = unlabeled)."""

CLASSES: list[str] = ["Farmland", "Forest", "Grassland", "Waterbody", "Built-up land", "Unused land", "Ocean"]
PALETTE: list[tuple[int, int, int]] = [
    (0, 255, 197), (38, 115, 0), (85, 255, 0), (0, 92, 230), (115, 0, 0), (255, 255, 0), (0, 38, 115),
]  # fmt: skip
"""Colours of the 7 merged classes, as in the official ``whu_ohs_dataset.py`` METAINFO."""

DEFAULT_MERGE_TABLE = "whu_ohs_merge_24to7_UNVERIFIED.txt"
DEFAULT_SOURCE_SCENES = "whu_ohs_source_UNVERIFIED.txt"
DEFAULT_TARGET_SCENES = "whu_ohs_target_UNVERIFIED.txt"
LABEL_ENCODINGS: tuple[str, ...] = ("raw24", "merged")

_NAME = re.compile(r"^(?P<prefix>[A-Za-z]+)(?P<index>\d+)_(?P<number>\d+)$")


@dataclass(frozen=True)
class MergeTable:
    """A raw → merged class table: ``lookup[raw]`` is the merged id (1-based, 0 = ignore, -1 = invalid)."""

    lookup: np.ndarray
    classes: list[str]
    palette: list[tuple[int, int, int]]
    source: str


def load_merge_table(path: str | Path | None = None) -> MergeTable:
    """Read a merge-table file (default: the shipped UNVERIFIED 24→7 table)."""
    path = Path(path) if path is not None else lists.shipped(DEFAULT_MERGE_TABLE)
    lookup = np.full(256, -1, dtype=np.int16)
    lookup[0] = 0
    names: dict[int, str] = {}
    for row in lists.read_table(path):
        try:
            raw_id, merged_id = int(row[0]), int(row[1])
        except ValueError:
            raise ValueError(f"{path}: row {row} does not start with two integers (raw id, merged id)") from None
        if not 1 <= raw_id <= 255 or not 0 <= merged_id <= 254:
            raise ValueError(f"{path}: row {row}: raw id must be 1..255 and merged id 0..254")
        if lookup[raw_id] != -1:
            raise ValueError(f"{path}: raw id {raw_id} is listed twice")
        lookup[raw_id] = merged_id
        if len(row) > 2 and merged_id:
            names.setdefault(merged_id, " ".join(row[2:]))
    merged_ids = sorted({int(v) for v in lookup[lookup > 0]})
    if not merged_ids or merged_ids != list(range(1, merged_ids[-1] + 1)):
        raise ValueError(f"{path}: merged ids must be contiguous 1..K, got {merged_ids}")
    classes = [names.get(k, f"class {k}") for k in merged_ids]
    default_colour = dict(zip(CLASSES, PALETTE))
    palette = [default_colour.get(name, _fallback_colour(i)) for i, name in enumerate(classes)]
    return MergeTable(lookup, classes, palette, str(path))


def _fallback_colour(i: int) -> tuple[int, int, int]:
    return ((37 * i + 80) % 256, (91 * i + 40) % 256, (53 * i + 160) % 256)


def _label_lookup(table: MergeTable, encoding: str) -> np.ndarray:
    """256-entry table raw value → output index (0..K-1, 255 ignore, -1 invalid)."""
    lookup = np.full(256, -1, dtype=np.int16)
    if encoding == "raw24":
        merged = table.lookup
    else:
        merged = np.full(256, -1, dtype=np.int16)
        merged[: len(table.classes) + 1] = np.arange(len(table.classes) + 1)
    valid = merged >= 0
    lookup[valid] = np.where(merged[valid] == 0, IGNORE_INDEX, merged[valid] - 1)
    return lookup


@dataclass(frozen=True)
class _Item:
    raw_split: str
    stem: str
    scene: str
    prefix: str
    image: Path
    label: Path


def find_root(raw: Path) -> Path:
    """The folder holding ``tr``/``val``/``ts`` (``raw`` itself, ``raw/WHU-OHS`` or one level deeper)."""
    candidates = [raw, *sorted(p for p in raw.iterdir() if p.is_dir())] if raw.is_dir() else []
    candidates += [q for p in candidates[1:] for q in sorted(p.iterdir()) if q.is_dir()]
    for candidate in candidates:
        if any((candidate / s / "image").is_dir() for s in RAW_SPLITS):
            return candidate
    raise FileNotFoundError(
        f"{raw}: no WHU-OHS folder found (expected {{tr,val,ts}}/image/*.tif and {{tr,val,ts}}/label/*.tif "
        f"in it or in a sub-folder)"
    )


def scan(root: Path, raw_splits: tuple[str, ...]) -> list[_Item]:
    """Pair every image with its label; error on a missing label or an unparsable name."""
    items = []
    for raw_split in raw_splits:
        image_dir, label_dir = root / raw_split / "image", root / raw_split / "label"
        if not image_dir.is_dir():
            logger.warning("%s: no %s/image folder; skipped", root, raw_split)
            continue
        for image in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            match = _NAME.match(image.stem)
            if not match:
                raise ValueError(f"{image}: file name is not <prefix><scene>_<number> (e.g. S1_0007.tif)")
            label = next((label_dir / f"{image.stem}{s}" for s in IMAGE_SUFFIXES
                          if (label_dir / f"{image.stem}{s}").is_file()), None)  # fmt: skip
            if label is None:
                raise FileNotFoundError(f"{image}: missing label {label_dir / image.name}")
            scene = f"{match['prefix']}{int(match['index'])}"
            items.append(_Item(raw_split, image.stem, scene, match["prefix"], image, label))
    if not items:
        raise FileNotFoundError(f"{root}: no images in {', '.join(f'{s}/image' for s in raw_splits)}")
    return items


def _tile(item: _Item, lookup: np.ndarray, num_bands: int) -> TileArrays:
    image = io.read_raster(item.image)
    if image.num_bands != num_bands:
        raise ValueError(f"{item.image}: {image.num_bands} bands, but an OHS image has {num_bands}")
    raw_label = io.read_label(item.label)
    if raw_label.shape != image.shape:
        raise ValueError(f"{item.label}: label size {raw_label.shape} differs from image size {image.shape} "
                         f"({item.image})")  # fmt: skip
    label = map_labels(raw_label, lookup, str(item.label))
    return TileArrays(image.array, label, image.crs, image.transform if image.crs else None, image.nodata)


def prepare(
    raw: str | Path,
    out: str | Path,
    *,
    progress: bool = True,
    source_scenes: str | Path | None = None,
    target_scenes: str | Path | None = None,
    raw_splits: str | tuple[str, ...] = "tr,val,ts",
    label_encoding: str = "raw24",
    merge_table: str | Path | None = None,
) -> PreparedIndex:
    """Convert a WHU-OHS download into the prepared layout in ``out`` (see the module docstring).

    Args:
        raw: the ``WHU-OHS`` folder (or a folder containing it).
        out: empty folder, or one this benchmark already wrote into (resumes).
        progress: print progress to stderr.
        source_scenes, target_scenes: split-list files (scene IDs like ``S1`` or patterns like ``S*``);
            default the shipped UNVERIFIED ``S*`` / ``T*`` lists. Scenes in neither are left out; a
            scene in both is an error.
        raw_splits: raw split folders to read (``"tr,val,ts"``).
        label_encoding: ``"raw24"`` (24 raw classes, merged here) or ``"merged"`` (already 0..K).
        merge_table: merge-table file replacing the shipped UNVERIFIED 24→7 table.

    Raises:
        FileNotFoundError: no WHU-OHS tree, or an image without its label (names the image).
        ValueError: wrong band count, image/label size mismatch, label values outside the class
            table (each naming the file), a scene in both lists, or options differing from a
            previous run into ``out``.
    """
    raw, out = Path(raw), Path(out)
    if label_encoding not in LABEL_ENCODINGS:
        raise ValueError(f"label_encoding must be one of {LABEL_ENCODINGS}, got {label_encoding!r}")
    folders = tuple(s.strip() for s in raw_splits.split(",")) if isinstance(raw_splits, str) else tuple(raw_splits)
    table = load_merge_table(merge_table)
    lookup = _label_lookup(table, label_encoding)

    source_file = Path(source_scenes) if source_scenes else lists.shipped(DEFAULT_SOURCE_SCENES)
    target_file = Path(target_scenes) if target_scenes else lists.shipped(DEFAULT_TARGET_SCENES)
    source_patterns, target_patterns = lists.read_id_list(source_file), lists.read_id_list(target_file)

    items = scan(find_root(raw), folders)
    scenes = list(dict.fromkeys(item.scene for item in items))
    in_source = set(lists.select(scenes, source_patterns))
    in_target = set(lists.select(scenes, target_patterns))
    if in_source & in_target:
        raise ValueError(f"scenes {sorted(in_source & in_target)} are in both {source_file} and {target_file}")
    for name, patterns in ((source_file, source_patterns), (target_file, target_patterns)):
        missing = lists.unmatched_entries(scenes, patterns)
        if missing:
            logger.warning("%s lists scenes not in the raw data: %s", name, ", ".join(missing))
    left_out = [s for s in scenes if s not in in_source and s not in in_target]
    if left_out:
        logger.info("whu-ohs: scenes in neither split list, left out: %s", ", ".join(left_out))

    sensor = get_sensor(SENSOR)
    # Tiles keep the stored pixels; only the label mapping changes what a tile file holds.
    merge = {str(i): int(v) for i, v in enumerate(table.lookup) if v >= 0}
    run = PrepareRun(BENCHMARK, out, progress=progress, raw=raw,
                     tile_options={"label_encoding": label_encoding, "merge_lookup": merge})  # fmt: skip
    for item in items:
        if item.scene not in in_source and item.scene not in in_target:
            continue
        run.add_tile(
            f"{item.raw_split}/{item.stem}",
            lambda item=item: _tile(item, lookup, sensor.num_bands),
            split="source" if item.scene in in_source else "target",
            domain=item.scene,
            sensor=SENSOR,
            attributes={"scene": item.scene, "prefix": item.prefix, "raw_split": item.raw_split, "name": item.stem},
            band_names=sensor.band_names,
        )
    return run.finish(
        classes=table.classes,
        palette=table.palette,
        sensors={SENSOR: sensor},
        options={
            "source_scenes": str(source_file),
            "target_scenes": str(target_file),
            "split_unverified": source_scenes is None or target_scenes is None,
            "raw_splits": list(folders),
            "label_encoding": label_encoding,
            "merge_table": table.source,
            "left_out_scenes": left_out,
            "raw_classes": list(RAW_CLASSES),
        },
    )
