"""Five-Billion-Pixels (FBP) → prepared tiles, for the benchmarks ``fbp-cross-sensor`` and ``fbp-cross-region``.

Source:
    Five-Billion-Pixels, x-ytong.github.io/project/Five-Billion-Pixels.html (Google Drive), and its
    cross-sensor target set "C-megacities" (linked from github.com/x-ytong/DPA). 150 GF-2 scenes,
    4 m GSD, 24 classes; C-megacities: 22 images of five cities from GF-1 (8 m), Sentinel-2 (10 m)
    and PlanetScope (3 m), same colour table (DATA.md §2–§3).

Raw layout read (``raw`` holds both downloads, found by their folder names at any depth ≤ 3; or
pass ``fbp_dir`` / ``megacities_dir``)::

    <FBP>/Image__8bit_NirRGB/<scene>.tif             4-band uint8 NIR,R,G,B (CMYK TIFF), with black borders
    <FBP>/Annotation__index/<scene>_24label.png      uint8 indices 0..24 (Pillow mode P or L), 0 = unlabeled
    <FBP>/Annotation__color/<scene>_24label.tif      RGB colour version (used with source_labels='colour')
    <C-megacities>/Image__8bit_NirRGB/<name>.tif     4-band uint8 NIR,R,G,B
    <C-megacities>/label_dense__color/<name>_dense.tif   RGB colour labels (same table)

Conversion (following the official scripts remove_padding.py, cut_GID*.py, GID_target_process.py):

* GF-2 scenes: the black border is cropped by ``margins`` (left, right, top, bottom; default
  60, 40, 54, 54 px — the crop box is derived from the margins and the scene size), then cut into
  non-overlapping 512×512 tiles ``<scene>_rRRR_cCCC`` (1-based); right/bottom edge tiles are padded
  (image 0, label 255). A 7300×6908 scene gives 15 × 14 = 210 tiles.
* C-megacities images: colour labels → indices through the table below (colours not in it →
  ignored); a ``target_crop`` (1024) window is centred on the bounding box of labelled pixels
  (clamped to the image), cut into 512 tiles ``crop_<name>_rRRR_cCCC`` (4 per image). No resampling.
* Labels: ``reduce_zero_label`` (raw 0 → 255, raw k → k−1), stored as PNG.
* Images: the four stored bands in file order (NIR,R,G,B), uint8, never reordered.

Output paths: ``{image,label}/gf2/<scene>/<scene>_rRRR_cCCC`` and
``{image,label}/megacities/<sensor>/crop_<name>_rRRR_cCCC`` (independent of the split lists).

Splits:

* ``fbp-cross-sensor``: source = all GF-2 scenes (domain ``gf2``, attribute ``scene``); target =
  C-megacities (domain = sensor ``gf1``/``sentinel2``/``planetscope``; attributes ``city``, ``image``).
* ``fbp-cross-region``: GF-2 scenes only, source/target by scene lists. The official lists
  (~126 source / ~24 target scenes, geographically disjoint) are UNVERIFIED and not published:
  pass ``source_scenes`` / ``target_scenes``. Without them a deterministic, clearly-UNVERIFIED
  default is used (scene IDs ranked by SHA-256, the first ``target_fraction`` → target) — it is
  NOT geographically disjoint. Domain = the scene's region from ``scene_regions`` if given, else
  the scene ID.

Classes (24, after reduce_zero_label): see ``CLASSES`` / ``PALETTE`` (the FBP colour table).

Citation:
    Tong, X.-Y., Xia, G.-S., Zhu, X. X. "Enabling country-scale land cover mapping with meter-resolution
    satellite imagery." ISPRS Journal of Photogrammetry and Remote Sensing 196 (2023) 178–196.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from spectralmoe.bands import get_sensor
from spectralmoe.data import io
from spectralmoe.data.layout import IGNORE_INDEX, PreparedIndex
from spectralmoe.data.prepare import lists
from spectralmoe.data.prepare.common import PrepareRun, TileArrays, grid_windows, index_lookup, map_labels, pad_tile

logger = logging.getLogger(__name__)

BENCHMARK_CROSS_SENSOR = "fbp-cross-sensor"
BENCHMARK_CROSS_REGION = "fbp-cross-region"
BENCHMARKS: tuple[str, str] = (BENCHMARK_CROSS_SENSOR, BENCHMARK_CROSS_REGION)
SOURCE_SENSOR = "gf2"
TARGET_SENSORS: tuple[str, ...] = ("gf1", "sentinel2", "planetscope")
TILE = 512
DEFAULT_MARGINS: tuple[int, int, int, int] = (60, 40, 54, 54)
"""Black border of a raw GF-2 scene, (left, right, top, bottom) px — remove_padding.py; UNVERIFIED
that every scene has it (DATA.md §2.2)."""
_MARGINS_OPTION = ",".join(map(str, DEFAULT_MARGINS))  # the defaults as the options give them (text)
_TARGET_SENSORS_OPTION = ",".join(TARGET_SENSORS)
DEFAULT_TARGET_CROP = 1024
DEFAULT_TARGET_FRACTION = 0.16  # 24 of 150 scenes, the count implied by the official schedule (DATA.md §0.4)

IMAGE_DIR = "Image__8bit_NirRGB"
INDEX_LABEL_DIR = "Annotation__index"
COLOUR_LABEL_DIR = "Annotation__color"
TARGET_LABEL_DIR = "label_dense__color"
IMAGE_SUFFIXES: tuple[str, ...] = (".tif", ".tiff")

CLASSES: list[str] = [
    "industrial area", "paddy field", "irrigated field", "dry cropland", "garden land", "arbor forest",
    "shrub forest", "park", "natural meadow", "artificial meadow", "river", "urban residential", "lake", "pond",
    "fish pond", "snow", "bareland", "rural residential", "stadium", "square", "road", "overpass",
    "railway station", "airport",
]  # fmt: skip
PALETTE: list[tuple[int, int, int]] = [
    (200, 0, 0), (0, 200, 0), (150, 250, 0), (150, 200, 150), (200, 0, 200), (150, 0, 250), (150, 150, 250),
    (200, 150, 200), (250, 200, 0), (200, 200, 0), (0, 0, 200), (250, 0, 150), (0, 150, 200), (0, 200, 250),
    (150, 200, 250), (250, 250, 250), (200, 200, 200), (200, 150, 150), (250, 200, 150), (150, 150, 0),
    (250, 150, 150), (250, 150, 0), (250, 200, 250), (200, 150, 0),
]  # fmt: skip
COLOUR_TABLE: list[tuple[int, int, int]] = [(0, 0, 0), *PALETTE]
"""Raw FBP colour of raw index 0..24 (0 = unlabeled, black)."""

_LOOKUP = index_lookup(len(CLASSES))
"""Raw index → output class (reduce_zero_label); -1 = not in the FBP table."""

# City centres (lon, lat) for naming C-megacities images; GF-1/PlanetScope names do not all say the city.
CITY_CENTRES: dict[str, tuple[float, float]] = {
    "Beijing": (116.40, 39.90), "Guangzhou": (113.26, 23.13), "Wuhan": (114.30, 30.59),
    "Chengdu": (104.07, 30.57), "Shanghai": (121.47, 31.23),
}  # fmt: skip
CITY_RADIUS_DEG = 1.5
SENTINEL2_TILE_CITIES: dict[str, str] = {"T50TMK": "Beijing", "T49QGF": "Guangzhou"}  # DPA README
_SENSOR_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("gf1", re.compile(r"^GF1_")),
    ("sentinel2", re.compile(r"^T\d{2}[A-Z]{3}_\d{8}T\d{6}")),
    ("planetscope", re.compile(r"_3B_Analytic")),
)
_LONLAT_IN_NAME = re.compile(r"_E(?P<lon>\d+(?:\.\d+)?)_N(?P<lat>\d+(?:\.\d+)?)_")

# ----------------------------------------------------------------------------------------- helpers
def _check_nir_rgb(path: Path, bands: int, dtype: str) -> None:
    if bands != 4:
        raise ValueError(f"{path}: {bands} bands, but an FBP 8-bit image has 4 (NIR,R,G,B)")
    if dtype != "uint8":
        raise ValueError(f"{path}: dtype {dtype}, but an FBP 8-bit image is uint8 (is this the 16-bit product?)")


def parse_margins(margins: str | Sequence[int]) -> tuple[int, int, int, int]:
    """``"60,40,54,54"`` or a 4-sequence → (left, right, top, bottom), each ≥ 0."""
    values = [v for v in margins.replace(" ", "").split(",") if v] if isinstance(margins, str) else list(margins)
    try:
        parsed = tuple(int(v) for v in values)
    except ValueError:
        raise ValueError(f"margins must be four integers 'left,right,top,bottom', got {margins!r}") from None
    if len(parsed) != 4 or min(parsed) < 0:
        raise ValueError(f"margins must be four integers ≥ 0 'left,right,top,bottom', got {margins!r}")
    return parsed  # type: ignore[return-value]


def crop_box(height: int, width: int, margins: tuple[int, int, int, int], source: str) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the scene without its border."""
    left, right, top, bottom = margins
    crop_h, crop_w = height - top - bottom, width - left - right
    if crop_h <= 0 or crop_w <= 0:
        raise ValueError(f"{source}: margins {margins} (left,right,top,bottom) leave nothing of a "
                         f"{width}×{height} scene")
    return top, left, crop_h, crop_w


