"""Minimal faithful fakes of the raw WHU-OHS, Five-Billion-Pixels (+ C-megacities) and FLAIR #1
downloads (DATA.md §1.6, §2.6, §3, §4.6), for converter and dataset tests.

Every writer takes a folder, writes the raw tree into it exactly as distributed (file names,
folder names, archive names, band order, dtypes, label encodings) and returns the dataset root.
Pixel values are deterministic functions exposed here (``ohs_image``, ``fbp_interior_image``…),
so tests compare converted tiles against them; every band holds distinct values so that any
band reordering is caught.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
from affine import Affine
from PIL import Image, TiffImagePlugin
from rasterio.errors import NotGeoreferencedWarning

# ============================================================================================ WHU-OHS
OHS_BANDS = 32
OHS_SIZE = 64  # real sub-images are 512²; DATA.md §1.6 allows 64² in unit tests
OHS_FILES: dict[str, tuple[str, ...]] = {
    "tr": ("S1_0001", "T1_0001", "O3_0001"),
    "val": ("S1_0002", "T2_0001"),
    "ts": ("T1_0002", "S2_0001"),
}
"""Sub-images per raw split; ``T1_0001`` is written as uint16, all others as int16."""
OHS_UINT16 = "T1_0001"
OHS_CRS = "EPSG:32650"


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:height, 0:width]


def ohs_image(number: int, size: int = OHS_SIZE, dtype: str = "int16") -> np.ndarray:
    """``[32, size, size]``: band k ≈ 300·(k+1) (+ file number + a small spatial ripple)."""
    i, j = _grid(size, size)
    bands = [300 * (k + 1) + number + (i + j) % 7 for k in range(OHS_BANDS)]
    return np.stack(bands).astype(dtype)


def ohs_raw_label(size: int = OHS_SIZE, merged: bool = False) -> np.ndarray:
    """``[size, size]`` uint8 cycling through every raw value 0..24 (0..7 when ``merged``)."""
    i, j = _grid(size, size)
    return ((i * size + j) % (8 if merged else 25)).astype(np.uint8)


def _write_geotiff(path: Path, array: np.ndarray, **profile: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    base = dict(driver="GTiff", height=array.shape[1], width=array.shape[2], count=array.shape[0],
                dtype=array.dtype.name, interleave="band", photometric="MINISBLACK")  # fmt: skip
    base.update(profile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(path, "w", **base) as dst:
            dst.write(array)
    return path


def write_whu_ohs(root: Path, *, size: int = OHS_SIZE, merged: bool = False) -> Path:
    """``root/WHU-OHS/{tr,val,ts}/{image,label}/<P><k>_<nnnn>.tif``; returns ``root/WHU-OHS``.

    Images: 32-band planar GeoTIFF (int16; ``T1_0001`` uint16) georeferenced in UTM 50N.
    Labels: 1-band uint8 raw values 0..24 (``merged``: 0..7, the official merged files).
    """
    base = root / "WHU-OHS"
    number = 0
    for raw_split, stems in OHS_FILES.items():
        for stem in stems:
            number += 1
            dtype = "uint16" if stem == OHS_UINT16 else "int16"
            transform = Affine(10.0, 0.0, 300000.0 + 1000 * number, 0.0, -10.0, 4000000.0)
            _write_geotiff(base / raw_split / "image" / f"{stem}.tif", ohs_image(number, size, dtype),
                           crs=OHS_CRS, transform=transform)  # fmt: skip
            _write_geotiff(base / raw_split / "label" / f"{stem}.tif", ohs_raw_label(size, merged)[None],
                           crs=OHS_CRS, transform=transform)  # fmt: skip
    return base


def ohs_number(stem: str) -> int:
    """File number used in ``ohs_image`` for a fake sub-image."""
    order = [s for stems in OHS_FILES.values() for s in stems]
    return order.index(stem) + 1


# ================================================================================ Five-Billion-Pixels
FBP_SCENES: tuple[str, ...] = (
    "GF2_PMS1__L1A0000564539-MSS1",
    "GF2_PMS2__L1A0001038935-MSS2",
    "GF2_PMS1__L1A0000647768-MSS1",
)
FBP_MARGINS = (60, 40, 54, 54)  # left, right, top, bottom (official remove_padding.py)
FBP_INTERIOR = (900, 1000)  # (H, W) — not a multiple of 512: 2×2 tiles, right/bottom padded
FBP_COLOUR_TABLE: list[tuple[int, int, int]] = [
    (0, 0, 0), (200, 0, 0), (0, 200, 0), (150, 250, 0), (150, 200, 150), (200, 0, 200), (150, 0, 250),
    (150, 150, 250), (200, 150, 200), (250, 200, 0), (200, 200, 0), (0, 0, 200), (250, 0, 150), (0, 150, 200),
    (0, 200, 250), (150, 200, 250), (250, 250, 250), (200, 200, 200), (200, 150, 150), (250, 200, 150),
    (150, 150, 0), (250, 150, 150), (250, 150, 0), (250, 200, 250), (200, 150, 0),
]  # fmt: skip
"""Raw index 0..24 → RGB (DATA.md §2.3), written independently of the converter's table."""
OFF_TABLE_COLOUR = (123, 45, 67)


