"""The dataset over a prepared benchmark root — one class reads every benchmark.

Every converter (``spectralmoe prepare``) writes the same layout (``spectralmoe.data.layout``), so
a single reader serves WHU-OHS, FBP, FLAIR, LoveDA, Potsdam→Vaihingen and OpenEarthMap alike. The
per-benchmark facts (band order, classes, label mapping, DG split) live in the converters and in
``splits.json``; DATA.md documents them.

The sample builder ``load_sample`` is shared with ``GeoTiffFolder`` so a user's own data is
validated exactly like a benchmark.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from spectralmoe.bands import Sensor
from spectralmoe.data.io import read_image, read_label
from spectralmoe.data.layout import IGNORE_INDEX, INDEX_FILE, PreparedIndex, Split, TileRecord

__all__ = ["PreparedDataset", "load_sample", "invalid_pixels", "check_files_exist", "IGNORE_INDEX"]

Sample = dict[str, Any]


def check_files_exist(paths: Iterable[Path], what: str) -> None:
    """Raise ``FileNotFoundError`` listing (up to 10 of) the missing ``paths`` and their count."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        shown = "\n  ".join(missing[:10])
        more = f"\n  … and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise FileNotFoundError(f"{what}: {len(missing)} listed file(s) missing:\n  {shown}{more}")


def invalid_pixels(array: np.ndarray, nodata: float | None, valid: np.ndarray | None = None) -> np.ndarray | None:
    """``[H, W]`` bool of pixels that carry no data: any band NaN/±inf, ALL bands equal ``nodata``, or
    ``valid`` False (the file's own mask band, ``RasterData.valid``).

    Returns ``None`` when every pixel is valid (the common case, so callers skip the masking).
    """
    invalid = None if valid is None or valid.all() else ~valid
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array).all(axis=0)
        if not finite.all():
            invalid = ~finite if invalid is None else invalid | ~finite
    if nodata is not None and not math.isnan(nodata):
        representable = True
        if np.issubdtype(array.dtype, np.integer):
            info = np.iinfo(array.dtype)
            representable = float(nodata).is_integer() and info.min <= nodata <= info.max
        if representable:
            nodata_px = (array == array.dtype.type(nodata)).all(axis=0)
            if nodata_px.any():
                invalid = nodata_px if invalid is None else invalid | nodata_px
    return invalid


def load_sample(
    image_path: str | os.PathLike[str],
    label_path: str | os.PathLike[str] | None,
    *,
    sensor: Sensor,
    wavelengths: torch.Tensor,
    domain: str,
    num_classes: int | None,
    label_lookup: np.ndarray | None = None,
    classes_check: bool = True,
    bands: Sequence[int] | None = None,
) -> Sample:
    """Read and validate one image (and label) into the sample dict of DESIGN §2.

    ``image`` float32 ``[C, H, W]`` raw values in file band order (no normalisation), ``mask``
    int64 ``[H, W]`` (255 = ignore; absent when ``label_path`` is None), ``domain``, ``sensor``,
    ``wavelengths`` float32 ``[C]``, ``path``; ``nodata`` bool ``[H, W]`` only when some pixels
    carry no data (so ``predict`` can write them as nodata, not as a class).

    ``bands`` (0-based, from ``bands.match_bands``) selects and orders the file's bands — the
    model's band order; ``image`` and ``wavelengths`` then follow it. ``None``: file order.

    Invalid pixels — NaN/±inf in any band, the file's nodata value in all bands, or masked by the
    file's own mask band — are masked to
    ignore (255) and their pixel values set to 0 in every band (the padding value of the
    pipeline), because real scenes have such holes; an error would make whole tiles unusable.
    Every other problem raises an error naming the file: wrong band count, image/label size
    mismatch, label values outside the class table, unreadable file (``RasterReadError``).
    ``label_lookup`` (256 entries) maps raw label values first (e.g. ``reduce_zero_label``).
    """
    data = read_image(image_path)
    array = data.array
    if array.shape[0] != sensor.num_bands:
        raise ValueError(
            f"{image_path}: {array.shape[0]} bands (array shape {tuple(array.shape)}) but sensor "
            f"{sensor.name!r} has {sensor.num_bands} bands {list(sensor.band_names)} "
            f"(wavelengths µm {list(sensor.wavelengths_um)})"
        )
    if bands is not None and list(bands) != list(range(array.shape[0])):
        order = [int(b) for b in bands]
        array, wavelengths = array[order], wavelengths[order]
    image = array.astype(np.float32)
    invalid = invalid_pixels(array, data.nodata, data.valid)
    if invalid is None and not np.isfinite(image).all():
        invalid = ~np.isfinite(image).all(axis=0)  # float64 values beyond float32's range
    if invalid is not None:
        image[:, invalid] = 0.0
    sample: Sample = {
        "image": torch.from_numpy(image),
        "domain": domain,
        "sensor": sensor.name,
        "wavelengths": wavelengths.clone(),
        "path": str(image_path),
    }
    if invalid is not None:
        sample["nodata"] = torch.from_numpy(np.ascontiguousarray(invalid))
    if label_path is None:
        return sample
    label = read_label(label_path)
    if label.shape != array.shape[1:]:
        raise ValueError(
            f"image {image_path} is {array.shape[1]}x{array.shape[2]} (shape {tuple(array.shape)}) but label "
            f"{label_path} is {label.shape[0]}x{label.shape[1]}: sizes must match"
        )
    if label_lookup is not None:
        label = label_lookup[label]
    if classes_check and num_classes is not None:
        counts = np.bincount(label.ravel(), minlength=256)
        counts[IGNORE_INDEX] = 0
        bad = np.flatnonzero(counts[num_classes:]) + num_classes
        if bad.size:
            raise ValueError(
                f"{label_path}: label values {bad.tolist()} are outside the class table "
                f"(num_classes {num_classes}, valid 0..{num_classes - 1} and {IGNORE_INDEX} = ignore)"
            )
    mask = label.astype(np.int64)
    if invalid is not None:
        mask[invalid] = IGNORE_INDEX
    sample["mask"] = torch.from_numpy(mask)
    return sample


