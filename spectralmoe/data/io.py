"""Readers shared by the converters (``spectralmoe.data.prepare``) and the datasets.

Why one module: every raw benchmark reaches the model through a handful of file kinds (GeoTIFF,
CMYK TIFF, PNG/JPEG images, index labels, colour labels). Reading each kind in exactly one place
keeps the three cross-cutting rules of DATA.md §0 in one place too:

* the band order of the file is never changed (no RGB reordering, no BGR as cv2 would give);
* labels are read as stored (a palette PNG gives its indices, not its colours) and are never
  re-mapped here (``reduce_zero_label`` and colour tables are the converters' job);
* every failure is an error that names the file (``RasterReadError``, a ``ValueError``).

Band indices in this module are **0-based** (numpy order), unlike rasterio's 1-based ones.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = [
    "RasterData",
    "RasterReadError",
    "MissingFileError",
    "read_raster",
    "read_cmyk_tiff",
    "read_label",
    "read_colour_label",
    "colours_to_index",
    "read_image",
    "raster_shape",
    "open_raw",
    "BandInfo",
    "read_band_info",
    "PILLOW_SUFFIXES",
    "RASTERIO_SUFFIXES",
]

# Files read with Pillow (plain images, no georeference) and with rasterio (everything GDAL reads).
PILLOW_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")
RASTERIO_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".img", ".jp2", ".vrt")

PathLike = str | os.PathLike[str]


class RasterReadError(ValueError):
    """A file could not be read as the expected kind of raster; the message names the file."""


class MissingFileError(RasterReadError, FileNotFoundError):
    """The file does not exist (also a ``FileNotFoundError``, so either ``except`` catches it)."""


@dataclass(frozen=True)
class RasterData:
    """An image read from disk.

    ``array`` is ``[C, H, W]`` in the file's band order and the file's dtype; ``crs``,
    ``transform`` and ``nodata`` are rasterio's (``None`` for plain PNG/JPEG images).
    """

    array: np.ndarray
    crs: Any
    transform: Any
    nodata: float | None
    path: str
    #: ``[H, W]`` bool, False where the file's own mask (GDAL per-dataset mask band or alpha) marks no
    #: data; ``None`` when the file has no such mask
    valid: np.ndarray | None = None

    @property
    def num_bands(self) -> int:
        return int(self.array.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return int(self.array.shape[1]), int(self.array.shape[2])


# ------------------------------------------------------------------------------------------ helpers
def _check_exists(path: Path) -> None:
    if not path.exists():
        raise MissingFileError(f"{path}: no such file")
    if not path.is_file():
        raise RasterReadError(f"{path}: not a regular file")


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _open_pillow(path: Path) -> Any:
    """Open and fully decode ``path`` with Pillow; a truncated or unreadable file raises ``RasterReadError``.

    The decompression-bomb guard is lifted to a warning-free read because raw scenes
    (FBP: 7300×6908) are legitimately large; an image beyond Pillow's hard limit raises
    ``Image.DecompressionBombError``, which callers may answer by trying rasterio.
    """
    from PIL import Image, UnidentifiedImageError

    _check_exists(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()
    except Image.DecompressionBombError:
        raise
    except UnidentifiedImageError as error:
        raise RasterReadError(f"{path}: Pillow cannot identify this image file ({error})") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise RasterReadError(f"{path}: unreadable or truncated image ({error})") from error
    return image


def _rasterio_modules() -> tuple[Any, Any]:
    import rasterio
    import rasterio.errors

    return rasterio, rasterio.errors


def open_raw(path: Path, rasterio: Any) -> Any:
    """Open ``path`` so that reads return the stored samples.

    GDAL decodes photometric SEPARATED (CMYK) TIFFs to RGBA by default — for the FBP NIR,R,G,B
    tiles that silently inverts three bands and replaces the fourth. Its ``GTIFF_RAW:`` prefix
    exposes the raw samples instead, so such files are reopened with it.
    """
    src = rasterio.open(path)
    if src.driver == "GTiff" and src.tags(ns="IMAGE_STRUCTURE").get("SOURCE_COLOR_SPACE", "").upper() == "CMYK":
        src.close()
        src = rasterio.open(f"GTIFF_RAW:{path}")
    return src


# ------------------------------------------------------------------------------------------ readers
def honoured_mask(src: Any, used_bands: Sequence[int] | None) -> bool:
    """Whether the file's own mask (``read_masks``) marks nodata for the bands read.

    An explicit mask band (GDAL per-dataset mask, e.g. an internal ``.msk``) always does. A band the
    file flags as *alpha* does only when it is not itself read as data: GDAL flags the 4th band of
    any 4-band 8-bit GeoTIFF as alpha by default, so for a NIR,R,G,B or R,G,B,NIR product that
    "alpha" is a spectral band, and honouring it would turn every pixel whose 4th band is 0 into
    nodata. ``used_bands`` are the 0-based bands read (None: unknown, alpha is not honoured).
    """
    from rasterio.enums import ColorInterp, MaskFlags

    flags = src.mask_flag_enums
    if any(MaskFlags.per_dataset in f and MaskFlags.alpha not in f for f in flags):
        return True
    alpha = [i for i, interp in enumerate(src.colorinterp) if interp == ColorInterp.alpha]
    if not alpha or not any(MaskFlags.alpha in f for f in flags) or used_bands is None:
        return False
    return not set(alpha) & {int(b) for b in used_bands}


def read_raster(
    path: PathLike,
    *,
    bands: Sequence[int] | None = None,
    window: tuple[int, int, int, int] | None = None,
) -> RasterData:
    """Read a raster with rasterio, keeping the file's band order and dtype.

    CMYK (photometric SEPARATED) TIFFs are read as their raw four samples, not GDAL's RGBA rendering.

    Args:
        path: any file GDAL reads (GeoTIFF, ENVI ``.img``, PNG…).
        bands: 0-based band indices to read, in the order wanted (default: all, file order).
        window: ``(top, left, height, width)`` in pixels; must lie inside the raster.

    Raises:
        RasterReadError: missing, unreadable or truncated file, bad band index or window;
            the message names the file and carries rasterio's message.
    """
    rasterio, errors = _rasterio_modules()
    from affine import Affine
    from rasterio.windows import Window

    path = Path(path)
    _check_exists(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", errors.NotGeoreferencedWarning)
            with rasterio.Env(GDAL_PAM_ENABLED="NO"), open_raw(path, rasterio) as src:
                count, height, width = src.count, src.height, src.width
                indexes: list[int] | None = None
                if bands is not None:
                    indexes = [int(b) + 1 for b in bands]
                    bad = [b for b in bands if not 0 <= int(b) < count]
                    if bad or not indexes:
                        raise RasterReadError(
                            f"{path}: band indices {list(bands)} invalid for a {count}-band raster (0-based)"
                        )
                rio_window = None
                if window is not None:
                    top, left, win_h, win_w = (int(v) for v in window)
                    if top < 0 or left < 0 or win_h <= 0 or win_w <= 0 or top + win_h > height or left + win_w > width:
                        raise RasterReadError(
                            f"{path}: window (top={top}, left={left}, height={win_h}, width={win_w}) "
                            f"is not inside the {height}x{width} raster"
                        )
                    rio_window = Window(col_off=left, row_off=top, width=win_w, height=win_h)
                array = src.read(indexes=indexes, window=rio_window)
                transform = src.transform if window is None else src.transform @ Affine.translation(left, top)
                crs, nodata = src.crs, src.nodata
                valid = None
                used = range(count) if indexes is None else [i - 1 for i in indexes]
                if honoured_mask(src, used):
                    valid = src.read_masks(1, window=rio_window) > 0
    except RasterReadError:
        raise
    except (errors.RasterioError, OSError, ValueError) as error:
        raise RasterReadError(f"{path}: unreadable or truncated raster ({error})") from error
    return RasterData(array=array, crs=crs, transform=transform, nodata=nodata, path=str(path), valid=valid)


def _read_four_band_uint8_with_rasterio(path: Path, why: str) -> np.ndarray:
    data = read_raster(path)
    if data.array.shape[0] != 4 or data.array.dtype != np.uint8:
        raise RasterReadError(
            f"{path}: {why}; rasterio reads it as {data.array.shape[0]} band(s) of {data.array.dtype}, "
            f"but an FBP 8-bit NIR,R,G,B image must be 4 bands of uint8"
        )
    return data.array


def read_cmyk_tiff(path: PathLike) -> np.ndarray:
    """Read an FBP / C-megacities 8-bit NIR,R,G,B TIFF as ``[4, H, W]`` uint8 (DATA.md §2.2).

    The official code reads these with Pillow ``open(...).convert('CMYK')``, which keeps the four
    samples only for photometric SEPARATED files (Pillow mode ``CMYK``). We never call ``convert``;
    we return the four stored samples in file order:

    * Pillow mode ``CMYK`` → the samples as stored.
    * Pillow mode ``RGBA``/``RGBa``/``RGBX`` (4 samples tagged RGB + extra sample): Pillow's
      ``convert('CMYK')`` would invert R,G,B and zero the fourth band (silent corruption), and
      ``RGBa`` would be premultiplied. The bytes on disk are nevertheless the four bands, so we
      read the raw samples with rasterio instead of refusing the file.
    * Files Pillow cannot open (GDAL-style MINISBLACK 4-band, or beyond Pillow's size guard) →
      rasterio, if they are 4 bands of uint8.
    * Anything else (RGB, grey, 16-bit…) → ``RasterReadError`` naming the file and its mode.
    """
    from PIL import Image

    path = Path(path)
    try:
        image = _open_pillow(path)
    except Image.DecompressionBombError:
        return _read_four_band_uint8_with_rasterio(path, "too large for Pillow")
    except MissingFileError:
        raise
    except RasterReadError as error:
        if "cannot identify" not in str(error):
            raise  # Pillow knows the format but the file is truncated/corrupt: do not paper over it.
        return _read_four_band_uint8_with_rasterio(path, "Pillow cannot open it")
    with image:
        mode = image.mode
        if mode == "CMYK":
            return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))
    if mode in ("RGBA", "RGBa", "RGBX"):
        return _read_four_band_uint8_with_rasterio(path, f"Pillow mode {mode} (4 samples tagged RGB+extra)")
    raise RasterReadError(
        f"{path}: Pillow mode {mode!r}; an FBP 8-bit NIR,R,G,B image must be a 4-sample uint8 TIFF "
        f"(photometric SEPARATED, Pillow mode 'CMYK')"
    )


def _as_uint8_labels(values: np.ndarray, path: Path, what: str) -> np.ndarray:
    """Cast integer label values to uint8, refusing floats and values outside 0..255."""
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8)
    if not np.issubdtype(values.dtype, np.integer):
        raise RasterReadError(f"{path}: {what} has dtype {values.dtype}; labels must be integer class indices")
    if values.size and (int(values.min()) < 0 or int(values.max()) > 255):
        raise RasterReadError(
            f"{path}: {what} values span {int(values.min())}..{int(values.max())}; "
            f"class indices must fit in uint8 (0..255)"
        )
    return values.astype(np.uint8)


def read_label(path: PathLike) -> np.ndarray:
    """Read a single-band class-index label as ``[H, W]`` uint8, values as stored.

    PNG (and other Pillow formats): modes ``L``, ``P`` (the palette INDICES, not the colours),
    ``1``, and 16/32-bit integer modes when every value fits in uint8. TIFF: rasterio, one band,
    integer dtype. A 3/4-channel file is refused as a colour label (use ``read_colour_label`` and
    ``colours_to_index``).
    """
    path = Path(path)
    if _suffix(path) in RASTERIO_SUFFIXES:
        data = read_raster(path)
        if data.array.shape[0] != 1:
            kind = "a colour label" if data.array.shape[0] in (3, 4) else "not a single-band label"
            raise RasterReadError(
                f"{path}: {data.array.shape[0]} bands (shape {data.array.shape}); this looks like {kind}; "
                f"index labels must have one band (convert colour labels with colours_to_index)"
            )
        return _as_uint8_labels(data.array[0], path, "label")
    image = _open_pillow(path)
    with image:
        mode = image.mode
        if mode in ("RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "LA", "PA", "La"):
            raise RasterReadError(
                f"{path}: Pillow mode {mode!r} has several channels; this looks like a colour label, "
                f"not an index label (read it with read_colour_label and map it with colours_to_index)"
            )
        if mode in ("F", "I;16F"):
            raise RasterReadError(f"{path}: Pillow mode {mode!r} holds floats; labels must be integer indices")
        array = np.asarray(image)
    if array.ndim != 2:
        raise RasterReadError(f"{path}: label of shape {array.shape} (mode {mode!r}); expected [H, W]")
    return _as_uint8_labels(array, path, f"label (Pillow mode {mode!r})")


def read_colour_label(path: PathLike) -> np.ndarray:
    """Read an RGB colour-coded label as ``[H, W, 3]`` uint8 (PNG via Pillow, TIFF via rasterio).

    A 4th (alpha) channel is dropped; palette files are expanded to their colours; a
    single-band file without a colour map is refused (it is an index label).
    """
    path = Path(path)
    if _suffix(path) in RASTERIO_SUFFIXES:
        rasterio, errors = _rasterio_modules()
        data = read_raster(path)
        count = data.array.shape[0]
        if data.array.dtype != np.uint8:
            raise RasterReadError(f"{path}: colour label of dtype {data.array.dtype}; expected uint8 RGB")
        if count in (3, 4):
            return np.ascontiguousarray(data.array[:3].transpose(1, 2, 0))
        if count == 1:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", errors.NotGeoreferencedWarning)
                    with rasterio.open(path) as src:
                        colormap = src.colormap(1)
            except ValueError:
                colormap = None
            if colormap:
                table = np.zeros((256, 3), dtype=np.uint8)
                for value, rgba in colormap.items():
                    if 0 <= value < 256:
                        table[value] = rgba[:3]
                return table[data.array[0]]
        raise RasterReadError(
            f"{path}: {count} band(s) without a colour map; a colour label needs 3 (RGB) bands "
            f"(is this an index label? use read_label)"
        )
    image = _open_pillow(path)
    with image:
        mode = image.mode
        if mode in ("RGB", "RGBA", "RGBX"):
            array = np.asarray(image)[..., :3]
        elif mode == "P":
            array = np.asarray(image.convert("RGB"))
        else:
            raise RasterReadError(
                f"{path}: Pillow mode {mode!r}; a colour label must be RGB (or a palette image); "
                f"is this an index label? use read_label"
            )
    return np.ascontiguousarray(array, dtype=np.uint8)


def colours_to_index(
    rgb: np.ndarray, table: Sequence[tuple[int, int, int]], unmatched: int
) -> np.ndarray:
    """Map an ``[H, W, 3]`` colour label to ``[H, W]`` uint8 indices by exact colour match.

    ``table[i]`` is the colour of index ``i``; colours not in the table become ``unmatched``.
    Vectorised: colours are packed to 24-bit integers and looked up with ``searchsorted``.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"colour label must be [H, W, 3], got shape {rgb.shape}")
    if not 0 <= int(unmatched) <= 255:
        raise ValueError(f"unmatched index must fit in uint8, got {unmatched}")
    if len(table) > 256:
        raise ValueError(f"colour table has {len(table)} entries; indices must fit in uint8 (≤ 256)")
    colours = np.asarray(table, dtype=np.int64).reshape(-1, 3)
    if colours.size and (colours.min() < 0 or colours.max() > 255):
        raise ValueError("colour table entries must be 0..255")
    keys = (colours[:, 0] << 16) | (colours[:, 1] << 8) | colours[:, 2]
    unique_keys, first = np.unique(keys, return_index=True)
    if len(unique_keys) != len(keys):
        dupes = sorted({tuple(c) for c, k in zip(colours.tolist(), keys) if (keys == k).sum() > 1})
        raise ValueError(f"colour table lists the same colour for several indices: {dupes}")
    pixels = rgb.astype(np.uint32)
    packed = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]
    out = np.full(packed.shape, int(unmatched), dtype=np.uint8)
    if not len(unique_keys):
        return out
    position = np.searchsorted(unique_keys, packed).clip(0, len(unique_keys) - 1)
    hit = unique_keys[position] == packed
    out[hit] = first[position[hit]].astype(np.uint8)
    return out


