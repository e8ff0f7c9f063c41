"""Helpers every converter shares: the header-only ``io.raster_shape`` (plain files and zip members),
the zip-or-folder ``RawSource``, ``PrepareRun``'s tile-options record and the split-list readers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spectralmoe.data import io
from spectralmoe.data.prepare import lists
from spectralmoe.data.prepare.common import TILE_OPTIONS_FILE, PrepareRun, TileArrays
from spectralmoe.data.prepare.raw import RawSource
from tests.data import fakes_ohs_fbp_flair as fakes_ms
from tests.data import fakes_rgb


# ------------------------------------------------------------------------------------- raster_shape
def test_raster_shape_reads_the_header_of_plain_files(tmp_path: Path) -> None:
    ohs = fakes_ms._write_geotiff(tmp_path / "ohs.tif", fakes_ms.ohs_image(1, size=24, dtype="uint16")[:, :, :20])
    assert io.raster_shape(ohs) == (32, 24, 20, "uint16")
    assert io.raster_shape(str(ohs)) == (32, 24, 20, "uint16")
    cmyk = tmp_path / "nirrgb.tif"  # an FBP photometric-SEPARATED TIFF: four bands as stored
    fakes_ms._save_cmyk(cmyk, np.zeros((4, 10, 12), np.uint8))
    assert io.raster_shape(cmyk) == (4, 10, 12, "uint8")
    png = tmp_path / "rgb.png"
    fakes_rgb.write_png(png, np.zeros((3, 7, 9), np.uint8))
    assert io.raster_shape(png) == (3, 7, 9, "uint8")


def test_raster_shape_probes_a_zip_member_in_place(tmp_path: Path) -> None:
    folder = tmp_path / "Train"
    fakes_rgb.write_tiff(folder / "Rural/images/1.tif", np.zeros((3, 16, 40), np.uint8), rgb=True)
    archive = fakes_rgb.zip_folder(folder, tmp_path / "Train.zip")
    assert io.raster_shape(f"/vsizip/{archive}/Rural/images/1.tif") == (3, 16, 40, "uint8")
    source = RawSource(archive, work=tmp_path / "work")
    assert source.raster_shape("Rural/images/1.tif") == (3, 16, 40, "uint8")
    assert not (tmp_path / "work").exists()  # nothing extracted
    with pytest.raises(io.RasterReadError, match=r"Train\.zip!Rural/images/2\.tif: unreadable raster"):
        source.raster_shape("Rural/images/2.tif")
    source.close()


def test_raster_shape_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(io.MissingFileError, match=r"missing\.tif: no such file") as info:
        io.raster_shape(tmp_path / "missing.tif")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a tiff at all")
    with pytest.raises(io.RasterReadError, match=r"broken\.tif: unreadable raster"):
        io.raster_shape(broken)
    with pytest.raises(io.RasterReadError, match=r"^archive\.zip!broken\.tif: unreadable raster"):
        io.raster_shape(broken, where="archive.zip!broken.tif")


# ---------------------------------------------------------------------------------------- RawSource
def test_raw_source_reads_zip_members_and_folder_files_alike(tmp_path: Path) -> None:
    label = fakes_rgb.index_pattern(8, 8, 5)
    fakes_rgb.write_png(tmp_path / "Val/masks/3.png", label)
    (tmp_path / "Val/__MACOSX").mkdir()
    (tmp_path / "Val/__MACOSX/._3.png").write_bytes(b"junk")
    folder = RawSource(tmp_path / "Val")
    assert folder.names == ("masks/3.png",)
    np.testing.assert_array_equal(folder.read("masks/3.png", io.read_label), label)
    archive = fakes_rgb.zip_folder(tmp_path / "Val", tmp_path / "Val.zip")
    zipped = RawSource(archive, work=tmp_path / "work")
    assert zipped.names == ("masks/3.png",) and zipped.is_zip
    np.testing.assert_array_equal(zipped.read("masks/3.png", io.read_label), label)
    assert not [p for p in (tmp_path / "work").rglob("*") if p.is_file()]  # the extracted copy is gone
    with pytest.raises(ValueError, match=r"Val\.zip!masks/3\.png: the reader failed"):
        zipped.read("masks/3.png", _failing_reader)
    assert not [p for p in (tmp_path / "work").rglob("*") if p.is_file()]
    zipped.close()
    (tmp_path / "bad.zip").write_bytes(b"PK but not really")
    with pytest.raises(ValueError, match=r"bad\.zip: not a readable zip archive"):
        RawSource(tmp_path / "bad.zip")


def _failing_reader(path: Path) -> np.ndarray:
    """A reader whose error does not name the member: ``RawSource.read`` must add ``archive!member``."""
    raise ValueError("the reader failed")


# -------------------------------------------------------------------------------- tile-options record
def _tile() -> TileArrays:
    return TileArrays(np.zeros((1, 4, 4), np.uint8), np.zeros((4, 4), np.uint8))


def test_prepare_run_records_tile_options_and_refuses_other_values(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = PrepareRun("toy", out, progress=False, tile_options={"bands": [0, 1], "merge": "a"})
    run.add_tile("x/1", _tile, split="source", domain="d", sensor="s")
    record = json.loads((out / TILE_OPTIONS_FILE).read_text())
    assert record == {"benchmark": "toy", "options": {"bands": [0, 1], "merge": "a"}}
    PrepareRun("toy", out, progress=False, tile_options={"merge": "a", "bands": (0, 1)})  # same values: resumes
    with pytest.raises(ValueError, match=r"out: tiles already there were prepared with other options "
                                         r"\(bands: was \[0, 1\], now \[2\]; merge: was 'a', now None\)"):
        PrepareRun("toy", out, progress=False, tile_options={"bands": [2]})
    assert json.loads((out / TILE_OPTIONS_FILE).read_text()) == record  # the record is kept
    (out / TILE_OPTIONS_FILE).write_text("{broken")
    with pytest.raises(ValueError, match="unreadable record"):
        PrepareRun("toy", out, progress=False, tile_options={})


def test_prepare_run_without_tile_options_records_nothing(tmp_path: Path) -> None:
    PrepareRun("toy", tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / TILE_OPTIONS_FILE).exists()


# ----------------------------------------------------------------------------------------- lists
def test_split_lists_and_tables(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text("# header\nS1  first scene\n\nT*   # every T\n")
    assert lists.read_id_list(path) == ["S1", "T*"]
    assert lists.select(["S1", "S2", "T3"], ["S1", "T*"]) == ["S1", "T3"]
    assert lists.unmatched_entries(["S1"], ["S1", "S9", "T*"]) == ["S9"]
    assert lists.read_table(path, min_columns=1) == [["S1", "first", "scene"], ["T*"]]
    with pytest.raises(ValueError, match=r"list\.txt:4: expected at least 2 columns"):
        lists.read_table(path)
    with pytest.raises(FileNotFoundError, match="split-list file not found"):
        lists.read_id_list(tmp_path / "nope.txt")
    assert lists.read_id_list(lists.shipped("whu_ohs_target_UNVERIFIED.txt")) == ["T*"]
    with pytest.raises(FileNotFoundError, match="broken installation"):
        lists.shipped("nope.txt")
