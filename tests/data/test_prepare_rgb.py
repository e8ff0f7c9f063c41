"""Converters of the RGB benchmarks (LoveDA, ISPRS Potsdam → Vaihingen, OpenEarthMap) on faithful fakes
of their raw downloads (tests/data/fakes_rgb.py; DATA.md §5.6, §6.6, §7.6)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from spectralmoe.data.layout import PreparedIndex
from spectralmoe.data.prepare import common, loveda, openearthmap, potsdam_vaihingen
from spectralmoe.data.prepare.common import TILE_OPTIONS_FILE
from spectralmoe.data.prepare.potsdam_vaihingen import clip_windows
from spectralmoe.data.prepare.raw import WORK_DIR
from tests.data import fakes_rgb as fakes


# ------------------------------------------------------------------------------------------ helpers
def read_tile(root: Path, record_image: str) -> tuple[np.ndarray, rasterio.profiles.Profile, np.ndarray]:
    """``(image [C,H,W], rasterio profile + transform/crs, label [H,W])`` of one prepared tile."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        src = rasterio.open(root / record_image)
    with src:
        image, profile = src.read(), {**src.profile, "transform": src.transform, "crs": src.crs}
    label_path = root / record_image.replace("image/", "label/", 1).rsplit(".", 1)[0]
    label = np.asarray(Image.open(f"{label_path}.png"))
    return image, profile, label