def _tile_name(prefix: str, row: int, col: int) -> str:
    return f"{prefix}_r{row + 1:03d}_c{col + 1:03d}"


def _find_dataset(raw: Path, required: tuple[str, str], what: str) -> Path:
    """The folder under ``raw`` (depth ≤ 3) holding both ``required`` sub-folders."""
    level, found = [raw], []
    for _ in range(4):
        found = [d for d in level if all((d / r).is_dir() for r in required)]
        if found:
            break
        level = [c for d in level for c in sorted(d.iterdir()) if c.is_dir() and not c.name.startswith(".")]
    if not found:
        raise FileNotFoundError(f"{raw}: no {what} folder (one holding {required[0]}/ and {required[1]}/) "
                                f"within three levels")  # fmt: skip
    if len(found) > 1:
        raise ValueError(f"{raw}: several {what} folders: {', '.join(map(str, found))}; pass the one to use")
    return found[0]


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _first_file(candidates: Iterable[Path]) -> Path | None:
    return next((c for c in candidates if c.is_file()), None)


def _bad_colours(rgb: np.ndarray, mask: np.ndarray, limit: int = 5) -> list[tuple[int, ...]]:
    colours = np.unique(rgb[mask].reshape(-1, 3), axis=0)
    return [tuple(int(v) for v in c) for c in colours[:limit]]


