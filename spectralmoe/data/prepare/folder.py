"""``spectralmoe prepare folder``: a mapping team's own labelled GeoTIFFs → a prepared folder ready for ``fit``.

Why: the seven converters know the paper's benchmarks only. A team with its own tiles — one or
more domains (sites, sensors, years), each a folder of image GeoTIFFs and a parallel folder of
labels — needs the same prepared layout, ``splits.json`` with every domain's sensor record, band
statistics and a task, without writing any of them by hand.

What it does, in this order:

1. **Checks every file before writing anything** (nothing is written when one check fails; the
   error names the file): every image has a label with the same relative path and stem; images
   are readable GeoTIFFs with one band count and dtype per domain, at least 16 × 16 px; each label
   is one integer band of the image's size, on the image's CRS and transform when both are
   georeferenced; every label value (after ``label_offset``) is a class of the class list or 255
   (ignore); each domain's bands are known (``--sensor`` name or YAML file, ``--wavelengths``, or
   the images' band descriptions naming every band: "B,G,R,NIR", "Blue", "B08", "842 nm"…, or
   their wavelength metadata, read as ``predict-scene`` reads a scene: ``data.io.BandInfo``); and
   every domain's bands MATCH the model's (the first source domain's) by wavelength
   (``bands.match_bands``: within 60 nm; a missing band is an error naming the domain, the band
   and its wavelength).
2. **Hold-out**: ``holdout`` (e.g. 0.2) of each source domain's tiles (seeded draw) become a target
   domain ``<source>-holdout``, evaluated like any other target — the in-domain reference score.
3. **Statistics**: per-band mean/std over the valid pixels of the source training tiles, in the
   model's band order (streamed, ``data.stats``).
4. **Writes** into a staging folder renamed into ``out`` at the end: ``image/<domain>/<rel>.tif``
   (the files as they are, bytes copied: georeference, band descriptions and nodata kept),
   ``label/<domain>/<rel>.png`` (uint8 class indices, 255 = ignore, offset applied),
   ``splits.json``, ``stats.json``, ``task.yaml`` (a ``DGTask``: classes, palette, source sensor,
   mean/std, value scale, training pipeline with crop and zoom scaled to the tile size, schedule of
   ``epochs`` epochs, a validation every epoch but at most ten per run) and ``fit.yaml`` (the ``data:`` section for
   ``spectralmoe fit -c out/fit.yaml -c configs/methods/<method>.yaml``).

Value scale (the raw value of full brightness, used by the photometric augmentation's clipping
and the depth model's ``scale`` input): the sensor record's when one is given; else 255 for 8-bit
data, and for other data the smallest 2ᵏ − 1 at or above the largest source value (integers) or
the largest source value (floats; 1 when it is at most 1). ``value_scale`` overrides it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

__all__ = [
    "DomainSpec",
    "FolderPrepared",
    "add_prepare_folder_parser",
    "prepare_folder",
    "read_domains_file",
]

PathLike = str | os.PathLike[str]
Role = Literal["source", "target"]
IMAGE_SUFFIXES = (".tif", ".tiff")
LABEL_SUFFIXES = (".png", ".tif", ".tiff")
MIN_TILE = 16
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class DomainSpec:
    """One domain: a folder of image GeoTIFFs (searched recursively) and its parallel label folder.

    Args:
        name: domain name (letters, digits, ``_ . -``): the metric key and the folder in the output.
        images: image folder.
        labels: label folder (same relative path and stem as each image; ``.png``/``.tif``).
        role: ``source`` (trained on) or ``target`` (evaluated).
        sensor: a built-in sensor name or a sensor YAML file (``bands.load_sensor``).
        wavelengths: centre wavelength (µm) of each band in file order (``nan`` = non-spectral).
        value_scale: raw value of full brightness (default: the sensor's, else from the data).
    """

    name: str
    images: Path
    labels: Path
    role: Role = "target"
    sensor: str | None = None
    wavelengths: tuple[float, ...] | None = None
    value_scale: float | None = None


@dataclass
class _Tile:
    image: Path
    label: Path
    relative: str  # under the domain's folders, no suffix, "/"-separated
    bands: int = 0
    height: int = 0
    width: int = 0
    dtype: str = ""
    band_info: Any = None  # data.io.BandInfo: descriptions and wavelength metadata
    holdout: bool = False


@dataclass
class FolderPrepared:
    """What ``prepare_folder`` wrote (and why), for the command's report."""

    out: Path
    index: Any
    task: Any
    task_file: Path
    fit_file: Path
    stats_file: Path
    domains: dict[str, dict[str, Any]]
    seconds: float
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ input
def _scan(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    wanted = {s.lower() for s in suffixes}
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink() and p.suffix.lower() in wanted
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))  # fmt: skip


