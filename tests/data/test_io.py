"""Readers of spectralmoe.data.io on tiny fakes written here with rasterio and Pillow."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning
from affine import Affine

from spectralmoe.data import io
from spectralmoe.data.io import MissingFileError, RasterReadError


def banded(c: int, h: int = 24, w: int = 32, dtype: str = "uint8") -> np.ndarray:
    """``[C, H, W]`` with band k filled with 10·(k+1), plus a per-band marker at (0, 0) so any reordering shows."""
    array = np.stack([np.full((h, w), 10 * (k + 1)) for k in range(c)]).astype(dtype)
    array[:, 0, 0] = np.arange(1, c + 1)
    return array


def write_geotiff(path: Path, array: np.ndarray, **profile: object) -> Path:
    base = dict(driver="GTiff", height=array.shape[1], width=array.shape[2], count=array.shape[0],
                dtype=array.dtype.name)  # fmt: skip
    base.update(profile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **base) as dst:
            dst.write(array)
    return path


def from_origin(west: float, north: float, xsize: float, ysize: float) -> Affine:
    return Affine.translation(west, north) @ Affine.scale(xsize, -ysize)


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# --------------------------------------------------------------------------------------- read_raster
def test_read_raster_keeps_band_order_dtype_and_georeference(tmp_path: Path) -> None:
    array = banded(5, dtype="uint16") * 100
    transform = from_origin(500000, 4000000, 10, 10)
    path = write_geotiff(tmp_path / "a.tif", array, crs="EPSG:32633", transform=transform, nodata=0)
    data = io.read_raster(path)
    assert data.array.dtype == np.uint16
    np.testing.assert_array_equal(data.array, array)
    assert data.crs.to_epsg() == 32633 and data.transform == transform and data.nodata == 0
    assert data.path == str(path) and data.num_bands == 5 and data.shape == (24, 32)


def test_read_raster_bands_and_window(tmp_path: Path) -> None:
    array = banded(4)
    array[:, 5:9, 7:12] += np.arange(20, dtype=np.uint8).reshape(4, 5)
    transform = from_origin(100, 200, 2, 2)
    path = write_geotiff(tmp_path / "a.tif", array, crs="EPSG:4326", transform=transform)
    data = io.read_raster(path, bands=[3, 1], window=(5, 7, 4, 5))
    np.testing.assert_array_equal(data.array, array[[3, 1], 5:9, 7:12])
    assert data.transform == from_origin(100 + 7 * 2, 200 - 5 * 2, 2, 2)
    with pytest.raises(RasterReadError, match="a.tif.*band indices"):
        io.read_raster(path, bands=[4])
    with pytest.raises(RasterReadError, match="a.tif.*window"):
        io.read_raster(path, window=(20, 0, 10, 5))


def test_read_raster_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="nothere.tif"):
        io.read_raster(tmp_path / "nothere.tif")
    with pytest.raises(FileNotFoundError):  # MissingFileError is also a FileNotFoundError
        io.read_raster(tmp_path / "nothere.tif")
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"not a tiff at all" * 10)
    with pytest.raises(RasterReadError, match="garbage.tif"):
        io.read_raster(garbage)
    cut = truncate(write_geotiff(tmp_path / "cut.tif", banded(4, 64, 64) + np.arange(64, dtype=np.uint8)))
    with pytest.raises(RasterReadError, match="cut.tif"):
        io.read_raster(cut)
    assert issubclass(RasterReadError, ValueError)


def test_no_not_georeferenced_warning(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "plain.tif", banded(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        io.read_raster(path)


# ------------------------------------------------------------------------------------ read_cmyk_tiff
def cmyk_fake(tmp_path: Path, name: str = "nirrgb.tif", mode: str = "CMYK") -> tuple[Path, np.ndarray]:
    array = banded(4, 20, 28)  # NIR=10, R=20, G=30, B=40
    path = tmp_path / name
    Image.fromarray(np.ascontiguousarray(array.transpose(1, 2, 0)), mode).save(path)
    return path, array


def test_cmyk_tiff_reads_back_exactly(tmp_path: Path) -> None:
    path, array = cmyk_fake(tmp_path)
    assert Image.open(path).mode == "CMYK"
    out = io.read_cmyk_tiff(path)
    assert out.dtype == np.uint8 and out.shape == (4, 20, 28)
    np.testing.assert_array_equal(out, array)


def test_rasterio_path_reads_cmyk_tiff_raw_not_as_rgba(tmp_path: Path) -> None:
    """GDAL renders photometric SEPARATED as RGBA by default (inverting bands); we must not."""
    path, array = cmyk_fake(tmp_path)
    np.testing.assert_array_equal(io.read_raster(path).array, array)
    np.testing.assert_array_equal(io.read_image(path).array, array)
    np.testing.assert_array_equal(io.read_raster(path, bands=[0], window=(2, 3, 4, 5)).array, array[:1, 2:6, 3:8])


def test_rgba_tagged_tiff_is_read_raw_never_converted(tmp_path: Path) -> None:
    """An RGBA-tagged 4-sample TIFF: Pillow's convert('CMYK') would invert R,G,B and zero band 4;
    we read the stored samples with rasterio instead (decision documented in read_cmyk_tiff)."""
    path, array = cmyk_fake(tmp_path, "rgba.tif", "RGBA")
    assert Image.open(path).mode == "RGBA"
    corrupted = np.asarray(Image.open(path).convert("CMYK")).transpose(2, 0, 1)
    assert not np.array_equal(corrupted, array)  # the trap is real
    np.testing.assert_array_equal(io.read_cmyk_tiff(path), array)


def test_minisblack_4band_tiff_pillow_cannot_open_goes_through_rasterio(tmp_path: Path) -> None:
    array = banded(4)
    path = write_geotiff(tmp_path / "gdal.tif", array, photometric="MINISBLACK")
    with pytest.raises(Exception):
        Image.open(path)
    np.testing.assert_array_equal(io.read_cmyk_tiff(path), array)


def test_cmyk_refuses_wrong_kinds(tmp_path: Path) -> None:
    rgb = tmp_path / "rgb.tif"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8), "RGB").save(rgb)
    with pytest.raises(RasterReadError, match=r"rgb.tif.*mode 'RGB'"):
        io.read_cmyk_tiff(rgb)
    three = write_geotiff(tmp_path / "three16.tif", banded(4, dtype="uint16"), photometric="MINISBLACK")
    with pytest.raises(RasterReadError, match="three16.tif.*uint16"):
        io.read_cmyk_tiff(three)
    path, _ = cmyk_fake(tmp_path, "cut.tif")
    truncate(path)
    with pytest.raises(RasterReadError, match="cut.tif"):
        io.read_cmyk_tiff(path)
    with pytest.raises(FileNotFoundError, match="absent.tif"):
        io.read_cmyk_tiff(tmp_path / "absent.tif")


# ---------------------------------------------------------------------------------------- read_label
def test_palette_png_gives_indices_not_colours(tmp_path: Path) -> None:
    values = (np.arange(16 * 20).reshape(16, 20) % 25).astype(np.uint8)
    image = Image.fromarray(values, "P")
    image.putpalette([c for i in range(256) for c in (200 - (i % 50), (7 * i) % 256, 3)])
    image.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    out = io.read_label(tmp_path / "p.png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, values)


def test_label_modes(tmp_path: Path) -> None:
    values = np.array([[0, 1, 2], [7, 255, 3]], np.uint8)
    Image.fromarray(values, "L").save(tmp_path / "l.png")
    np.testing.assert_array_equal(io.read_label(tmp_path / "l.png"), values)
    # 16-bit PNG: accepted when values fit uint8, refused otherwise.
    Image.fromarray(values.astype(np.uint16)).save(tmp_path / "small16.png")
    np.testing.assert_array_equal(io.read_label(tmp_path / "small16.png"), values)
    Image.fromarray(np.array([[0, 300]], np.uint16)).save(tmp_path / "big16.png")
    with pytest.raises(RasterReadError, match="big16.png.*0..300"):
        io.read_label(tmp_path / "big16.png")
    # TIFF label via rasterio.
    write_geotiff(tmp_path / "lab.tif", values[None])
    np.testing.assert_array_equal(io.read_label(tmp_path / "lab.tif"), values)


def test_colour_label_refused_as_index_label(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 4, 3), np.uint8), "RGB").save(tmp_path / "colour.png")
    with pytest.raises(RasterReadError, match="colour.png.*colour label"):
        io.read_label(tmp_path / "colour.png")
    write_geotiff(tmp_path / "colour.tif", np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(RasterReadError, match="colour.tif.*colour label"):
        io.read_label(tmp_path / "colour.tif")


def test_float_tiff_label_refused(tmp_path: Path) -> None:
    write_geotiff(tmp_path / "f.tif", np.zeros((1, 4, 4), np.float32))
    with pytest.raises(RasterReadError, match="f.tif.*float32"):
        io.read_label(tmp_path / "f.tif")


# ------------------------------------------------------------------------------ colour labels → index
TABLE = [(0, 0, 0), (200, 0, 0), (0, 200, 0), (150, 250, 0)]


def test_colours_to_index_exact_match_and_unmatched() -> None:
    rgb = np.array([[[200, 0, 0], [0, 0, 0], [150, 250, 0]], [[0, 200, 0], [1, 2, 3], [200, 0, 1]]], np.uint8)
    out = io.colours_to_index(rgb, TABLE, unmatched=255)
    np.testing.assert_array_equal(out, [[1, 0, 3], [2, 255, 255]])
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(io.colours_to_index(rgb, TABLE, unmatched=0)[1], [2, 0, 0])
    with pytest.raises(ValueError, match="same colour"):
        io.colours_to_index(rgb, [(1, 1, 1), (1, 1, 1)], unmatched=255)


def test_read_colour_label_png_and_tiff(tmp_path: Path) -> None:
    rgb = np.array([[[200, 0, 0], [0, 200, 0]], [[150, 250, 0], [9, 9, 9]]], np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "c.png")
    write_geotiff(tmp_path / "c.tif", np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    for name in ("c.png", "c.tif"):
        out = io.read_colour_label(tmp_path / name)
        np.testing.assert_array_equal(out, rgb)
        np.testing.assert_array_equal(io.colours_to_index(out, TABLE, 0), [[1, 2], [3, 0]])
    Image.fromarray(np.zeros((2, 2), np.uint8), "L").save(tmp_path / "idx.png")
    with pytest.raises(RasterReadError, match="idx.png.*index label"):
        io.read_colour_label(tmp_path / "idx.png")


# ---------------------------------------------------------------------------------------- read_image
def test_read_image_png_is_rgb_in_file_order(tmp_path: Path) -> None:
    hwc = np.zeros((6, 8, 3), np.uint8)
    hwc[..., 0], hwc[..., 1], hwc[..., 2] = 10, 20, 30  # R, G, B
    Image.fromarray(hwc, "RGB").save(tmp_path / "x.png")
    data = io.read_image(tmp_path / "x.png")
    assert data.array.shape == (3, 6, 8) and data.crs is None and data.nodata is None
    assert data.array[:, 0, 0].tolist() == [10, 20, 30]  # RGB, not BGR
    Image.fromarray(hwc, "RGB").save(tmp_path / "x.jpg", quality=100)
    assert np.abs(io.read_image(tmp_path / "x.jpg").array[:, 3, 3].astype(int) - [10, 20, 30]).max() <= 2
    Image.fromarray(hwc[..., 0], "L").save(tmp_path / "g.png")
    assert io.read_image(tmp_path / "g.png").array.shape == (1, 6, 8)


def test_read_image_geotiff_and_truncated_png(tmp_path: Path) -> None:
    array = banded(6, dtype="int16")
    np.testing.assert_array_equal(io.read_image(write_geotiff(tmp_path / "m.tif", array)).array, array)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.png")
    truncate(tmp_path / "t.png")
    with pytest.raises(RasterReadError, match="t.png"):
        io.read_image(tmp_path / "t.png")


def test_alpha_band_is_a_mask_only_when_it_is_not_read_as_data(tmp_path):
    """GDAL flags the 4th band of any 4-band uint8 GeoTIFF as alpha: it masks nodata for an R,G,B read, but is a
    spectral band (NIR,R,G,B's blue) when read as data. An explicit mask band always masks."""
    from spectralmoe.data.io import honoured_mask

    path = tmp_path / "rgba.tif"
    with rasterio.open(path, "w", driver="GTiff", height=8, width=8, count=4, dtype="uint8") as dst:
        dst.write(np.ones((4, 8, 8), dtype=np.uint8))
    with rasterio.open(path) as src:
        assert rasterio.enums.ColorInterp.alpha in src.colorinterp
        assert honoured_mask(src, [0, 1, 2]) and not honoured_mask(src, [0, 1, 2, 3]) and not honoured_mask(src, None)
    masked = tmp_path / "masked.tif"
    with rasterio.open(masked, "w", driver="GTiff", height=8, width=8, count=4, dtype="uint8",
                       photometric="MINISBLACK") as dst:  # fmt: skip
        dst.write(np.ones((4, 8, 8), dtype=np.uint8))
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(masked, "r+") as dst:
        dst.write_mask(np.full((8, 8), 255, dtype=np.uint8))
    with rasterio.open(masked) as src:
        assert honoured_mask(src, [0, 1, 2, 3]) and honoured_mask(src, None)
