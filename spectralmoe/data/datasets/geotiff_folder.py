"""A user's own imagery: a folder of GeoTIFF tiles, optionally with a parallel folder of labels.

Why: practitioners train or predict on data no converter knows. They give the band layout (a
built-in sensor name, or the centre wavelengths of the file's bands) and, for training, a class
list; images and labels are paired by the mmseg rule (same relative path and stem, DATA.md §0.1)
and validated exactly like a prepared benchmark (``load_sample``).
"""

from __future__ import annotations

import colorsys
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from torch.utils.data import Dataset

from spectralmoe.bands import Sensor, get_sensor
from spectralmoe.data.datasets.prepared import IGNORE_INDEX, Sample, check_files_exist, load_sample
from spectralmoe.data.validate import TileCheck, ValidationReport, validate_tiles

__all__ = ["GeoTiffFolder", "read_class_list", "offset_lookup"]

LABEL_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff")


def read_class_list(path: str | os.PathLike[str]) -> list[str]:
    """Class names from a text file, one per line in index order; blank lines and ``#`` lines skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: class-list file not found")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise ValueError(f"{path}: class-list file lists no classes")
    return names


def offset_lookup(offset: int) -> np.ndarray | None:
    """256-entry uint8 table: raw ``v < offset`` → 255 (ignore), ``v`` → ``v - offset``, 255 stays 255.

    ``offset=1`` is mmseg's ``reduce_zero_label`` (DATA.md §0.1); ``offset=0`` gives ``None`` (identity).
    """
    if not 0 <= offset < 255:
        raise ValueError(f"label_offset must be in 0..254, got {offset}")
    if offset == 0:
        return None
    values = np.arange(256, dtype=np.int64) - offset
    values[values < 0] = IGNORE_INDEX
    values[255] = IGNORE_INDEX
    return values.astype(np.uint8)


def _default_palette(n: int) -> list[tuple[int, int, int]]:
    """Distinct, deterministic colours (golden-ratio hue steps) for classes without a palette."""
    colours = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.95)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


def _scan(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    wanted = {s.lower() for s in suffixes}
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in wanted)


class GeoTiffFolder(Dataset):
    """Image tiles under ``image_dir`` (recursive), labels under ``label_dir`` with the same relative
    path and stem; samples as ``PreparedDataset`` gives them (``image``, ``mask``, ``domain``,
    ``sensor``, ``wavelengths``, ``path``), without ``mask`` when ``label_dir`` is None
    (prediction-only).

    Args:
        image_dir: folder of image tiles, searched recursively for ``suffixes``.
        label_dir: folder of single-band index labels (``None``: prediction-only samples).
        sensor: a built-in sensor name (``spectralmoe.bands.SENSORS``). Exactly one of
            ``sensor`` / ``wavelengths``.
        wavelengths: centre wavelength (µm) of each band in the file's order (``nan`` for a
            non-spectral band); its length must equal every image's band count.
        classes: class names in index order, or a text file with one name per line. Required
            with labels.
        label_offset: subtracted from raw labels; raw values below it become 255 (ignore).
            ``1`` is mmseg's ``reduce_zero_label``.
        suffixes: image file endings to collect.
        label_suffix: the label's ending; ``None`` searches ``.png``, ``.tif``, ``.tiff``.
        domain: domain name given to every sample.
        transform: called on each sample dict.
        palette: RGB colour per class (default: generated).
        value_scale: raw value of full brightness/reflectance, for a ``wavelengths`` sensor.
        classes_check: check label values against the class list on every read.
        validate: check every tile when the folder is opened (headers, label values, grids; cached), so a
            bad file is reported with all others before any training step.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike[str],
        label_dir: str | os.PathLike[str] | None = None,
        *,
        sensor: str | None = None,
        wavelengths: Sequence[float] | None = None,
        classes: Sequence[str] | str | os.PathLike[str] | None = None,
        label_offset: int = 0,
        suffixes: Sequence[str] = (".tif", ".tiff"),
        label_suffix: str | None = None,
        domain: str = "default",
        transform: Callable[[Sample], Sample] | None = None,
        palette: Sequence[tuple[int, int, int]] | None = None,
        value_scale: float = 1.0,
        classes_check: bool = True,
        validate: bool = True,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.label_dir = None if label_dir is None else Path(label_dir)
        if (sensor is None) == (wavelengths is None):
            raise ValueError("GeoTiffFolder: give exactly one of `sensor` (a built-in name) or `wavelengths`")
        if sensor is not None:
            self.sensor: Sensor = get_sensor(sensor)
        else:
            waves = tuple(float(w) for w in wavelengths)  # type: ignore[union-attr]
            if not waves:
                raise ValueError("GeoTiffFolder: `wavelengths` is empty")
            self.sensor = Sensor("custom", tuple(f"B{i + 1}" for i in range(len(waves))), waves, float(value_scale),
                                 f"user bands of {self.image_dir}")  # fmt: skip
        self.sensors = {self.sensor.name: self.sensor}
        self._wavelengths = self.sensor.wavelength_tensor()

        if isinstance(classes, (str, os.PathLike)):
            self.classes: list[str] | None = read_class_list(classes)
        else:
            self.classes = None if classes is None else [str(c) for c in classes]
        if self.label_dir is not None and not self.classes:
            raise ValueError(f"GeoTiffFolder({self.image_dir}): labels given ({self.label_dir}) but no `classes`")
        self.num_classes = None if self.classes is None else len(self.classes)
        if self.num_classes is not None and self.num_classes > 255:
            raise ValueError(f"GeoTiffFolder: {self.num_classes} classes; at most 255 fit uint8 labels (255 = ignore)")
        if palette is None:
            self.palette = _default_palette(self.num_classes or 0)
        else:
            self.palette = [(int(c[0]), int(c[1]), int(c[2])) for c in palette]
        if palette is not None and self.num_classes is not None and len(self.palette) != self.num_classes:
            raise ValueError(f"GeoTiffFolder: {self.num_classes} classes but {len(self.palette)} palette colours")
        self.label_lookup = offset_lookup(label_offset)
        self.label_offset = label_offset
        self.domain = domain
        self.domains = [domain]
        self.transform = transform
        self.classes_check = classes_check
        self.ignore_index = IGNORE_INDEX
        self.validation: ValidationReport | None = None

        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"{self.image_dir}: image folder not found")
        if self.label_dir is not None and not self.label_dir.is_dir():
            raise FileNotFoundError(f"{self.label_dir}: label folder not found")
        self.images = _scan(self.image_dir, suffixes)
        if not self.images:
            raise ValueError(f"{self.image_dir}: no image files ending in {tuple(suffixes)} (searched recursively)")
        stems: dict[Path, list[Path]] = {}
        for image in self.images:
            stems.setdefault(image.relative_to(self.image_dir).with_suffix(""), []).append(image)
        clashes = [paths for paths in stems.values() if len(paths) > 1]
        if clashes:
            listed = "; ".join(" and ".join(str(p) for p in paths) for paths in clashes[:10])
            raise ValueError(f"{self.image_dir}: {len(clashes)} image name(s) differ only in their ending ({listed}); "
                             "they would share one label: rename or remove one of each")  # fmt: skip
        self.labels: list[Path] | None = None
        if self.label_dir is not None:
            self.labels = [self._pair(p, label_suffix) for p in self.images]
            searched = [label_suffix] if label_suffix is not None else list(LABEL_SUFFIXES)
            check_files_exist(
                self.labels,
                f"labels in {self.label_dir} for images in {self.image_dir} (same relative path and stem, "
                f"searched {', '.join(searched)})",
            )
        if validate:
            self.validation = self.validate_tiles()

    def validate_tiles(self) -> ValidationReport:
        """The pre-flight pass over every image (and label) of the folder (``spectralmoe.data.validate``):
        one error listing every bad file. Cached per file by size and mtime."""
        checks = [TileCheck(image, label, self.sensor.num_bands, "source", self.sensor.name)
                  for image, label in self.records]  # fmt: skip
        return validate_tiles(self.image_dir.parent, checks, num_classes=self.num_classes if self.classes_check else None,
                              label_lookup=self.label_lookup)  # fmt: skip

    def _pair(self, image: Path, label_suffix: str | None) -> Path:
        """The label of ``image``: same relative folder and stem under ``label_dir``."""
        assert self.label_dir is not None
        stem = self.label_dir / image.relative_to(self.image_dir).with_suffix("")
        if label_suffix is not None:
            return stem.with_name(stem.name + label_suffix)
        found = [c for c in (stem.with_name(stem.name + s) for s in LABEL_SUFFIXES) if c.is_file()]
        if len(found) > 1:
            raise ValueError(f"{image}: several candidate labels {[str(f) for f in found]}; set `label_suffix`")
        return found[0] if found else stem.with_name(stem.name + LABEL_SUFFIXES[0])

    @property
    def records(self) -> list[tuple[Path, Path | None]]:
        """``(image, label)`` pairs in order (label ``None`` in prediction-only mode)."""
        labels = self.labels if self.labels is not None else [None] * len(self.images)
        return list(zip(self.images, labels))

    def image_paths(self) -> list[Path]:
        """Image files in order (used by ``compute_band_stats``)."""
        return list(self.images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Sample:
        sample = load_sample(
            self.images[i],
            None if self.labels is None else self.labels[i],
            sensor=self.sensor,
            wavelengths=self._wavelengths,
            domain=self.domain,
            num_classes=self.num_classes,
            label_lookup=self.label_lookup,
            classes_check=self.classes_check,
        )
        return self.transform(sample) if self.transform is not None else sample

    def __repr__(self) -> str:
        mode = "prediction-only" if self.labels is None else f"{self.num_classes} classes"
        return f"{type(self).__name__}({str(self.image_dir)!r}, tiles={len(self)}, sensor={self.sensor.name!r}, {mode})"

