"""LoveDA (Rural → Urban) converter: the Zenodo download → prepared 512² tiles (DATA.md §5).

Source
    LoveDA: A Remote Sensing Land-Cover Dataset for Domain Adaptive Semantic Segmentation,
    Zenodo record 5706578 (``Train.zip``, ``Val.zip``, ``Test.zip``). Google Earth imagery of
    Nanjing, Changzhou and Wuhan, 0.3 m, 1024×1024 RGB PNG tiles, "Urban" and "Rural" scenes.

Raw layout read (each archive as a ``.zip`` or already unzipped; found anywhere below ``--raw``)::

    Train.zip  Train/{Urban,Rural}/images_png/<int>.png    RGB uint8 PNG
               Train/{Urban,Rural}/masks_png/<int>.png     mode L uint8 index mask 0..7
    Val.zip    Val/{Urban,Rural}/{images_png,masks_png}/<int>.png
    Test.zip   Test/{Urban,Rural}/images_png/<int>.png     (no masks: never used here)

Prepared layout written (``spectralmoe.data.layout``)::

    image/<scene>/<Split>/<stem>_q<k>.tif   3-band uint8 GeoTIFF (no georeference), R,G,B as in the PNG
    label/<scene>/<Split>/<stem>_q<k>.png   uint8 class indices 0..6, 255 = ignore

``<scene>`` is ``rural`` or ``urban``; ``q0..q3`` are the top-left, top-right, bottom-left and
bottom-right quarters (``--*-tiling quarters``); with ``whole`` the name is ``<stem>`` alone.

Bands
    R, G, B (sensor ``"rgb"``), in the PNG's order. The authors' cv2 loader hands the model
    B,G,R (DATA.md §8.1); that is the task's business, the data stay as stored.

Classes (raw mask value → index)
    0 no-data → 255 (ignored); 1 background → 0, 2 building → 1, 3 road → 2, 4 water → 3,
    5 barren → 4, 6 forest → 5, 7 agriculture → 6. Any other raw value is an error.

DG split (defaults; the [U] ones are options)
    * source = domain ``rural``: Train/Rural + Val/Rural (``--source-splits Train,Val``). [I/U: the
      authors' schedule implies 9432 = 4 × (1366 + 992) source samples, DATA.md §0.4, §5.4]
    * target = domain ``urban``: Val/Urban (``--target-splits Val``). [V: SMoE config]
    * tiling: four 512² quarters of every 1024² image for BOTH source and target
      (``--source-tiling`` / ``--target-tiling quarters|whole``). [U: the source count suggests
      quarters; whether the target was quartered is unknown; quarters give equal-sized 512 tiles.]
    * the city of a tile is not recorded in the files: attribute ``city`` is ``"unknown"``.

Citation
    Junjue Wang, Zhuo Zheng, Ailong Ma, Xiaoyan Lu, Yanfei Zhong. "LoveDA: A Remote Sensing
    Land-Cover Dataset for Domain Adaptive Semantic Segmentation". NeurIPS Datasets and
    Benchmarks, 2021. https://doi.org/10.5281/zenodo.5706578

This module also holds the raw-archive helpers shared by the three RGB converters
(``RawSource``, ``RawTree``, ``LazyScene``; candidates for ``prepare/common.py``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from spectralmoe.bands import get_sensor
from spectralmoe.data.io import RasterData, read_image, read_label
from spectralmoe.data.layout import IGNORE_INDEX, PreparedIndex
from spectralmoe.data.prepare.common import PrepareRun, TileArrays, map_labels

logger = logging.getLogger(__name__)

WORK_DIR = ".raw-work"  # extraction folder inside OUT, removed at the end of every run


# ================================================================ raw archives (shared by the RGB converters)
def _clean_member(name: str) -> str | None:
    """Normalise a zip member / relative path; ``None`` for folders and macOS resource-fork junk."""
    name = name.replace("\\", "/")
    if name.endswith("/") or name.startswith("__MACOSX/") or "/__MACOSX/" in name:
        return None
    if name.rsplit("/", 1)[-1].startswith("._"):
        return None
    return name


class RawSource:
    """One raw archive as distributed (a ``.zip``, read member by member) or its unzipped folder.

    ``names`` are the files it holds, as ``/``-separated paths relative to the archive root (zip)
    or the folder. ``local(name)`` gives a real file path for a reader: the file itself for a
    folder, or a copy extracted into ``work`` for a zip (with its sidecar files such as ``.tfw``);
    ``release(name)`` deletes that copy again.
    """

    def __init__(self, path: Path, work: Path | None = None, exclude: Path | None = None) -> None:
        self.path = Path(path)
        self.work = work
        self._zip: zipfile.ZipFile | None = None
        if self.path.is_file():
            try:
                self._zip = zipfile.ZipFile(self.path)
            except zipfile.BadZipFile as error:
                raise ValueError(f"{self.path}: not a readable zip archive ({error})") from error
            names = [_clean_member(info.filename) for info in self._zip.infolist() if not info.is_dir()]
        elif self.path.is_dir():
            names = [_clean_member(n) for n in _walk_files(self.path, exclude)]
        else:
            raise FileNotFoundError(f"{self.path}: no such archive or folder")
        self.names: tuple[str, ...] = tuple(sorted(n for n in names if n is not None))
        self._extracted: dict[str, list[Path]] = {}
        self._by_stem: dict[str, list[str]] | None = None  # member path without suffix → members

    @property
    def is_zip(self) -> bool:
        return self._zip is not None

    def describe(self, name: str) -> str:
        """How to name member ``name`` in a message: ``archive.zip!member`` or the real path."""
        return f"{self.path}!{name}" if self.is_zip else str(self.path / name)

    def match(self, pattern: re.Pattern[str]) -> list[tuple[re.Match[str], str]]:
        """``(match, name)`` for every member whose path matches ``pattern`` (``search``)."""
        found = []
        for name in self.names:
            hit = pattern.search(name)
            if hit:
                found.append((hit, name))
        return found

    def read_text(self, name: str) -> str:
        if self._zip is not None:
            return self._zip.read(name).decode("utf-8-sig")
        return (self.path / name).read_text(encoding="utf-8-sig")

    def gdal_path(self, name: str) -> str:
        """A path GDAL opens without extracting (``/vsizip/`` for zip members)."""
        if self._zip is not None:
            return f"/vsizip/{self.path.resolve()}/{name}"
        return str(self.path / name)

    def local(self, name: str) -> Path:
        """A real file for member ``name`` (extracted, with same-stem sidecars, when in a zip)."""
        if self._zip is None:
            return self.path / name
        if self.work is None:
            raise RuntimeError(f"{self.path}: no work folder to extract {name!r} into")
        target_dir = self.work / re.sub(r"[^A-Za-z0-9._-]", "_", self.path.name)
        if self._by_stem is None:
            self._by_stem = {}
            for member in self.names:
                self._by_stem.setdefault(member.rsplit(".", 1)[0], []).append(member)
        sidecars = self._by_stem.get(name.rsplit(".", 1)[0], []) + self._by_stem.get(name, [])
        members = [name] + [n for n in sidecars if n != name]
        written = []
        for member in members:
            if member.startswith("/") or ".." in member.split("/"):
                raise ValueError(f"{self.describe(member)}: unsafe member path in the archive; refusing to extract it")
            target = target_dir / member
            target.parent.mkdir(parents=True, exist_ok=True)
            with self._zip.open(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
            written.append(target)
        self._extracted[name] = written
        return written[0]

    def release(self, name: str) -> None:
        for path in self._extracted.pop(name, []):
            path.unlink(missing_ok=True)

    def close(self) -> None:
        for name in list(self._extracted):
            self.release(name)
        if self._zip is not None:
            self._zip.close()
            self._zip = None


def _walk_files(root: Path, exclude: Path | None = None) -> list[str]:
    """Relative ``/`` paths of every file below ``root``, skipping ``exclude`` (the output folder)."""
    root = Path(root)
    skip = exclude.resolve() if exclude is not None else None
    found: list[str] = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        here = Path(folder)
        if skip is not None:
            dirs[:] = [d for d in dirs if (here / d).resolve() != skip]
        rel = here.relative_to(root).as_posix()
        prefix = "" if rel == "." else rel + "/"
        found.extend(prefix + f for f in files)
    return found


class RawTree:
    """The ``--raw`` folder: finds each distributed archive in it, zipped or unzipped.

    ``find("Train.zip")`` returns, in order of preference: the file ``Train.zip`` anywhere below
    the folder, else a folder named ``Train`` anywhere below it (the unzipped archive), else
    ``None``. Two candidates of the same kind are an error (ambiguous).
    """

    def __init__(self, raw: str | os.PathLike[str], out: str | os.PathLike[str]) -> None:
        self.raw = Path(raw)
        if not self.raw.is_dir():
            raise FileNotFoundError(f"{self.raw}: raw folder not found")
        self.out = Path(out)
        self.work = self.out / WORK_DIR
        self.files = _walk_files(self.raw, self.out)
        self.dirs = sorted(self._parents())
        self._sources: list[RawSource] = []

    def _parents(self) -> set[str]:
        parents: set[str] = set()
        for f in self.files:
            parts = f.split("/")[:-1]
            parents.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        return parents

    def _open(self, path: Path) -> RawSource:
        source = RawSource(path, self.work, self.out)
        self._sources.append(source)
        return source

    def find(self, archive: str) -> RawSource | None:
        zips = [f for f in self.files if f.rsplit("/", 1)[-1] == archive]
        if len(zips) > 1:
            raise ValueError(f"{self.raw}: {archive} found more than once ({', '.join(zips)}); keep one")
        if zips:
            return self._open(self.raw / zips[0])
        stem = archive[: -len(".zip")] if archive.endswith(".zip") else archive
        folders = [d for d in self.dirs if d.rsplit("/", 1)[-1] == stem]
        # An unzipped archive that repeats its own top folder (Train/Train/...) is one candidate.
        folders = [d for d in folders if not any(d.startswith(o + "/") for o in folders if o != d)]
        if len(folders) > 1:
            raise ValueError(f"{self.raw}: folder {stem}/ found more than once ({', '.join(folders)}); keep one")
        if folders:
            return self._open(self.raw / folders[0])
        return None

    def whole(self) -> RawSource:
        """The raw folder itself as one source (everything unzipped side by side)."""
        return self._open(self.raw)

    def open_path(self, path: str | os.PathLike[str]) -> RawSource:
        """An archive or folder named by an option (a path outside the usual search)."""
        return self._open(Path(path))

    def close(self) -> None:
        for source in self._sources:
            source.close()
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> "RawTree":
        shutil.rmtree(self.work, ignore_errors=True)  # leftovers of an interrupted run
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LazyScene:
    """A raw image + label pair read (and checked) once, on the first tile that needs it.

    ``load`` returns ``(RasterData, label [H, W] uint8 of class indices)``; a rerun whose tiles are
    all on disk never calls it. ``release()`` frees the arrays and any extracted files.
    """

    def __init__(self, load: Callable[[], tuple[RasterData, np.ndarray]], cleanup: Callable[[], None]) -> None:
        self._load = load
        self._cleanup = cleanup
        self._data: tuple[RasterData, np.ndarray] | None = None

    def get(self) -> tuple[RasterData, np.ndarray]:
        if self._data is None:
            self._data = self._load()
        return self._data

    def tile(self, top: int, left: int, height: int, width: int) -> TileArrays:
        image, label = self.get()
        return TileArrays(
            image=np.ascontiguousarray(image.array[:, top : top + height, left : left + width]),
            label=np.ascontiguousarray(label[top : top + height, left : left + width]),
            crs=image.crs,
            transform=window_transform(image, top, left),
            nodata=image.nodata,
        )

    def release(self) -> None:
        self._data = None
        self._cleanup()


def window_transform(image: RasterData, top: int, left: int) -> Any:
    """Georeference of a window: ``None`` for a non-georeferenced source (no CRS, identity transform)."""
    transform = image.transform
    if transform is None:
        return None
    from affine import Affine

    if image.crs is None and transform == Affine.identity():
        return None
    return transform @ Affine.translation(left, top)


def check_image(image: RasterData, where: str, *, bands: int, band_names: Sequence[str]) -> None:
    """Refuse an image whose band count or dtype is not the product's (8-bit, ``bands`` bands)."""
    if image.num_bands != bands:
        raise ValueError(
            f"{where}: {image.num_bands} band(s) (shape {tuple(image.array.shape)}); expected {bands} "
            f"({', '.join(band_names)})"
        )
    if image.array.dtype != np.uint8:
        raise ValueError(f"{where}: dtype {image.array.dtype}; expected uint8 (8-bit {', '.join(band_names)})")