def read_image(path: PathLike) -> RasterData:
    """Read any image tile as ``[C, H, W]`` in the file's channel order.

    GeoTIFF and other GDAL rasters go through rasterio (``read_raster``). PNG/JPEG/BMP go through
    Pillow and come out in the order stored (RGB for an RGB file — never BGR as cv2 gives; a
    palette image is expanded to its RGB colours; a grey image gives one band).
    """
    path = Path(path)
    if _suffix(path) not in PILLOW_SUFFIXES:
        return read_raster(path)
    image = _open_pillow(path)
    with image:
        if image.mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        array = np.asarray(image)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return RasterData(array=np.ascontiguousarray(array), crs=None, transform=None, nodata=None, path=str(path))


def raster_shape(path: PathLike, *, where: str | None = None) -> tuple[int, int, int, str]:
    """``(bands, height, width, dtype)`` of a raster from its header alone (no pixel is read).

    Converters plan their tiles (and skip finished scenes) before reading pixels, so they need
    the size of a scene that may be several GB, or a member of a zip archive: pass a
    ``/vsizip/<archive>/<member>`` string to probe a member in place, nothing extracted (keep it a
    ``str``: ``Path`` would collapse the ``//`` of an absolute archive path). ``where`` names the
    file in errors (default: ``path``), e.g. ``archive.zip!member``.

    Raises:
        MissingFileError: a plain path that does not exist.
        RasterReadError: GDAL cannot open it (the message names ``where``).
    """
    rasterio, errors = _rasterio_modules()

    text = os.fspath(path)
    where = where or text
    if not text.startswith("/vsi"):
        if not Path(text).is_file():
            raise MissingFileError(f"{where}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", errors.NotGeoreferencedWarning)
            with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(text) as src:
                return int(src.count), int(src.height), int(src.width), str(src.dtypes[0])
    except (errors.RasterioError, OSError) as error:
        raise RasterReadError(f"{where}: unreadable raster ({error})") from error


