"""Per-band mean / std / min / max of a dataset, streamed one tile at a time.

Why: the model normalises each band with its mean and std in the file's band order (DATA.md
§0.1). For a user's own sensor these numbers must be measured; ``spectralmoe stats --data DIR``
prints them. Memory is bounded (one tile plus a few numbers per band), so a benchmark of tens of
thousands of tiles is fine.

Statistics are over valid pixels only: a pixel is skipped when any band is NaN/±inf, when all
its bands equal the nodata value (the file's, or the ``nodata`` argument) or when the file's own
mask band (GDAL internal mask, alpha) marks it — the same rule the
datasets use to mask pixels to ignore. ``std`` is the population standard deviation (ddof=0).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from spectralmoe.data.datasets.prepared import invalid_pixels
from spectralmoe.data.io import RASTERIO_SUFFIXES, read_image
from spectralmoe.data.layout import INDEX_FILE, PreparedIndex, Split

__all__ = ["BandStats", "RunningBandStats", "compute_band_stats", "format_stats"]


@dataclass(frozen=True)
class BandStats:
    """Per-band statistics in the file's band order. ``count`` = valid pixels, ``tiles`` = files read."""

    mean: list[float]
    std: list[float]
    count: int
    minimum: list[float]
    maximum: list[float]
    tiles: int = 0


@dataclass
class RunningBandStats:
    """Chan et al.'s parallel merge of (count, mean, M2) per band, in float64.

    Each tile's own mean and sum of squared deviations are computed exactly and merged, which is
    numerically stable where a naive sum of squares is not (large 16-bit or reflectance values).
    """

    count: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None
    minimum: np.ndarray | None = None
    maximum: np.ndarray | None = None
    tiles: int = 0
    num_bands: int | None = field(default=None)

    def update(self, values: np.ndarray, source: str = "") -> None:
        """Merge ``values`` ``[C, N]`` (valid pixels of one tile)."""
        c, n = values.shape
        if self.num_bands is None:
            self.num_bands = c
            self.mean, self.m2 = np.zeros(c), np.zeros(c)
            self.minimum, self.maximum = np.full(c, np.inf), np.full(c, -np.inf)
        elif c != self.num_bands:
            raise ValueError(
                f"{source}: {c} bands, but earlier tiles had {self.num_bands}; statistics need one band layout"
            )
        self.tiles += 1
        if n == 0:
            return
        assert self.mean is not None and self.m2 is not None and self.minimum is not None and self.maximum is not None
        tile_mean = np.empty(c)
        tile_m2 = np.empty(c)
        for b in range(c):  # per band keeps the float64 copy at one band of one tile
            band = values[b].astype(np.float64)
            tile_mean[b] = band.mean()
            tile_m2[b] = np.square(band - tile_mean[b]).sum()
            self.minimum[b] = min(self.minimum[b], float(band.min()))
            self.maximum[b] = max(self.maximum[b], float(band.max()))
        total = self.count + n
        delta = tile_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + tile_m2 + np.square(delta) * (self.count * n / total)
        self.count = total

    def result(self) -> BandStats:
        if self.num_bands is None or self.count == 0:
            raise ValueError("no valid pixels were read; cannot compute band statistics")
        assert self.mean is not None and self.m2 is not None and self.minimum is not None and self.maximum is not None
        std = np.sqrt(self.m2 / self.count)
        return BandStats(
            mean=[float(v) for v in self.mean],
            std=[float(v) for v in std],
            count=int(self.count),
            minimum=[float(v) for v in self.minimum],
            maximum=[float(v) for v in self.maximum],
            tiles=self.tiles,
        )


def _image_paths(source: Any, split: Split | None) -> list[Path]:
    if hasattr(source, "image_paths"):
        return list(source.image_paths())
    root = Path(source)
    if (root / INDEX_FILE).is_file():
        index = PreparedIndex.load(root)
        paths = [root / t.image for t in index.select(split)]
        if not paths:
            raise ValueError(f"{root / INDEX_FILE}: no tiles for split={split!r}")
        return paths
    if root.is_dir():
        paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in RASTERIO_SUFFIXES)
        if not paths:
            raise ValueError(f"{root}: neither a prepared root ({INDEX_FILE}) nor a folder with GeoTIFFs")
        return paths
    if root.is_file():
        return [root]
    raise FileNotFoundError(f"{root}: no such file or folder")