def check_same_size(image: RasterData, label: np.ndarray, image_where: str, label_where: str) -> None:
    if tuple(label.shape) != image.shape:
        raise ValueError(
            f"size mismatch: image {image_where} is {image.shape[0]}x{image.shape[1]} (HxW) but its label "
            f"{label_where} is {label.shape[0]}x{label.shape[1]}"
        )


def reraise_naming(where: str, call: Callable[[], Any]) -> Any:
    """Run a reader; a reader error is re-raised naming ``where`` (the member inside its archive)."""
    try:
        return call()
    except (ValueError, OSError) as error:
        if where in str(error):
            raise
        raise ValueError(f"{where}: {error}") from error


def probe_shape(source: RawSource, name: str) -> tuple[int, int]:
    """``(H, W)`` of a raster from its header only (``/vsizip/`` for zip members: nothing extracted)."""
    import rasterio
    import rasterio.errors

    where = source.describe(name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(source.gdal_path(name)) as src:
                return int(src.height), int(src.width)
    except (rasterio.errors.RasterioError, OSError) as error:
        raise ValueError(f"{where}: unreadable raster ({error})") from error


def index_lookup(num_classes: int) -> np.ndarray:
    """256-entry table for ``map_labels``: 0 → 255, v → v−1 for v in 1..K, everything else invalid (−1)."""
    lookup = np.full(256, -1, dtype=np.int16)
    lookup[0] = IGNORE_INDEX
    lookup[1 : num_classes + 1] = np.arange(num_classes)
    return lookup


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
    if value not in choices:
        raise ValueError(f"{what}={value!r}; choose one of {list(choices)}")
    return value


def stem_order(name: str) -> tuple[int, str]:
    """Sort key: integer stems numerically, then by text."""
    stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return (int(stem), stem) if stem.isdigit() else (1 << 62, stem)


# ============================================================================================ LoveDA
BENCHMARK = "loveda"
CLASSES: list[str] = ["background", "building", "road", "water", "barren", "forest", "agricultural"]
PALETTE: list[tuple[int, int, int]] = [
    (255, 255, 255), (255, 0, 0), (255, 255, 0), (0, 0, 255), (159, 129, 183), (0, 255, 0), (255, 195, 128),
]  # fmt: skip
SENSOR = "rgb"
SCENES = {"rural": "Rural", "urban": "Urban"}
LABELLED_SPLITS = ("Train", "Val")
TILINGS = ("quarters", "whole")

OPTIONS: dict[str, tuple[type, Any, str]] = {
    "source_scene": (str, "rural", "scene of the source domain: rural or urban [V: SMoE config]"),
    "target_scene": (str, "urban", "scene of the target domain: rural or urban [V: SMoE config]"),
    "source_splits": (str, "Train,Val",
                      "LoveDA splits feeding the source, comma-separated (Train, Val) [UNVERIFIED: "
                      "Train+Val Rural fits the authors' 9432 source samples]"),
    "target_splits": (str, "Val", "LoveDA splits feeding the target (Train, Val) [V: SMoE config Val/Urban]"),
    "source_tiling": (str, "quarters",
                      "quarters (four 512x512 tiles per 1024x1024 image) or whole [UNVERIFIED default]"),
    "target_tiling": (str, "quarters", "quarters or whole for the target images [UNVERIFIED default]"),
}  # fmt: skip

_MEMBER = re.compile(r"(?:^|/)(Urban|Rural)/(images_png|masks_png)/([^/]+)\.png$")
_LOOKUP = index_lookup(len(CLASSES))


@dataclass(frozen=True)
class _Part:
    """One (split, scene) folder that feeds a side of the DG split."""

    side: str  # "source" | "target"
    split: str  # "Train" | "Val"
    scene: str  # "rural" | "urban"
    tiling: str


def _load_scene(source: RawSource, image_name: str, mask_name: str) -> tuple[RasterData, np.ndarray]:
    image_where, mask_where = source.describe(image_name), source.describe(mask_name)
    image = reraise_naming(image_where, lambda: read_image(source.local(image_name)))
    check_image(image, image_where, bands=3, band_names=get_sensor(SENSOR).band_names)
    raw = reraise_naming(mask_where, lambda: read_label(source.local(mask_name)))
    check_same_size(image, raw, image_where, mask_where)
    return image, map_labels(raw, _LOOKUP, mask_where)


def _quarter_box(shape: tuple[int, int], quarter: int | None, where: str) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of quarter ``0..3`` (row-major), or of the whole image for ``None``."""
    height, width = shape
    if quarter is None:
        return 0, 0, height, width
    if height % 2 or width % 2:
        raise ValueError(f"{where}: {height}x{width} (HxW) cannot be cut into four equal quarters; use tiling=whole")
    h, w = height // 2, width // 2
    return (quarter // 2) * h, (quarter % 2) * w, h, w


def prepare(
    raw: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    progress: bool = True,
    source_scene: str = "rural",
    target_scene: str = "urban",
    source_splits: str = "Train,Val",
    target_splits: str = "Val",
    source_tiling: str = "quarters",
    target_tiling: str = "quarters",
) -> PreparedIndex:
    """Convert the LoveDA download in ``raw`` into prepared tiles in ``out`` (see the module docstring).

    Raises:
        FileNotFoundError: a needed archive (``Train.zip``/``Val.zip`` or its folder) is missing.
        ValueError: an image without its mask, a mask of another size, an image that is not 3-band
            uint8, a mask value outside 0..7 (each naming the file), or contradictory options.
    """
    source_scene = check_choice(source_scene, "source_scene", tuple(SCENES))
    target_scene = check_choice(target_scene, "target_scene", tuple(SCENES))
    source_tiling = check_choice(source_tiling, "source_tiling", TILINGS)
    target_tiling = check_choice(target_tiling, "target_tiling", TILINGS)
    parts = [_Part("source", s, source_scene, source_tiling)
             for s in parse_list(source_splits, "source_splits", LABELLED_SPLITS)]
    parts += [_Part("target", s, target_scene, target_tiling)
              for s in parse_list(target_splits, "target_splits", LABELLED_SPLITS)]  # fmt: skip
    if not any(p.side == "source" for p in parts) or not any(p.side == "target" for p in parts):
        raise ValueError("loveda: source_splits and target_splits must each name at least one split")
    seen: dict[tuple[str, str], str] = {}
    for part in parts:
        key = (part.split, part.scene)
        if key in seen:
            raise ValueError(f"loveda: {part.split}/{SCENES[part.scene]} would feed both source and target")
        seen[key] = part.side
    options = dict(source_scene=source_scene, target_scene=target_scene, source_splits=source_splits,
                   target_splits=target_splits, source_tiling=source_tiling, target_tiling=target_tiling)  # fmt: skip

    tree = RawTree(raw, out)  # checks the raw folder before the output folder is claimed
    run = PrepareRun(BENCHMARK, out, progress=progress)
    sensor = get_sensor(SENSOR)
    with tree:
        # Pass 1: find every archive and pair every image with its mask before writing anything.
        sources: dict[str, RawSource] = {}
        for split in dict.fromkeys(p.split for p in parts):
            source = tree.find(f"{split}.zip")
            if source is None:
                raise FileNotFoundError(f"{tree.raw}: neither {split}.zip nor an unzipped {split}/ folder found")
            sources[split] = source
        plan: list[tuple[_Part, RawSource, str, str, str]] = []
        for part in parts:
            source = sources[part.split]
            images: dict[str, str] = {}
            masks: dict[str, str] = {}
            for hit, name in source.match(_MEMBER):
                if hit.group(1) != SCENES[part.scene]:
                    continue
                (images if hit.group(2) == "images_png" else masks)[hit.group(3)] = name
            if not images:
                raise FileNotFoundError(
                    f"{source.path}: no {SCENES[part.scene]}/images_png/*.png found (is this LoveDA {part.split}?)"
                )
            missing = [images[s] for s in images if s not in masks]
            if missing:
                shown = ", ".join(source.describe(n) for n in sorted(missing, key=stem_order)[:5])
                raise ValueError(f"missing label: {len(missing)} LoveDA image(s) without a masks_png/ mask: {shown}")
            for stem in sorted(images, key=lambda s: stem_order(s)):
                plan.append((part, source, stem, images[stem], masks[stem]))

        # Pass 2: tiles (an image is read only if one of its tiles is not on disk yet).
        for part, source, stem, image_name, mask_name in plan:
            where = source.describe(image_name)
            scene = LazyScene(lambda s=source, i=image_name, m=mask_name: _load_scene(s, i, m),
                              lambda s=source, i=image_name, m=mask_name: (s.release(i), s.release(m)))  # fmt: skip
            for quarter in [None] if part.tiling == "whole" else [0, 1, 2, 3]:
                name = stem if quarter is None else f"{stem}_q{quarter}"
                attributes = {"scene": part.scene, "loveda_split": part.split, "image": stem, "city": "unknown"}
                if quarter is not None:
                    attributes["quarter"] = str(quarter)

                def make(scene: LazyScene = scene, quarter: int | None = quarter, where: str = where) -> TileArrays:
                    return scene.tile(*_quarter_box(scene.get()[0].shape, quarter, where))

                run.add_tile(f"{part.scene}/{part.split}/{name}", make, split=part.side,  # type: ignore[arg-type]
                             domain=part.scene, sensor=SENSOR, attributes=attributes,
                             band_names=sensor.band_names)  # fmt: skip
            scene.release()
        return run.finish(classes=CLASSES, palette=PALETTE, sensors={SENSOR: sensor}, options=options)

