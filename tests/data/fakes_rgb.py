"""Minimal faithful fakes of the raw LoveDA, ISPRS Potsdam / Vaihingen and OpenEarthMap downloads.

Each ``write_*`` function writes the layout of DATA.md §5.6 / §6.6 / §7.6 (exact archive and file
names) into a folder, as zip archives (default) or already unzipped, and returns what it wrote as
``FakeScene`` records so tests can compare prepared tiles with the truth:

* images have per-band values in disjoint ranges (band 0 highest … band 2 lowest, e.g. Potsdam
  R 150–249, G 60–139, B 10–49; Vaihingen NIR 180–239 > R 90–149 > G 20–69), varying with x, y
  and the scene, so any band reordering, transposition or wrong window is caught;
* ``label`` is the label a correct converter must produce (indices 0..K−1, 255 = ignore),
  ``raw_label`` what is on disk (index map, or ``[H, W, 3]`` colours for ISPRS).
"""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from PIL import Image

ISPRS_COLOURS = np.array(
    [(255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)], dtype=np.uint8
)
BOUNDARY = (0, 0, 0)
OFF_TABLE = ((254, 0, 0), (0, 0, 254), (255, 255, 254))


@dataclass
class FakeScene:
    """One raw image + label pair: what is on disk and the label a converter must produce."""

    image: np.ndarray  # [C, H, W] uint8, file band order
    raw_label: np.ndarray  # [H, W] indices or [H, W, 3] colours, as written
    label: np.ndarray  # [H, W] uint8 expected prepared label (255 = ignore)
    transform: Affine | None = None
    crs: str | None = None


# ------------------------------------------------------------------------------------------ pixels
def banded_image(height: int, width: int, ranges: tuple[tuple[int, int], ...], seed: int = 0) -> np.ndarray:
    """``[C, H, W]`` uint8; band ``k`` lies in ``[lo_k, lo_k + span_k)``, and varies with x (band 0),
    y (band 1) and x + y (band 2+), shifted by ``seed``."""
    y, x = np.mgrid[0:height, 0:width]
    drivers = [x, y] + [x + y] * max(0, len(ranges) - 2)
    bands = [lo + (driver + 7 * seed) % span for (lo, span), driver in zip(ranges, drivers)]
    return np.stack(bands).astype(np.uint8)