def _pair(spec: DomainSpec, image: Path) -> Path:
    stem = spec.labels / image.relative_to(spec.images).with_suffix("")
    found = [c for c in (stem.with_name(stem.name + s) for s in LABEL_SUFFIXES) if c.is_file()]
    if not found:
        raise FileNotFoundError(f"domain {spec.name!r}: image {image} has no label {stem}.png/.tif/.tiff in {spec.labels} "
                                "(labels pair with images by relative path and stem)")  # fmt: skip
    if len(found) > 1:
        raise ValueError(f"domain {spec.name!r}: image {image} has several labels {[str(f) for f in found]}")
    return found[0]


def _header(path: Path) -> dict[str, Any]:
    """Band count, size, dtype, CRS, transform of a raster (no pixel read)."""
    import warnings

    import rasterio

    from spectralmoe.data.io import RasterReadError, open_raw

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.Env(GDAL_PAM_ENABLED="NO"), open_raw(path, rasterio) as src:
                return {"count": src.count, "height": src.height, "width": src.width, "dtype": src.dtypes[0],
                        "crs": src.crs, "transform": src.transform, "nodata": src.nodata}  # fmt: skip
    except (rasterio.errors.RasterioError, OSError) as error:
        raise RasterReadError(f"{path}: unreadable raster ({error})") from error


def _georeferenced(facts: Mapping[str, Any]) -> bool:
    return facts["crs"] is not None and not facts["transform"].is_identity


def _check_pair(spec: DomainSpec, tile: _Tile) -> None:
    from spectralmoe.data.io import read_band_info

    image, label = _header(tile.image), _header(tile.label)
    tile.bands, tile.height, tile.width, tile.dtype = image["count"], image["height"], image["width"], image["dtype"]
    tile.band_info = read_band_info(tile.image)
    if min(tile.height, tile.width) < MIN_TILE:
        raise ValueError(f"domain {spec.name!r}: {tile.image} is {tile.width} × {tile.height} px; tiles must be at "
                         f"least {MIN_TILE} × {MIN_TILE} px")  # fmt: skip
    if label["count"] != 1:
        raise ValueError(f"domain {spec.name!r}: label {tile.label} has {label['count']} bands; a label is one band of "
                         "class indices")  # fmt: skip
    if (label["height"], label["width"]) != (tile.height, tile.width):
        raise ValueError(f"domain {spec.name!r}: image {tile.image} is {tile.width} × {tile.height} px but label "
                         f"{tile.label} is {label['width']} × {label['height']} px (width × height)")  # fmt: skip
    if _georeferenced(image) and _georeferenced(label):
        if image["crs"] != label["crs"]:
            raise ValueError(f"domain {spec.name!r}: image {tile.image} has CRS {image['crs']} but label {tile.label} "
                             f"has CRS {label['crs']}")  # fmt: skip
        if not image["transform"].almost_equals(label["transform"]):
            raise ValueError(f"domain {spec.name!r}: image {tile.image} and label {tile.label} are not on the same grid "
                             f"(transforms {tuple(image['transform'])[:6]} vs {tuple(label['transform'])[:6]})")  # fmt: skip


def _sensor(spec: DomainSpec, tiles: Sequence[_Tile]) -> tuple[Any, str]:
    """The domain's sensor record (value scale possibly provisional) and where its bands come from."""
    from spectralmoe.bands import Sensor, load_sensor

    first = tiles[0]
    counts = sorted({t.bands for t in tiles})
    if len(counts) > 1:
        odd = next(t for t in tiles if t.bands != first.bands)
        raise ValueError(f"domain {spec.name!r}: images have different band counts ({counts}): {first.image} has "
                         f"{first.bands}, {odd.image} has {odd.bands}")  # fmt: skip
    dtypes = sorted({t.dtype for t in tiles})
    if len(dtypes) > 1:
        odd = next(t for t in tiles if t.dtype != first.dtype)
        raise ValueError(f"domain {spec.name!r}: images have different data types {dtypes}: {first.image} is "
                         f"{first.dtype}, {odd.image} is {odd.dtype}")  # fmt: skip
    names = tuple(d or f"B{i + 1}" for i, d in enumerate(first.band_info.descriptions))
    scale = spec.value_scale if spec.value_scale is not None else (255.0 if first.dtype == "uint8" else 1.0)
    if spec.sensor is not None and spec.wavelengths is not None:
        raise ValueError(f"domain {spec.name!r}: give either a sensor or wavelengths, not both")
    if spec.sensor is not None:
        record = load_sensor(spec.sensor)
        how = f"sensor {record.name!r}" + (f" ({spec.sensor})" if record.name != spec.sensor else "")
        if spec.value_scale is not None:
            record = replace(record, value_scale=float(spec.value_scale))
    elif spec.wavelengths is not None:
        record = Sensor(spec.name, names, tuple(float(w) for w in spec.wavelengths), scale,
                        f"bands of domain {spec.name} (--wavelengths)")  # fmt: skip
        how = "--wavelengths"
    else:
        # what the files say, read as predict-scene reads a scene (data.io.BandInfo.wavelengths)
        for what, attribute in (("band descriptions", "descriptions"),
                                ("band wavelength metadata", "tag_wavelengths_um")):
            value = getattr(first.band_info, attribute)
            other = next((t for t in tiles if getattr(t.band_info, attribute) != value), None)
            if other is not None:
                raise ValueError(f"domain {spec.name!r}: {what} differ between {first.image} {list(value)} and "
                                 f"{other.image} {list(getattr(other.band_info, attribute))}; give --sensor or "
                                 "--wavelengths")  # fmt: skip
        described = first.band_info.wavelengths()
        if described is None:
            raise ValueError(f"domain {spec.name!r}: the bands of {first.image} are unknown — their descriptions "
                             f"{list(first.band_info.descriptions)} do not name every band (e.g. B,G,R,NIR, Blue, B08, "
                             "842 nm) and no wavelength metadata gives every band's; give --sensor NAME|FILE.yaml or "
                             "--wavelengths")  # fmt: skip
        waves, how = described
        record = Sensor(spec.name, names, waves, scale, f"bands of domain {spec.name} (from {how})")
    if record.num_bands != first.bands:
        raise ValueError(f"domain {spec.name!r}: {first.image} has {first.bands} bands but {how} describes "
                         f"{record.num_bands} {list(record.band_names)}")  # fmt: skip
    return record, how