# ------------------------------------------------------------------------------------- band metadata
@dataclass(frozen=True)
class BandInfo:
    """What a raster says about its bands, in file order: GDAL band descriptions, wavelengths from
    band metadata (GDAL's ``IMAGERY`` domain ``CENTRAL_WAVELENGTH_UM``, or ENVI's ``wavelength`` +
    ``wavelength_units``), and GDAL colour interpretations (``red``, ``gray``, ``undefined``…)."""

    descriptions: tuple[str | None, ...]
    tag_wavelengths_um: tuple[float | None, ...]
    colour_interpretations: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.descriptions)

    def names(self) -> list[str]:
        """A name per band: its description, else ``band N`` (1-based, as GDAL counts)."""
        return [d if d else f"band {i + 1}" for i, d in enumerate(self.descriptions)]

    def wavelengths(self) -> tuple[tuple[float, ...], str] | None:
        """The bands' centre wavelengths (µm) and where they come from, when the file says so for
        EVERY band: wavelength metadata, else descriptions naming known bands ("B", "NIR", "B08",
        "Red", "842 nm": ``bands.wavelengths_from_band_names``); ``None`` otherwise (a partial
        reading would be a guess). GDAL's colour interpretation is not used: files of false-colour
        products (NIR,R,G) are routinely tagged RGB."""
        from spectralmoe.bands import wavelengths_from_band_names

        if self.count and all(w is not None for w in self.tag_wavelengths_um):
            return tuple(float(w) for w in self.tag_wavelengths_um), "wavelength metadata"  # type: ignore[arg-type]
        named = wavelengths_from_band_names(list(self.descriptions))
        if named is not None:
            return named, "band descriptions " + ",".join(str(d) for d in self.descriptions)
        return None