# ------------------------------------------------------------------------------------- GF-2 scenes
@dataclass(frozen=True)
class Scene:
    """One raw GF-2 scene: image and label paths; ``label_kind`` 'index' or 'colour'."""

    name: str
    image: Path
    label: Path
    label_kind: str


def scan_scenes(fbp: Path, source_labels: str = "index") -> list[Scene]:
    """Every scene of ``<FBP>/Image__8bit_NirRGB`` with its label; a missing label is an error."""
    if source_labels not in ("index", "colour"):
        raise ValueError(f"source_labels must be 'index' or 'colour', got {source_labels!r}")
    scenes = []
    for image in _images(fbp / IMAGE_DIR):
        name = image.stem
        if source_labels == "index":
            folder = fbp / INDEX_LABEL_DIR
            candidates = [folder / f"{name}_24label.png", folder / f"{name}.png"]
        else:
            folder = fbp / COLOUR_LABEL_DIR
            candidates = [folder / f"{name}_24label{s}" for s in (".tif", ".tiff", ".png")]
        label = _first_file(candidates)
        if label is None:
            raise FileNotFoundError(f"{image}: missing label {candidates[0]}")
        scenes.append(Scene(name, image, label, source_labels))
    if not scenes:
        raise FileNotFoundError(f"{fbp / IMAGE_DIR}: no scene images (*.tif)")
    return scenes