def _evenly_spaced(n: int, k: int | None) -> list[int]:
    if k is not None and k <= 0:
        raise ValueError(f"max_samples must be positive, got {k}")
    if k is None or k >= n:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, k).round().astype(int).tolist()))


def compute_band_stats(
    dataset_or_root: Any,
    *,
    max_samples: int | None = None,
    nodata: float | None = None,
    split: Split | None = None,
) -> BandStats:
    """Per-band mean/std/min/max over the valid pixels of a dataset, one tile at a time.

    Args:
        dataset_or_root: a prepared root (``splits.json``), a folder of GeoTIFFs (recursive), a
            ``PreparedDataset`` / ``GeoTiffFolder`` (their raw image files are read, not their
            transformed samples), or any dataset whose items have an ``image`` ``[C, H, W]``.
        max_samples: read at most this many tiles, evenly spaced over the list (deterministic).
        nodata: value meaning "no data" when present in all bands of a pixel; default the
            file's own nodata (for generic datasets: only NaN/±inf are skipped).
        split: for a prepared root, ``"source"``/``"target"`` (default both).
    """
    running = RunningBandStats()
    where = str(dataset_or_root) if isinstance(dataset_or_root, (str, os.PathLike)) else type(dataset_or_root).__name__
    if hasattr(dataset_or_root, "image_paths") or isinstance(dataset_or_root, (str, os.PathLike)):
        paths = _image_paths(dataset_or_root, split)
        for i in _evenly_spaced(len(paths), max_samples):
            data = read_image(paths[i])
            _update(running, data.array, data.nodata if nodata is None else nodata, str(paths[i]), data.valid)
    else:
        n = len(dataset_or_root)
        for i in _evenly_spaced(n, max_samples):
            image = dataset_or_root[i]["image"]
            array = image.numpy() if hasattr(image, "numpy") else np.asarray(image)
            _update(running, array, nodata, f"sample {i}")
    if running.count == 0:
        raise ValueError(f"{where}: no valid pixel in {running.tiles} tile(s) (all NaN/inf, nodata or masked); "
                         "cannot compute band statistics")  # fmt: skip
    return running.result()


def _update(running: RunningBandStats, array: np.ndarray, nodata: float | None, source: str,
            valid: np.ndarray | None = None) -> None:  # fmt: skip
    if array.ndim != 3:
        raise ValueError(f"{source}: image must be [C, H, W], got shape {array.shape}")
    invalid = invalid_pixels(array, nodata, valid)
    flat = array.reshape(array.shape[0], -1)
    if invalid is not None:
        flat = flat[:, ~invalid.ravel()]
    running.update(flat, source)


def format_stats(stats: BandStats, band_names: Sequence[str] | None = None) -> tuple[str, dict[str, Any]]:
    """A printable table and a JSON-able dict (``mean``/``std`` ready to paste into a config)."""
    names = list(band_names) if band_names is not None else [f"band {i + 1}" for i in range(len(stats.mean))]
    if len(names) != len(stats.mean):
        raise ValueError(f"{len(names)} band names for {len(stats.mean)} bands")
    width = max(len("band"), *(len(n) for n in names))
    lines = [f"{'band':<{width}}  {'mean':>12}  {'std':>12}  {'min':>12}  {'max':>12}"]
    for name, mean, std, lo, hi in zip(names, stats.mean, stats.std, stats.minimum, stats.maximum):
        lines.append(f"{name:<{width}}  {mean:12.4f}  {std:12.4f}  {lo:12.4f}  {hi:12.4f}")
    lines.append(f"{stats.count} valid pixels in {stats.tiles} tiles")
    payload = {"band_names": names, **asdict(stats)}
    payload = {k: (_clean(v) if isinstance(v, list) else v) for k, v in payload.items()}
    return "\n".join(lines), payload


def _clean(values: Iterable[Any]) -> list[Any]:
    return [None if isinstance(v, float) and not math.isfinite(v) else v for v in values]
