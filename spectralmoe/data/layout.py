"""The prepared-benchmark layout: what ``spectralmoe prepare`` writes and every dataset reads.

```
OUT/
  splits.json                  PreparedIndex: benchmark, classes, palette, sensors, one record per tile
  image/<relative>.tif         GeoTIFF tile, bands in the FILE's order (never reordered), source dtype
  label/<relative>.png         single-band uint8 class indices 0..K-1, 255 = ignore
  .spectralmoe-prepare         marker naming the benchmark (refuses to mix two benchmarks in one OUT)
```

Image and label of one tile share ``<relative>`` (mmseg's pairing rule, DATA §0.1). Labels are
already mapped (``reduce_zero_label``, colour tables, merges) so readers never re-map. Every file is
written to a temporary name and renamed, so an interrupted run leaves only whole tiles behind and a
rerun skips them (resumable). Files follow the user's umask (``spectralmoe.files``).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Literal, Sequence

import numpy as np

from spectralmoe.bands import Sensor
from spectralmoe.files import atomic_path
from spectralmoe.outputs import atomic_write_bytes

FORMAT = "spectralmoe-prepared/1"
INDEX_FILE = "splits.json"
MARKER_FILE = ".spectralmoe-prepare"
IMAGE_DIR = "image"
LABEL_DIR = "label"
IGNORE_INDEX = 255
Split = Literal["source", "target"]
SPLITS: tuple[str, ...] = ("source", "target")


@dataclass(frozen=True)
class TileRecord:
    """One prepared tile. Paths are relative to the prepared root (``image/…``, ``label/…``).

    ``domain`` is the evaluation group of the tile (e.g. a sensor, city, département or continent);
    ``attributes`` keeps every other known fact (scene, city, sensor, region, continent…) so that a
    task can regroup tiles by another key.
    """

    image: str
    label: str
    split: Split
    domain: str
    sensor: str
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass
class PreparedIndex:
    """Contents of ``splits.json``."""

    benchmark: str
    classes: list[str]
    palette: list[tuple[int, int, int]]
    sensors: dict[str, Sensor]
    tiles: list[TileRecord]
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "benchmark": self.benchmark,
            "classes": list(self.classes),
            "palette": [list(c) for c in self.palette],
            "ignore_index": IGNORE_INDEX,
            "sensors": {name: {k: v for k, v in s.to_dict().items() if k != "name"} for name, s in self.sensors.items()},
            "options": self.options,
            "tiles": [asdict(t) for t in self.tiles],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "splits.json") -> "PreparedIndex":
        if data.get("format") != FORMAT:
            raise ValueError(f"{source}: not a prepared-benchmark index (format {data.get('format')!r}, want {FORMAT!r})")
        try:
            sensors = {
                name: Sensor.from_dict({**record, "name": name}, source=f"{source}: sensor {name!r}")
                for name, record in data["sensors"].items()
            }
            tiles = [TileRecord(**t) for t in data["tiles"]]
            index = cls(
                benchmark=data["benchmark"],
                classes=list(data["classes"]),
                palette=[tuple(int(v) for v in c) for c in data["palette"]],  # type: ignore[misc]
                sensors=sensors,
                tiles=tiles,
                options=dict(data.get("options", {})),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"{source}: malformed prepared-benchmark index ({error!r})") from error
        index.validate(source)
        return index

    def validate(self, source: str = "splits.json") -> None:
        """Consistency checks that make later errors impossible: known sensors and splits, palette size,
        tile paths that stay inside the prepared folder, no tile (image or label) listed twice."""
        if len(self.palette) != len(self.classes):
            raise ValueError(f"{source}: {len(self.classes)} classes but {len(self.palette)} palette colours")
        seen: dict[str, str] = {}
        for tile in self.tiles:
            if tile.split not in SPLITS:
                raise ValueError(f"{source}: tile {tile.image} has split {tile.split!r}; expected one of {SPLITS}")
            if tile.sensor not in self.sensors:
                raise ValueError(f"{source}: tile {tile.image} names unknown sensor {tile.sensor!r}")
            for kind, path in (("image", tile.image), ("label", tile.label)):
                if not isinstance(path, str) or not _inside(path):
                    raise ValueError(f"{source}: tile {kind} path {path!r} leaves the prepared folder (paths must be "
                                     "relative, without '..')")  # fmt: skip
                key = PurePosixPath(path).as_posix()
                if key in seen:
                    raise ValueError(f"{source}: {key} is listed twice (as the {seen[key]} and the {kind} of another "
                                     "tile); every tile must appear once")  # fmt: skip
                seen[key] = kind

    def save(self, root: str | os.PathLike[str]) -> Path:
        """Write ``splits.json`` atomically."""
        path = Path(root) / INDEX_FILE
        atomic_write_bytes(path, json.dumps(self.to_json(), indent=1).encode())
        return path

    @classmethod
    def load(cls, root: str | os.PathLike[str]) -> "PreparedIndex":
        path = Path(root) / INDEX_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no prepared-benchmark index; run `spectralmoe prepare` first")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: unreadable JSON ({error})") from error
        return cls.from_json(data, str(path))

    def select(self, split: Split | None = None, domains: Iterable[str] | None = None) -> list[TileRecord]:
        """Tiles of one split and/or a set of domains, in index order."""
        wanted = None if domains is None else set(domains)
        return [t for t in self.tiles if (split is None or t.split == split) and (wanted is None or t.domain in wanted)]

    def domains(self, split: Split | None = None) -> list[str]:
        """Domains present (in first-seen order)."""
        return list(dict.fromkeys(t.domain for t in self.tiles if split is None or t.split == split))


def _inside(path: str) -> bool:
    """A relative POSIX path that cannot climb out of its folder (no '..', no root, no drive, no '\\')."""
    if not path or "\\" in path or ":" in path.split("/", 1)[0]:
        return False
    parts = PurePosixPath(path).parts
    return not PurePosixPath(path).is_absolute() and ".." not in parts and bool(parts)


def write_image_tile(
    path: str | os.PathLike[str],
    array: np.ndarray,
    *,
    crs: Any = None,
    transform: Any = None,
    nodata: float | None = None,
    band_names: Sequence[str] | None = None,
) -> None:
    """Write a ``[C, H, W]`` array as a deflate-compressed GeoTIFF, atomically, keeping band order and dtype."""
    import rasterio
    import rasterio.errors

    if array.ndim != 3:
        raise ValueError(f"{path}: image tiles must be [C, H, W], got shape {array.shape}")
    path = Path(path)
    profile = {
        "driver": "GTiff", "height": array.shape[1], "width": array.shape[2], "count": array.shape[0],
        "dtype": array.dtype.name, "compress": "deflate", "interleave": "band",
        # Bands are spectral bands in file order, not RGB(A): say so, so no reader converts colours.
        "photometric": "minisblack",
    }  # fmt: skip
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    if nodata is not None:
        profile["nodata"] = nodata
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # Tiles cut from non-georeferenced rasters (PNG benchmarks) legitimately have no transform.
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(tmp, "w", **profile) as dst:
            dst.write(array)
            if band_names is not None:
                for i, name in enumerate(band_names, start=1):
                    dst.set_band_description(i, name)


def write_label_tile(path: str | os.PathLike[str], label: np.ndarray) -> None:
    """Write a ``[H, W]`` uint8 class-index map as a PNG (mode L), atomically."""
    from PIL import Image

    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(f"{path}: label tiles must be uint8 [H, W], got {label.dtype} {label.shape}")
    with atomic_path(path) as tmp:
        Image.fromarray(label).save(tmp, format="PNG")