def index_pattern(height: int, width: int, values: int, seed: int = 0, cell: int = 8) -> np.ndarray:
    """``[H, W]`` uint8 blocks cycling through ``0..values-1`` (every value present for ≥ values cells)."""
    y, x = np.mgrid[0:height, 0:width]
    return ((x // cell + 3 * (y // cell) + seed) % values).astype(np.uint8)


def isprs_colour_label(height: int, width: int, seed: int = 0, eroded: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(colours [H, W, 3], expected indices [H, W])``: all six class colours, plus (eroded) black
    boundary lines and a few off-table colours that a converter must map to 255."""
    y, x = np.mgrid[0:height, 0:width]
    index = ((x // 37 + 2 * (y // 41) + seed) % 6).astype(np.uint8)
    colours = ISPRS_COLOURS[index]
    expected = index.copy()
    if eroded:
        boundary = (x % 97 == 3) | (y % 89 == 5)
        colours[boundary] = BOUNDARY
        expected[boundary] = 255
    for k, colour in enumerate(OFF_TABLE):  # small off-table patches at known places
        top, left = 10 + 20 * k, 20 + 30 * k
        colours[top : top + 3, left : left + 3] = colour
        expected[top : top + 3, left : left + 3] = 255
    return colours, expected


def reduce_zero(raw: np.ndarray) -> np.ndarray:
    """The expected mapping of index labels: 0 → 255, v → v − 1."""
    return np.where(raw == 0, 255, raw.astype(np.int16) - 1).astype(np.uint8)


# ------------------------------------------------------------------------------------------ writers
def write_tiff(path: Path, array: np.ndarray, *, rgb: bool = False, crs: str | None = None,
               transform: Affine | None = None) -> None:  # fmt: skip
    """``[C, H, W]`` (or ``[H, W]``) uint8 GeoTIFF; ``rgb`` = photometric RGB, pixel-interleaved."""
    array = array[None] if array.ndim == 2 else array
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", height=array.shape[1], width=array.shape[2], count=array.shape[0],
                   dtype=array.dtype.name, interleave="pixel")  # fmt: skip
    if rgb:
        profile["photometric"] = "RGB"
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(path, "w", **profile) as dst:
            dst.write(array)


def write_png(path: Path, array: np.ndarray) -> None:
    """``[3, H, W]`` → RGB PNG, ``[H, W]`` → mode L PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.transpose(1, 2, 0) if array.ndim == 3 else array).save(path)


def zip_folder(folder: Path, archive: Path, *, keep: bool = False) -> Path:
    """Zip ``folder``'s contents (member names relative to ``folder``) into ``archive``."""
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    if not keep:
        shutil.rmtree(folder)
    return archive


# ------------------------------------------------------------------------------------------ LoveDA
LOVEDA_STEMS = {  # (split, scene) → stems; Test has images only
    ("Train", "Rural"): (0, 1), ("Train", "Urban"): (2,), ("Val", "Rural"): (3,), ("Val", "Urban"): (4, 5),
    ("Test", "Rural"): (6,), ("Test", "Urban"): (7,),
}  # fmt: skip
RGB_RANGES = ((150, 100), (60, 80), (10, 40))


def write_loveda(root: Path, *, size: int = 64, zipped: bool = True) -> dict[tuple[str, str, int], FakeScene]:
    """``Train.zip``, ``Val.zip``, ``Test.zip`` (each with top folder ``Train/`` …) or those folders."""
    root = Path(root)
    scenes: dict[tuple[str, str, int], FakeScene] = {}
    for split in ("Train", "Val", "Test"):
        staging = root / f".{split}-staging" if zipped else root
        for (s, scene), stems in LOVEDA_STEMS.items():
            if s != split:
                continue
            for stem in stems:
                image = banded_image(size, size, RGB_RANGES, seed=stem)
                write_png(staging / split / scene / "images_png" / f"{stem}.png", image)
                raw = index_pattern(size, size, 8, seed=stem)
                if split != "Test":
                    write_png(staging / split / scene / "masks_png" / f"{stem}.png", raw)
                scenes[(split, scene, stem)] = FakeScene(image, raw, reduce_zero(raw))
        if zipped:
            zip_folder(staging, root / f"{split}.zip")
    return scenes


# ------------------------------------------------------------------------------------------ ISPRS
POTSDAM_CRS = "EPSG:32633"
POTSDAM_ORIGIN = (366000.0, 5808000.0)


def write_potsdam(
    root: Path,
    *,
    size: int = 1100,
    scenes: tuple[str, ...] = ("2_10", "5_15"),
    product: str = "rgb",
    labels: str = "noBoundary",
    zipped: bool = True,
) -> dict[str, FakeScene]:
    """``2_Ortho_RGB.zip`` (``2_Ortho_RGB/top_potsdam_<id>_RGB.tif``; or ``4_Ortho_RGBIR.zip`` with
    R,G,B,NIR) and ``5_Labels_all_noBoundary.zip`` (``top_potsdam_<id>_label_noBoundary.tif`` at the
    archive root; or ``5_Labels_all.zip`` / ``_label.tif`` without boundary pixels)."""
    root = Path(root)
    folder, suffix, ranges = {
        "rgb": ("2_Ortho_RGB", "RGB", RGB_RANGES),
        "rgbir": ("4_Ortho_RGBIR", "RGBIR", RGB_RANGES + ((250, 5),)),
    }[product]
    label_archive, label_suffix = {"noBoundary": ("5_Labels_all_noBoundary", "_label_noBoundary"),
                                   "all": ("5_Labels_all", "_label")}[labels]  # fmt: skip
    image_dir = root / (f".{folder}-staging" if zipped else "") / folder
    label_dir = root / (f".{label_archive}-staging" if zipped else label_archive)
    written: dict[str, FakeScene] = {}
    for k, scene in enumerate(scenes):
        transform = Affine(0.05, 0, POTSDAM_ORIGIN[0] + 100 * k, 0, -0.05, POTSDAM_ORIGIN[1])
        image = banded_image(size, size, ranges, seed=k)
        write_tiff(image_dir / f"top_potsdam_{scene}_{suffix}.tif", image, rgb=product == "rgb",
                   crs=POTSDAM_CRS, transform=transform)  # fmt: skip
        colours, expected = isprs_colour_label(size, size, seed=k, eroded=labels == "noBoundary")
        write_tiff(label_dir / f"top_potsdam_{scene}{label_suffix}.tif", colours.transpose(2, 0, 1), rgb=True,
                   crs=POTSDAM_CRS, transform=transform)  # fmt: skip
        written[scene] = FakeScene(image, colours, expected, transform, POTSDAM_CRS)
    if zipped:
        zip_folder(image_dir.parent, root / f"{folder}.zip")
        zip_folder(label_dir, root / f"{label_archive}.zip")
    return written


VAIHINGEN_RANGES = ((180, 60), (90, 60), (20, 50))  # NIR > R > G


def write_vaihingen(
    root: Path,
    *,
    height: int = 600,
    width: int = 700,
    areas: tuple[int, ...] = (1, 6),
    labels: str = "eroded",
    zipped: bool = True,
) -> dict[int, FakeScene]:
    """``ISPRS_semantic_labeling_Vaihingen.zip`` (``top/top_mosaic_09cm_area<N>.tif``, NIR,R,G, no
    georeference) and ``ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip``
    (``top_mosaic_09cm_area<N>_noBoundary.tif``; ``labels="full"``: the non-eroded archive). The eroded
    archive also holds an ``area9`` label without an image, as the real one does."""
    root = Path(root)
    image_archive = "ISPRS_semantic_labeling_Vaihingen"
    label_archive, label_suffix = {
        "eroded": ("ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE", "_noBoundary"),
        "full": ("ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE", ""),
    }[labels]
    image_dir = root / (f".{image_archive}-staging" if zipped else image_archive)
    label_dir = root / (f".{label_archive}-staging" if zipped else label_archive)
    written: dict[int, FakeScene] = {}
    for k, area in enumerate(areas):
        image = banded_image(height, width, VAIHINGEN_RANGES, seed=k)
        write_tiff(image_dir / "top" / f"top_mosaic_09cm_area{area}.tif", image)
        colours, expected = isprs_colour_label(height, width, seed=k, eroded=labels == "eroded")
        write_tiff(label_dir / f"top_mosaic_09cm_area{area}{label_suffix}.tif", colours.transpose(2, 0, 1), rgb=True)
        written[area] = FakeScene(image, colours, expected)
    extra, _ = isprs_colour_label(64, 64)
    write_tiff(label_dir / f"top_mosaic_09cm_area9{label_suffix}.tif", extra.transpose(2, 0, 1), rgb=True)
    if zipped:
        zip_folder(image_dir, root / f"{image_archive}.zip")
        zip_folder(label_dir, root / f"{label_archive}.zip")
    return written


# ------------------------------------------------------------------------------------------ OpenEarthMap
OEM_REGIONS = {  # region → continent (as in the shipped table)
    "aachen": "Europe", "accra": "Africa", "lima": "South America", "tokyo": "Asia",
    "melbourne": "Oceania", "chicago": "North America", "houston": "North America",
}  # fmt: skip
OEM_LISTS = {
    "train": ("aachen_1.tif", "accra_1.tif", "houston_1.tif"),
    "val": ("aachen_2.tif", "lima_1.tif", "tokyo_1.tif"),
    "test": ("melbourne_1.tif", "chicago_1.tif"),
}
OEM_SMALL = "tokyo_1.tif"  # the 60×50 (W×H) image
OEM_XBD = "houston_1.tif"  # labels only (xBD-derived)
OEM_CRS = "EPSG:32654"


def write_openearthmap(root: Path, *, zipped: bool = True, lists: bool = True) -> dict[str, FakeScene]:
    """``OpenEarthMap.zip`` with ``OpenEarthMap/OpenEarthMap_wo_xBD/<region>/{images,labels}/<region>_<n>.tif``
    plus ``train.txt``/``val.txt``/``test.txt`` (bare names; test.txt without a trailing newline) and
    ``xbd_files.csv`` beside the regions; ``houston`` has a label but no image (xBD). Returns every
    scene, including the xBD one (its image being what a compiled one would hold)."""
    root = Path(root)
    base = root / (".oem-staging" if zipped else "") / "OpenEarthMap" / "OpenEarthMap_wo_xBD"
    written: dict[str, FakeScene] = {}
    names = [n for split in OEM_LISTS.values() for n in split]
    for k, name in enumerate(sorted(names)):
        region = name.rsplit("_", 1)[0]
        height, width = (50, 60) if name == OEM_SMALL else (64, 64)
        transform = Affine(0.5, 0, 500000.0 + 1000 * k, 0, -0.5, 3900000.0)
        image = banded_image(height, width, RGB_RANGES, seed=k)
        raw = index_pattern(height, width, 9, seed=k)
        if name != OEM_XBD:
            write_tiff(base / region / "images" / name, image, rgb=True, crs=OEM_CRS, transform=transform)
        write_tiff(base / region / "labels" / name, raw, crs=OEM_CRS, transform=transform)
        written[name] = FakeScene(image, raw, reduce_zero(raw), transform, OEM_CRS)
    if lists:
        write_oem_lists(base)
    if zipped:
        zip_folder(base.parent.parent, root / "OpenEarthMap.zip")
    return written


def write_oem_lists(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, names in OEM_LISTS.items():
        text = "\n".join(names) + ("" if split == "test" else "\n")
        (folder / f"{split}.txt").write_text(text)
    (folder / "xbd_files.csv").write_text(f"hurricane-harvey_00000008_pre_disaster.png,{OEM_XBD}\n")