class PreparedDataset(Dataset):
    """Tiles of a prepared benchmark root, as model-ready samples.

    Layout (written by ``spectralmoe prepare``; see ``spectralmoe.data.layout``)::

        ROOT/splits.json            benchmark, classes, palette, sensors, one record per tile
        ROOT/image/<rel>.tif        GeoTIFF tile, bands in the file's order, source dtype
        ROOT/label/<rel>.png        uint8 class indices 0..K-1, 255 = ignore (already mapped)

    Image and label share ``<rel>`` (mmseg's pairing rule, DATA.md §0.1); labels are already
    ``reduce_zero_label``-ed by the converter (DATA.md §0.1, §0.5), so nothing is re-mapped here.
    Band order is never changed (DATA.md §0.5): the sample's ``wavelengths`` come from the tile's
    sensor record, and the model chooses bands by wavelength.

    Each item is a dict: ``image`` float32 ``[C, H, W]`` raw values (no normalisation — the model
    normalises), ``mask`` int64 ``[H, W]`` (255 = ignore), ``domain``, ``sensor``,
    ``wavelengths`` float32 ``[C]``, ``path`` (the image file). See ``load_sample`` for the
    validation (bad data fails with an error naming the file; NaN/nodata pixels become ignore).

    Args:
        root: the prepared folder (contains ``splits.json``).
        split: ``"source"``, ``"target"`` or ``None`` (both).
        domains: keep only tiles of these domains (``None``: all).
        transform: called on each sample dict (e.g. crops/flips); returns a sample dict.
        classes_check: check label values against the class table on every read.
        band_orders: per sensor name, the 0-based file bands to feed, in the model's order
            (``bands.match_bands``; ``DGDataModule`` fills it). Missing sensors: file order. The
            mapping is read at every item, so an owner may update it in place.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: Split | None = None,
        domains: Iterable[str] | None = None,
        transform: Callable[[Sample], Sample] | None = None,
        classes_check: bool = True,
        band_orders: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        self.root = Path(root)
        self.band_orders: Mapping[str, Sequence[int]] = band_orders if band_orders is not None else {}
        self.index = PreparedIndex.load(self.root)
        wanted = None if domains is None else list(domains)
        self.records: list[TileRecord] = self.index.select(split, wanted)
        if not self.records:
            present = self.index.domains(split)
            raise ValueError(
                f"{self.root / INDEX_FILE}: no tiles for split={split!r}, domains={wanted!r} "
                f"(domains present in this split: {present})"
            )
        check_files_exist(
            (self.root / p for r in self.records for p in (r.image, r.label)), f"{self.root / INDEX_FILE}"
        )
        self.split = split
        self.transform = transform
        self.classes_check = classes_check
        self.classes: list[str] = list(self.index.classes)
        self.palette: list[tuple[int, int, int]] = list(self.index.palette)
        self.num_classes = len(self.classes)
        self.sensors: dict[str, Sensor] = dict(self.index.sensors)
        self.domains: list[str] = list(dict.fromkeys(r.domain for r in self.records))
        self.ignore_index = IGNORE_INDEX
        self._wavelengths = {name: s.wavelength_tensor() for name, s in self.sensors.items()}

    def __len__(self) -> int:
        return len(self.records)

    def image_paths(self) -> list[Path]:
        """Image files of the selected tiles, in order (used by ``compute_band_stats``)."""
        return [self.root / r.image for r in self.records]

    def __getitem__(self, i: int) -> Sample:
        record = self.records[i]
        sample = load_sample(
            self.root / record.image,
            self.root / record.label,
            sensor=self.sensors[record.sensor],
            wavelengths=self._wavelengths[record.sensor],
            domain=record.domain,
            num_classes=self.num_classes,
            classes_check=self.classes_check,
            bands=self.band_orders.get(record.sensor),
        )
        return self.transform(sample) if self.transform is not None else sample

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, benchmark={self.index.benchmark!r}, split={self.split!r}, "
            f"tiles={len(self)}, domains={self.domains}, classes={self.num_classes})"
        )