def _tag_wavelength(tags: dict[str, str], imagery: dict[str, str]) -> float | None:
    """A band's centre wavelength (µm) from its metadata, or ``None``."""
    try:
        if "CENTRAL_WAVELENGTH_UM" in imagery:
            return float(imagery["CENTRAL_WAVELENGTH_UM"])
        lower = {k.lower(): v for k, v in tags.items()}
        if "wavelength" in lower:
            value = float(lower["wavelength"])
            units = lower.get("wavelength_units", "").strip().lower()
            if units.startswith("nano") or units == "nm" or (not units and value > 100.0):
                value /= 1000.0
            return value if 0.0 < value < 100.0 else None
    except ValueError:
        return None
    return None


def read_band_info(path: PathLike) -> BandInfo:
    """Band descriptions, metadata wavelengths and colour interpretations of a raster (header only).

    Plain images read with Pillow (PNG, JPEG) describe nothing: every field is empty per band."""
    path = Path(path)
    if _suffix(path) in PILLOW_SUFFIXES:
        count = read_image(path).num_bands
        return BandInfo((None,) * count, (None,) * count, ("undefined",) * count)
    rasterio, errors = _rasterio_modules()
    _check_exists(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", errors.NotGeoreferencedWarning)
            with rasterio.Env(GDAL_PAM_ENABLED="NO"), open_raw(path, rasterio) as src:
                descriptions = tuple((d or None) for d in src.descriptions)
                waves = tuple(_tag_wavelength(src.tags(i), src.tags(i, ns="IMAGERY")) for i in range(1, src.count + 1))
                interp = tuple(c.name for c in src.colorinterp)
    except (errors.RasterioError, OSError) as error:
        raise RasterReadError(f"{path}: unreadable raster ({error})") from error
    return BandInfo(descriptions, waves, interp)