def _read_scene_label(scene: Scene, shape: tuple[int, int]) -> np.ndarray:
    """Raw indices 0..24 ``[H, W]`` of a scene, checked against the image size and the class table."""
    if scene.label_kind == "index":
        raw = io.read_label(scene.label)
    else:
        rgb = io.read_colour_label(scene.label)
        raw = io.colours_to_index(rgb, COLOUR_TABLE, unmatched=255)
        if (raw == 255).any():
            bad = _bad_colours(rgb, raw == 255)
            raise ValueError(f"{scene.label}: colours {bad} are not in the FBP colour table")
    if raw.shape != shape:
        raise ValueError(f"{scene.label}: label size {raw.shape[1]}×{raw.shape[0]} (W×H) differs from image size "
                         f"{shape[1]}×{shape[0]} ({scene.image})")  # fmt: skip
    return raw


class _SceneTiler:
    """Lazily reads one GF-2 scene (its label once, the image one 512-row strip at a time)."""

    def __init__(self, scene: Scene, margins: tuple[int, int, int, int]) -> None:
        self.scene = scene
        bands, height, width, dtype = io.raster_shape(scene.image)
        _check_nir_rgb(scene.image, bands, dtype)
        self.shape = (height, width)
        self.top, self.left, self.height, self.width = crop_box(height, width, margins, str(scene.image))
        self.margins = margins
        self._label: np.ndarray | None = None
        self._strip: tuple[int, io.RasterData] | None = None

    def windows(self) -> list:
        return list(grid_windows(self.height, self.width, TILE))

    def _load_label(self) -> np.ndarray:
        if self._label is None:
            raw = _read_scene_label(self.scene, self.shape)
            t, l, h, w = self.top, self.left, self.height, self.width
            border = raw.copy()
            border[t : t + h, l : l + w] = 0
            if border.any():
                logger.warning("%s: %d labelled pixels lie in the margins %s (left,right,top,bottom) that are "
                               "cropped away; do this scene's margins differ?", self.scene.label,
                               int(np.count_nonzero(border)), self.margins)  # fmt: skip
            self._label = map_labels(np.ascontiguousarray(raw[t : t + h, l : l + w]), _LOOKUP, str(self.scene.label))
        return self._label

    def tile(self, window: Any) -> TileArrays:
        label = self._load_label()  # validates the whole scene's labels before the first tile is written
        if self._strip is None or self._strip[0] != window.row:
            rows = (self.top + window.top, self.left, window.height, self.width)
            strip = io.read_raster(self.scene.image, window=rows)
            _check_nir_rgb(self.scene.image, strip.num_bands, strip.array.dtype.name)
            self._strip = (window.row, strip)
        strip = self._strip[1]
        image = strip.array[:, :, window.left : window.left + window.width]
        tile_label = label[window.top : window.top + window.height, window.left : window.left + window.width]
        transform = None
        if strip.crs is not None and strip.transform is not None:
            from rasterio.transform import Affine

            transform = strip.transform @ Affine.translation(window.left, 0)
        return TileArrays(pad_tile(image, TILE, 0), pad_tile(tile_label, TILE, IGNORE_INDEX), strip.crs, transform)


def _add_scene(
    run: PrepareRun,
    scene: Scene,
    margins: tuple[int, int, int, int],
    *,
    split: str,
    domain: str,
    attributes: dict[str, str],
) -> int:
    tiler = _SceneTiler(scene, margins)
    sensor = get_sensor(SOURCE_SENSOR)
    windows = tiler.windows()
    for window in windows:
        run.add_tile(
            f"gf2/{scene.name}/{_tile_name(scene.name, window.row, window.col)}",
            lambda window=window: tiler.tile(window),
            split=split,  # type: ignore[arg-type]
            domain=domain,
            sensor=SOURCE_SENSOR,
            attributes={**attributes, "row": str(window.row + 1), "col": str(window.col + 1)},
            band_names=sensor.band_names,
        )
    return len(windows)


# ---------------------------------------------------------------------------------- C-megacities
@dataclass(frozen=True)
class TargetImage:
    """One C-megacities image: paths, sensor and city."""

    name: str
    image: Path
    label: Path
    sensor: str
    city: str


def sensor_of(name: str) -> str | None:
    """Sensor of a C-megacities image from its file name (``None`` when no pattern matches)."""
    return next((sensor for sensor, pattern in _SENSOR_PATTERNS if pattern.search(name)), None)


def _nearest_city(lon: float, lat: float) -> str | None:
    city, (c_lon, c_lat) = min(CITY_CENTRES.items(), key=lambda kv: math.hypot(kv[1][0] - lon, kv[1][1] - lat))
    return city if math.hypot(c_lon - lon, c_lat - lat) <= CITY_RADIUS_DEG else None