def _classes(classes: Sequence[str] | PathLike | None) -> tuple[list[str] | None, list[tuple[int, int, int]] | None]:
    from spectralmoe.viz import load_classes_file

    if classes is None:
        return None, None
    if isinstance(classes, (str, os.PathLike)):
        names, palette = load_classes_file(classes)
        return list(names), palette
    return [str(c) for c in classes], None


def _label_values(tiles: Sequence[_Tile], lookup: Any, domain: str) -> Any:
    """Counts of every (mapped) label value over the domain's labels; full read of each label."""
    import numpy as np

    from spectralmoe.data.io import read_label

    counts = np.zeros(256, dtype=np.int64)
    per_file: list[tuple[Path, Any]] = []
    for tile in tiles:
        label = read_label(tile.label)
        if lookup is not None:
            label = lookup[label]
        file_counts = np.bincount(label.ravel(), minlength=256)
        counts += file_counts
        per_file.append((tile.label, file_counts))
    return counts, per_file


def _value_scale(dtype: str, maximum: float) -> float:
    import numpy as np

    if dtype == "uint8":
        return 255.0
    if np.issubdtype(np.dtype(dtype), np.integer):
        return float(2 ** max(1, math.ceil(math.log2(max(maximum, 1.0) + 1.0))) - 1)
    return 1.0 if maximum <= 1.0 else float(maximum)


