"""Machinery shared by every benchmark converter: the output folder guard, resumable tile writing,
progress reporting, tiling with padding, label tables, option parsing and the final ``splits.json``.

A converter (one module per benchmark) reads the raw layout and, for every output tile, calls
``run.add_tile(...)`` with a function that produces the arrays only if the tile is not already on
disk. ``run.finish(...)`` writes the index. Everything else (atomicity, skipping, refusing a
foreign output folder or a resume with other tile-changing options) lives here. Reading raw zips
or folders is ``raw.py``; split-list files are ``lists.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from spectralmoe.bands import Sensor
from spectralmoe.data.layout import (
    IGNORE_INDEX,
    IMAGE_DIR,
    INDEX_FILE,
    LABEL_DIR,
    MARKER_FILE,
    PreparedIndex,
    Split,
    TileRecord,
    atomic_write_bytes,
    write_image_tile,
    write_label_tile,
)

logger = logging.getLogger(__name__)

TILE_OPTIONS_FILE = ".spectralmoe-tile-options.json"
"""Record, in the output folder, of the options that decided the tiles' content (see ``PrepareRun``)."""


@dataclass(frozen=True)
class TileArrays:
    """What a converter produces for one tile: image ``[C, H, W]``, label ``[H, W]`` uint8, georeference."""

    image: np.ndarray
    label: np.ndarray
    crs: object = None
    transform: object = None
    nodata: float | None = None


@dataclass(frozen=True)
class Window:
    """A tile window ``[top:top+height, left:left+width]`` of a raster, with its grid position."""

    row: int
    col: int
    top: int
    left: int
    height: int
    width: int


def grid_windows(height: int, width: int, tile: int = 512) -> Iterator[Window]:
    """Non-overlapping ``tile``×``tile`` windows covering the raster; edge windows are cut short
    (pad them with ``pad_tile``), as the authors' FBP tiler does (ceil(W/512) × ceil(H/512))."""
    for row, top in enumerate(range(0, height, tile)):
        for col, left in enumerate(range(0, width, tile)):
            yield Window(row, col, top, left, min(tile, height - top), min(tile, width - left))


def pad_tile(array: np.ndarray, tile: int, value: float) -> np.ndarray:
    """Pad the last two axes of ``array`` up to ``tile`` (bottom/right) with ``value``."""
    pad_h, pad_w = tile - array.shape[-2], tile - array.shape[-1]
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"array of shape {array.shape} is larger than the tile size {tile}")
    if not pad_h and not pad_w:
        return array
    widths = [(0, 0)] * (array.ndim - 2) + [(0, pad_h), (0, pad_w)]
    return np.pad(array, widths, mode="constant", constant_values=value)


def map_labels(raw: np.ndarray, lookup: np.ndarray, source: str) -> np.ndarray:
    """Map raw label values through a 256-entry uint8 lookup table; values the table marks invalid
    (-1) raise a ValueError naming ``source`` and the offending values."""
    if raw.dtype != np.uint8:
        if raw.size and (raw.min() < 0 or raw.max() > 255):
            raise ValueError(f"{source}: label values outside 0..255 (min {raw.min()}, max {raw.max()})")
        raw = raw.astype(np.uint8)
    mapped = lookup[raw]
    if (mapped < 0).any():
        bad = sorted(set(np.unique(raw[mapped < 0]).tolist()))
        raise ValueError(f"{source}: label values {bad} are not in the class table")
    return mapped.astype(np.uint8)


def index_lookup(num_classes: int) -> np.ndarray:
    """256-entry table for ``map_labels``: 0 → 255, v → v−1 for v in 1..K, everything else invalid (−1).

    The usual ``reduce_zero_label`` of index masks whose 0 means "no data"."""
    lookup = np.full(256, -1, dtype=np.int16)
    lookup[0] = IGNORE_INDEX
    lookup[1 : num_classes + 1] = np.arange(num_classes)
    return lookup