def _georeferenced_lonlat(path: Path) -> tuple[float, float] | None:
    corner = io.read_raster(path, window=(0, 0, 1, 1))
    if corner.crs is None or corner.transform is None:
        return None
    from rasterio.warp import transform as warp

    x, y = corner.transform @ (0.5, 0.5)
    lons, lats = warp(corner.crs, "EPSG:4326", [x], [y])
    return float(lons[0]), float(lats[0])


def city_of(name: str, path: Path) -> str:
    """City of a C-megacities image: Sentinel-2 tile ID, ``_E<lon>_N<lat>_`` in the name, or georeference."""
    tile = name.split("_", 1)[0]
    if tile in SENTINEL2_TILE_CITIES:
        return SENTINEL2_TILE_CITIES[tile]
    match = _LONLAT_IN_NAME.search(name)
    if match:
        city = _nearest_city(float(match["lon"]), float(match["lat"]))
        if city:
            return city
    lonlat = _georeferenced_lonlat(path)
    if lonlat is not None:
        city = _nearest_city(*lonlat)
        if city:
            return city
    logger.warning("%s: city unknown (no known tile ID, coordinates in the name or georeference near a known "
                   "city); pass target_meta to name it", path)  # fmt: skip
    return "unknown"


def scan_megacities(root: Path, meta: dict[str, tuple[str, str | None]] | None = None) -> list[TargetImage]:
    """Every C-megacities image with its colour label, sensor and city; a missing label is an error."""
    meta = meta or {}
    items = []
    for image in _images(root / IMAGE_DIR):
        name = image.stem
        label = _first_file(root / TARGET_LABEL_DIR / f"{name}_dense{s}" for s in (".tif", ".tiff", ".png"))
        if label is None:
            raise FileNotFoundError(f"{image}: missing label {root / TARGET_LABEL_DIR / (name + '_dense.tif')}")
        sensor, city = meta.get(name, (None, None))
        sensor = sensor or sensor_of(name)
        if sensor is None:
            raise ValueError(f"{image}: cannot tell the sensor from the file name; list it in target_meta "
                             f"('<name> <sensor> [city]')")  # fmt: skip
        if sensor not in TARGET_SENSORS:
            raise ValueError(f"{image}: sensor {sensor!r} is not one of {TARGET_SENSORS}")
        items.append(TargetImage(name, image, label, sensor, city or city_of(name, image)))
    if not items:
        raise FileNotFoundError(f"{root / IMAGE_DIR}: no images (*.tif)")
    return items


def read_target_meta(path: str | Path) -> dict[str, tuple[str, str | None]]:
    """``target_meta`` file: rows ``<image name (stem)> <sensor> [city]``."""
    return {row[0]: (row[1], row[2] if len(row) > 2 else None) for row in lists.read_table(path)}


