"""Pre-flight validation: every tile a run will read, checked before the first step.

Why: a bad tile (label value outside the class list, image/label of different sizes or grids, a
truncated file, a band count the sensor does not have) used to surface only when that tile was
first loaded — after steps and checkpoints, one file at a time. ``validate_tiles`` reads what is
cheap to read for every (image, label) pair — image headers, a small central window and the last
row of each image (a truncated file fails there), the full label (its value histogram) — and raises
ONE error listing every bad file.

Facts are cached per file by (size, mtime) in ``<root>/.spectralmoe-validation.json`` (or, when the
root is read-only, under ``$SPECTRALMOE_CACHE/validation/``), so a second run over ten thousand
tiles costs one ``stat`` per file. The checks themselves (against the sensor, class count and
normalisation of this run) are recomputed every time from the cached facts.

Aggregate checks over the source tiles (what training reads): at least one labelled, valid pixel
(an all-NaN or all-ignore source set would train on nothing), and sampled values that fit the
task's normalisation (float 0..1 reflectance under a ×10⁴ value scale is refused).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from spectralmoe.errors import InputError, InputWarning

__all__ = ["DataValidationError", "TileCheck", "ValidationReport", "validate_tiles"]

CACHE_FILE = ".spectralmoe-validation.json"
CACHE_FORMAT = "spectralmoe-validation/1"
IGNORE_INDEX = 255
#: Side of the central window of each image read for the value sample.
SAMPLE_SIZE = 32
#: Sampled values whose spread differs from the normalisation's by more than this factor, with a mean
#: more than ``UNIT_SHIFT_STD`` std away, are in other units than the statistics (e.g. 0..1 vs ×10⁴).
UNIT_RATIO = 100.0
UNIT_SHIFT_STD = 1.5
#: Problems listed in full in one error (the rest are counted).
MAX_LISTED = 50


class DataValidationError(InputError):
    """One or more tiles a run would read are unusable; the message lists every one."""


@dataclass(frozen=True)
class TileCheck:
    """One (image, label) pair to check, with what this run expects of it."""

    image: Path
    label: Path | None
    num_bands: int
    split: str = "source"
    sensor: str = ""
    #: 0-based file bands fed to the model, in the model's order (None: file order)
    band_order: tuple[int, ...] | None = None


@dataclass
class ValidationReport:
    """What the pass found (when nothing was wrong enough to refuse)."""

    tiles: int
    read: int
    cached: int
    #: (height, width) of the smallest target tile (evaluation runs whole tiles), if any
    smallest: tuple[int, int] | None
    labelled_source_pixels: int
    warnings: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------- file facts
def _fingerprint(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return [int(stat.st_size), int(stat.st_mtime_ns)]


def _georef(src: Any) -> dict[str, Any]:
    transform = src.transform
    identity = transform is None or transform.is_identity
    return {"crs": src.crs.to_wkt() if src.crs else None,
            "transform": None if identity else [float(v) for v in tuple(transform)[:6]]}  # fmt: skip


def _image_facts(path: Path) -> dict[str, Any]:
    """Header facts, the last row (truncation), and a central sample window of an image."""
    import rasterio
    from rasterio.windows import Window

    from spectralmoe.data.io import honoured_mask, open_raw

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.Env(GDAL_PAM_ENABLED="NO"), open_raw(path, rasterio) as src:
            height, width = src.height, src.width
            src.read(window=Window(0, height - 1, width, 1))
            size_h, size_w = min(SAMPLE_SIZE, height), min(SAMPLE_SIZE, width)
            window = Window((width - size_w) // 2, (height - size_h) // 2, size_w, size_h)
            sample = src.read(window=window).astype(np.float64)
            masked = honoured_mask(src, None)  # an explicit mask band; "alpha" may be a spectral band
            valid = np.isfinite(sample).all(0)
            if src.nodata is not None and not math.isnan(src.nodata):
                valid &= ~(sample == src.nodata).all(0)
            if masked:
                valid &= src.read_masks(1, window=window) > 0
            values = sample[:, valid]
            return {
                "count": int(src.count), "height": int(height), "width": int(width), "dtype": str(src.dtypes[0]),
                **_georef(src),
                "sample": {"pixels": int(valid.size), "valid": int(valid.sum()),
                           "sum": values.sum(1).tolist(), "sumsq": np.square(values).sum(1).tolist()},
            }  # fmt: skip


def _label_facts(path: Path) -> dict[str, Any]:
    """Size, georeference (GeoTIFF labels) and the value histogram of an index label."""
    from spectralmoe.data.io import RASTERIO_SUFFIXES, read_label

    label = read_label(path)
    histogram = np.bincount(label.ravel(), minlength=256)
    facts: dict[str, Any] = {"height": int(label.shape[0]), "width": int(label.shape[1]),
                             "histogram": {str(v): int(c) for v, c in enumerate(histogram) if c}}  # fmt: skip
    if path.suffix.lower() in RASTERIO_SUFFIXES:
        import rasterio

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                facts.update(_georef(src))
    return facts


def _facts(path: Path, kind: str) -> dict[str, Any]:
    """Facts of one file, or ``{"error": message}`` (the message names the file)."""
    from spectralmoe.errors import describe

    if not path.is_file():
        return {"error": f"{path}: no such file"}
    try:
        return _image_facts(path) if kind == "image" else _label_facts(path)
    except Exception as error:  # noqa: BLE001 - any reader failure is this file's problem
        text = describe(error).splitlines()[0]
        return {"error": text if str(path) in text else f"{path}: unreadable or truncated ({text})"}


# ---------------------------------------------------------------------------------------- cache
def _cache_location(root: Path) -> Path:
    if os.access(root, os.W_OK):
        return root / CACHE_FILE
    base = Path(os.environ.get("SPECTRALMOE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or
                                                             Path.home() / ".cache") / "spectralmoe")  # fmt: skip
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    return base / "validation" / f"{digest}.json"


def _load_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("files"), dict):
        return {}
    return data["files"]


def _save_cache(path: Path, files: dict[str, Any]) -> None:
    from spectralmoe.outputs import atomic_write_bytes

    try:
        atomic_write_bytes(path, json.dumps({"format": CACHE_FORMAT, "files": files}).encode())
    except OSError:
        pass  # a cache that cannot be written only costs time


# ---------------------------------------------------------------------------------------- checks
def _same_grid(image: dict[str, Any], label: dict[str, Any]) -> bool:
    if label.get("crs") is None or image.get("crs") is None:
        return True  # PNG labels carry no georeference: only the size can be compared
    if label.get("transform") is None or image.get("transform") is None:
        return label["crs"] == image["crs"]
    if label["crs"] != image["crs"]:
        from rasterio.crs import CRS

        if CRS.from_wkt(label["crs"]) != CRS.from_wkt(image["crs"]):
            return False
    a, b = np.asarray(image["transform"]), np.asarray(label["transform"])
    pixel = max(abs(a[0]), abs(a[4]), 1e-12)
    return bool(np.allclose(a[[0, 1, 3, 4]], b[[0, 1, 3, 4]], rtol=1e-6, atol=1e-9)
                and abs(a[2] - b[2]) < 1e-3 * pixel and abs(a[5] - b[5]) < 1e-3 * pixel)  # fmt: skip


def _pair_problems(check: TileCheck, image: dict[str, Any], label: dict[str, Any] | None, num_classes: int | None,
                   label_lookup: np.ndarray | None) -> list[str]:  # fmt: skip
    problems = []
    if "error" in image:
        problems.append(image["error"])
    elif image["count"] != check.num_bands:
        problems.append(f"{check.image}: {image['count']} bands but sensor {check.sensor!r} has {check.num_bands}")
    if label is None:
        return problems
    if "error" in label:
        problems.append(label["error"])
        return problems
    if "error" not in image:
        if (image["height"], image["width"]) != (label["height"], label["width"]):
            problems.append(f"{check.label}: {label['height']}x{label['width']} but its image {check.image} is "
                            f"{image['height']}x{image['width']}")  # fmt: skip
        elif not _same_grid(image, label):
            problems.append(f"{check.label}: not on the grid of its image {check.image} (CRS or transform differ: "
                            f"label origin {label.get('transform')}, image origin {image.get('transform')})")  # fmt: skip
    if num_classes is not None:
        values = [int(v) for v in label["histogram"]]
        if label_lookup is not None:
            values = sorted({int(label_lookup[v]) for v in values})
        bad = [v for v in values if v >= num_classes and v != IGNORE_INDEX]
        if bad:
            problems.append(f"{check.label}: label values {bad} outside the class table (0..{num_classes - 1}, "
                            f"{IGNORE_INDEX} = ignore)")  # fmt: skip
    return problems


def _labelled(label: dict[str, Any] | None, num_classes: int | None, lookup: np.ndarray | None) -> int:
    if not label or "error" in label or num_classes is None:
        return 0
    total = 0
    for value, count in label["histogram"].items():
        mapped = int(lookup[int(value)]) if lookup is not None else int(value)
        if mapped < num_classes and mapped != IGNORE_INDEX:
            total += int(count)
    return total


def _unit_problem(images: list[dict[str, Any]], mean: Sequence[float], std: Sequence[float], what: str
                  ) -> str | None:  # fmt: skip
    """Sampled values in other units than the normalisation (every band off in spread and mean)."""
    usable = [f["sample"] for f in images if "error" not in f and f["sample"]["valid"] and
              len(f["sample"]["sum"]) == len(mean)]  # fmt: skip
    count = sum(s["valid"] for s in usable)
    if not usable or count < 16:
        return None
    total = np.sum([s["sum"] for s in usable], axis=0)
    squares = np.sum([s["sumsq"] for s in usable], axis=0)
    sample_mean = total / count
    sample_std = np.sqrt(np.maximum(squares / count - sample_mean**2, 0.0))
    mean_t, std_t = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    ratio = np.maximum(sample_std, 1e-12) / std_t
    off = ((ratio < 1 / UNIT_RATIO) | (ratio > UNIT_RATIO)) & (np.abs(sample_mean - mean_t) > UNIT_SHIFT_STD * std_t)
    if not off.all():
        return None
    bands = ", ".join(f"band {b + 1}: {m:.4g} ± {s:.3g} vs {mt:.4g} ± {st:.3g}" for b, (m, s, mt, st) in
                      enumerate(zip(sample_mean, sample_std, mean_t, std_t)))  # fmt: skip
    return (f"{what}: sampled pixel values do not fit the normalisation in any band ({bands}); the data look like "
            "they are in other units than the statistics (reflectance 0..1 vs ×10⁴, another bit depth?) or hold "
            "undeclared fill values")


def _in_model_order(image: dict[str, Any], order: Sequence[int] | None) -> dict[str, Any]:
    """An image's facts with its sampled band sums in the model's band order (sensors of one task may
    store their bands in different orders; the statistics are the model's)."""
    if order is None or "sample" not in image:
        return image
    sample = image["sample"]
    return {**image, "sample": {**sample, "sum": [sample["sum"][b] for b in order],
                                "sumsq": [sample["sumsq"][b] for b in order]}}  # fmt: skip


def validate_tiles(
    root: str | os.PathLike[str],
    checks: Sequence[TileCheck],
    *,
    num_classes: int | None,
    label_lookup: np.ndarray | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    workers: int = 4,
) -> ValidationReport:
    """Check every pair of ``checks`` (see the module docstring); raise ``DataValidationError`` listing
    every problem, or return a ``ValidationReport`` (aggregate warnings included, also issued as
    ``InputWarning``)."""
    root = Path(root)
    cache_path = _cache_location(root)
    cache = _load_cache(cache_path)
    wanted: dict[str, tuple[Path, str]] = {}
    for check in checks:
        wanted.setdefault(str(check.image), (check.image, "image"))
        if check.label is not None:
            wanted.setdefault(str(check.label), (check.label, "label"))

    def key(path: Path) -> str:
        try:
            return path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            return str(path.resolve())

    facts: dict[str, dict[str, Any]] = {}
    missing: list[tuple[str, Path, str, list[int] | None]] = []
    for name, (path, kind) in wanted.items():
        stamp = _fingerprint(path)
        entry = cache.get(key(path))
        if stamp is not None and isinstance(entry, dict) and entry.get("key") == stamp and entry.get("kind") == kind:
            facts[name] = entry["facts"]
        else:
            missing.append((name, path, kind, stamp))
    if missing:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(missing)))) as pool:
            results = list(pool.map(lambda item: _facts(item[1], item[2]), missing))
        for (name, path, kind, stamp), result in zip(missing, results):
            facts[name] = result
            if stamp is not None and "error" not in result:
                cache[key(path)] = {"key": stamp, "kind": kind, "facts": result}
        _save_cache(cache_path, cache)

    problems: list[str] = []
    smallest: tuple[int, int] | None = None
    labelled = 0
    for check in checks:
        image = facts[str(check.image)]
        label = facts[str(check.label)] if check.label is not None else None
        found = _pair_problems(check, image, label, num_classes, label_lookup)
        problems.extend(p for p in found if p not in problems)
        if "error" not in image and check.split != "source":  # evaluation tiles run whole
            side = (image["height"], image["width"])
            smallest = side if smallest is None or min(side) < min(smallest) else smallest
        if check.split == "source":
            labelled += _labelled(label, num_classes, label_lookup)
    if problems:
        listed = problems[:MAX_LISTED]
        more = f"\n… and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        head = listed[0] if len(problems) == 1 else (
            f"{len(problems)} problems in the tiles under {root} (every one listed):")
        body = "" if len(problems) == 1 else "\n" + "\n".join(listed)
        raise DataValidationError(head + body + more)

    source = [c for c in checks if c.split == "source"]
    notes: list[str] = []
    if source and num_classes is not None and labelled == 0:
        raise DataValidationError(f"{root}: the {len(source)} source tiles hold no labelled pixel (every label is "
                                  f"{IGNORE_INDEX} = ignore or outside the class table): nothing to train on")  # fmt: skip
    source_images = [_in_model_order(facts[str(c.image)], c.band_order) for c in source]
    if source_images and all(f["sample"]["valid"] == 0 for f in source_images):
        raise DataValidationError(f"{root}: the sampled centre of every one of the {len(source)} source images is "
                                  "NaN / nodata: nothing valid to train on")  # fmt: skip
    if mean is not None and std is not None:
        problem = _unit_problem(source_images, mean, std, f"{root} source tiles")
        if problem:
            raise DataValidationError(problem)
        target_images = [_in_model_order(facts[str(c.image)], c.band_order) for c in checks if c.split != "source"]
        problem = _unit_problem(target_images, mean, std, f"{root} target tiles")
        if problem:
            notes.append(problem)
            warnings.warn(InputWarning(problem), stacklevel=2)
    return ValidationReport(len(checks), len(missing), len(wanted) - len(missing), smallest, labelled, notes)