# ------------------------------------------------------------------------------------------ options
def parse_list(value: str | Sequence[str], what: str, allowed: Iterable[str] | None = None) -> list[str]:
    """A comma-separated option as a list (order kept, duplicates dropped), checked against ``allowed``."""
    items = value.split(",") if isinstance(value, str) else list(value)
    items = list(dict.fromkeys(i.strip() for i in items if i.strip()))
    if allowed is not None:
        allowed = list(allowed)
        bad = [i for i in items if i not in allowed]
        if bad:
            raise ValueError(f"{what}: unknown value(s) {bad}; choose from {allowed}")
    return items


def check_choice(value: str, what: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``; else a ValueError naming the option and the choices."""
    if value not in choices:
        raise ValueError(f"{what}={value!r}; choose one of {list(choices)}")
    return value


def raw_fingerprint(raw: str | os.PathLike[str], exclude: Path | None = None) -> str:
    """SHA-256 over the relative path, size and modification time of every file under ``raw`` (or of
    ``raw`` itself), ``exclude`` (the output folder, when it lies inside) left out: it changes when a
    raw file is corrected, replaced, added or removed."""
    root = Path(raw)
    digest = hashlib.sha256()
    skip = exclude.resolve() if exclude is not None else None
    paths = [root] if root.is_file() else sorted(
        p for p in root.rglob("*") if p.is_file() and (skip is None or skip not in p.resolve().parents))
    for path in paths:
        stat = path.stat()
        name = path.name if path == root else path.relative_to(root).as_posix()
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def sweep_stale_tree(root: Path) -> int:
    """Remove the temporaries that killed runs left anywhere under ``root`` (``spectralmoe.outputs``)."""
    from spectralmoe.outputs import sweep_stale

    folders = {root}
    for folder, _, names in os.walk(root):
        if any(".smoe-" in name for name in names):
            folders.add(Path(folder))
    return sum(len(sweep_stale(folder)) for folder in folders)


# ------------------------------------------------------------------------------------------ the run
class PrepareRun:
    """One conversion into ``out``: guards the folder, writes tiles resumably, reports progress.

    ``tile_options`` are the options that decide what a tile *file* contains (band selection,
    label mapping, crop, tile size when it does not show in the file name). Resuming skips tiles
    already on disk, so a rerun with other values would silently mix two kinds of tiles: the
    first run records them in ``out`` and a later run with other values is refused (ValueError
    naming each changed option). Options that only decide *which* tiles exist or how they are
    grouped (split lists, domains) do not belong here: changing them re-indexes the tiles on
    disk. ``None`` records nothing (for callers that never resume, such as tests).

    ``raw`` (the raw input folder or archive) adds its fingerprint to that record: a rerun after the
    raw files changed rewrites every tile instead of keeping the old ones.
    """

    def __init__(
        self,
        benchmark: str,
        out: str | os.PathLike[str],
        *,
        progress: bool = True,
        tile_options: dict[str, Any] | None = None,
        raw: str | os.PathLike[str] | None = None,
    ) -> None:
        self.benchmark = benchmark
        self.out = Path(out)
        self.raw = None if raw is None else Path(raw)
        self.rewrite = False
        self.progress = progress
        self.records: list[TileRecord] = []
        self.written = 0
        self.skipped = 0
        self._started = time.monotonic()
        self._claim_output()
        if tile_options is not None:
            self._check_tile_options(tile_options)

    def _claim_output(self) -> None:
        marker = self.out / MARKER_FILE
        if self.out.exists() and not self.out.is_dir():
            raise FileExistsError(f"{self.out}: --out names a file; give a folder (empty, or an earlier run of it)")
        blocking = next((p for p in [self.out, *self.out.parents] if p.exists()), None)
        if blocking is not None and not blocking.is_dir():
            raise FileExistsError(f"{self.out}: {blocking} is a file, not a folder")
        if self.out.exists() and any(self.out.iterdir()):
            owner = marker.read_text().strip() if marker.is_file() else None
            if owner != self.benchmark:
                what = f"prepared for {owner!r}" if owner else "not a spectralmoe prepare output"
                raise FileExistsError(
                    f"{self.out}: output folder is not empty and is {what}; "
                    f"refusing to write {self.benchmark!r} into it (choose an empty folder)"
                )
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(marker, f"{self.benchmark}\n".encode())
        sweep_stale_tree(self.out)  # temporaries of a killed earlier run

    def _check_tile_options(self, options: dict[str, Any]) -> None:
        """Record ``options`` in ``out``; refuse a run into a folder recorded with other values. With
        ``raw`` given, the raw files' fingerprint is recorded too: when it changed (raw files corrected,
        added or replaced) every tile is rewritten instead of skipped."""
        path = self.out / TILE_OPTIONS_FILE
        record = {"benchmark": self.benchmark, "options": json.loads(json.dumps(options))}
        fingerprint = raw_fingerprint(self.raw, self.out) if self.raw is not None else None
        stored = {**record, "raw_fingerprint": fingerprint} if fingerprint is not None else record
        if not path.is_file():
            atomic_write_bytes(path, (json.dumps(stored, indent=1) + "\n").encode())
            return
        try:
            previous = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: unreadable record of the previous run's options ({error})") from error
        old_fingerprint = previous.pop("raw_fingerprint", None) if isinstance(previous, dict) else None
        if previous == record and fingerprint is not None and old_fingerprint != fingerprint:
            self.rewrite = True  # the raw data changed since the tiles were written: none of them is kept
            logger.warning("%s: the raw files changed since the tiles were written: every tile is rewritten",
                           self.out)  # fmt: skip
            atomic_write_bytes(path, (json.dumps(stored, indent=1) + "\n").encode())
            return
        if previous != record:
            old, new = previous.get("options", {}), record["options"]
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            details = "; ".join(f"{k}: was {old.get(k)!r}, now {new.get(k)!r}" for k in changed)
            raise ValueError(
                f"{self.out}: tiles already there were prepared with other options ({details or previous}); "
                f"rerun with the same options or prepare into a new, empty folder"
            )

    def add_tile(
        self,
        relative: str,
        make: Callable[[], TileArrays],
        *,
        split: Split,
        domain: str,
        sensor: str,
        attributes: dict[str, str] | None = None,
        band_names: Sequence[str] | None = None,
    ) -> TileRecord:
        """Register tile ``relative`` (no suffix, e.g. ``"D006_2020/Z10_UU/002993"``); call ``make``
        only when its image or label is missing on disk."""
        image_rel = f"{IMAGE_DIR}/{relative}.tif"
        label_rel = f"{LABEL_DIR}/{relative}.png"
        image_path, label_path = self.out / image_rel, self.out / label_rel
        if image_path.is_file() and label_path.is_file() and not self.rewrite:
            self.skipped += 1
        else:
            arrays = make()
            if arrays.image.shape[-2:] != arrays.label.shape:
                raise ValueError(
                    f"tile {relative}: image {arrays.image.shape} and label {arrays.label.shape} sizes differ"
                )
            write_image_tile(image_path, arrays.image, crs=arrays.crs, transform=arrays.transform,
                             nodata=arrays.nodata, band_names=band_names)  # fmt: skip
            write_label_tile(label_path, arrays.label)
            self.written += 1
        record = TileRecord(image_rel, label_rel, split, domain, sensor, dict(attributes or {}))
        self.records.append(record)
        self._report()
        return record

    def _report(self, final: bool = False) -> None:
        done = self.written + self.skipped
        if self.progress and (final or done % 50 == 0):
            rate = done / max(time.monotonic() - self._started, 1e-9)
            print(f"\r{self.benchmark}: {done} tiles ({self.written} written, {self.skipped} already there, "
                  f"{rate:.1f}/s)", end="\n" if final else "", file=sys.stderr, flush=True)  # fmt: skip

    def finish(
        self,
        *,
        classes: Sequence[str],
        palette: Sequence[tuple[int, int, int]],
        sensors: dict[str, Sensor],
        options: dict[str, object] | None = None,
    ) -> PreparedIndex:
        """Write ``splits.json`` for every tile registered in this run and return it."""
        if not self.records:
            raise ValueError(f"{self.benchmark}: no tiles were produced; check the raw folder")
        index = PreparedIndex(self.benchmark, list(classes), [tuple(c) for c in palette], dict(sensors),
                              list(self.records), dict(options or {}))  # fmt: skip
        index.validate(str(self.out / INDEX_FILE))
        index.save(self.out)
        self._report(final=True)
        logger.info("%s: %d tiles in %s", self.benchmark, len(self.records), self.out)
        return index
