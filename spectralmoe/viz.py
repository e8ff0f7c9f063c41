"""Pictures people look at: colour maps, legends, composites, routing maps, confusion matrices.

Why one module: the scene predictor (``predict.py``), the ``spectralmoe viz`` command and the demo
draw the same things, so a class map looks the same (same palette, same legend, nodata transparent)
wherever it appears.

Rules kept here:

* Colours come from the model's palette; classes without one get ``default_palette`` colours.
  Class index 255 is nodata / ignore and is drawn transparent.
* Composites choose their bands **by wavelength** (``spectralmoe.bands``), never by band index, and
  stretch each band between its 2nd and 98th percentile over valid pixels.
* Rasters of any size are read **decimated** (rasterio ``out_shape``, which uses overviews when the
  file has them), so a preview of a 20,000 × 20,000 map costs a few MB; the confusion matrix, which
  must count every pixel, is streamed window by window.
* Figures use ``matplotlib.figure.Figure`` (Agg, no pyplot global state) and are written to a
  temporary file then renamed, so a reader never sees half a PNG.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from spectralmoe.bands import (
    DEFAULT_RGB_TOLERANCE_UM,
    as_wavelength_list,
    load_sensor,
    rgb_band_indices,
    wavelength_distance,
)
from spectralmoe.errors import InputError, check_int
from spectralmoe.outputs import OutputSet

__all__ = [
    "CLASS_NAMES_TAG",
    "NODATA_CLASS",
    "VizResult",
    "add_legend",
    "add_viz_parser",
    "colorize",
    "colorize_routing",
    "composite",
    "composite_bands",
    "confusion_from_rasters",
    "confusion_matrix",
    "default_palette",
    "error_map",
    "load_classes_file",
    "percentile_stretch",
    "plot_confusion",
    "read_class_info",
    "read_decimated",
    "render_routing_map",
    "routing_palette",
    "save_figure",
    "viz_figure",
    "write_preview",
]

#: Class value of "no prediction" (input nodata) in class maps, and of "ignore" in ground truth.
NODATA_CLASS = 255
#: GeoTIFF tag holding the class names of a map as a JSON list (written by ``predict_scene``).
CLASS_NAMES_TAG = "CLASS_NAMES"
#: Centre wavelength (µm) of the near-infrared band of a false-colour composite, and how far a band may be.
NIR_UM, NIR_TOLERANCE_UM = 0.830, 0.100
CORRECT_RGB, WRONG_RGB = (215, 215, 215), (220, 30, 30)

PathLike = str | os.PathLike[str]
Palette = Sequence[Sequence[int]]


# ------------------------------------------------------------------------------------------ colours
def default_palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct, deterministic colours (golden-ratio hue steps, two brightness levels) for
    classes or experts without a palette of their own."""
    colours = []
    for i in range(n):
        value = 0.95 if (i // 2) % 2 == 0 else 0.70
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.70, value)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return colours


def _lookup_table(palette: Palette, nodata: int | None = NODATA_CLASS) -> np.ndarray:
    """A ``[256, 4]`` RGBA table: the palette's colours (opaque), unknown values grey, ``nodata`` transparent."""
    if len(palette) > 256:
        raise ValueError(f"a uint8 map holds at most 256 classes, got a palette of {len(palette)}")
    table = np.zeros((256, 4), dtype=np.uint8)
    table[:, :3], table[:, 3] = 128, 255  # values outside the palette: opaque grey, visible but neutral
    for i, colour in enumerate(palette):
        rgb = [int(c) for c in colour][:3]
        if len(rgb) != 3 or min(rgb) < 0 or max(rgb) > 255:
            raise ValueError(f"palette entry {i} must be three values in 0..255, got {list(colour)}")
        table[i, :3] = rgb
    if nodata is not None:
        table[int(nodata)] = 0
    return table


