"""Scenes that are odd but legitimate get a correct map, and non-finite values never become a class:
NaN pixels, undeclared fill values and non-finite model scores are nodata (255) and leave the classes of
every other pixel exactly as in the clean scene."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from spectralmoe.predict import predict_scene
from tests.robustness.conftest import FAST, TRANSFORM, leftovers, read_map, run, scene_array, write_raster

NODATA = 255


def predict(capsys, export, scene, output, *extra):
    result = run(capsys, "predict-scene", "--checkpoint", export, "--input", scene, "--output", output, *FAST,
                 "--no-preview", *extra)  # fmt: skip
    assert result.rc == 0, result.err[-3000:]
    return result


def test_nan_pixels_are_nodata_and_neighbours_keep_their_class(capsys, export, tmp_path, reference_map):
    array = scene_array()
    array[1, 30:34, 40:44] = np.nan  # NaN in one band only
    predict(capsys, export, write_raster(tmp_path / "nan.tif", array), tmp_path / "map.tif")
    labels = read_map(tmp_path / "map.tif")
    hole = np.zeros_like(labels, dtype=bool)
    hole[30:34, 40:44] = True
    assert (labels[hole] == NODATA).all() and (labels[~hole] != NODATA).all()
    # the model sees the band means there: only nearby pixels may change, never to nodata
    assert (labels[~hole] == reference_map[~hole]).mean() > 0.9


@pytest.mark.parametrize("fill", [-3.4e38, 3e38], ids=["float-min-fill", "block-of-3e38"])
def test_undeclared_extreme_fill_is_nodata_reported_and_equals_declaring_it(capsys, export, tmp_path, fill):
    array = scene_array()
    array[:, 20:40, 30:60] = fill
    scene = write_raster(tmp_path / "fill.tif", array)  # no nodata declared
    undeclared = predict(capsys, export, scene, tmp_path / "undeclared.tif")
    predict(capsys, export, scene, tmp_path / "declared.tif", f"--nodata={fill}")
    labels, declared = read_map(tmp_path / "undeclared.tif"), read_map(tmp_path / "declared.tif")
    assert (labels[20:40, 30:60] == NODATA).all()
    assert np.array_equal(labels, declared)  # exactly the map of the declared fill: nothing spread
    warning = [line for line in undeclared.err.splitlines() if ": warning: " in line]
    assert len(warning) == 1 and "600 pixels lie more than 50 standard deviations" in warning[0]
    assert "--nodata" in warning[0] and "fill.tif" in warning[0]


def test_non_finite_scores_become_nodata_without_spreading(export, scene, tmp_path, reference_map):
    """One tile's scores are NaN in a 10×10 patch that no other tile covers: exactly that patch is nodata,
    every other pixel keeps the clean map's class (the NaN never enters the blend)."""
    from spectralmoe.engine.export import load_exported

    torch.manual_seed(0)
    model = load_exported(export, pretrained=False)
    original = model.predict_logits
    calls = {"n": 0}

    def poisoned(image, *args, **kwargs):
        scores = original(image, *args, **kwargs)
        if calls["n"] == 0:  # the first batch starts with the tile at (0, 0)
            scores[0, :, 5:15, 5:15] = float("nan")
        calls["n"] += 1
        return scores

    model.predict_logits = poisoned
    summary = predict_scene(model, scene, tmp_path / "map.tif", tile=64, overlap=16, pretrained=False, progress=False,
                            preview=False)  # fmt: skip
    labels = read_map(tmp_path / "map.tif")
    patch = np.zeros_like(labels, dtype=bool)
    patch[5:15, 5:15] = True
    assert (labels[patch] == NODATA).all()
    assert np.array_equal(labels[~patch], reference_map[~patch])
    assert summary.unscored_pixels == 100 and summary.nodata_pixels == 100


def test_internal_mask_band_marks_nodata(capsys, export, tmp_path, reference_map):
    path = write_raster(tmp_path / "masked.tif", scene_array())
    mask = np.full(reference_map.shape, 255, dtype=np.uint8)
    mask[50:70, 80:100] = 0
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "r+") as dst:
        dst.write_mask(mask)
    predict(capsys, export, path, tmp_path / "map.tif")
    labels = read_map(tmp_path / "map.tif")
    assert (labels[mask == 0] == NODATA).all() and (labels[mask > 0] != NODATA).all()


def test_a_4_band_8_bit_scene_flagged_alpha_by_gdal_keeps_its_4th_band_as_data(capsys, export, tmp_path):
    """GDAL flags the 4th band of every 4-band uint8 GeoTIFF as alpha; for a NIR,R,G,B product it is the blue
    band, so its zeros are data: the map must equal that of the same pixels stored without the alpha flag."""
    pixels = np.clip(scene_array(), 0, 255).astype(np.uint8)
    pixels[3, 20:40, 30:60] = 0  # a dark blue patch
    flagged = write_raster(tmp_path / "alpha.tif", pixels)
    with rasterio.open(flagged) as src:
        assert rasterio.enums.ColorInterp.alpha in src.colorinterp  # the trap is really there
    plain = write_raster(tmp_path / "plain.tif", pixels, photometric="MINISBLACK")
    predict(capsys, export, flagged, tmp_path / "alpha_map.tif")
    predict(capsys, export, plain, tmp_path / "plain_map.tif")
    flagged_map, plain_map = read_map(tmp_path / "alpha_map.tif"), read_map(tmp_path / "plain_map.tif")
    assert (flagged_map != NODATA).all() and np.array_equal(flagged_map, plain_map)


def test_one_pixel_raster(capsys, export, tmp_path):
    path = write_raster(tmp_path / "pixel.tif", scene_array()[:, :1, :1])
    predict(capsys, export, path, tmp_path / "map.tif")
    with rasterio.open(tmp_path / "map.tif") as src:
        assert (src.height, src.width) == (1, 1) and src.transform == TRANSFORM and src.crs.to_epsg() == 32650
        assert src.read(1)[0, 0] < 4  # a class, not nodata


def test_south_up_transform_is_kept_and_changes_nothing_else(capsys, export, tmp_path, reference_map):
    south_up = Affine(0.8, 0.0, 500000.0, 0.0, 0.8, 3999923.2)  # rows run north (positive y pixel size)
    path = write_raster(tmp_path / "south.tif", scene_array(), transform=south_up)
    predict(capsys, export, path, tmp_path / "map.tif")
    with rasterio.open(tmp_path / "map.tif") as src:
        assert src.transform == south_up
        assert np.array_equal(src.read(1), reference_map)  # the same pixels give the same classes


def test_unicode_and_spaces_in_paths(capsys, export, tmp_path, reference_map):
    folder = tmp_path / "données été" / "场景 1"
    path = write_raster(folder / "scène ü.tif", scene_array())
    predict(capsys, export, path, folder / "carte é.tif")
    assert np.array_equal(read_map(folder / "carte é.tif"), reference_map) and not leftovers(tmp_path)


def test_integer_scene_with_declared_nodata(capsys, export, tmp_path, reference_map):
    array = np.round(scene_array()).astype(np.uint16)
    array[:, :8, :] = 0
    predict(capsys, export, write_raster(tmp_path / "u16.tif", array, nodata=0), tmp_path / "map.tif")
    labels = read_map(tmp_path / "map.tif")
    assert (labels[:8] == NODATA).all() and (labels[8:] != NODATA).all()
