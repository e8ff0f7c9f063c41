"""Class-map files of ``spectralmoe predict``: one georeferenced GeoTIFF (or palette PNG) per tile.

Why: a map a GIS cannot place, or one that gives pixels without data a class, is a silently wrong
map. Each tile's map is written on the grid of the tile it was predicted from (its CRS and
transform, read from the tile's header), with 255 = nodata where the input had no data, the
palette as colour table and the class names as JSON in the ``CLASS_NAMES`` tag — the same format
``predict-scene`` writes for whole scenes. ``format="png"`` writes palette PNGs instead (no
georeference; nodata transparent). Files are written under a temporary name and renamed, and
follow the user's umask.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from spectralmoe.files import atomic_path

__all__ = ["MapFormat", "NODATA_CLASS", "write_class_map"]

NODATA_CLASS = 255
MapFormat = Literal["tif", "png"]


def _georeference(source: str | os.PathLike[str] | None) -> tuple[Any, Any]:
    """CRS and transform of the tile a map was predicted from (``None, None`` when unknown)."""
    if source is None or not Path(source).is_file():
        return None, None
    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(source) as src:
            if src.crs is None and src.transform.is_identity:
                return None, None
            return src.crs, src.transform


def write_class_map(
    target: Path,
    labels: np.ndarray,
    *,
    palette: Sequence[Sequence[int]] | None,
    class_names: Sequence[str] | None,
    source: str | os.PathLike[str] | None = None,
    fmt: MapFormat = "tif",
) -> Path:
    """Write one ``[H, W]`` class map (``uint8``, 255 = nodata; ``int32``, -1 = nodata beyond 255 classes)
    as ``target`` (its suffix is set from ``fmt``); returns the written path."""
    if labels.ndim != 2:
        raise ValueError(f"{target}: a class map must be [H, W], got shape {labels.shape}")
    target = target.with_suffix(f".{fmt}")
    if fmt not in ("png", "tif"):
        raise ValueError(f"class-map format must be 'tif' or 'png', got {fmt!r}")
    with atomic_path(target, suffix=f".tmp.{fmt}") as tmp:
        if fmt == "png":
            _write_png(tmp, labels, palette)
        else:
            _write_tif(tmp, labels, palette, class_names, source)
    return target


def _write_png(path: Path, labels: np.ndarray, palette: Sequence[Sequence[int]] | None) -> None:
    from PIL import Image

    if labels.dtype != np.uint8:  # more than 255 classes: 16-bit grey, nodata stays -1 → 65535
        Image.fromarray(labels.astype(np.uint16)).save(path, format="PNG")
        return
    image = Image.fromarray(labels, mode="L")
    if palette:
        flat = [int(c) for colour in palette for c in colour[:3]]
        image = image.convert("P")
        image.putpalette(flat + [0] * (768 - len(flat)))
        image.info["transparency"] = NODATA_CLASS
        image.save(path, format="PNG", transparency=NODATA_CLASS)
        return
    image.save(path, format="PNG")


def _write_tif(path: Path, labels: np.ndarray, palette: Sequence[Sequence[int]] | None,
               class_names: Sequence[str] | None, source: str | os.PathLike[str] | None) -> None:  # fmt: skip
    import rasterio

    crs, transform = _georeference(source)
    uint8 = labels.dtype == np.uint8
    profile: dict[str, Any] = {
        "driver": "GTiff", "height": labels.shape[0], "width": labels.shape[1], "count": 1,
        "dtype": "uint8" if uint8 else "int32", "nodata": NODATA_CLASS if uint8 else -1, "compress": "deflate",
    }  # fmt: skip
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(path, "w", **profile) as dst:
            dst.write(labels if uint8 else labels.astype(np.int32), 1)
            if uint8 and palette:
                dst.write_colormap(1, {**{i: (*[int(c) for c in colour[:3]], 255) for i, colour in enumerate(palette)},
                                       NODATA_CLASS: (0, 0, 0, 0)})  # fmt: skip
            dst.set_band_description(1, f"class index ({NODATA_CLASS if uint8 else -1} = nodata)")
            if class_names:
                dst.update_tags(CLASS_NAMES=json.dumps(list(class_names)), NUM_CLASSES=str(len(class_names)))