def colorize(labels: np.ndarray, palette: Palette, nodata: int | None = NODATA_CLASS) -> np.ndarray:
    """Class indices ``[H, W]`` (uint8) → RGBA ``[H, W, 4]`` uint8; ``nodata`` pixels are transparent."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be [H, W], got shape {labels.shape}")
    if labels.dtype != np.uint8:
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise ValueError(f"labels must lie in 0..255 to be coloured, got {labels.min()}..{labels.max()}")
        labels = labels.astype(np.uint8)
    return _lookup_table(palette, nodata)[labels]


def routing_palette(num_experts: int) -> list[tuple[int, int, int]]:
    """Colours of the experts in routing maps (fixed, so expert 2 has one colour in every figure)."""
    return default_palette(num_experts)


def colorize_routing(routing: np.ndarray, num_experts: int, nodata: int | None = NODATA_CLASS) -> np.ndarray:
    """Expert indices ``[H, W]`` → RGBA ``[H, W, 4]``."""
    return colorize(routing, routing_palette(num_experts), nodata)


def add_legend(ax: Any, names: Sequence[str], palette: Palette, *, title: str | None = None,
               outside: bool = True, fontsize: float = 8.0) -> Any:
    """Attach a legend of coloured squares (one per class / expert) to a matplotlib axes."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=np.asarray(c[:3], dtype=float) / 255.0, edgecolor="black", linewidth=0.4, label=n)
               for n, c in zip(names, palette)]  # fmt: skip
    options: dict[str, Any] = {"handles": handles, "title": title, "fontsize": fontsize, "title_fontsize": fontsize,
                               "frameon": False}  # fmt: skip
    if outside:
        options.update(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return ax.legend(**options)


# ------------------------------------------------------------------------------------------ figures
def save_figure(fig: Any, path: PathLike, *, dpi: int = 100) -> Path:
    """Write a matplotlib figure as PNG via a temporary sibling file and a rename (never half-written)."""
    from spectralmoe.files import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _show(ax: Any, rgba: np.ndarray, title: str) -> None:
    ax.imshow(rgba, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


# ---------------------------------------------------------------------------------------- reading
def _open(path: PathLike) -> Any:
    """Open a raster for reading, quietly (un-georeferenced PNG labels are fine here)."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)


def _decimated_shape(height: int, width: int, max_size: int) -> tuple[int, int]:
    factor = max(1, math.ceil(max(height, width) / max(1, max_size)))
    return max(1, math.ceil(height / factor)), max(1, math.ceil(width / factor))


def read_decimated(
    path: PathLike,
    *,
    max_size: int = 1024,
    bands: Sequence[int] | None = None,
    resampling: Literal["nearest", "average", "mode"] = "nearest",
) -> tuple[np.ndarray, float | None]:
    """Read ``[C, h, w]`` with the longer side at most ``max_size`` (0-based ``bands``, default all) and the
    file's nodata. GDAL serves it from overviews when the file has them, so memory stays that of the
    small array whatever the raster's size. ``nearest`` for class maps, ``average`` for images."""
    import rasterio
    import rasterio.enums

    from spectralmoe.data.io import open_raw  # CMYK-safe opening (raw samples, not GDAL's RGBA)

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.Env(GDAL_PAM_ENABLED="NO"), open_raw(path, rasterio) as src:
            indexes = list(range(1, src.count + 1)) if bands is None else [int(b) + 1 for b in bands]
            bad = [i - 1 for i in indexes if not 1 <= i <= src.count]
            if bad:
                raise ValueError(f"{path}: band(s) {bad} (0-based) do not exist in a {src.count}-band raster")
            h, w = _decimated_shape(src.height, src.width, max_size)
            array = src.read(indexes, out_shape=(len(indexes), h, w),
                             resampling=getattr(rasterio.enums.Resampling, resampling))  # fmt: skip
            return array, src.nodata


def _parse_class_text(text: str, where: str) -> tuple[list[str], list[tuple[int, int, int]] | None]:
    """Class names (+ palette) from JSON (a list, or a dict with ``classes``/``class_names`` and optional
    ``palette`` — ``spectralmoe.json`` and ``splits.json`` both qualify) or plain text, one name a line."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        names = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        if not names:
            raise ValueError(f"{where}: no class names (one per line, or JSON)") from None
        return names, None
    palette = None
    if isinstance(data, dict):
        palette = data.get("palette")
        data = data.get("classes", data.get("class_names"))
    if not isinstance(data, list) or not data or not all(isinstance(n, str) for n in data):
        raise ValueError(f"{where}: expected a JSON list of class names (or a dict with 'classes'), got {text[:80]!r}")
    if palette is not None:
        palette = [tuple(int(c) for c in colour[:3]) for colour in palette]
        if len(palette) != len(data):
            raise ValueError(f"{where}: {len(palette)} palette colours for {len(data)} classes")
    return list(data), palette


def load_classes_file(path: PathLike) -> tuple[list[str], list[tuple[int, int, int]] | None]:
    """Class names and palette (or ``None``) from a classes file (see ``_parse_class_text``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such classes file")
    return _parse_class_text(path.read_text(), str(path))


def read_class_info(path: PathLike) -> tuple[list[str] | None, list[tuple[int, int, int]] | None]:
    """Class names (``CLASS_NAMES`` tag) and palette (colour table) of a class map, each ``None`` if absent."""
    with _open(path) as src:
        names_text = src.tags().get(CLASS_NAMES_TAG)
        try:
            colormap = src.colormap(1)
        except ValueError:
            colormap = None
    names = _parse_class_text(names_text, f"{path} tag {CLASS_NAMES_TAG}")[0] if names_text else None
    palette = None
    if colormap:
        count = len(names) if names else max((k for k in colormap if k != NODATA_CLASS), default=-1) + 1
        palette = [tuple(int(v) for v in colormap.get(i, (128, 128, 128, 255))[:3]) for i in range(count)]
    return names, palette


# ------------------------------------------------------------------------------------- composites
def percentile_stretch(
    bands: np.ndarray, low: float = 2.0, high: float = 98.0, valid: np.ndarray | None = None
) -> np.ndarray:
    """Each band of ``[C, H, W]`` mapped linearly from its ``low``–``high`` percentile (over ``valid``
    finite pixels) to [0, 1] and clipped; a flat band becomes 0. Returns float32."""
    bands = np.asarray(bands, dtype=np.float32)
    if bands.ndim != 3:
        raise ValueError(f"bands must be [C, H, W], got shape {bands.shape}")
    usable = np.isfinite(bands).all(0)
    if valid is not None:
        usable &= valid
    out = np.zeros_like(bands)
    if not usable.any():
        return out
    lo, hi = np.percentile(bands[:, usable], [low, high], axis=1)
    scale = np.where(hi > lo, hi - lo, 1.0)
    out = (bands - lo[:, None, None]) / scale[:, None, None]
    out[:, ~np.isfinite(bands).all(0)] = 0.0
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def composite_bands(
    wavelengths: Sequence[float] | None,
    num_bands: int,
    mode: Literal["auto", "true", "false"] = "auto",
) -> tuple[list[int], str]:
    """0-based band indices of an RGB composite and its label, chosen by wavelength.

    ``true``: the bands nearest red, green, blue. ``false``: near-infrared, red, green (vegetation red).
    ``auto``: false colour when the image has a NIR band, else true colour. Without wavelengths the
    first three bands are shown as they are (one band: grey)."""
    if mode not in ("auto", "true", "false"):
        raise ValueError(f"composite mode must be 'auto', 'true' or 'false', got {mode!r}")
    if wavelengths is None:
        if num_bands >= 3:
            return [0, 1, 2], "bands 1, 2, 3"
        return [0, 0, 0], "band 1"
    waves = as_wavelength_list(wavelengths)
    if len(waves) != num_bands:
        raise ValueError(f"{len(waves)} wavelengths for an image of {num_bands} bands")
    spectral = [(i, w) for i, w in enumerate(waves) if not math.isnan(w)]
    nir = min(spectral, key=lambda iw: (wavelength_distance(iw[1], NIR_UM), iw[0]), default=None)
    has_nir = nir is not None and abs(nir[1] - NIR_UM) <= NIR_TOLERANCE_UM
    if mode == "false" or (mode == "auto" and has_nir):
        if not has_nir:
            raise ValueError(f"no near-infrared band within {NIR_TOLERANCE_UM * 1000:.0f} nm of {NIR_UM} µm "
                             f"for a false-colour composite (wavelengths {waves})")  # fmt: skip
        red, green, _ = rgb_band_indices(waves, tolerance_um=DEFAULT_RGB_TOLERANCE_UM)
        assert nir is not None
        return [nir[0], red, green], f"false colour (NIR, R, G = bands {nir[0] + 1}, {red + 1}, {green + 1})"
    red, green, blue = rgb_band_indices(waves)
    return [red, green, blue], f"true colour (R, G, B = bands {red + 1}, {green + 1}, {blue + 1})"


def composite(
    image: np.ndarray,
    wavelengths: Sequence[float] | None = None,
    *,
    mode: Literal["auto", "true", "false"] = "auto",
    percentiles: tuple[float, float] = (2.0, 98.0),
    nodata: float | None = None,
) -> tuple[np.ndarray, str]:
    """RGBA ``[H, W, 4]`` uint8 composite of a raw ``[C, H, W]`` image (bands chosen by wavelength,
    percentile-stretched over valid pixels; nodata / NaN pixels transparent) and its label."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"image must be [C, H, W], got shape {image.shape}")
    indices, label = composite_bands(wavelengths, image.shape[0], mode)
    chosen = image[indices].astype(np.float32)
    valid = np.isfinite(image).all(0) if np.issubdtype(image.dtype, np.floating) else np.ones(image.shape[1:], bool)
    if nodata is not None and not math.isnan(nodata):
        valid &= ~(image == nodata).all(0)
    rgb = percentile_stretch(chosen, *percentiles, valid=valid)
    rgba = np.empty(image.shape[1:] + (4,), dtype=np.uint8)
    rgba[..., :3] = np.round(rgb.transpose(1, 2, 0) * 255).astype(np.uint8)
    rgba[..., 3] = np.where(valid, 255, 0)
    return rgba, label


# --------------------------------------------------------------------------------------- accuracy
def confusion_matrix(pred: np.ndarray, truth: np.ndarray, num_classes: int,
                     ignore_index: int = NODATA_CLASS) -> np.ndarray:  # fmt: skip
    """``[K, K]`` int64 counts, rows = ground truth, columns = prediction; pixels whose truth is
    ``ignore_index`` or outside ``[0, K)``, or whose prediction is outside ``[0, K)`` (nodata), are skipped."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {truth.shape}")
    t, p = truth.astype(np.int64).ravel(), pred.astype(np.int64).ravel()
    keep = (t != ignore_index) & (t >= 0) & (t < num_classes) & (p >= 0) & (p < num_classes)
    return np.bincount(t[keep] * num_classes + p[keep], minlength=num_classes**2).reshape(num_classes, num_classes)


def confusion_from_rasters(
    prediction: PathLike, truth: PathLike, num_classes: int, *, ignore_index: int = NODATA_CLASS,
    rows_per_read: int = 1024,
) -> np.ndarray:  # fmt: skip
    """``confusion_matrix`` over two whole single-band rasters, streamed ``rows_per_read`` rows at a time
    (memory: two strips). The rasters must have the same size, and the same CRS and transform when both
    are georeferenced — a mismatch is an error naming both files."""
    from rasterio.windows import Window

    with _open(prediction) as p_src, _open(truth) as t_src:
        if (p_src.height, p_src.width) != (t_src.height, t_src.width):
            raise ValueError(
                f"{prediction} is {_size(p_src.height, p_src.width)} but ground truth {truth} is "
                f"{_size(t_src.height, t_src.width)}"
            )
        if p_src.crs is not None and t_src.crs is not None:
            if p_src.crs != t_src.crs or not p_src.transform.almost_equals(t_src.transform):
                raise ValueError(f"{prediction} (CRS {p_src.crs}, transform {tuple(p_src.transform)[:6]}) and "
                                 f"{truth} (CRS {t_src.crs}, transform {tuple(t_src.transform)[:6]}) are not "
                                 "on the same grid")  # fmt: skip
        total = np.zeros((num_classes, num_classes), dtype=np.int64)
        for top in range(0, p_src.height, rows_per_read):
            window = Window(0, top, p_src.width, min(rows_per_read, p_src.height - top))
            total += confusion_matrix(p_src.read(1, window=window), t_src.read(1, window=window), num_classes,
                                      ignore_index)  # fmt: skip
    return total


def class_value_counts(path: PathLike, what: str, *, rows_per_read: int = 1024) -> dict[int, int]:
    """Pixel count of every value of a single-band integer raster, streamed ``rows_per_read`` rows at a
    time. Anything else (several bands: a colour label or a scene; floats: probabilities or an image)
    is refused with an ``InputError`` naming ``what`` and the file."""
    from rasterio.windows import Window

    counts: dict[int, int] = {}
    with _open(path) as src:
        dtype = np.dtype(src.dtypes[0])
        if src.count != 1 or not np.issubdtype(dtype, np.integer):
            kind = "probabilities or an image" if np.issubdtype(dtype, np.floating) else "a colour label or an image"
            raise InputError(f"{what} {path} has {src.count} band(s) of {dtype}: a class map is one band of integer "
                             f"class indices (this looks like {kind})")  # fmt: skip
        for top in range(0, src.height, rows_per_read):
            window = Window(0, top, src.width, min(rows_per_read, src.height - top))
            values, number = np.unique(src.read(1, window=window), return_counts=True)
            for value, count in zip(values.tolist(), number.tolist()):
                counts[int(value)] = counts.get(int(value), 0) + int(count)
    return counts


def check_class_values(counts: dict[int, int], num_classes: int, allowed: int, what: str, path: PathLike) -> None:
    """Refuse a class raster holding values that are neither a class index (``0..num_classes-1``) nor
    ``allowed`` (nodata / ignore): an off-by-one label, a colour label or the wrong class list would
    otherwise be scored silently wrong."""
    bad = {v: c for v, c in counts.items() if not (0 <= v < num_classes) and v != allowed}
    if bad:
        values = sorted(bad)
        shown = ", ".join(str(v) for v in values[:8]) + (", …" if len(values) > 8 else "")
        raise InputError(f"{what} {path}: {sum(bad.values()):,} pixels hold values {{{shown}}} outside the "
                         f"{num_classes} classes 0..{num_classes - 1} (and {allowed} = ignore): it does not fit the "
                         "class list (1-based labels? another class list? pass --classes)")  # fmt: skip


def error_map(pred: np.ndarray, truth: np.ndarray, ignore_index: int = NODATA_CLASS,
              nodata: int = NODATA_CLASS) -> np.ndarray:  # fmt: skip
    """RGBA ``[H, W, 4]``: correct pixels light grey, wrong ones red, ignored / nodata transparent."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {truth.shape}")
    out = np.zeros(pred.shape + (4,), dtype=np.uint8)
    scored = (truth != ignore_index) & (pred != nodata)
    right = scored & (pred == truth)
    wrong = scored & (pred != truth)
    out[right] = (*CORRECT_RGB, 255)
    out[wrong] = (*WRONG_RGB, 255)
    return out


def plot_confusion(
    confusion: np.ndarray, class_names: Sequence[str], path: PathLike, *, normalize: bool = True,
    title: str | None = None,
) -> Path:  # fmt: skip
    """Write a confusion-matrix image (rows = truth; row-normalised to recall per class by default,
    counts in the cells otherwise). Rows without any pixel are left blank."""
    confusion = np.asarray(confusion, dtype=np.float64)
    k = confusion.shape[0]
    if confusion.shape != (k, k) or len(class_names) != k:
        raise ValueError(f"confusion {confusion.shape} does not match {len(class_names)} class names")
    rows = confusion.sum(1, keepdims=True)
    shown = np.divide(confusion, rows, out=np.full_like(confusion, np.nan), where=rows > 0) if normalize else confusion
    side = min(1.5 + 0.55 * k, 24.0)
    fig = _figure(side + 1.5, side)
    ax = fig.add_subplot()
    image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class" if normalize else "pixels")
    ax.set_xticks(range(k), labels=list(class_names), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels=list(class_names), fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    if k <= 30:
        finite = np.nan_to_num(shown, nan=0.0)
        limit = np.nanmax(finite) if finite.size else 0.0
        for i in range(k):
            for j in range(k):
                if rows[i, 0] > 0:
                    text = f"{shown[i, j]:.2f}" if normalize else f"{int(confusion[i, j])}"
                    colour = "white" if finite[i, j] > 0.6 * (1.0 if normalize else limit) else "black"
                    ax.text(j, i, text, ha="center", va="center", fontsize=8 if k <= 12 else 6, color=colour)
    total = confusion.sum()
    accuracy = np.trace(confusion) / total if total else float("nan")
    ax.set_title(title or f"confusion matrix (overall accuracy {100 * accuracy:.1f} %)", fontsize=9)
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------- map figures
def write_preview(
    map_path: PathLike,
    png_path: PathLike,
    *,
    class_names: Sequence[str] | None = None,
    palette: Palette | None = None,
    max_size: int = 1024,
    title: str | None = None,
) -> Path:
    """A colour PNG of a class map with a legend, from a decimated read (memory: the small image).
    Class names and palette default to the map's own (``CLASS_NAMES`` tag, colour table)."""
    map_names, map_palette = read_class_info(map_path)
    names = list(class_names or map_names or [])
    labels = read_decimated(map_path, max_size=max_size, bands=[0], resampling="nearest")[0][0]
    if not names:
        present = labels[labels != NODATA_CLASS]
        names = [f"class{i}" for i in range(int(present.max()) + 1 if present.size else 0)]
    colours = list(palette or map_palette or default_palette(len(names)))[: len(names)]
    if len(colours) < len(names):
        colours += default_palette(len(names))[len(colours):]
    h, w = labels.shape
    fig = _figure(2.5 + 7.0 * min(1.0, w / max(h, 1)), 7.0 * min(1.0, h / max(w, 1)) + 0.6)
    ax = fig.add_subplot()
    _show(ax, colorize(labels, colours), title or Path(map_path).name)
    add_legend(ax, names, colours, title="classes")
    return save_figure(fig, png_path)


def render_routing_map(
    routing_path: PathLike, png_path: PathLike, *, num_experts: int | None = None, max_size: int = 1024,
    background: np.ndarray | None = None, title: str | None = None,
) -> Path:  # fmt: skip
    """A PNG of a routing raster (expert per patch, ``predict_scene(routing=…)``) with an expert legend,
    optionally blended over an RGBA ``background`` of the same decimated size."""
    routing = read_decimated(routing_path, max_size=max_size, bands=[0])[0][0]
    if num_experts is None:
        with _open(routing_path) as src:
            tag = src.tags().get("NUM_EXPERTS")
        present = routing[routing != NODATA_CLASS]
        num_experts = int(tag) if tag else (int(present.max()) + 1 if present.size else 1)
    rgba = colorize_routing(routing, num_experts)
    if background is not None:
        if background.shape[:2] != rgba.shape[:2]:
            raise ValueError(f"background {background.shape[:2]} does not match the routing map {rgba.shape[:2]}")
        alpha = rgba[..., 3:4] / 255.0 * 0.6
        rgba = rgba.copy()
        rgba[..., :3] = np.round(alpha * rgba[..., :3] + (1 - alpha) * background[..., :3]).astype(np.uint8)
        rgba[..., 3] = np.maximum(rgba[..., 3], background[..., 3])
    fig = _figure(9.0, 7.0)
    ax = fig.add_subplot()
    _show(ax, rgba, title or Path(routing_path).name)
    add_legend(ax, [f"expert {e}" for e in range(num_experts)], routing_palette(num_experts), title="top-1 expert")
    return save_figure(fig, png_path)


@dataclass(frozen=True)
class VizResult:
    """What ``viz_figure`` wrote, and the accuracy when a ground truth was given."""

    figure: Path
    confusion_figure: Path | None
    routing_figure: Path | None
    confusion: np.ndarray | None
    class_names: list[str]
    overall_accuracy: float | None
    mean_iou: float | None


def _image_wavelengths(sensor: str | None, wavelengths: Sequence[float] | None) -> list[float] | None:
    if sensor is not None and wavelengths is not None:
        raise ValueError("give either a sensor or wavelengths for the image, not both")
    if sensor is not None:
        return list(load_sensor(sensor).wavelengths_um)
    return None if wavelengths is None else [float(w) for w in wavelengths]


def _mean_iou(confusion: np.ndarray) -> float:
    """Mean IoU over classes that occur in the truth or the prediction."""
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean()) if present.any() else float("nan")


def viz_figure(
    prediction: PathLike,
    output: PathLike,
    *,
    ground_truth: PathLike | None = None,
    image: PathLike | None = None,
    sensor: str | None = None,
    wavelengths: Sequence[float] | None = None,
    classes: PathLike | Sequence[str] | None = None,
    routing: PathLike | None = None,
    composite_mode: Literal["auto", "true", "false"] = "auto",
    max_size: int = 1024,
    ignore_index: int = NODATA_CLASS,
) -> VizResult:
    """Side-by-side figure of a class map: [image composite] | prediction | [ground truth | error map],
    one shared legend; with a ground truth also ``<output stem>_confusion.png`` (row-normalised,
    counted over every pixel by streaming, not on the decimated view); with a routing raster
    (``predict_scene(routing=…)``) also ``<output stem>_routing.png``, over the composite when an image
    is given.

    Class names come from ``classes`` (a file — see ``load_classes_file`` — or a list), else from the
    map's ``CLASS_NAMES`` tag; colours from the classes file, else the map's colour table.

    Refused with an ``InputError`` before anything is drawn: an output that is one of the inputs (or
    another output), a prediction that is not a single-band integer class map, and a prediction or
    ground truth holding values outside the class list (plus 255 / ``ignore_index``) — a metric over
    a label that does not fit the class list would be wrong. The figures are replaced together."""
    output = Path(output)
    ignore_index = check_int("--ignore-index", ignore_index, minimum=0, maximum=255)
    max_size = check_int("--max-size", max_size, minimum=1)
    if output.suffix.lower() != ".png":
        raise InputError(f"--output {output}: the figure is a PNG; give a path ending in .png")
    targets = {"--output": output}
    if ground_truth is not None:
        targets["confusion figure"] = output.with_name(f"{output.stem}_confusion.png")
    if routing is not None:
        targets["routing figure"] = output.with_name(f"{output.stem}_routing.png")
    inputs = {"--prediction": prediction, "--ground-truth": ground_truth, "--image": image, "--routing": routing}
    if isinstance(classes, (str, os.PathLike)):
        inputs["--classes"] = classes
    for flag, path in inputs.items():
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {path}: no such file")
    outputs = OutputSet(targets, inputs={k: Path(v) for k, v in inputs.items() if v is not None})
    outputs.check()

    map_names, map_palette = read_class_info(prediction)
    file_palette = None
    if isinstance(classes, (str, os.PathLike)):
        names, file_palette = load_classes_file(classes)
    elif classes is not None:
        names = [str(c) for c in classes]
    else:
        names = map_names
    if not names:
        raise InputError(f"{prediction}: no {CLASS_NAMES_TAG} tag; pass the class names (--classes FILE)")
    if len(names) > NODATA_CLASS:
        raise InputError(f"{len(names)} classes do not fit a uint8 class map (255 = nodata)")
    palette = list(file_palette or map_palette or default_palette(len(names)))[: len(names)]
    palette += default_palette(len(names))[len(palette):]
    check_class_values(class_value_counts(prediction, "--prediction"), len(names), NODATA_CLASS, "--prediction",
                       prediction)  # fmt: skip
    if ground_truth is not None:
        if _full_shape(ground_truth) != _full_shape(prediction):
            raise InputError(f"--ground-truth {ground_truth} is {_size(*_full_shape(ground_truth))} but "
                             f"{prediction} is {_size(*_full_shape(prediction))}")  # fmt: skip
        check_class_values(class_value_counts(ground_truth, "--ground-truth"), len(names), ignore_index,
                           "--ground-truth", ground_truth)  # fmt: skip
    if routing is not None and _full_shape(routing) != _full_shape(prediction):
        raise InputError(f"--routing {routing} is {_size(*_full_shape(routing))} but {prediction} "
                         f"is {_size(*_full_shape(prediction))}")  # fmt: skip

    pred = read_decimated(prediction, max_size=max_size, bands=[0])[0][0]
    panels: list[tuple[np.ndarray, str]] = []
    background = None
    if image is not None:
        with _open(image) as src:
            if (src.height, src.width) != _full_shape(prediction):
                raise InputError(f"--image {image} is {_size(src.height, src.width)} but {prediction} is "
                                 f"{_size(*_full_shape(prediction))}")  # fmt: skip
        raw, nodata = read_decimated(image, max_size=max_size, resampling="average")
        background, label = composite(raw, _image_wavelengths(sensor, wavelengths), mode=composite_mode,
                                      nodata=nodata)  # fmt: skip
        panels.append((background, f"{Path(image).name}: {label}"))
    panels.append((colorize(pred, palette), f"prediction ({Path(prediction).name})"))
    confusion = None
    accuracy = miou = None
    if ground_truth is not None:
        truth = read_decimated(ground_truth, max_size=max_size, bands=[0])[0][0]
        panels.append((colorize(truth, palette, nodata=ignore_index), f"ground truth ({Path(ground_truth).name})"))
        panels.append((error_map(pred, truth, ignore_index), "errors (red: wrong, grey: right)"))
        confusion = confusion_from_rasters(prediction, ground_truth, len(names), ignore_index=ignore_index)
        total = confusion.sum()
        accuracy = float(np.trace(confusion) / total) if total else float("nan")
        miou = _mean_iou(confusion)

    h, w = pred.shape
    panel_w = 4.5 * min(1.0, w / max(h, 1)) + 0.3
    panel_h = 4.5 * min(1.0, h / max(w, 1)) + 0.6
    fig = _figure(panel_w * len(panels) + 2.2, panel_h)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (rgba, title) in zip(axes, panels):
        _show(ax, rgba, title)
    add_legend(axes[-1], names, palette, title="classes")
    if accuracy is not None:
        fig.suptitle(f"overall accuracy {100 * accuracy:.1f} %, mIoU {100 * miou:.1f} % (all pixels)", fontsize=10)
    with outputs:
        save_figure(fig, outputs.temporary("--output"))
        if confusion is not None:
            plot_confusion(confusion, names, outputs.temporary("confusion figure"))
        if routing is not None:
            render_routing_map(routing, outputs.temporary("routing figure"), max_size=max_size, background=background,
                               title=Path(routing).name)  # fmt: skip
        outputs.commit()
    return VizResult(output, targets.get("confusion figure"), targets.get("routing figure"), confusion, list(names),
                     accuracy, miou)  # fmt: skip


def _size(height: int, width: int) -> str:
    """How messages give a raster's size: width first, as GIS tools do, and said so."""
    return f"{width} × {height} px (width × height)"


def _full_shape(path: PathLike) -> tuple[int, int]:
    with _open(path) as src:
        return int(src.height), int(src.width)


# ------------------------------------------------------------------------------------------ CLI
def _float_list(items: Sequence[str] | None) -> list[float] | None:
    """``--wavelengths 0.49 0.56`` or ``--wavelengths 0.49,0.56`` (``nan`` for a non-spectral band)."""
    if not items:
        return None
    values = [part for item in items for part in item.replace(",", " ").split()]
    try:
        return [float(v) for v in values]
    except ValueError as error:
        raise ValueError(f"--wavelengths expects numbers in µm, got {list(items)}") from error


def add_viz_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``spectralmoe viz`` (prediction [+ ground truth] [+ image] → figure [+ confusion matrix])."""
    p = subparsers.add_parser(
        "viz",
        help="side-by-side figure of a class map (+ image, ground truth, errors) and a confusion matrix",
        description="Draw a predicted class map next to an image composite (bands chosen by wavelength), the "
        "ground truth and an error map, with one legend; with a ground truth also write <output>_confusion.png "
        "(row-normalised, over every pixel). Large rasters are read decimated.",
    )
    p.add_argument("--prediction", required=True, type=Path, help="class map GeoTIFF (predict-scene output)")
    p.add_argument("--output", required=True, type=Path, help="figure PNG")
    p.add_argument("--ground-truth", type=Path, default=None, help="label raster on the same grid (255 = ignore)")
    p.add_argument("--image", type=Path, default=None, help="the input scene, for a colour composite")
    p.add_argument("--sensor", default=None, metavar="NAME|FILE.yaml",
                   help="sensor of --image (band wavelengths): a built-in name, e.g. gf2, or a sensor YAML file")
    p.add_argument("--wavelengths", nargs="+", default=None, metavar="UM",
                   help="centre wavelengths (µm) of --image's bands, in file order")
    p.add_argument("--composite", choices=["auto", "true", "false"], default="auto",
                   help="true colour, false colour (NIR,R,G) or auto: false colour when there is a NIR band")
    p.add_argument("--classes", type=Path, default=None,
                   help="class names: JSON list / spectralmoe.json / splits.json / one name a line "
                   "(default: the map's CLASS_NAMES tag)")
    p.add_argument("--routing", type=Path, default=None,
                   help="routing raster (predict-scene --routing): also write <output>_routing.png")
    p.add_argument("--max-size", type=int, default=1024, help="longest side of the drawn rasters (default 1024)")
    p.add_argument("--ignore-index", type=int, default=NODATA_CLASS, help="ground-truth value to ignore (255)")
    p.set_defaults(func=_run_viz)
    return p


def _run_viz(args: argparse.Namespace) -> int:
    result = viz_figure(
        args.prediction, args.output, ground_truth=args.ground_truth, image=args.image, sensor=args.sensor,
        wavelengths=_float_list(args.wavelengths), classes=args.classes, routing=args.routing,
        composite_mode=args.composite,
        max_size=args.max_size, ignore_index=args.ignore_index,
    )  # fmt: skip
    print(f"figure: {result.figure}")
    if result.routing_figure is not None:
        print(f"routing map: {result.routing_figure}")
    if result.confusion_figure is not None:
        print(f"confusion matrix: {result.confusion_figure}")
        print(f"overall accuracy {100 * result.overall_accuracy:.1f} %, mIoU {100 * result.mean_iou:.1f} % (percent, "
              "as every score the product prints)")
    return 0