# ------------------------------------------------------------------------------------------ main
def prepare_folder(
    domains: Sequence[DomainSpec],
    out: PathLike,
    *,
    classes: Sequence[str] | PathLike | None = None,
    label_offset: int = 0,
    holdout: float = 0.0,
    seed: int = 0,
    name: str | None = None,
    batch_size: int = 4,
    epochs: int = 20,
    max_iters: int | None = None,
    pipeline: Literal["A", "B", "flip", "none"] = "A",
    progress: bool = True,
) -> FolderPrepared:
    """Check every file, then write the prepared folder (see the module docstring). Returns what was written.

    Args:
        domains: the domains; at least one ``source``. Names must be unique.
        out: output folder: must not exist or be empty (written as a whole at the end).
        classes: class names in index order, or a file (one name a line, or JSON with ``classes`` and
            optional ``palette``). ``None``: ``class0..classK-1`` with K = the largest label value + 1.
        label_offset: subtracted from raw labels; raw values below it become 255 (``1``: 0 = unlabelled).
        holdout: fraction of each source domain's tiles held out as target ``<source>-holdout``.
        seed: seed of the hold-out draw.
        name: task and benchmark name (default: the output folder's name).
        batch_size: training batch of the task (and its evaluation batch).
        epochs: training length in epochs of the source training tiles (ignored with ``max_iters``).
        max_iters: training steps (default: ``epochs`` epochs).
        pipeline: training augmentation (``A``: zoom 0.6–1.2× of the tile, crop, flip, photometric; ``B``:
            zoom 0.5–2×; ``flip``; ``none``).
        progress: print progress to stderr.
    """
    import numpy as np

    from spectralmoe.bands import BandMismatchError, match_bands
    from spectralmoe.data.benchmarks import DGTask
    from spectralmoe.data.datasets.geotiff_folder import _default_palette, offset_lookup
    from spectralmoe.data.io import read_image, read_label
    from spectralmoe.data.layout import (IGNORE_INDEX, IMAGE_DIR, INDEX_FILE, LABEL_DIR, MARKER_FILE, PreparedIndex,
                                         TileRecord, write_label_tile)  # fmt: skip
    from spectralmoe.data.stats import RunningBandStats, _update
    from spectralmoe.files import atomic_write_bytes, follow_umask, staging_folder

    started = time.perf_counter()
    out = Path(out)
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if progress else (lambda text: None)
    # ---- arguments
    if not domains:
        raise ValueError("prepare folder: no domain given (--images DIR --labels DIR … per domain, or --domains FILE)")
    names = [d.name for d in domains]
    for spec in domains:
        if not _SAFE_NAME.match(spec.name) or spec.name.endswith("-holdout"):
            raise ValueError(f"domain name {spec.name!r}: use letters, digits, '_', '.', '-' (not ending in -holdout)")
        if spec.role not in ("source", "target"):
            raise ValueError(f"domain {spec.name!r}: role must be 'source' or 'target', got {spec.role!r}")
        for what, folder in (("images", spec.images), ("labels", spec.labels)):
            if not Path(folder).is_dir():
                raise FileNotFoundError(f"domain {spec.name!r}: {what} folder {folder} does not exist")
    if len(set(names)) != len(names):
        raise ValueError(f"domain names must be unique, got {names}")
    sources = [d for d in domains if d.role == "source"]
    if not sources:
        raise ValueError(f"no source domain among {names}: give one --role source (the first domain is the source "
                         "by default)")  # fmt: skip
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"--holdout must be in [0, 1), got {holdout}")
    if not any(d.role == "target" for d in domains) and holdout == 0.0:
        raise ValueError("nothing to evaluate: add a target domain (--role target) or hold out source tiles (--holdout)")
    if batch_size < 1 or epochs < 1 or (max_iters is not None and max_iters < 1):
        raise ValueError(f"need batch_size, epochs and max_iters >= 1, got {batch_size}, {epochs}, {max_iters}")
    task_name = name or out.resolve().name
    if not _SAFE_NAME.match(task_name):
        raise ValueError(f"task name {task_name!r}: use letters, digits, '_', '.', '-' (--name)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not an empty folder; choose a new output folder")
    class_names, palette = _classes(classes)
    lookup = offset_lookup(label_offset)

    # ---- 1. every file: pairs, headers, sensors, labels, bands
    tiles: dict[str, list[_Tile]] = {}
    sensors: dict[str, Any] = {}
    how: dict[str, str] = {}
    for spec in domains:
        images = _scan(Path(spec.images), IMAGE_SUFFIXES)
        if not images:
            raise ValueError(f"domain {spec.name!r}: no .tif/.tiff images in {spec.images} (searched recursively)")
        found = [_Tile(p, _pair(spec, p), p.relative_to(spec.images).with_suffix("").as_posix()) for p in images]
        stems: dict[str, Path] = {}
        for tile in found:
            if tile.relative in stems:
                raise ValueError(f"domain {spec.name!r}: {stems[tile.relative]} and {tile.image} share one stem (and "
                                 "so one label); rename one of them")  # fmt: skip
            stems[tile.relative] = tile.image
        for k, tile in enumerate(found):
            _check_pair(spec, tile)
            if progress and (k + 1) % 200 == 0:
                say(f"prepare folder: checked {k + 1}/{len(found)} tiles of {spec.name}")
        tiles[spec.name] = found
        sensors[spec.name], how[spec.name] = _sensor(spec, found)
    say(f"prepare folder: {sum(map(len, tiles.values()))} image/label pairs checked (headers)")

    label_counts: dict[str, Any] = {}
    for spec in domains:
        label_counts[spec.name] = _label_values(tiles[spec.name], lookup, spec.name)
    total = sum(c for c, _ in label_counts.values())
    present = [v for v in np.flatnonzero(total) if v != IGNORE_INDEX]
    notes: list[str] = []
    if class_names is None:
        if not present:
            raise ValueError("the labels hold no class value (only 255 = ignore)")
        class_names = [f"class{i}" for i in range(int(max(present)) + 1)]
        notes.append(f"no --classes: {len(class_names)} classes named class0..class{len(class_names) - 1} from the "
                     "largest label value")  # fmt: skip
    k = len(class_names)
    if not 1 <= k <= 255:
        raise ValueError(f"{k} classes; between 1 and 255 fit uint8 labels (255 = ignore)")
    for domain, (_, per_file) in label_counts.items():
        for path, counts in per_file:
            bad = [v for v in np.flatnonzero(counts) if k <= v < IGNORE_INDEX]
            if bad:
                offset = f" after subtracting label_offset {label_offset}" if label_offset else ""
                raise ValueError(f"domain {domain!r}: label {path} holds values {[int(v) for v in bad]}{offset}, "
                                 f"outside the {k} classes (0..{k - 1}; 255 = ignore)")  # fmt: skip
    if palette is None:
        palette = _default_palette(k)
    if len(palette) != k:
        raise ValueError(f"{len(palette)} palette colours for {k} classes")

    model_sensor = sensors[sources[0].name]
    model_waves = list(model_sensor.wavelengths_um)
    orders: dict[str, list[int]] = {}
    for spec in domains:
        record = sensors[spec.name]
        where = f"domain {spec.name!r} ({spec.images}, bands from {how[spec.name]})"
        try:
            orders[spec.name] = match_bands(model_waves, record.num_bands, sensor=record, where=where)
        except BandMismatchError as error:
            raise BandMismatchError(f"{error} — the model's bands are those of source domain {sources[0].name!r}: "
                                    f"{list(model_sensor.band_names)} {model_waves} µm") from None  # fmt: skip

    # ---- 2. hold-out
    rng = np.random.default_rng(seed)
    for spec in sources:
        found = tiles[spec.name]
        count = int(round(holdout * len(found)))
        if holdout > 0.0:
            count = max(count, 1)
        if count >= len(found):
            raise ValueError(f"source domain {spec.name!r}: holding out {count} of its {len(found)} tiles leaves none "
                             "to train on; lower --holdout or add tiles")  # fmt: skip
        for i in rng.permutation(len(found))[:count]:
            found[int(i)].holdout = True
    training = [(spec, t) for spec in sources for t in tiles[spec.name] if not t.holdout]
    train_tiles = [t for _, t in training]
    if len(train_tiles) < batch_size:
        raise ValueError(f"{len(train_tiles)} source training tiles, fewer than one batch of {batch_size} (--batch-size)")

    # ---- 3. statistics (source training tiles, model band order) and value scale
    running = RunningBandStats()
    dtype_max = -math.inf
    for n, (spec, tile) in enumerate(training):
        data = read_image(tile.image)
        array = data.array[orders[spec.name]]
        _update(running, array, data.nodata, str(tile.image))
        finite = array[np.isfinite(array)] if np.issubdtype(array.dtype, np.floating) else array
        if finite.size:
            dtype_max = max(dtype_max, float(finite.max()))
        if progress and (n + 1) % 200 == 0:
            say(f"prepare folder: statistics {n + 1}/{len(train_tiles)} tiles")
    stats = running.result()
    first = sources[0]
    if first.sensor is None and first.value_scale is None:
        sensors[first.name] = replace(sensors[first.name], value_scale=_value_scale(tiles[first.name][0].dtype, dtype_max))
    value_scale = sensors[first.name].value_scale
    for spec in domains:
        # other domains without a sensor record: the model's scale (they are fed raw values either way)
        if spec is not first and spec.sensor is None and spec.value_scale is None and tiles[spec.name][0].dtype != "uint8":
            sensors[spec.name] = replace(sensors[spec.name], value_scale=value_scale)
    for spec in domains:
        scale = sensors[spec.name].value_scale
        if scale != value_scale:
            notes.append(f"domain {spec.name!r}: value scale {scale:g} ({tiles[spec.name][0].dtype}) but the source's "
                         f"is {value_scale:g}: its raw values are fed unchanged (a different bit depth looks darker or "
                         "brighter to the model)")  # fmt: skip

    # ---- training facts scaled to the tiles
    tile_size = min(min(t.height, t.width) for t in train_tiles)
    crop = max(MIN_TILE, min(512, (tile_size // 16) * 16))
    scales = None
    if pipeline in ("A", "B"):
        low, high = (6, 12) if pipeline == "A" else (5, 20)
        scales = tuple(int(tile_size * x * 0.1) for x in range(low, high + 1))
    steps_per_epoch = max(1, len(train_tiles) // batch_size)
    iterations = int(max_iters) if max_iters is not None else steps_per_epoch * epochs
    task = DGTask(
        name=task_name, benchmark=task_name, classes=tuple(class_names), palette=tuple(tuple(c) for c in palette),
        source_sensors=tuple(dict.fromkeys(sensors[d.name].name for d in sources)),
        mean=tuple(round(v, 4) for v in stats.mean), std=tuple(round(max(v, 1e-6), 4) for v in stats.std),
        value_scale=float(value_scale), train_pipeline=pipeline, max_iters=iterations,
        val_interval=min(iterations, max(steps_per_epoch, math.ceil(iterations / 10))), crop_size=crop,
        batch_size=batch_size, devices=1,
        eval_batch_size=batch_size, source_domains=tuple(d.name for d in sources), target_domains=None,
        target_group_by="domain", band_matching="wavelength", resize_scales=scales,
        notes=f"prepared by `spectralmoe prepare folder`: sources {[d.name for d in sources]}, tiles of "
        f"{tile_size} px (crop {crop}, zoom scales {list(scales) if scales else None}), {len(train_tiles)} training "
        f"tiles, {steps_per_epoch} steps per epoch at batch {batch_size}",
    )  # fmt: skip

    # sensor records: one per distinct record (a built-in used by two domains is one record)
    records: dict[str, Any] = {}
    sensor_of: dict[str, str] = {}
    for spec in domains:
        record = sensors[spec.name]
        key = record.name
        if key in records and records[key] != record:
            key = f"{record.name}-{spec.name}"
            record = replace(record, name=key)
        records[key] = record
        sensor_of[spec.name] = key
    if sensor_of[sources[0].name] != task.source_sensors[0] or any(
        sensor_of[d.name] not in task.source_sensors for d in sources
    ):
        task = replace(task, source_sensors=tuple(dict.fromkeys(sensor_of[d.name] for d in sources)))

    # ---- 4. write (staging folder, renamed into place at the end)
    staging = staging_folder(out)
    try:
        tile_records: list[TileRecord] = []
        written = 0
        for spec in domains:
            for tile in tiles[spec.name]:
                image_rel = f"{IMAGE_DIR}/{spec.name}/{tile.relative}.tif"
                label_rel = f"{LABEL_DIR}/{spec.name}/{tile.relative}.png"
                (staging / image_rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(tile.image, staging / image_rel)
                label = read_label(tile.label)
                write_label_tile(staging / label_rel, lookup[label] if lookup is not None else label)
                held = spec.role == "source" and tile.holdout
                domain = f"{spec.name}-holdout" if held else spec.name
                split = "source" if spec.role == "source" and not held else "target"
                attributes = {"origin_domain": spec.name, "source_file": str(tile.image)}
                if held:
                    attributes["holdout"] = "true"
                tile_records.append(TileRecord(image_rel, label_rel, split, domain, sensor_of[spec.name], attributes))
                written += 1
                if progress and written % 200 == 0:
                    say(f"prepare folder: wrote {written} tiles")
        index = PreparedIndex(
            benchmark=task_name, classes=list(class_names), palette=[tuple(c) for c in palette], sensors=records,
            tiles=tile_records,
            options={"prepared_by": "spectralmoe prepare folder", "label_offset": label_offset, "holdout": holdout,
                     "seed": seed, "domains": {d.name: {"role": d.role, "images": str(Path(d.images).resolve()),
                                                        "labels": str(Path(d.labels).resolve()),
                                                        "bands_from": how[d.name],
                                                        "model_bands_from_file_bands": [b + 1 for b in orders[d.name]]}
                                               for d in domains}},
        )  # fmt: skip
        index.validate(str(out / INDEX_FILE))
        index.save(staging)
        atomic_write_bytes(staging / MARKER_FILE, f"{task_name}\n".encode())
        stats_payload = {
            "scope": "source training tiles (hold-out excluded), valid pixels, in the model's band order",
            "band_names": list(model_sensor.band_names), "wavelengths_um": model_waves, "mean": stats.mean,
            "std": stats.std, "minimum": stats.minimum, "maximum": stats.maximum, "pixels": stats.count,
            "tiles": stats.tiles, "value_scale": value_scale,
        }  # fmt: skip
        atomic_write_bytes(staging / "stats.json", (json.dumps(stats_payload, indent=2) + "\n").encode())
        task_file, fit_file = out.resolve() / "task.yaml", out.resolve() / "fit.yaml"
        header = (f"# DG task written by `spectralmoe prepare folder` ({time.strftime('%Y-%m-%d %H:%M')}).\n"
                  f"# Use: spectralmoe fit -c {fit_file} -c configs/methods/<method>.yaml\n")  # fmt: skip
        atomic_write_bytes(staging / "task.yaml", (header + task.to_yaml()).encode())
        fit = {
            "seed_everything": 42,
            "data": {"root": str(out.resolve()), "task": str(task_file), "batch_size": batch_size,
                     "eval_batch_size": batch_size, "num_workers": 2, "seed": 42},
        }  # fmt: skip
        import yaml

        fit_text = (f"# spectralmoe fit -c {fit_file} -c configs/methods/spectralmoe_synthetic.yaml  (CPU try)\n"
                    f"# spectralmoe fit -c {fit_file} -c configs/methods/spectralmoe_dinov3-vitl16.yaml  (the paper's)\n"
                    "# The schedule comes from task.yaml (max_iters, val_interval) unless --trainer.max_steps is given.\n"
                    + yaml.safe_dump(fit, sort_keys=False))  # fmt: skip
        atomic_write_bytes(staging / "fit.yaml", fit_text.encode())
        follow_umask(staging)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    summary = {
        spec.name: {
            "role": spec.role, "tiles": len(tiles[spec.name]),
            "holdout": sum(t.holdout for t in tiles[spec.name]) if spec.role == "source" else 0,
            "sensor": sensor_of[spec.name], "bands_from": how[spec.name],
            "band_names": list(sensors[spec.name].band_names),
            "model_bands_from_file_bands": [b + 1 for b in orders[spec.name]],
            "size": f"{tiles[spec.name][0].width} × {tiles[spec.name][0].height} px",
        }
        for spec in domains
    }  # fmt: skip
    return FolderPrepared(out, index, task, out / "task.yaml", out / "fit.yaml", out / "stats.json", summary,
                          time.perf_counter() - started, notes)  # fmt: skip


# ------------------------------------------------------------------------------------------- YAML
def _within(base: Path, text: str, where: str) -> Path:
    """A path from a domains file: absolute as given, relative to the file's folder, never through ``..``."""
    path = Path(text)
    if path.is_absolute():
        return path
    if ".." in path.parts:
        raise ValueError(f"{where}: relative path {text!r} leaves the file's folder ('..'); give an absolute path")
    return base / path


def read_domains_file(path: PathLike) -> dict[str, Any]:
    """A domains YAML: ``domains:`` (list of ``name``, ``images``, ``labels``, ``role``, ``sensor`` |
    ``wavelengths``, ``value_scale``) and optional ``classes``, ``label_offset``, ``holdout``, ``seed``,
    ``name``, ``batch_size``, ``epochs``, ``max_iters``, ``pipeline``. Relative paths are relative to the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"domains file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"domains file {path}: not valid YAML ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("domains"), list) or not data["domains"]:
        raise ValueError(f"domains file {path}: needs a non-empty list under `domains:`")
    top = {"domains", "classes", "label_offset", "holdout", "seed", "name", "batch_size", "epochs", "max_iters",
           "pipeline"}  # fmt: skip
    unknown = sorted(set(data) - top)
    if unknown:
        raise ValueError(f"domains file {path}: unknown key(s) {unknown}; known: {sorted(top)}")
    base = path.parent
    specs = []
    keys = {"name", "images", "labels", "role", "sensor", "wavelengths", "value_scale"}
    for i, item in enumerate(data["domains"]):
        where = f"domains file {path}, domain {i + 1}"
        if not isinstance(item, dict) or not {"name", "images", "labels"} <= set(item):
            raise ValueError(f"{where}: needs `name`, `images` and `labels`")
        extra = sorted(set(item) - keys)
        if extra:
            raise ValueError(f"{where}: unknown key(s) {extra}; known: {sorted(keys)}")
        sensor = item.get("sensor")
        if isinstance(sensor, str) and sensor.lower().endswith((".yaml", ".yml", ".json")):
            sensor = str(_within(base, sensor, where))
        waves = item.get("wavelengths")
        specs.append(DomainSpec(
            name=str(item["name"]), images=_within(base, str(item["images"]), where),
            labels=_within(base, str(item["labels"]), where),
            role=item.get("role", "source" if i == 0 else "target"), sensor=sensor,
            wavelengths=None if waves is None else tuple(float("nan") if w is None else float(w) for w in waves),
            value_scale=item.get("value_scale"),
        ))  # fmt: skip
    options = {k: v for k, v in data.items() if k != "domains"}
    if isinstance(options.get("classes"), str):
        options["classes"] = str(_within(base, options["classes"], f"domains file {path}"))
    return {"domains": specs, **options}


# -------------------------------------------------------------------------------------------- CLI
_DOMAIN_KEYS = ("labels", "sensor", "wavelengths", "domain", "role", "value_scale")


class _DomainAction(argparse.Action):
    """``--images`` opens a new domain; ``--labels/--sensor/--wavelengths/--domain/--role/--value-scale``
    describe the domain opened last (each once)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:  # fmt: skip
        groups = getattr(namespace, "domain_groups", None) or []
        if self.dest == "images":
            groups.append({"images": values})
        else:
            if not groups:
                parser.error(f"{option_string} comes before any --images: start each domain with --images DIR")
            if self.dest in groups[-1]:
                parser.error(f"{option_string} given twice for the domain of --images {groups[-1]['images']}; "
                             "start the next domain with --images")  # fmt: skip
            groups[-1][self.dest] = values
        namespace.domain_groups = groups


def add_prepare_folder_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``spectralmoe prepare folder``."""
    p = subparsers.add_parser(
        "folder",
        help="your own labelled GeoTIFF folders (one or more domains) → prepared folder, task and fit config",
        description="Prepare your own labelled GeoTIFFs for `spectralmoe fit`. Give each domain as "
        "--images DIR --labels DIR [--sensor NAME|FILE.yaml | --wavelengths UM ...] [--domain NAME] [--role source|"
        "target] (repeat per domain; the first is the source unless --role says otherwise), or list them in a "
        "--domains YAML file. Every file is checked before anything is written: pairs, sizes, band counts, CRS of "
        "image vs label, label values vs classes, and every domain's bands against the source's by wavelength. "
        "Writes OUT/{image,label}/<domain>/..., splits.json, stats.json, task.yaml and fit.yaml.",
    )
    p.add_argument("--images", action=_DomainAction, type=Path, metavar="DIR", help="image GeoTIFF folder: starts a domain")
    p.add_argument("--labels", action=_DomainAction, type=Path, metavar="DIR",
                   help="label folder of this domain (same relative path and stem as each image; .png/.tif)")
    p.add_argument("--sensor", action=_DomainAction, metavar="NAME|FILE.yaml",
                   help="this domain's sensor: built-in name or sensor YAML (default: the images' band descriptions "
                        "or wavelength metadata)")
    p.add_argument("--wavelengths", action=_DomainAction, nargs="+", metavar="UM",
                   help="this domain's band centre wavelengths in µm, file order (nan = non-spectral)")
    p.add_argument("--domain", action=_DomainAction, metavar="NAME", help="this domain's name (default: the image "
                   "folder's name, or its parent's when that is 'images')")
    p.add_argument("--role", action=_DomainAction, choices=["source", "target"],
                   help="this domain's role (default: the first domain is the source, the others targets)")
    p.add_argument("--value-scale", action=_DomainAction, type=float, metavar="V",
                   help="this domain's raw value of full brightness (default: the sensor's, else from the data)")
    p.add_argument("--domains", type=Path, default=None, metavar="FILE.yaml",
                   help="YAML listing the domains (instead of --images …); see `spectralmoe.data.prepare.folder`")
    p.add_argument("--classes", type=Path, default=None,
                   help="class names, one a line (or JSON with classes/palette); default class0..classK-1")
    p.add_argument("--label-offset", type=int, default=None,
                   help="subtract from raw labels; raw values below it become 255 = ignore (1: 0 is unlabelled)")
    p.add_argument("--holdout", type=float, default=None,
                   help="fraction of each source domain's tiles evaluated as target <source>-holdout (e.g. 0.2)")
    p.add_argument("--seed", type=int, default=None, help="seed of the hold-out draw (default 0)")
    p.add_argument("--name", default=None, help="task name (default: the output folder's name)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch of the task (default 4)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs of the task's schedule (default 20)")
    p.add_argument("--max-iters", type=int, default=None, help="training steps (instead of --epochs)")
    p.add_argument("--pipeline", choices=["A", "B", "flip", "none"], default=None,
                   help="training augmentation (default A: zoom 0.6-1.2x of the tile size, crop, flip, photometric)")
    p.add_argument("--out", required=True, type=Path, help="output folder (new or empty)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_run_prepare_folder, domain_groups=None)
    return p


def _default_domain_name(images: Path) -> str:
    folder = images.resolve()
    name = folder.parent.name if folder.name.lower() in ("images", "image", "img") else folder.name
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "domain"


def _run_prepare_folder(args: argparse.Namespace) -> int:
    from spectralmoe.viz import _float_list

    options: dict[str, Any] = {}
    if args.domains is not None:
        if args.domain_groups:
            raise ValueError("give the domains either with --images … or in --domains FILE, not both")
        options = read_domains_file(args.domains)
        specs = options.pop("domains")
    else:
        if not args.domain_groups:
            raise ValueError("no domain: give --images DIR --labels DIR per domain (or --domains FILE.yaml)")
        specs = []
        for i, group in enumerate(args.domain_groups):
            if "labels" not in group:
                raise ValueError(f"the domain of --images {group['images']} has no --labels")
            waves = _float_list(group["wavelengths"]) if "wavelengths" in group else None
            specs.append(DomainSpec(
                name=group.get("domain") or _default_domain_name(group["images"]), images=group["images"],
                labels=group["labels"], role=group.get("role") or ("source" if i == 0 else "target"),
                sensor=group.get("sensor"), wavelengths=None if waves is None else tuple(waves),
                value_scale=group.get("value_scale"),
            ))  # fmt: skip
    for key in ("classes", "label_offset", "holdout", "seed", "name", "batch_size", "epochs", "max_iters", "pipeline"):
        value = getattr(args, key)
        if value is not None:
            options[key] = value
    done = prepare_folder(specs, args.out, progress=not args.quiet, **options)
    task = done.task
    print(f"prepare folder: {len(done.index.tiles)} tiles of {len(done.domains)} domain(s) in {done.out} "
          f"({done.seconds:.1f} s)")
    for name, facts in done.domains.items():
        held = f", {facts['holdout']} held out as {name}-holdout" if facts["holdout"] else ""
        order = ", ".join(str(b) for b in facts["model_bands_from_file_bands"])
        print(f"  {name:<20} {facts['role']:<6} {facts['tiles']:>6} tiles{held}; {facts['size']}; bands from "
              f"{facts['bands_from']}; the model reads file bands {order}")  # fmt: skip
    print(f"  classes ({task.num_classes}): {', '.join(task.classes)}")
    print(f"  mean {list(task.mean)}  std {list(task.std)}  value scale {task.value_scale:g}")
    print(f"  training: crop {task.crop_size} px, zoom shortest edge to {list(task.resize_scales or [])} px, "
          f"{task.max_iters} steps, validation every {task.val_interval} steps (task.yaml)")
    for note in done.notes:
        print(f"  note: {note}")
    print("next:")
    print(f"  spectralmoe fit -c {done.fit_file} -c configs/methods/spectralmoe_synthetic.yaml   # a CPU try")
    print(f"  spectralmoe fit -c {done.fit_file} -c configs/methods/spectralmoe_dinov3-vitl16.yaml   # the paper's model")
    return 0
