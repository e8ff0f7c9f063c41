"""Scoring a class map against a ground-truth raster, and class areas on the ground.

Why: a mapping job ends with "how good is this map, and how many hectares of each class": the
numbers a report quotes. ``predict-scene --ground-truth FILE`` checks the ground truth BEFORE the
model runs (same grid as the scene, values that are classes or 255 = ignore), then scores the
written map with the same mIoU / mAcc / per-class IoU as ``spectralmoe test`` (``engine.metrics``,
in percent), streamed in strips so a scene of any size fits in memory.

Pixels where the map is nodata (the input had no data there) are not scored; their labelled count
is reported as ``unscored_nodata_pixels``.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["IGNORE_INDEX", "check_ground_truth", "class_areas_ha", "pixel_area_m2", "score_map"]

IGNORE_INDEX = 255
PathLike = str | os.PathLike[str]


def pixel_area_m2(crs: Any, transform: Any) -> float | None:
    """Ground area of one pixel in m², or ``None`` when it is unknown: no georeference, or a
    geographic CRS (degrees: the area varies with latitude)."""
    if crs is None or transform is None or transform.is_identity:
        return None
    if crs.is_geographic:
        return None
    try:
        _, factor = crs.linear_units_factor  # (unit name, metres per unit)
    except Exception:  # noqa: BLE001 - CRS without linear units: area unknown
        return None
    return abs(transform.a * transform.e - transform.b * transform.d) * float(factor) ** 2


def class_areas_ha(pixels: dict[str, int], area_m2: float | None) -> dict[str, float] | None:
    """Area of each class in hectares (1 ha = 10,000 m²), rounded to 4 decimals; ``None`` without a pixel area."""
    if area_m2 is None:
        return None
    return {name: round(count * area_m2 / 1e4, 4) for name, count in pixels.items()}


def _open(path: Path) -> Any:
    import rasterio

    if not path.is_file():
        raise FileNotFoundError(f"ground truth {path}: no such file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        return rasterio.open(path)


def check_ground_truth(
    path: PathLike, *, height: int, width: int, crs: Any, transform: Any, num_classes: int,
    scene: str = "the scene", rows_per_read: int = 1024,
) -> int:  # fmt: skip
    """Check a ground-truth raster against the scene before any prediction; return its labelled
    pixel count. One band of integer class indices (255 = ignore), the scene's size, and the
    scene's CRS and transform when both are georeferenced; every value a class or 255. Errors name
    the file, the sizes (width × height) or the offending values."""
    from rasterio.windows import Window

    path = Path(path)
    with _open(path) as src:
        if src.count != 1:
            raise ValueError(f"ground truth {path}: {src.count} bands; expected one band of class indices")
        if not np.issubdtype(np.dtype(src.dtypes[0]), np.integer):
            raise ValueError(f"ground truth {path}: dtype {src.dtypes[0]}; class indices must be integers")
        if (src.height, src.width) != (height, width):
            raise ValueError(f"ground truth {path} is {src.width} × {src.height} px (width × height) but {scene} is "
                             f"{width} × {height} px")  # fmt: skip
        if src.crs is not None and crs is not None and (src.crs != crs or not src.transform.almost_equals(transform)):
            raise ValueError(f"ground truth {path} (CRS {src.crs}, transform {tuple(src.transform)[:6]}) is not on the "
                             f"grid of {scene} (CRS {crs}, transform {tuple(transform)[:6]})")  # fmt: skip
        counts = np.zeros(256, dtype=np.int64)
        bad: set[int] = set()
        for top in range(0, height, rows_per_read):
            values = src.read(1, window=Window(0, top, width, min(rows_per_read, height - top))).astype(np.int64)
            outside = (values < 0) | (values > 255)
            if outside.any():
                bad.update(int(v) for v in np.unique(values[outside])[:10])
                values = values[~outside]
            counts += np.bincount(values.ravel(), minlength=256)
    bad.update(int(v) for v in np.flatnonzero(counts[num_classes:IGNORE_INDEX]) + num_classes)
    if bad:
        raise ValueError(f"ground truth {path}: values {sorted(bad)[:20]} are not class indices of this model "
                         f"(0..{num_classes - 1}, {IGNORE_INDEX} = ignore)")  # fmt: skip
    return int(counts[:num_classes].sum())


def score_map(
    prediction: PathLike, truth: PathLike, class_names: Sequence[str], *, rows_per_read: int = 1024
) -> dict[str, Any]:
    """The ``engine.metrics`` report (percent: mIoU, mAcc, aAcc, per-class IoU/Acc, confusion) of a
    class map against its ground truth, one domain named ``scene``; nodata map pixels are not scored."""
    from rasterio.windows import Window

    from spectralmoe.engine.metrics import summarize

    k = len(class_names)
    confusion = np.zeros((k + 1, k), dtype=np.int64)
    unscored = 0
    with _open(Path(prediction)) as p_src, _open(Path(truth)) as t_src:
        for top in range(0, p_src.height, rows_per_read):
            window = Window(0, top, p_src.width, min(rows_per_read, p_src.height - top))
            pred = p_src.read(1, window=window).astype(np.int64).ravel()
            label = t_src.read(1, window=window).astype(np.int64).ravel()
            labelled = label != IGNORE_INDEX
            scored = labelled & (pred < k)
            unscored += int((labelled & ~scored).sum())
            rows = np.where(label[scored] < k, label[scored], k)
            confusion += np.bincount(rows * k + pred[scored], minlength=(k + 1) * k).reshape(k + 1, k)
    report = summarize({"scene": confusion}, list(class_names), stage="scene", prediction=str(prediction),
                       ground_truth=str(truth))  # fmt: skip
    report["unscored_nodata_pixels"] = unscored
    return report


def format_percent(value: float | None) -> str:
    """One convention for printed scores: percent with one decimal, ``n/a`` when undefined."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f} %"
