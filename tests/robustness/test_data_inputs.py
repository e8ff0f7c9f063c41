"""Defective data is refused before anything trains or is written: ``prepare``, ``stats``, the prepared
index and the pre-flight validation pass (one error listing every bad file, cached by size+mtime), and
a user's own GeoTIFF folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from spectralmoe.bands import get_sensor
from spectralmoe.data.datasets import GeoTiffFolder
from spectralmoe.data.datamodule import DGDataModule
from spectralmoe.data.validate import DataValidationError
from tests.robustness.conftest import leftovers, prepared_root, refused, run, scene_array, write_raster


def datamodule(root: Path, tmp_path: Path) -> DGDataModule:
    from tests.test_configs import tiny_task_file

    return DGDataModule(root, tiny_task_file("flair", tmp_path), batch_size=2, eval_batch_size=2, num_workers=0)


def label_path(root: Path, kind: str = "target") -> Path:
    return sorted((root / "label" / kind).rglob("*.png"))[0]


def image_path(root: Path, kind: str = "source") -> Path:
    return sorted((root / "image" / kind).rglob("*.tif"))[0]


# ------------------------------------------------------------------------------------- prepare
def test_prepare_out_is_a_file(capsys, tmp_path):
    from tests.data.fakes_rgb import write_loveda

    write_loveda(tmp_path / "raw", zipped=False)
    (tmp_path / "out.txt").write_text("not a folder")
    refused(run(capsys, "prepare", "loveda", "--raw", tmp_path / "raw", "--out", tmp_path / "out.txt", "--quiet"),
            "out.txt", "names a file")  # fmt: skip
    assert (tmp_path / "out.txt").read_text() == "not a folder"


def test_prepare_raw_folder_missing(capsys, tmp_path):
    refused(run(capsys, "prepare", "loveda", "--raw", tmp_path / "nowhere", "--out", tmp_path / "out", "--quiet"),
            "nowhere")  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_prepare_rerun_after_raw_files_were_corrected_rewrites_the_tiles(capsys, tmp_path):
    from tests.data.fakes_rgb import write_loveda

    raw, out = tmp_path / "raw", tmp_path / "out"
    write_loveda(raw, zipped=False)
    assert run(capsys, "prepare", "loveda", "--raw", raw, "--out", out, "--quiet").rc == 0
    mask = raw / "Train" / "Rural" / "masks_png" / "0.png"
    Image.fromarray(np.full((64, 64), 3, dtype=np.uint8)).save(mask)  # the corrected label: every pixel class 2
    os.utime(mask, ns=(mask.stat().st_atime_ns, mask.stat().st_mtime_ns + 10**9))
    assert run(capsys, "prepare", "loveda", "--raw", raw, "--out", out, "--quiet").rc == 0
    tiles = sorted((out / "label" / "rural" / "Train").glob("0_q*.png"))
    assert len(tiles) == 4 and all((np.array(Image.open(t)) == 2).all() for t in tiles)


def test_prepare_sweeps_the_temporaries_of_a_killed_run(capsys, tmp_path):
    from tests.data.fakes_rgb import write_loveda

    raw, out = tmp_path / "raw", tmp_path / "out"
    write_loveda(raw, zipped=False)
    assert run(capsys, "prepare", "loveda", "--raw", raw, "--out", out, "--quiet").rc == 0
    stale = sorted((out / "image").rglob("*.tif"))[0]
    leftover = stale.with_name(f".{stale.name}.smoe-tmp-{_host()}-{_dead_pid()}-deadbeef")
    leftover.write_bytes(b"half a tile")
    assert run(capsys, "prepare", "loveda", "--raw", raw, "--out", out, "--quiet").rc == 0
    assert not leftovers(out)


def _host() -> str:
    from spectralmoe.outputs import parse_temporary, temporary_path

    return parse_temporary(temporary_path(Path("x"))).host  # type: ignore[union-attr]


def _dead_pid() -> int:
    import subprocess

    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


# --------------------------------------------------------------------------------------- stats
def test_stats_of_an_all_nan_folder(capsys, tmp_path):
    array = np.full((4, 16, 16), np.nan, dtype=np.float32)
    write_raster(tmp_path / "tiles" / "a.tif", array)
    refused(run(capsys, "stats", "--data", tmp_path / "tiles"), "tiles", "no valid pixel")


def test_stats_honour_the_internal_mask_band(capsys, tmp_path):
    array = scene_array(height=16, width=16)
    array[:, :8] = 10000.0  # masked-out garbage that must not enter the statistics
    path = write_raster(tmp_path / "tiles" / "a.tif", array)
    mask = np.full((16, 16), 255, dtype=np.uint8)
    mask[:8] = 0
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "r+") as dst:
        dst.write_mask(mask)
    result = run(capsys, "stats", "--data", tmp_path / "tiles", "--json")
    stats = json.loads(result.out)
    assert result.rc == 0 and stats["count"] == 128 and max(stats["maximum"]) < 1000


def test_stats_of_a_splits_json_that_leaves_the_folder(capsys, tmp_path):
    root = prepared_root(tmp_path / "root")
    index = json.loads((root / "splits.json").read_text())
    index["tiles"][0]["image"] = "../../etc/passwd"
    (root / "splits.json").write_text(json.dumps(index))
    refused(run(capsys, "stats", "--data", root), "splits.json", "../../etc/passwd", "leaves the prepared folder")


def test_stats_of_a_malformed_splits_json(capsys, tmp_path):
    root = prepared_root(tmp_path / "root")
    (root / "splits.json").write_text('{"format": ')
    refused(run(capsys, "stats", "--data", root), "splits.json", "unreadable JSON")


# ------------------------------------------------------------------------ the validation pass
def test_tile_listed_twice(tmp_path):
    root = prepared_root(tmp_path / "root")
    index = json.loads((root / "splits.json").read_text())
    index["tiles"].append(dict(index["tiles"][0]))
    (root / "splits.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="listed twice"):
        datamodule(root, tmp_path).setup()


def test_label_value_outside_the_class_list(tmp_path):
    root = prepared_root(tmp_path / "root")
    bad = label_path(root)
    Image.fromarray(np.full((64, 64), 40, dtype=np.uint8)).save(bad)
    with pytest.raises(DataValidationError, match=rf"{bad.name}: label values \[40\] outside the class table"):
        datamodule(root, tmp_path).setup()


def test_every_bad_tile_is_listed_in_one_error(tmp_path):
    root = prepared_root(tmp_path / "root", source_tiles=4)
    labels = sorted((root / "label").rglob("*.png"))
    shape = np.array(Image.open(labels[0])).shape
    Image.fromarray(np.full(shape, 99, dtype=np.uint8)).save(labels[0])  # value outside the table
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(labels[1])  # wrong size
    images = sorted((root / "image").rglob("*.tif"))
    images[2].write_bytes(images[2].read_bytes()[:300])  # truncated
    with pytest.raises(DataValidationError) as error:
        datamodule(root, tmp_path).setup()
    text = str(error.value)
    assert text.splitlines()[0].startswith("3 problems in the tiles under") and len(text.splitlines()) == 4
    for path in (labels[0], labels[1], images[2]):
        assert str(path) in text


def test_truncated_image_tile(tmp_path):
    root = prepared_root(tmp_path / "root")
    bad = image_path(root)
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size - 200])
    with pytest.raises(DataValidationError, match=rf"{bad.name}: unreadable or truncated"):
        datamodule(root, tmp_path).setup()


def test_all_nan_source_tiles(tmp_path):
    root = prepared_root(tmp_path / "root")
    for image in (root / "image" / "source").rglob("*.tif"):
        write_raster(image, np.full((4, 32, 32), np.nan, dtype=np.float32), crs=None)
    with pytest.raises(DataValidationError, match="source images is NaN / nodata"):
        datamodule(root, tmp_path).setup()


def test_source_labels_all_ignore(tmp_path):
    root = prepared_root(tmp_path / "root")
    for label in (root / "label" / "source").rglob("*.png"):
        Image.fromarray(np.full((32, 32), 255, dtype=np.uint8)).save(label)
    with pytest.raises(DataValidationError, match="hold no labelled pixel"):
        datamodule(root, tmp_path).setup()


def test_reflectance_0_to_1_under_a_value_scale_of_255(tmp_path):
    root = prepared_root(tmp_path / "root")
    rng = np.random.default_rng(0)
    for image in (root / "image" / "source").rglob("*.tif"):
        write_raster(image, rng.random((4, 32, 32)).astype(np.float32) * 0.3, crs=None)
    with pytest.raises(DataValidationError, match="other units than the statistics"):
        datamodule(root, tmp_path).setup()


def test_validation_is_cached_and_notices_a_changed_file(tmp_path, monkeypatch):
    from spectralmoe.data import validate

    root = prepared_root(tmp_path / "root")
    report = datamodule(root, tmp_path).validate_tiles()
    assert report.read == 8 and report.cached == 0
    again = datamodule(root, tmp_path).validate_tiles()
    assert again.read == 0 and again.cached == 8  # one stat per file
    bad = label_path(root)
    Image.fromarray(np.full((64, 64), 77, dtype=np.uint8)).save(bad)
    with pytest.raises(DataValidationError, match=r"label values \[77\]"):
        datamodule(root, tmp_path).validate_tiles()


# ------------------------------------------------------------------------------ own GeoTIFFs
def own_folder(tmp_path: Path) -> tuple[Path, Path]:
    images, labels = tmp_path / "img", tmp_path / "lbl"
    for name in ("a", "b"):
        write_raster(images / f"{name}.tif", scene_array(height=32, width=32))
        write_raster(labels / f"{name}.tif", np.zeros((1, 32, 32), dtype=np.uint8))
    return images, labels


def test_own_folder_label_on_another_grid(tmp_path):
    from affine import Affine

    images, labels = own_folder(tmp_path)
    shifted = Affine(0.8, 0.0, 500100.0, 0.0, -0.8, 4000000.0)
    write_raster(labels / "b.tif", np.zeros((1, 32, 32), dtype=np.uint8), transform=shifted)
    with pytest.raises(DataValidationError, match=r"b\.tif: not on the grid of its image"):
        GeoTiffFolder(images, labels, sensor="gf2", classes=["a", "b"])


def test_own_folder_label_in_another_crs(tmp_path):
    images, labels = own_folder(tmp_path)
    write_raster(labels / "a.tif", np.zeros((1, 32, 32), dtype=np.uint8), crs="EPSG:4326")
    with pytest.raises(DataValidationError, match=r"a\.tif: not on the grid"):
        GeoTiffFolder(images, labels, sensor="gf2", classes=["a", "b"])


def test_own_folder_two_images_one_stem(tmp_path):
    images, labels = own_folder(tmp_path)
    shutil.copy(images / "a.tif", images / "a.tiff")
    with pytest.raises(ValueError, match=r"a\.tif and .*a\.tiff"):
        GeoTiffFolder(images, labels, sensor="gf2", classes=["a", "b"])


def test_own_folder_band_count_differs_from_the_sensor(tmp_path):
    images, labels = own_folder(tmp_path)
    with pytest.raises(DataValidationError, match=r"2 problems.*\n.*a\.tif: 4 bands but sensor 'rgb' has 3"):
        GeoTiffFolder(images, labels, sensor="rgb", classes=["a", "b"])
    assert get_sensor("rgb").num_bands == 3
