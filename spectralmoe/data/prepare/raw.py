"""Raw downloads as distributed: each archive as its ``.zip`` or as the folder it unzips to.

Why one module: the benchmarks ship as zips of GeoTIFF/PNG files that users may or may not have
unzipped, and a converter should neither care nor unpack tens of GB in bulk. ``RawTree`` finds
each archive below ``--raw`` (zipped or not), ``RawSource`` lists and reads its members (a zip
member is extracted alone into ``OUT/.raw-work`` and deleted after use, or its header is probed in
place through ``/vsizip/``), and ``LazyScene`` reads a scene only when one of its tiles is missing.
The checks every converter applies to a raw image/label pair live here too.
"""

from __future__ import annotations

import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from spectralmoe.data.io import RasterData, raster_shape, read_image
from spectralmoe.data.prepare.common import TileArrays

WORK_DIR = ".raw-work"
"""Extraction folder inside OUT, removed at the start and end of every run."""

T = TypeVar("T")


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
        """Delete the copies ``local(name)`` extracted (nothing for a folder)."""
        for path in self._extracted.pop(name, []):
            path.unlink(missing_ok=True)

    def read(self, name: str, reader: Callable[[Path], T]) -> T:
        """``reader`` applied to member ``name`` (extracted and deleted again for a zip); an error names
        the member inside its archive."""
        try:
            return reraise_naming(self.describe(name), lambda: reader(self.local(name)))
        finally:
            self.release(name)

    def raster_shape(self, name: str) -> tuple[int, int, int, str]:
        """``(bands, H, W, dtype)`` of member ``name`` from its header (a zip member is read in place)."""
        return raster_shape(self.gdal_path(name), where=self.describe(name))

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
    """Refuse a label (``[H, W]`` indices or ``[H, W, 3]`` colours) whose size is not its image's."""
    if tuple(label.shape[:2]) != image.shape:
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


def read_pair(
    image_src: RawSource,
    image_name: str,
    label_src: RawSource,
    label_name: str,
    *,
    bands: int,
    band_names: Sequence[str],
    read_label: Callable[[Path], np.ndarray],
) -> tuple[RasterData, np.ndarray, str]:
    """A raw 8-bit image and its label, read and checked (band count, dtype, same size) before any
    tile is cut from them; errors name the member inside its archive. Returns ``(image, label as
    read, how to name the label)``; the members stay extracted until ``release``."""
    image_where, label_where = image_src.describe(image_name), label_src.describe(label_name)
    image = reraise_naming(image_where, lambda: read_image(image_src.local(image_name)))
    check_image(image, image_where, bands=bands, band_names=band_names)
    label = reraise_naming(label_where, lambda: read_label(label_src.local(label_name)))
    check_same_size(image, label, image_where, label_where)
    return image, label, label_where