def fbp_interior_image(number: int, interior: tuple[int, int] = FBP_INTERIOR) -> np.ndarray:
    """``[4, H, W]`` uint8 interior of a GF-2 scene: channel k ≈ 40·(k+1) (NIR, R, G, B), rippled by row."""
    i, j = _grid(*interior)
    return np.stack([40 * (k + 1) + number + (3 * i + j) % 9 for k in range(4)]).astype(np.uint8)


def fbp_interior_label(interior: tuple[int, int] = FBP_INTERIOR) -> np.ndarray:
    """``[H, W]`` raw indices 0..24 of the interior (cycling; raw 0 occurs inside too)."""
    i, j = _grid(*interior)
    return ((i + 2 * j) % 25).astype(np.uint8)


def _palette_bytes() -> list[int]:
    flat = [v for colour in FBP_COLOUR_TABLE for v in colour]
    return flat + [0] * (768 - len(flat))


def _save_cmyk(path: Path, array: np.ndarray, tiffinfo: TiffImagePlugin.ImageFileDirectory_v2 | None = None) -> None:
    """``[4, H, W]`` uint8 → photometric SEPARATED (Pillow mode CMYK), pixel-interleaved TIFF."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.ascontiguousarray(array.transpose(1, 2, 0))
    image = Image.frombytes("CMYK", (pixels.shape[1], pixels.shape[0]), pixels.tobytes())
    image.save(path, format="TIFF", **({"tiffinfo": tiffinfo} if tiffinfo is not None else {}))


def _save_rgb_tiff(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    Image.frombytes("RGB", (rgb.shape[1], rgb.shape[0]), rgb.tobytes()).save(path, format="TIFF")


def write_fbp(
    root: Path,
    *,
    scenes: Sequence[str] = FBP_SCENES[:2],
    interior: tuple[int, int] = FBP_INTERIOR,
    margins: tuple[int, int, int, int] = FBP_MARGINS,
    mode_l_scene: int = 1,
) -> Path:
    """``root/Five-Billion-Pixels/`` with ``Image__8bit_NirRGB/<scene>.tif`` (CMYK, black border),
    ``Annotation__index/<scene>_24label.png`` (mode P with the 25-colour palette; scene number
    ``mode_l_scene`` as mode L) and ``Annotation__color/<scene>_24label.tif`` (RGB)."""
    base = root / "Five-Billion-Pixels"
    left, right, top, bottom = margins
    height, width = interior[0] + top + bottom, interior[1] + left + right
    for number, scene in enumerate(scenes):
        image = np.zeros((4, height, width), np.uint8)
        image[:, top : top + interior[0], left : left + interior[1]] = fbp_interior_image(number, interior)
        _save_cmyk(base / "Image__8bit_NirRGB" / f"{scene}.tif", image)
        label = np.zeros((height, width), np.uint8)
        label[top : top + interior[0], left : left + interior[1]] = fbp_interior_label(interior)
        index_path = base / "Annotation__index" / f"{scene}_24label.png"
        index_path.parent.mkdir(parents=True, exist_ok=True)
        png = Image.frombytes("L" if number == mode_l_scene else "P", (width, height), label.tobytes())
        if png.mode == "P":
            png.putpalette(_palette_bytes())
        png.save(index_path)
        _save_rgb_tiff(base / "Annotation__color" / f"{scene}_24label.tif",
                       np.asarray(FBP_COLOUR_TABLE, np.uint8)[label])  # fmt: skip
    return base


# ------------------------------------------------------------------------------------ C-megacities
MEGACITIES_IMAGES: dict[str, tuple[str, str]] = {
    "GF1_PMS1_E114.0_N30.5_20160328_L1A0001492006-MSS1": ("gf1", "Wuhan"),
    "T50TMK_20210929T030539": ("sentinel2", "Beijing"),
    "20190713_032217_1003_3B_AnalyticMS_SR": ("planetscope", "Shanghai"),
}
"""name → (sensor, city) expected from names / georeference. The PlanetScope image is georeferenced
(EPSG:4326) near Shanghai, because its name does not say the city."""
MEGACITIES_SIZE = (1300, 1500)  # (H, W)
MEGACITIES_RECT = (500, 400, 700, 900)  # labelled rectangle (top, left, height, width)
MEGACITIES_OFF_TABLE = (510, 410, 20, 20)  # block of OFF_TABLE_COLOUR inside the rectangle
MEGACITIES_CROP = (276, 338, 1024, 1024)  # expected centred 1024 window (top, left, h, w), clamped


def megacities_image(number: int, size: tuple[int, int] = MEGACITIES_SIZE) -> np.ndarray:
    """``[4, H, W]`` uint8 NIR,R,G,B: channel k ≈ 50·(k+1), rippled."""
    i, j = _grid(*size)
    return np.stack([50 * (k + 1) + number + (i + 5 * j) % 11 for k in range(4)]).astype(np.uint8)


def megacities_raw_label(size: tuple[int, int] = MEGACITIES_SIZE) -> np.ndarray:
    """``[H, W]`` raw indices: 0 outside ``MEGACITIES_RECT``, 1..24 inside (the off-table block aside)."""
    i, j = _grid(*size)
    top, left, h, w = MEGACITIES_RECT
    inside = (i >= top) & (i < top + h) & (j >= left) & (j < left + w)
    return np.where(inside, 1 + (i // 10 + j // 10) % 24, 0).astype(np.uint8)


def _geotiff_tags(lon: float, lat: float, pixel_deg: float = 3e-5) -> TiffImagePlugin.ImageFileDirectory_v2:
    """GeoTIFF tags (EPSG:4326, north-up) for a Pillow-written TIFF."""
    ifd = TiffImagePlugin.ImageFileDirectory_v2()
    ifd[33550] = (pixel_deg, pixel_deg, 0.0)  # ModelPixelScale
    ifd.tagtype[33550] = 12
    ifd[33922] = (0.0, 0.0, 0.0, lon, lat, 0.0)  # ModelTiepoint
    ifd.tagtype[33922] = 12
    ifd[34735] = (1, 1, 0, 3, 1024, 0, 1, 2, 1025, 0, 1, 1, 2048, 0, 1, 4326)  # GeoKeyDirectory
    ifd.tagtype[34735] = 3
    return ifd


def write_megacities(root: Path, *, size: tuple[int, int] = MEGACITIES_SIZE) -> Path:
    """``root/C-megacities/Image__8bit_NirRGB/<name>.tif`` (CMYK) and
    ``label_dense__color/<name>_dense.tif`` (RGB, black outside a 900×700 rectangle, one off-table block)."""
    base = root / "C-megacities"
    raw = megacities_raw_label(size)
    rgb = np.asarray(FBP_COLOUR_TABLE, np.uint8)[raw]
    top, left, h, w = MEGACITIES_OFF_TABLE
    rgb[top : top + h, left : left + w] = OFF_TABLE_COLOUR
    for number, (name, (sensor, _city)) in enumerate(MEGACITIES_IMAGES.items()):
        tags = _geotiff_tags(121.40, 31.25) if sensor == "planetscope" else None
        _save_cmyk(base / "Image__8bit_NirRGB" / f"{name}.tif", megacities_image(number, size), tags)
        _save_rgb_tiff(base / "label_dense__color" / f"{name}_dense.tif", rgb)
    return base


# ============================================================================================== FLAIR
FLAIR_SIZE = 64  # real patches are 512²; DATA.md §4.6 allows 64² in unit tests
FLAIR_FILES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "train": (("D006_2020", "Z10_UU", "000001"), ("D006_2020", "Z10_UU", "000002"), ("D007_2020", "Z2_NN", "000003")),
    "test": (("D012_2019", "Z10_UU", "062613"),),
}
"""(domain, zone, number) per official split."""
FLAIR_FOLDERS = {
    "train": ("flair_aerial_train", "flair_labels_train"),
    "test": ("flair_1_aerial_test", "flair_1_labels_test"),
}


def flair_image(number: int, size: int = FLAIR_SIZE, bands: int = 5) -> np.ndarray:
    """``[bands, size, size]`` uint8: band k ≈ 30·(k+1) (R, G, B, NIR, Elevation), rippled."""
    i, j = _grid(size, size)
    return np.stack([30 * (k + 1) + number + (i + j) % 5 for k in range(bands)]).astype(np.uint8)


def flair_raw_label(size: int = FLAIR_SIZE) -> np.ndarray:
    """``[size, size]`` uint8 cycling through every raw value 1..19 (13..19 included)."""
    i, j = _grid(size, size)
    return (1 + (i * size + j) % 19).astype(np.uint8)


def write_flair(root: Path, *, size: int = FLAIR_SIZE, zipped: bool = False) -> Path:
    """The four FLAIR #1 trees (or, with ``zipped``, the four distributed ``.zip`` archives, each
    holding its top folder) in ``root``; returns ``root``.

    ``flair_aerial_train/D006_2020/Z10_UU/img/IMG_000001.tif`` (5-band uint8 GeoTIFF, Lambert-93)
    ↔ ``flair_labels_train/D006_2020/Z10_UU/msk/MSK_000001.tif`` (1-band uint8, 1..19), etc.
    """
    root.mkdir(parents=True, exist_ok=True)
    staging = root / ".staging" if zipped else root
    for raw_split, files in FLAIR_FILES.items():
        aerial, labels = FLAIR_FOLDERS[raw_split]
        for domain, zone, number in files:
            transform = Affine(0.2, 0.0, 600000.0 + int(number), 0.0, -0.2, 6800000.0)
            _write_geotiff(staging / aerial / domain / zone / "img" / f"IMG_{number}.tif",
                           flair_image(int(number) % 50, size), crs="EPSG:2154", transform=transform)  # fmt: skip
            _write_geotiff(staging / labels / domain / zone / "msk" / f"MSK_{number}.tif", flair_raw_label(size)[None],
                           crs="EPSG:2154", transform=transform)  # fmt: skip
    if zipped:
        for folder in (f for pair in FLAIR_FOLDERS.values() for f in pair):
            with zipfile.ZipFile(root / f"{folder}.zip", "w", zipfile.ZIP_DEFLATED) as archive:
                for path in sorted((staging / folder).rglob("*")):
                    archive.write(path, path.relative_to(staging).as_posix())
        _remove_tree(staging)
    return root


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)