def by_image(index: PreparedIndex) -> dict[str, object]:
    return {t.image: t for t in index.tiles}


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts image tiles actually written (PrepareRun's writer, wrapped)."""
    written: list[str] = []
    original = common.write_image_tile

    def counting(path, array, **kwargs):  # type: ignore[no-untyped-def]
        written.append(str(path))
        return original(path, array, **kwargs)

    monkeypatch.setattr(common, "write_image_tile", counting)
    return written


# ============================================================================================ LoveDA
@pytest.fixture(scope="module")
def loveda_run(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    raw = tmp_path_factory.mktemp("loveda_raw")
    truth = fakes.write_loveda(raw)
    assert sorted(p.name for p in raw.iterdir()) == ["Test.zip", "Train.zip", "Val.zip"]
    out = tmp_path_factory.mktemp("loveda_out") / "prepared"
    index = loveda.prepare(raw, out, progress=False)
    return raw, out, index, truth


def test_loveda_tiles_splits_and_domains(loveda_run) -> None:  # type: ignore[no-untyped-def]
    raw, out, index, _ = loveda_run
    # Source: Train/Rural {0, 1} + Val/Rural {3}; target: Val/Urban {4, 5}; four quarters each.
    expected = {f"rural/Train/{s}_q{q}" for s in (0, 1) for q in range(4)} | {f"rural/Val/3_q{q}" for q in range(4)}
    expected |= {f"urban/Val/{s}_q{q}" for s in (4, 5) for q in range(4)}
    assert {t.image for t in index.tiles} == {f"image/{r}.tif" for r in expected}
    assert all(t.label == t.image.replace("image/", "label/", 1)[:-4] + ".png" for t in index.tiles)
    assert len(index.select("source")) == 12 and len(index.select("target")) == 8
    assert index.domains("source") == ["rural"] and index.domains("target") == ["urban"]
    assert {t.sensor for t in index.tiles} == {"rgb"}
    tile = by_image(index)["image/urban/Val/5_q2.tif"]
    assert tile.attributes == {"scene": "urban", "loveda_split": "Val", "image": "5", "city": "unknown", "quarter": "2"}
    saved = json.loads((out / "splits.json").read_text())
    assert saved["benchmark"] == "loveda" and saved["classes"] == loveda.CLASSES
    assert saved["options"]["source_tiling"] == "quarters" and saved["options"]["target_splits"] == "Val"
    assert not (out / WORK_DIR).exists()  # extraction folder cleaned up


def test_loveda_pixels_band_order_and_labels(loveda_run) -> None:  # type: ignore[no-untyped-def]
    _, out, index, truth = loveda_run
    scene = truth[("Val", "Urban", 5)]
    image, profile, label = read_tile(out, "image/urban/Val/5_q2.tif")  # bottom-left quarter
    assert profile["count"] == 3 and profile["dtype"] == "uint8"
    np.testing.assert_array_equal(image, scene.image[:, 32:, :32])  # R,G,B as in the PNG, never BGR
    assert image[0].min() >= 150 and image[2].max() < 50  # R band first
    np.testing.assert_array_equal(label, scene.label[32:, :32])
    raw = scene.raw_label[32:, :32]
    assert (label[raw == 0] == 255).all() and (label[raw == 7] == 6).all() and (label[raw == 1] == 0).all()
    assert {0, 7} <= set(np.unique(raw).tolist())
    image, _, label = read_tile(out, "image/rural/Train/1_q1.tif")  # top-right quarter
    np.testing.assert_array_equal(image, truth[("Train", "Rural", 1)].image[:, :32, 32:])
    np.testing.assert_array_equal(label, truth[("Train", "Rural", 1)].label[:32, 32:])


def test_loveda_resume_and_refusal(loveda_run, writes, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    raw, out, index, truth = loveda_run
    again = loveda.prepare(raw, out, progress=True)
    assert writes == [] and "0 written, 20 already there" in capsys.readouterr().err
    assert [t.image for t in again.tiles] == [t.image for t in index.tiles]
    (out / "image/rural/Val/3_q3.tif").unlink()  # an interrupted run: only that tile is redone
    loveda.prepare(raw, out, progress=False)
    assert [Path(w).name for w in writes] == ["3_q3.tif"]
    image, _, _ = read_tile(out, "image/rural/Val/3_q3.tif")
    np.testing.assert_array_equal(image, truth[("Val", "Rural", 3)].image[:, 32:, 32:])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        loveda.prepare(raw, foreign, progress=False)
    with pytest.raises(FileExistsError, match="prepared for 'loveda'"):
        openearthmap.prepare(raw, out, progress=False)


def test_loveda_unzipped_whole_target_and_options(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    truth = fakes.write_loveda(raw, zipped=False)
    index = loveda.prepare(raw, tmp_path / "out", progress=False, target_tiling="whole", source_splits="Train")
    assert {t.image for t in index.select("target")} == {"image/urban/Val/4.tif", "image/urban/Val/5.tif"}
    assert len(index.select("source")) == 8
    image, _, label = read_tile(tmp_path / "out", "image/urban/Val/4.tif")
    assert image.shape == (3, 64, 64)
    np.testing.assert_array_equal(image, truth[("Val", "Urban", 4)].image)
    np.testing.assert_array_equal(label, truth[("Val", "Urban", 4)].label)
    assert "quarter" not in by_image(index)["image/urban/Val/4.tif"].attributes
    # No LoveDA option changes a tile file (tiling shows in the names): resuming with other ones is fine.
    again = loveda.prepare(raw, tmp_path / "out", progress=False, source_splits="Train")
    assert {t.image for t in again.select("target")} == {f"image/urban/Val/{s}_q{q}.tif" for s in (4, 5) for q in range(4)}
    record = json.loads((tmp_path / "out" / TILE_OPTIONS_FILE).read_text())
    assert record.pop("raw_fingerprint") and record == {"benchmark": "loveda", "options": {}}
    with pytest.raises(ValueError, match="source_tiling='thirds'"):
        loveda.prepare(raw, tmp_path / "o2", progress=False, source_tiling="thirds")
    with pytest.raises(ValueError, match="both source and target"):
        loveda.prepare(raw, tmp_path / "o3", progress=False, target_scene="rural")
    (tmp_path / "only_train").mkdir()
    (raw / "Train").rename(tmp_path / "only_train/Train")
    with pytest.raises(FileNotFoundError, match="neither Val.zip nor an unzipped Val/ folder"):
        loveda.prepare(tmp_path / "only_train", tmp_path / "o4", progress=False)
    with pytest.raises(FileNotFoundError, match="raw folder not found"):
        loveda.prepare(tmp_path / "no_such_raw", tmp_path / "o5", progress=False)
    assert not (tmp_path / "o5").exists()  # the output folder is not claimed for a bad raw folder


def _bad_loveda(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    fakes.write_loveda(raw, zipped=False)
    return raw


def test_loveda_missing_mask(tmp_path: Path) -> None:
    raw = _bad_loveda(tmp_path)
    (raw / "Val/Rural/masks_png/3.png").unlink()
    with pytest.raises(ValueError, match=r"missing label.*Val/Rural/images_png/3\.png"):
        loveda.prepare(raw, tmp_path / "out", progress=False)
    assert not list((tmp_path / "out").rglob("*.tif"))  # found before anything is written


def test_loveda_size_mismatch(tmp_path: Path) -> None:
    raw = _bad_loveda(tmp_path)
    fakes.write_png(raw / "Train/Rural/masks_png/1.png", np.ones((32, 64), np.uint8))
    with pytest.raises(ValueError, match=r"size mismatch.*images_png/1\.png is 64x64.*masks_png/1\.png is 32x64"):
        loveda.prepare(raw, tmp_path / "out", progress=False)
    assert not list((tmp_path / "out/image/rural/Train").glob("1_q*"))


def test_loveda_wrong_band_count(tmp_path: Path) -> None:
    raw = _bad_loveda(tmp_path)
    Image.fromarray(np.zeros((64, 64, 4), np.uint8), "RGBA").save(raw / "Train/Rural/images_png/0.png")
    with pytest.raises(ValueError, match=r"images_png/0\.png: 4 band\(s\).*expected 3"):
        loveda.prepare(raw, tmp_path / "out", progress=False)


def test_loveda_label_outside_class_table(tmp_path: Path) -> None:
    raw = _bad_loveda(tmp_path)
    mask = fakes.index_pattern(64, 64, 8)
    mask[5, 5] = 9
    fakes.write_png(raw / "Val/Urban/masks_png/4.png", mask)
    with pytest.raises(ValueError, match=r"masks_png/4\.png: label values \[9\]"):
        loveda.prepare(raw, tmp_path / "out", progress=False)
    assert not list((tmp_path / "out/image/urban/Val").glob("4_q*"))


# ============================================================================================ ISPRS
@pytest.fixture(scope="module")
def p2v_run(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    raw = tmp_path_factory.mktemp("p2v_raw")
    potsdam = fakes.write_potsdam(raw)
    vaihingen = fakes.write_vaihingen(raw)
    assert sorted(p.name for p in raw.iterdir()) == [
        "2_Ortho_RGB.zip", "5_Labels_all_noBoundary.zip", "ISPRS_semantic_labeling_Vaihingen.zip",
        "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip",
    ]  # fmt: skip
    out = tmp_path_factory.mktemp("p2v_out") / "prepared"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = potsdam_vaihingen.prepare(raw, out, progress=False)
    messages = " | ".join(str(w.message) for w in caught)
    assert "potsdam scenes: 36 of the 38 scenes of preset 'all'" in messages  # partial download: warned
    assert "vaihingen scenes: 31 of the 33 scenes of preset 'all'" in messages
    return raw, out, index, potsdam, vaihingen


def test_clip_windows_mmseg_grid() -> None:
    offsets = sorted({top for top, _ in clip_windows(6000, 6000, 512)})
    assert len(clip_windows(6000, 6000, 512)) == 144 and offsets[-2:] == [5120, 5488]
    assert clip_windows(1100, 1100, 512)[:3] == [(0, 0), (0, 512), (0, 588)]
    assert len(clip_windows(1100, 1100, 512)) == 9
    assert clip_windows(600, 700, 512) == [(0, 0), (0, 188), (88, 0), (88, 188)]
    assert clip_windows(512, 1024, 512) == [(0, 0), (0, 512)]
    with pytest.raises(ValueError, match="smaller than one 512x512 tile"):
        clip_windows(511, 2000, 512, "x.tif")


def test_p2v_tiles_names_and_splits(p2v_run) -> None:  # type: ignore[no-untyped-def]
    _, out, index, _, _ = p2v_run
    offsets = (0, 512, 588)  # 1100 = 512 + 512 + 76: the last row/column shifted inward, no padding
    potsdam = {f"image/potsdam/{s}_{x}_{y}_{x + 512}_{y + 512}.tif" for s in ("2_10", "5_15")
               for x in offsets for y in offsets}  # fmt: skip
    vaihingen = {f"image/vaihingen/area{a}_{x}_{y}_{x + 512}_{y + 512}.tif" for a in (1, 6)
                 for x in (0, 188) for y in (0, 88)}  # fmt: skip
    assert {t.image for t in index.select("source")} == potsdam  # 2 scenes × 3 × 3
    assert {t.image for t in index.select("target")} == vaihingen  # 2 areas × 2 × 2
    assert len(index.tiles) == 26
    tiles = by_image(index)
    t = tiles["image/potsdam/5_15_588_0_1100_512.tif"]
    assert (t.split, t.domain, t.sensor) == ("source", "potsdam", "potsdam-rgb")
    assert t.attributes == {"dataset": "potsdam", "scene": "5_15", "isprs_split": "test"}
    assert tiles["image/potsdam/2_10_0_0_512_512.tif"].attributes["isprs_split"] == "train"
    t = tiles["image/vaihingen/area6_188_88_700_600.tif"]
    assert (t.split, t.domain, t.sensor) == ("target", "vaihingen", "vaihingen")
    assert t.attributes == {"dataset": "vaihingen", "scene": "area6", "isprs_split": "test"}
    assert tiles["image/vaihingen/area1_0_0_512_512.tif"].attributes["isprs_split"] == "train"
    assert set(index.sensors) == {"potsdam-rgb", "vaihingen"}
    assert index.sensors["vaihingen"].band_names == ("NIR", "R", "G")
    assert index.classes == ["impervious_surface", "building", "low_vegetation", "tree", "car", "clutter"]


def test_p2v_pixels_bands_georeference(p2v_run) -> None:  # type: ignore[no-untyped-def]
    _, out, _, potsdam, vaihingen = p2v_run
    scene = potsdam["5_15"]
    image, profile, label = read_tile(out, "image/potsdam/5_15_588_512_1100_1024.tif")  # x 588.., y 512..
    assert image.shape == (3, 512, 512) and profile["dtype"] == "uint8"
    np.testing.assert_array_equal(image, scene.image[:, 512:1024, 588:1100])
    assert image[0].min() >= 150 and image[1].max() < 140 and image[2].max() < 50  # R, G, B kept
    np.testing.assert_array_equal(label, scene.label[512:1024, 588:1100])
    assert profile["crs"] == rasterio.crs.CRS.from_string(fakes.POTSDAM_CRS)
    assert profile["transform"] == scene.transform @ rasterio.Affine.translation(588, 512)
    image, profile, label = read_tile(out, "image/vaihingen/area1_188_88_700_600.tif")
    np.testing.assert_array_equal(image, vaihingen[1].image[:, 88:600, 188:700])
    assert image[0].min() > image[1].max() > image[2].max()  # NIR, R, G in file order
    np.testing.assert_array_equal(label, vaihingen[1].label[88:600, 188:700])


def test_p2v_colour_label_mapping_at_pixels(p2v_run) -> None:  # type: ignore[no-untyped-def]
    _, out, _, potsdam, _ = p2v_run
    colours = potsdam["2_10"].raw_label
    _, _, label = read_tile(out, "image/potsdam/2_10_0_0_512_512.tif")
    table = {tuple(c): i for i, c in enumerate(fakes.ISPRS_COLOURS.tolist())}
    for colour, index in table.items():  # every class colour, at a pixel that has it
        ys, xs = np.nonzero((colours[:512, :512] == colour).all(-1))
        assert ys.size and label[ys[0], xs[0]] == index
    assert label[5, 50] == 255 and tuple(colours[5, 50]) == (0, 0, 0)  # eroded boundary (y % 89 == 5)
    assert tuple(colours[10, 20]) == (254, 0, 0) and label[10, 20] == 255  # off-table, not clutter
    assert tuple(colours[30, 50]) == (0, 0, 254) and label[30, 50] == 255  # off-table, not building
    assert tuple(colours[50, 80]) == (255, 255, 254) and label[50, 80] == 255
    clutter = np.nonzero((colours[:512, :512] == (255, 0, 0)).all(-1))
    assert (label[clutter] == 5).all()  # clutter is a class, not ignored
    assert set(np.unique(label).tolist()) == {0, 1, 2, 3, 4, 5, 255}


def test_p2v_resume(p2v_run, writes) -> None:  # type: ignore[no-untyped-def]
    raw, out, index, _, _ = p2v_run
    with pytest.warns(UserWarning):
        again = potsdam_vaihingen.prepare(raw, out, progress=False)
    assert writes == [] and len(again.tiles) == 26


def test_p2v_selection_options(p2v_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    raw = p2v_run[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # explicit lists: no warning
        index = potsdam_vaihingen.prepare(raw, tmp_path / "a", progress=False, potsdam_tiles="5_15",
                                          vaihingen_areas="area6")  # fmt: skip
    assert {t.attributes["scene"] for t in index.tiles} == {"5_15", "area6"} and len(index.tiles) == 13
    with pytest.warns(UserWarning, match="16 of the 17 scenes of preset 'test'"):
        index = potsdam_vaihingen.prepare(raw, tmp_path / "b", progress=False, potsdam_tiles="2_10",
                                          vaihingen_areas="test")  # fmt: skip
    assert {t.attributes["scene"] for t in index.select("target")} == {"area6"}
    with pytest.raises(FileNotFoundError, match="2_11"):
        potsdam_vaihingen.prepare(raw, tmp_path / "c", progress=False, potsdam_tiles="2_10,2_11")
    with pytest.raises(ValueError, match="potsdam_product='bgr'"):
        potsdam_vaihingen.prepare(raw, tmp_path / "d", progress=False, potsdam_product="bgr")


def test_p2v_rgbir_and_full_labels_unzipped(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    potsdam = fakes.write_potsdam(raw, size=600, scenes=("6_7",), product="rgbir", labels="all", zipped=False)
    vaihingen = fakes.write_vaihingen(raw, height=512, width=530, areas=(38,), labels="full", zipped=False)
    index = potsdam_vaihingen.prepare(raw, tmp_path / "out", progress=False, potsdam_product="rgbir",
                                      potsdam_labels="all", potsdam_tiles="6_7", vaihingen_labels="full",
                                      vaihingen_areas="38")  # fmt: skip
    assert {t.image for t in index.tiles} == {
        "image/potsdam/6_7_0_0_512_512.tif", "image/potsdam/6_7_88_0_600_512.tif",
        "image/potsdam/6_7_0_88_512_600.tif", "image/potsdam/6_7_88_88_600_600.tif",
        "image/vaihingen/area38_0_0_512_512.tif", "image/vaihingen/area38_18_0_530_512.tif",
    }  # fmt: skip
    assert set(index.sensors) == {"potsdam-rgbir", "vaihingen"}
    image, _, label = read_tile(tmp_path / "out", "image/potsdam/6_7_88_88_600_600.tif")
    assert image.shape == (4, 512, 512) and image[3].min() >= 250  # R,G,B,NIR
    np.testing.assert_array_equal(image, potsdam["6_7"].image[:, 88:, 88:])
    np.testing.assert_array_equal(label, potsdam["6_7"].label[88:, 88:])
    image, _, label = read_tile(tmp_path / "out", "image/vaihingen/area38_18_0_530_512.tif")
    np.testing.assert_array_equal(label, vaihingen[38].label[:, 18:])  # image and GT share a basename


def _bad_p2v(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    fakes.write_potsdam(raw, size=520, scenes=("2_10", "5_15"), zipped=False)
    fakes.write_vaihingen(raw, height=512, width=520, zipped=False)
    return raw


def test_p2v_missing_label(tmp_path: Path) -> None:
    raw = _bad_p2v(tmp_path)
    (raw / "5_Labels_all_noBoundary/top_potsdam_5_15_label_noBoundary.tif").unlink()
    with pytest.raises(ValueError, match=r"missing label.*top_potsdam_5_15_RGB\.tif"):
        potsdam_vaihingen.prepare(raw, tmp_path / "out", progress=False, potsdam_tiles="2_10,5_15")
    assert not list((tmp_path / "out").rglob("*.tif"))


def test_p2v_size_mismatch(tmp_path: Path) -> None:
    raw = _bad_p2v(tmp_path)
    label_dir = raw / "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE"
    colours, _ = fakes.isprs_colour_label(512, 512)
    fakes.write_tiff(label_dir / "top_mosaic_09cm_area6_noBoundary.tif", colours.transpose(2, 0, 1), rgb=True)
    with pytest.raises(ValueError, match=r"size mismatch.*area6\.tif is 512x520.*area6_noBoundary\.tif is 512x512"):
        potsdam_vaihingen.prepare(raw, tmp_path / "out", progress=False, potsdam_tiles="2_10", vaihingen_areas="1,6")
    assert not list((tmp_path / "out/image/vaihingen").glob("area6_*"))


def test_p2v_wrong_band_count(tmp_path: Path) -> None:
    raw = _bad_p2v(tmp_path)
    fakes.write_tiff(raw / "2_Ortho_RGB/top_potsdam_2_10_RGB.tif", np.zeros((4, 520, 520), np.uint8))
    with pytest.raises(ValueError, match=r"top_potsdam_2_10_RGB\.tif: 4 band\(s\).*expected 3 \(R, G, B\)"):
        potsdam_vaihingen.prepare(raw, tmp_path / "out", progress=False, potsdam_tiles="2_10,5_15",
                                  vaihingen_areas="1,6")  # fmt: skip
    assert not list((tmp_path / "out").rglob("*.tif"))


def test_p2v_resume_with_other_tile_options_is_refused(tmp_path: Path, writes: list[str]) -> None:
    """Product and label sets change what a tile file holds (same names): a resume must repeat them."""
    raw = _bad_p2v(tmp_path)
    out, selection = tmp_path / "out", dict(potsdam_tiles="2_10,5_15", vaihingen_areas="1,6")
    first = potsdam_vaihingen.prepare(raw, out, progress=False, **selection)
    written = len(writes)
    for option, value in (("potsdam_labels", "all"), ("potsdam_product", "rgbir"), ("vaihingen_labels", "full")):
        with pytest.raises(ValueError, match=rf"other options \({option}: was '\w+', now '{value}'\)"):
            potsdam_vaihingen.prepare(raw, out, progress=False, **selection, **{option: value})
    assert len(writes) == written and PreparedIndex.load(out).tiles == first.tiles  # nothing touched
    # Scene selection and tile size only decide which files exist: a resume may change them.
    again = potsdam_vaihingen.prepare(raw, out, progress=False, potsdam_tiles="5_15", vaihingen_areas="1,6")
    assert len(writes) == written and {t.attributes["scene"] for t in again.select("source")} == {"5_15"}
    potsdam_vaihingen.prepare(raw, out, progress=False, tile_size=256, **selection)
    assert len(writes) > written


def test_p2v_label_archive_missing(tmp_path: Path) -> None:
    raw = _bad_p2v(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no potsdam labels found \(expected 5_Labels_all\.zip"):
        potsdam_vaihingen.prepare(raw, tmp_path / "out", progress=False, potsdam_labels="all")


# ============================================================================================ OpenEarthMap
@pytest.fixture(scope="module")
def oem_run(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    raw = tmp_path_factory.mktemp("oem_raw")
    truth = fakes.write_openearthmap(raw)
    assert [p.name for p in raw.iterdir()] == ["OpenEarthMap.zip"]
    out = tmp_path_factory.mktemp("oem_out") / "prepared"
    with pytest.warns(UserWarning, match=r"skipped 1 xBD-derived image.*houston"):
        index = openearthmap.prepare(raw, out, progress=False)
    return raw, out, index, truth


def test_oem_tiles_domains_and_xbd_skip(oem_run) -> None:  # type: ignore[no-untyped-def]
    _, out, index, _ = oem_run
    regions = {t.attributes["region"]: t for t in index.tiles}
    assert set(regions) == {"aachen", "accra", "lima", "tokyo", "melbourne", "chicago"}  # houston skipped
    assert len(index.tiles) == 7
    assert {t.image for t in index.select("target")} == {"image/aachen/aachen_1.tif", "image/aachen/aachen_2.tif"}
    assert index.domains("target") == ["europe"]
    assert set(index.domains("source")) == {"africa", "south_america", "asia", "oceania", "north_america"}
    chicago = regions["chicago"]  # listed in test.txt, whose last line has no newline
    assert (chicago.split, chicago.domain, chicago.sensor) == ("source", "north_america", "rgb")
    assert chicago.attributes == {"region": "chicago", "continent": "North America", "oem_split": "test",
                                  "image": "chicago_1"}  # fmt: skip
    assert chicago.label == "label/chicago/chicago_1.png"
    assert {t.attributes["oem_split"] for t in index.tiles} == {"train", "val", "test"}
    assert index.options["continent_table"].endswith("oem_regions_UNVERIFIED_continents.tsv")


def test_oem_pixels_native_size_and_georeference(oem_run) -> None:  # type: ignore[no-untyped-def]
    _, out, _, truth = oem_run
    image, profile, label = read_tile(out, "image/tokyo/tokyo_1.tif")  # the 60×50 (W×H) image, not resized
    assert image.shape == (3, 50, 60) and label.shape == (50, 60) and profile["dtype"] == "uint8"
    np.testing.assert_array_equal(image, truth["tokyo_1.tif"].image)
    np.testing.assert_array_equal(label, truth["tokyo_1.tif"].label)
    raw = truth["tokyo_1.tif"].raw_label
    assert (label[raw == 0] == 255).all() and (label[raw == 8] == 7).all() and (label[raw == 1] == 0).all()
    assert profile["crs"] == rasterio.crs.CRS.from_string(fakes.OEM_CRS)
    assert profile["transform"] == truth["tokyo_1.tif"].transform
    image, _, _ = read_tile(out, "image/aachen/aachen_2.tif")
    np.testing.assert_array_equal(image, truth["aachen_2.tif"].image)
    assert image[0].min() >= 150 and image[2].max() < 50  # R,G,B


def test_oem_resume(oem_run, writes) -> None:  # type: ignore[no-untyped-def]
    raw, out, _, _ = oem_run
    with pytest.warns(UserWarning, match="xBD"):
        again = openearthmap.prepare(raw, out, progress=False)
    assert writes == [] and len(again.tiles) == 7


def test_oem_tiling_with_padding(oem_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    raw, _, _, truth = oem_run
    with pytest.warns(UserWarning, match="xBD"):
        index = openearthmap.prepare(raw, tmp_path / "out", progress=False, tile_size=32, target_splits="val")
    assert {t.image for t in index.select("target")} == {f"image/aachen/aachen_2_{r}_{c}.tif" for r in (0, 1) for c in (0, 1)}
    assert len(index.select("source")) == 5 * 4
    image, _, label = read_tile(tmp_path / "out", "image/tokyo/tokyo_1_1_1.tif")  # 60×50 → rows 32+18, cols 32+28
    assert image.shape == (3, 32, 32)
    np.testing.assert_array_equal(image[:, :18, :28], truth["tokyo_1.tif"].image[:, 32:, 32:])
    assert (image[:, 18:, :] == 0).all() and (image[:, :, 28:] == 0).all()
    np.testing.assert_array_equal(label[:18, :28], truth["tokyo_1.tif"].label[32:, 32:])
    assert (label[18:, :] == 255).all() and (label[:, 28:] == 255).all()
    assert by_image(index)["image/tokyo/tokyo_1_1_1.tif"].attributes["row"] == "1"


def test_oem_unzipped_lists_dir_xbd_images_and_continents(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    truth = fakes.write_openearthmap(raw, zipped=False, lists=False)
    lists = tmp_path / "lists"
    fakes.write_oem_lists(lists)
    compiled = tmp_path / "xbd"
    fakes.write_tiff(compiled / "houston_1.tif", truth["houston_1.tif"].image, rgb=True)
    table = tmp_path / "continents.tsv"
    table.write_text("# mine\nregion\tcontinent\n" + "".join(
        f"{r}\t{'AMBIGUOUS (test)' if r == 'lima' else c}\n" for r, c in fakes.OEM_REGIONS.items()))  # fmt: skip
    with pytest.warns(UserWarning, match=r"regions \['lima'\] have an AMBIGUOUS continent"):
        index = openearthmap.prepare(raw, tmp_path / "out", progress=False, lists_dir=str(lists),
                                     xbd_images=str(compiled), continents=str(table))  # fmt: skip
    regions = {t.attributes["region"]: t for t in index.tiles}
    assert "lima" not in regions and regions["houston"].domain == "north_america"
    image, _, label = read_tile(tmp_path / "out", "image/houston/houston_1.tif")
    np.testing.assert_array_equal(image, truth["houston_1.tif"].image)
    np.testing.assert_array_equal(label, truth["houston_1.tif"].label)
    index = openearthmap.prepare(raw, tmp_path / "out2", progress=False, lists_dir=lists,  # Path options (CLI)
                                 xbd_images=compiled, continents=table,
                                 ambiguous_continent="South America", target_continents="South America,Asia")  # fmt: skip
    assert {t.attributes["region"] for t in index.select("target")} == {"lima", "tokyo"}
    assert PreparedIndex.load(tmp_path / "out2").options["lists_dir"] == str(lists)
    table.write_text("region\tcontinent\naachen\tEurope\n")
    with pytest.raises(ValueError, match=r"region 'accra' is not in the region→continent table"):
        openearthmap.prepare(raw, tmp_path / "out3", progress=False, lists_dir=str(lists), continents=str(table))
    with pytest.raises(FileNotFoundError, match="train.txt not found"):
        openearthmap.prepare(raw, tmp_path / "out4", progress=False)
    with pytest.raises(ValueError, match=r"target_continents: unknown value\(s\) \['Atlantis'\]"):
        openearthmap.prepare(raw, tmp_path / "out5", progress=False, target_continents="Atlantis")


def _bad_oem(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    fakes.write_openearthmap(raw, zipped=False)
    return raw


OEM_BASE = "OpenEarthMap/OpenEarthMap_wo_xBD"


def test_oem_missing_label(tmp_path: Path) -> None:
    raw = _bad_oem(tmp_path)
    (raw / OEM_BASE / "lima/labels/lima_1.tif").unlink()
    with pytest.raises(ValueError, match=r"missing label: 1 .*'val': 1.*lima/images/lima_1\.tif"):
        openearthmap.prepare(raw, tmp_path / "out", progress=False)
    assert not list((tmp_path / "out").rglob("*.tif"))


@pytest.mark.filterwarnings("ignore:openearthmap. skipped 1 xBD")
def test_oem_label_outside_class_table_and_size_and_bands(tmp_path: Path) -> None:
    raw = _bad_oem(tmp_path)
    label = fakes.index_pattern(64, 64, 9)
    label[3, 3] = 12
    fakes.write_tiff(raw / OEM_BASE / "accra/labels/accra_1.tif", label)
    with pytest.raises(ValueError, match=r"accra/labels/accra_1\.tif: label values \[12\]"):
        openearthmap.prepare(raw, tmp_path / "o1", progress=False)
    assert not (tmp_path / "o1/image/accra").exists()
    fakes.write_tiff(raw / OEM_BASE / "accra/labels/accra_1.tif", fakes.index_pattern(64, 63, 9))
    with pytest.raises(ValueError, match=r"size mismatch.*accra_1\.tif is 64x64.*is 64x63"):
        openearthmap.prepare(raw, tmp_path / "o2", progress=False)
    fakes.write_tiff(raw / OEM_BASE / "accra/labels/accra_1.tif", fakes.index_pattern(64, 64, 9))
    fakes.write_tiff(raw / OEM_BASE / "accra/images/accra_1.tif", np.zeros((1, 64, 64), np.uint8))
    with pytest.raises(ValueError, match=r"accra/images/accra_1\.tif: 1 band\(s\).*expected 3"):
        openearthmap.prepare(raw, tmp_path / "o3", progress=False)


@pytest.mark.filterwarnings("ignore:openearthmap. skipped 1 xBD")
def test_oem_resume_with_other_tile_size_is_refused(tmp_path: Path, writes: list[str]) -> None:
    """``<stem>_<row>_<col>`` names the same file for every tile size: a resume must keep the size."""
    raw, out = _bad_oem(tmp_path), tmp_path / "out"
    openearthmap.prepare(raw, out, progress=False, tile_size=32)
    written = len(writes)
    with pytest.raises(ValueError, match=r"other options \(tile_size: was 32, now 16\)"):
        openearthmap.prepare(raw, out, progress=False, tile_size=16)
    with pytest.raises(ValueError, match=r"tile_size: was 32, now 0"):
        openearthmap.prepare(raw, out, progress=False)
    index = openearthmap.prepare(raw, out, progress=False, tile_size=32, target_continents="Asia")  # re-index only
    assert len(writes) == written and index.domains("target") == ["asia"]


def test_oem_missing_non_xbd_image(tmp_path: Path) -> None:
    raw = _bad_oem(tmp_path)
    (raw / OEM_BASE / "melbourne/images/melbourne_1.tif").unlink()
    with pytest.raises(ValueError, match=r"missing image: 1 .*melbourne_1\.tif"):
        openearthmap.prepare(raw, tmp_path / "out", progress=False)


# ============================================================================================ reading back
def test_prepared_dataset_reads_every_benchmark(loveda_run, p2v_run, oem_run) -> None:  # type: ignore[no-untyped-def]
    prepared = pytest.importorskip("spectralmoe.data.datasets.prepared")
    for run, split, n, bands in ((loveda_run, "target", 8, 3), (p2v_run, "target", 8, 3), (oem_run, "source", 5, 3)):
        dataset = prepared.PreparedDataset(run[1], split=split)
        assert len(dataset) == n
        sample = dataset[0]
        assert sample["image"].shape[0] == bands and sample["mask"].shape == sample["image"].shape[1:]
        assert sample["mask"].max() <= 255 and set(sample["mask"].unique().tolist()) - {255} <= set(range(len(dataset.classes)))
    vaihingen = prepared.PreparedDataset(p2v_run[1], split="target")
    sample = vaihingen[0]
    truth = p2v_run[4][1]  # area1, first tile (0, 0)
    assert sample["domain"] == "vaihingen" and sample["path"].endswith("area1_0_0_512_512.tif")
    np.testing.assert_array_equal(sample["image"].numpy(), truth.image[:, :512, :512].astype(np.float32))
    assert sample["wavelengths"].tolist() == pytest.approx([0.830, 0.665, 0.560])