def centred_window(labelled: np.ndarray, size: int, source: str) -> tuple[int, int, int, int]:
    """``(top, left, height, width)``: a ``size`` window centred on the bounding box of ``labelled``,
    clamped to the image (the whole axis when the image is smaller); ``size`` 0 = whole image."""
    height, width = labelled.shape
    if size <= 0:
        return 0, 0, height, width
    rows, cols = np.flatnonzero(labelled.any(axis=1)), np.flatnonzero(labelled.any(axis=0))
    if not rows.size:
        raise ValueError(f"{source}: no labelled pixel (every colour is black or not in the FBP table)")
    centre_y, centre_x = (rows[0] + rows[-1] + 1) // 2, (cols[0] + cols[-1] + 1) // 2
    win_h, win_w = min(size, height), min(size, width)
    top = int(np.clip(centre_y - win_h // 2, 0, height - win_h))
    left = int(np.clip(centre_x - win_w // 2, 0, width - win_w))
    return top, left, win_h, win_w


class _TargetTiler:
    """Lazily reads one C-megacities image: colour label → indices, centred crop, 512 tiles."""

    def __init__(self, item: TargetImage, crop: int) -> None:
        self.item = item
        bands, height, width, dtype = io.raster_shape(item.image)
        _check_nir_rgb(item.image, bands, dtype)
        self.shape, self.crop = (height, width), crop
        win_h, win_w = (min(crop, height), min(crop, width)) if crop > 0 else (height, width)
        self.grid = list(grid_windows(win_h, win_w, TILE))
        self._data: tuple[io.RasterData, np.ndarray] | None = None

    def _load(self) -> tuple[io.RasterData, np.ndarray]:
        if self._data is None:
            rgb = io.read_colour_label(self.item.label)
            if rgb.shape[:2] != self.shape:
                raise ValueError(f"{self.item.label}: label size {rgb.shape[1]}×{rgb.shape[0]} (W×H) differs from "
                                 f"image size {self.shape[1]}×{self.shape[0]} ({self.item.image})")  # fmt: skip
            raw = io.colours_to_index(rgb, COLOUR_TABLE, unmatched=0)  # off-table colours → 0 → ignored
            top, left, h, w = centred_window(raw > 0, self.crop, str(self.item.label))
            label = map_labels(np.ascontiguousarray(raw[top : top + h, left : left + w]), _LOOKUP, str(self.item.label))
            image = io.read_raster(self.item.image, window=(top, left, h, w))
            _check_nir_rgb(self.item.image, image.num_bands, image.array.dtype.name)
            self._data = (image, label)
        return self._data

    def tile(self, window: Any) -> TileArrays:
        image, label = self._load()
        rows = slice(window.top, window.top + window.height)
        cols = slice(window.left, window.left + window.width)
        transform = None
        if image.crs is not None and image.transform is not None:
            from rasterio.transform import Affine

            transform = image.transform @ Affine.translation(window.left, window.top)
        return TileArrays(pad_tile(image.array[:, rows, cols], TILE, 0),
                          pad_tile(label[rows, cols], TILE, IGNORE_INDEX), image.crs, transform)


# ---------------------------------------------------------------------------------------- splits
def default_region_split(scenes: Sequence[str], target_fraction: float) -> tuple[list[str], list[str]]:
    """UNVERIFIED placeholder split: scene IDs ranked by SHA-256, the first ``target_fraction`` → target
    (at least one scene each side when there are ≥ 2). Deterministic, but NOT geographic."""
    if not 0 < target_fraction < 1:
        raise ValueError(f"target_fraction must be in (0, 1), got {target_fraction}")
    ranked = sorted(scenes, key=lambda s: hashlib.sha256(s.encode()).hexdigest())
    n_target = min(max(1, round(target_fraction * len(ranked))), max(len(ranked) - 1, 0))
    target = set(ranked[:n_target])
    return [s for s in scenes if s not in target], [s for s in scenes if s in target]


def _listed(names: Sequence[str], file: str | Path, what: str) -> list[str]:
    patterns = lists.read_id_list(file)
    missing = lists.unmatched_entries(names, patterns)
    if missing:
        raise ValueError(f"{file}: {what} scenes not found in the raw data: {', '.join(missing[:10])}"
                         f"{' …' if len(missing) > 10 else ''}")  # fmt: skip
    return lists.select(names, patterns)


def resolve_region_split(
    names: Sequence[str],
    source_scenes: str | Path | None,
    target_scenes: str | Path | None,
    target_fraction: float,
) -> tuple[list[str], list[str], bool]:
    """(source, target, unverified default used)."""
    if source_scenes is None and target_scenes is None:
        source, target = default_region_split(names, target_fraction)
        return source, target, True
    target = _listed(names, target_scenes, "target") if target_scenes else []
    if source_scenes:
        source = _listed(names, source_scenes, "source")
    else:
        source = [n for n in names if n not in set(target)]
    if not target_scenes:
        target = [n for n in names if n not in set(source)]
    both = set(source) & set(target)
    if both:
        raise ValueError(f"scenes {sorted(both)} are in both the source and the target list")
    return source, target, False


# ---------------------------------------------------------------------------------------- prepare
def _fbp_root(raw: Path, fbp_dir: str | Path | None, source_labels: str) -> Path:
    if fbp_dir:
        return Path(fbp_dir)
    labels = COLOUR_LABEL_DIR if source_labels == "colour" else INDEX_LABEL_DIR
    return _find_dataset(raw, (IMAGE_DIR, labels), "Five-Billion-Pixels")


def prepare_cross_sensor(
    raw: str | Path,
    out: str | Path,
    *,
    progress: bool = True,
    fbp_dir: str | Path | None = None,
    megacities_dir: str | Path | None = None,
    margins: str | Sequence[int] = _MARGINS_OPTION,
    source_labels: str = "index",
    source_scenes: str | Path | None = None,
    target_crop: int = DEFAULT_TARGET_CROP,
    target_sensors: str | Sequence[str] = _TARGET_SENSORS_OPTION,
    target_meta: str | Path | None = None,
) -> PreparedIndex:
    """FBP cross-sensor: GF-2 (all scenes) → GF-1 / Sentinel-2 / PlanetScope (C-megacities).

    Args:
        raw: folder holding the FBP and C-megacities downloads (unpacked).
        out: empty folder, or one this benchmark already wrote into (resumes).
        progress: print progress to stderr.
        fbp_dir, megacities_dir: the two dataset folders, when not found under ``raw``.
        margins: black border ``left,right,top,bottom`` of every raw GF-2 scene (UNVERIFIED default 60,40,54,54).
        source_labels: ``"index"`` (Annotation__index PNG) or ``"colour"`` (Annotation__color TIFF).
        source_scenes: split-list file restricting the GF-2 scenes (default: all 150).
        target_crop: window side centred on the labelled area (1024, as GID_target_process.py); 0 = whole image.
        target_sensors: sensors of C-megacities to include (default all three; whether all 22 images are
            used officially is UNVERIFIED).
        target_meta: rows ``<name> <sensor> [city]`` overriding what names/georeference tell.

    Raises:
        FileNotFoundError: a dataset folder or a label is missing (naming the image).
        ValueError: band count/dtype, image/label size, label values or colours outside the FBP table
            (naming the file), unknown sensor, or options differing from a previous run into ``out``.
    """
    raw, out = Path(raw), Path(out)
    margin_box = parse_margins(margins)
    sensors_wanted = tuple(s.strip() for s in target_sensors.split(",")) if isinstance(target_sensors, str) \
        else tuple(target_sensors)  # fmt: skip
    unknown = [s for s in sensors_wanted if s not in TARGET_SENSORS]
    if unknown:
        raise ValueError(f"target_sensors: unknown sensors {unknown}; choose from {TARGET_SENSORS}")
    if int(target_crop) < 0:
        raise ValueError(f"target_crop must be ≥ 0, got {target_crop}")
    fbp = _fbp_root(raw, fbp_dir, source_labels)
    mega = Path(megacities_dir) if megacities_dir else _find_dataset(raw, (IMAGE_DIR, TARGET_LABEL_DIR), "C-megacities")
    scenes = scan_scenes(fbp, source_labels)
    if source_scenes:
        wanted = set(_listed([s.name for s in scenes], source_scenes, "source"))
        scenes = [s for s in scenes if s.name in wanted]
    targets = [t for t in scan_megacities(mega, read_target_meta(target_meta) if target_meta else None)
               if t.sensor in sensors_wanted]  # fmt: skip
    if not targets:
        raise FileNotFoundError(f"{mega}: no C-megacities image of sensors {sensors_wanted}")

    run = PrepareRun(BENCHMARK_CROSS_SENSOR, out, progress=progress, raw=raw, tile_options={
        "margins": list(margin_box), "source_labels": source_labels, "target_crop": int(target_crop), "tile": TILE,
    })  # fmt: skip
    for scene in scenes:
        _add_scene(run, scene, margin_box, split="source", domain=SOURCE_SENSOR, attributes={"scene": scene.name})
    for item in targets:
        tiler = _TargetTiler(item, int(target_crop))
        band_names = get_sensor(item.sensor).band_names
        for window in tiler.grid:
            run.add_tile(
                f"megacities/{item.sensor}/{_tile_name('crop_' + item.name, window.row, window.col)}",
                lambda window=window, tiler=tiler: tiler.tile(window),
                split="target",
                domain=item.sensor,
                sensor=item.sensor,
                attributes={"city": item.city, "image": item.name, "row": str(window.row + 1),
                            "col": str(window.col + 1)},  # fmt: skip
                band_names=band_names,
            )
    return run.finish(
        classes=CLASSES,
        palette=PALETTE,
        sensors={name: get_sensor(name) for name in (SOURCE_SENSOR, *sensors_wanted)},
        options={
            "margins": list(margin_box), "margins_unverified": True, "source_labels": source_labels,
            "source_scenes": str(source_scenes) if source_scenes else "all", "target_crop": int(target_crop),
            "target_sensors": list(sensors_wanted), "target_meta": str(target_meta) if target_meta else None,
            "off_table_colours": "ignored (255)",
        },
    )  # fmt: skip


def prepare_cross_region(
    raw: str | Path,
    out: str | Path,
    *,
    progress: bool = True,
    fbp_dir: str | Path | None = None,
    margins: str | Sequence[int] = _MARGINS_OPTION,
    source_labels: str = "index",
    source_scenes: str | Path | None = None,
    target_scenes: str | Path | None = None,
    target_fraction: float = DEFAULT_TARGET_FRACTION,
    scene_regions: str | Path | None = None,
) -> PreparedIndex:
    """FBP cross-region: GF-2 scenes split into source and target regions.

    Args:
        raw: folder holding the FBP download (unpacked).
        out: empty folder, or one this benchmark already wrote into (resumes).
        progress: print progress to stderr.
        fbp_dir: the FBP folder, when not found under ``raw``.
        margins: black border ``left,right,top,bottom`` (UNVERIFIED default 60,40,54,54).
        source_labels: ``"index"`` or ``"colour"``.
        source_scenes, target_scenes: split-list files. With one of them, the other side is every
            remaining scene; with both, unlisted scenes are left out; with neither, the UNVERIFIED
            SHA-256 placeholder split (``target_fraction``) is used and a warning is logged.
        target_fraction: fraction of target scenes for the placeholder split (0.16 ≈ 24/150).
        scene_regions: rows ``<scene> <region>``; region = domain (default: scene ID).

    Raises:
        as ``prepare_cross_sensor``; also a listed scene that is not in the raw data.
    """
    raw, out = Path(raw), Path(out)
    margin_box = parse_margins(margins)
    scenes = scan_scenes(_fbp_root(raw, fbp_dir, source_labels), source_labels)
    names = [s.name for s in scenes]
    source, target, unverified = resolve_region_split(names, source_scenes, target_scenes, float(target_fraction))
    if unverified:
        logger.warning("fbp-cross-region: no scene lists given; using the UNVERIFIED placeholder split "
                       "(SHA-256 ranking, %d target scenes), which is not geographically disjoint. Pass "
                       "source_scenes/target_scenes to reproduce the paper.", len(target))  # fmt: skip
    regions = {row[0]: " ".join(row[1:]) for row in lists.read_table(scene_regions)} if scene_regions else {}
    membership = {**{n: "source" for n in source}, **{n: "target" for n in target}}
    left_out = [n for n in names if n not in membership]

    run = PrepareRun(BENCHMARK_CROSS_REGION, out, progress=progress, raw=raw, tile_options={
        "margins": list(margin_box), "source_labels": source_labels, "tile": TILE,
    })  # fmt: skip
    for scene in scenes:
        if scene.name not in membership:
            continue
        attributes = {"scene": scene.name}
        if scene.name in regions:
            attributes["region"] = regions[scene.name]
        _add_scene(run, scene, margin_box, split=membership[scene.name],
                   domain=regions.get(scene.name, scene.name), attributes=attributes)  # fmt: skip
    return run.finish(
        classes=CLASSES,
        palette=PALETTE,
        sensors={SOURCE_SENSOR: get_sensor(SOURCE_SENSOR)},
        options={
            "margins": list(margin_box), "margins_unverified": True, "source_labels": source_labels,
            "split": "UNVERIFIED placeholder: SHA-256 ranking" if unverified else "scene lists",
            "split_unverified": unverified, "target_fraction": float(target_fraction) if unverified else None,
            "source_scenes": str(source_scenes) if source_scenes else None,
            "target_scenes": str(target_scenes) if target_scenes else None,
            "scene_regions": str(scene_regions) if scene_regions else None, "left_out_scenes": left_out,
        },
    )  # fmt: skip
