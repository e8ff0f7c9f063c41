"""Converters of WHU-OHS, FBP cross-sensor / cross-region and FLAIR #1, on the raw fakes of
``tests/data/fakes_ohs_fbp_flair.py`` (DATA.md §1.6, §2.6, §3, §4.6)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning

from spectralmoe.data.layout import INDEX_FILE, MARKER_FILE, PreparedIndex
from spectralmoe.data.prepare import fbp, flair, whu_ohs
from spectralmoe.data.prepare.raw import WORK_DIR
from tests.data import fakes_ohs_fbp_flair as fakes

# ------------------------------------------------------------------------------------------- helpers
OHS_MERGE = {0: 255, **{r: 0 for r in (1, 2)}, **{r: 1 for r in range(3, 7)}, **{r: 2 for r in range(7, 10)},
             **{r: 3 for r in range(10, 15)}, **{r: 4 for r in range(15, 18)}, **{r: 5 for r in range(18, 24)},
             24: 6}  # fmt: skip
"""DATA.md §1.3 merge followed by reduce_zero_label, written out independently of the converter."""


def remap(raw: np.ndarray, table: dict[int, int]) -> np.ndarray:
    lookup = np.full(256, 99, np.uint8)
    for k, v in table.items():
        lookup[k] = v
    return lookup[raw]


def fbp_expected(raw: np.ndarray) -> np.ndarray:
    return remap(raw, {0: 255, **{v: v - 1 for v in range(1, 25)}})


def read_tif(path: Path) -> tuple[np.ndarray, rasterio.profiles.Profile]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.read(), src.profile


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.asarray(image)


def tile_files(out: Path) -> dict[str, tuple[int, int]]:
    """relative path → (inode, mtime_ns) of every image/label tile (atomic writes give new inodes)."""
    return {p.relative_to(out).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
            for d in ("image", "label") for p in (out / d).rglob("*") if p.is_file()}  # fmt: skip


def splits_json(out: Path) -> dict:
    return json.loads((out / INDEX_FILE).read_text())


def by_image(index: PreparedIndex) -> dict[str, object]:
    return {t.image: t for t in index.tiles}


# =========================================================================================== WHU-OHS
@pytest.fixture(scope="module")
def ohs_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fakes.write_whu_ohs(tmp_path_factory.mktemp("ohs"))


def test_whu_ohs_tiles_bands_dtypes_labels_and_splits(ohs_raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    index = whu_ohs.prepare(ohs_raw.parent, out, progress=False)  # the parent of WHU-OHS/ is found too
    # Default UNVERIFIED lists: S* → source, T* → target, O3 left out.
    expected = {f"{s}/{stem}" for s, stems in fakes.OHS_FILES.items() for stem in stems if not stem.startswith("O")}
    assert {t.image for t in index.tiles} == {f"image/{r}.tif" for r in expected}
    assert {t.label for t in index.tiles} == {f"label/{r}.png" for r in expected}
    assert len(index.tiles) == 6
    for tile in index.tiles:
        stem = Path(tile.image).stem
        assert tile.split == ("source" if stem.startswith("S") else "target")
        assert tile.domain == stem.split("_")[0] and tile.sensor == "ohs"
        assert tile.attributes == {"scene": stem.split("_")[0], "prefix": stem[0],
                                   "raw_split": tile.image.split("/")[1], "name": stem}  # fmt: skip
        image, profile = read_tif(out / tile.image)
        dtype = "uint16" if stem == fakes.OHS_UINT16 else "int16"
        assert profile["count"] == 32 and profile["dtype"] == dtype and image.shape == (32, 64, 64)
        np.testing.assert_array_equal(image, fakes.ohs_image(fakes.ohs_number(stem), dtype=dtype))  # no scaling
        assert profile["crs"].to_epsg() == 32650
        label = read_png(out / tile.label)
        np.testing.assert_array_equal(label, remap(fakes.ohs_raw_label(), OHS_MERGE))
    # A few pixels by hand: raw 0 → ignore, 1 (paddy) → Farmland 0, 13 (beach) → Waterbody 3, 24 → Ocean 6.
    label = read_png(out / "label/tr/S1_0001.png")
    assert [label[0, v] for v in (0, 1, 13, 24)] == [255, 0, 3, 6]
    data = splits_json(out)
    assert data["benchmark"] == "whu-ohs" and data["classes"] == whu_ohs.CLASSES and len(data["palette"]) == 7
    assert data["sensors"]["ohs"]["value_scale"] == 10000 and len(data["sensors"]["ohs"]["wavelengths_um"]) == 32
    assert data["options"]["split_unverified"] is True and data["options"]["left_out_scenes"] == ["O3"]
    assert (out / MARKER_FILE).read_text().strip() == "whu-ohs"


def test_whu_ohs_scene_lists_merged_labels_and_merge_table(tmp_path: Path) -> None:
    raw = fakes.write_whu_ohs(tmp_path / "raw", merged=True)
    (tmp_path / "src.txt").write_text("# my source\nS1\nO*\n")
    (tmp_path / "tgt.txt").write_text("T2\n")
    index = whu_ohs.prepare(raw, tmp_path / "out", progress=False, source_scenes=tmp_path / "src.txt",
                            target_scenes=tmp_path / "tgt.txt", label_encoding="merged")  # fmt: skip
    splits = {Path(t.image).stem: t.split for t in index.tiles}
    assert splits == {"S1_0001": "source", "S1_0002": "source", "O3_0001": "source", "T2_0001": "target"}
    label = read_png(tmp_path / "out/label/tr/S1_0001.png")
    merged = {0: 255, **{k: k - 1 for k in range(1, 8)}}
    np.testing.assert_array_equal(label, remap(fakes.ohs_raw_label(merged=True), merged))
    assert splits_json(tmp_path / "out")["options"]["split_unverified"] is False

    # A 6-class merge table (the official commented variant drops "Unused land").
    table = tmp_path / "six.txt"
    rows = [f"{r} {m}" for r, m in zip(range(1, 18), [1, 1, 2, 2, 2, 2, 3, 3, 3, 4, 4, 4, 4, 4, 5, 5, 5])]
    rows[0] += " Farmland"
    table.write_text("\n".join(rows + [f"{r} 0" for r in range(18, 24)] + ["24 6 Ocean"]) + "\n")
    raw24 = fakes.write_whu_ohs(tmp_path / "raw24")
    index = whu_ohs.prepare(raw24, tmp_path / "six", progress=False, merge_table=table)
    assert index.classes == ["Farmland", "class 2", "class 3", "class 4", "class 5", "Ocean"]
    assert index.palette[-1] == (0, 38, 115)  # the Ocean colour follows the name
    label = read_png(tmp_path / "six/label/tr/S1_0001.png")
    assert [label[0, v] for v in (0, 1, 18, 23, 24)] == [255, 0, 255, 255, 5]


def test_whu_ohs_rerun_with_other_options_is_refused(ohs_raw: Path, tmp_path: Path) -> None:
    whu_ohs.prepare(ohs_raw, tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="label_encoding"):
        whu_ohs.prepare(ohs_raw, tmp_path / "out", progress=False, label_encoding="merged")


def _ohs_bad(raw: Path, problem: str) -> tuple[str, type[Exception], str]:
    image, label = raw / "tr/image/T1_0001.tif", raw / "tr/label/T1_0001.tif"
    if problem == "missing label":
        label.unlink()
        return "T1_0001.tif", FileNotFoundError, "missing label"
    if problem == "size mismatch":
        fakes._write_geotiff(label, fakes.ohs_raw_label(32)[None])
        return "T1_0001.tif", ValueError, "differs from image size"
    if problem == "band count":
        fakes._write_geotiff(image, fakes.ohs_image(1)[:31])
        return "T1_0001.tif", ValueError, "31 bands, but an OHS image has 32"
    raw_label = fakes.ohs_raw_label()
    raw_label[5, 5] = 30
    fakes._write_geotiff(label, raw_label[None])
    return "T1_0001.tif", ValueError, r"label values \[30\] are not in the class table"


@pytest.mark.parametrize("problem", ["missing label", "size mismatch", "band count", "label value"])
def test_whu_ohs_bad_input_errors_name_the_file(tmp_path: Path, problem: str) -> None:
    raw = fakes.write_whu_ohs(tmp_path / "raw")
    name, error, message = _ohs_bad(raw, problem)
    with pytest.raises(error, match=message) as info:
        whu_ohs.prepare(raw, tmp_path / "out", progress=False)
    assert name in str(info.value)
    assert not (tmp_path / "out/image/tr/T1_0001.tif").exists() and not (tmp_path / "out/label/tr/T1_0001.png").exists()
    assert not (tmp_path / "out" / INDEX_FILE).exists()


# =============================================================================== FBP (both benchmarks)
@pytest.fixture(scope="module")
def fbp_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two GF-2 scenes (one mode-P, one mode-L label) and three C-megacities images."""
    root = tmp_path_factory.mktemp("fbp")
    fakes.write_fbp(root)
    fakes.write_megacities(root)
    return root


def _scene_tiles(out: Path, scene: str) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    tiles = {}
    for r in (1, 2):
        for c in (1, 2):
            rel = f"gf2/{scene}/{scene}_r{r:03d}_c{c:03d}"
            image, profile = read_tif(out / f"image/{rel}.tif")
            assert profile["count"] == 4 and profile["dtype"] == "uint8" and image.shape == (4, 512, 512)
            tiles[r, c] = image, read_png(out / f"label/{rel}.png")
    return tiles


def _check_gf2_scene(out: Path, number: int) -> None:
    """Interior 900×1000 → 2×2 tiles; bottom 388 rows and right 488 columns real, the rest padding."""
    tiles = _scene_tiles(out, fakes.FBP_SCENES[number])
    interior, raw = fakes.fbp_interior_image(number), fakes.fbp_interior_label()
    for (r, c), (image, label) in tiles.items():
        top, left = 512 * (r - 1), 512 * (c - 1)
        h, w = min(512, 900 - top), min(512, 1000 - left)
        np.testing.assert_array_equal(image[:, :h, :w], interior[:, top : top + h, left : left + w])
        np.testing.assert_array_equal(label[:h, :w], fbp_expected(raw[top : top + h, left : left + w]))
        assert not image[:, h:, :].any() and not image[:, :, w:].any()  # image padding 0
        assert (label[h:, :] == 255).all() and (label[:, w:] == 255).all()  # label padding ignore
    image, label = tiles[1, 1]
    assert list(image[:, 0, 0]) == [40 + number, 80 + number, 120 + number, 160 + number]  # NIR,R,G,B kept
    assert (h, w) == (388, 488)
    assert label[0, 0] == 255 and label[0, 1] == 1 and label[0, 12] == 23  # raw 0, 2, 24


def test_fbp_cross_sensor_source_and_target(fbp_raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    index = fbp.prepare_cross_sensor(fbp_raw, out, progress=False)
    assert len(index.tiles) == 2 * 4 + 3 * 4
    for number in (0, 1):  # scene 0: palette PNG; scene 1: mode-L PNG
        _check_gf2_scene(out, number)
    source = index.select("source")
    assert len(source) == 8 and {t.domain for t in source} == {"gf2"} and {t.sensor for t in source} == {"gf2"}
    assert {t.attributes["scene"] for t in source} == set(fakes.FBP_SCENES[:2])

    target = index.select("target")
    assert len(target) == 12
    top, left, _, _ = fakes.MEGACITIES_CROP
    raw = fakes.megacities_raw_label()
    for number, (name, (sensor, city)) in enumerate(fakes.MEGACITIES_IMAGES.items()):
        tiles = [t for t in target if t.attributes["image"] == name]
        assert sorted(t.image for t in tiles) == [
            f"image/megacities/{sensor}/crop_{name}_r{r:03d}_c{c:03d}.tif" for r in (1, 2) for c in (1, 2)
        ]
        assert {(t.domain, t.sensor, t.attributes["city"]) for t in tiles} == {(sensor, sensor, city)}
        full = fakes.megacities_image(number)
        for r in (1, 2):
            for c in (1, 2):
                rel = f"megacities/{sensor}/crop_{name}_r{r:03d}_c{c:03d}"
                image, _ = read_tif(out / f"image/{rel}.tif")
                y, x = top + 512 * (r - 1), left + 512 * (c - 1)
                np.testing.assert_array_equal(image, full[:, y : y + 512, x : x + 512])  # centred 1024 window
                label = read_png(out / f"label/{rel}.png")
                expected = fbp_expected(raw[y : y + 512, x : x + 512])
                ot, ol, oh, ow = fakes.MEGACITIES_OFF_TABLE
                block = np.zeros(raw.shape, bool)
                block[ot : ot + oh, ol : ol + ow] = True
                expected[block[y : y + 512, x : x + 512]] = 255  # off-table colour → ignore
                np.testing.assert_array_equal(label, expected)
    data = splits_json(out)
    assert set(data["sensors"]) == {"gf2", "gf1", "sentinel2", "planetscope"}
    assert data["classes"] == fbp.CLASSES and len(data["palette"]) == 24
    assert data["sensors"]["gf2"]["band_names"] == ["NIR", "R", "G", "B"]


def test_fbp_cross_sensor_options_whole_target_image_meta_and_georeference(fbp_raw: Path, tmp_path: Path) -> None:
    name = "20190713_032217_1003_3B_AnalyticMS_SR"
    meta = tmp_path / "meta.txt"
    meta.write_text(f"{name} planetscope Chengdu\n")
    out = tmp_path / "out"
    index = fbp.prepare_cross_sensor(fbp_raw, out, progress=False, target_crop=0, target_sensors="planetscope",
                                     target_meta=meta)  # fmt: skip
    target = index.select("target")
    assert len(target) == 9  # whole 1300×1500 image → 3×3 tiles, last row/column padded
    assert {(t.domain, t.attributes["city"]) for t in target} == {("planetscope", "Chengdu")}
    assert set(index.sensors) == {"gf2", "planetscope"}
    image, profile = read_tif(out / f"image/megacities/planetscope/crop_{name}_r003_c002.tif")
    np.testing.assert_array_equal(image[:, :276, :], fakes.megacities_image(2)[:, 1024:, 512:1024])
    assert not image[:, 276:, :].any()
    # The georeference of the raw image follows each tile.
    assert profile["crs"].to_epsg() == 4326
    assert profile["transform"].c == pytest.approx(121.40 + 512 * 3e-5)
    assert profile["transform"].f == pytest.approx(31.25 - 1024 * 3e-5)
    assert read_tif(out / index.select("source")[0].image)[1]["crs"] is None  # raw GF-2 fakes carry none


def test_fbp_colour_labels_and_margins_give_the_same_tiles(fbp_raw: Path, tmp_path: Path) -> None:
    reference = tmp_path / "index"
    fbp.prepare_cross_region(fbp_raw, reference, progress=False, target_scenes=_list(tmp_path, fakes.FBP_SCENES[1:2]))
    colour = tmp_path / "colour"
    fbp.prepare_cross_region(fbp_raw, colour, progress=False, source_labels="colour",
                             target_scenes=_list(tmp_path, fakes.FBP_SCENES[1:2]))  # fmt: skip
    for rel in tile_files(reference):
        if rel.startswith("label/"):
            np.testing.assert_array_equal(read_png(colour / rel), read_png(reference / rel))
    # Other borders (left 10, right 20, top 30, bottom 5), same interior: the crop box follows the margins.
    raw = fakes.write_fbp(tmp_path / "raw", scenes=fakes.FBP_SCENES[:1], margins=(10, 20, 30, 5), mode_l_scene=-1)
    fbp.prepare_cross_region(raw, tmp_path / "margins", progress=False, margins="10,20,30,5",
                             source_scenes=_list(tmp_path, fakes.FBP_SCENES[:1]))  # fmt: skip
    _check_gf2_scene(tmp_path / "margins", 0)


def _list(folder: Path, names: tuple[str, ...] | list[str], file: str = "list") -> Path:
    path = folder / f"{file}-{'-'.join(n[-8:] for n in names)}.txt"
    path.write_text("\n".join(names) + "\n")
    return path


def test_fbp_wrong_margins_warn_about_labels_in_the_border(
    fbp_raw: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fbp.prepare_cross_region(fbp_raw, tmp_path / "out", progress=False, margins="0,100,0,100",
                             target_scenes=_list(tmp_path, fakes.FBP_SCENES[1:2]))  # fmt: skip
    assert "lie in the margins" in caplog.text


def test_fbp_cross_region_scene_lists_and_regions(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    fakes.write_fbp(raw, scenes=fakes.FBP_SCENES)
    s0, s1, s2 = fakes.FBP_SCENES
    regions = tmp_path / "regions.txt"
    regions.write_text(f"{s0} Hubei\n{s1} Jiangsu  # a comment\n")
    out = tmp_path / "out"
    index = fbp.prepare_cross_region(raw, out, progress=False, source_scenes=_list(tmp_path, [s0, s2]),
                                     target_scenes=_list(tmp_path, [s1]), scene_regions=regions)  # fmt: skip
    assert len(index.tiles) == 12
    assert {t.attributes["scene"] for t in index.select("source")} == {s0, s2}
    assert {t.attributes["scene"] for t in index.select("target")} == {s1}
    assert index.domains("source") == ["Hubei", s2] and index.domains("target") == ["Jiangsu"]
    assert {t.sensor for t in index.tiles} == {"gf2"}
    assert splits_json(out)["options"]["split_unverified"] is False

    # One list: the other side is every remaining scene.
    index = fbp.prepare_cross_region(raw, tmp_path / "one", progress=False, target_scenes=_list(tmp_path, [s2]))
    assert {t.attributes["scene"] for t in index.select("source")} == {s0, s1}

    # No list: the UNVERIFIED placeholder, deterministic and recorded as such.
    index = fbp.prepare_cross_region(raw, tmp_path / "default", progress=False)
    source, target = fbp.default_region_split(list(fakes.FBP_SCENES), fbp.DEFAULT_TARGET_FRACTION)
    assert len(target) == 1 and {t.attributes["scene"] for t in index.select("target")} == set(target)
    assert {t.domain for t in index.select("source")} == set(source)
    options = splits_json(tmp_path / "default")["options"]
    assert options["split_unverified"] is True and "UNVERIFIED" in options["split"]

    with pytest.raises(ValueError, match="not found in the raw data: GF2_NOPE"):
        fbp.prepare_cross_region(raw, tmp_path / "bad", progress=False, target_scenes=_list(tmp_path, ["GF2_NOPE"]))
    with pytest.raises(ValueError, match="in both"):
        fbp.prepare_cross_region(raw, tmp_path / "both", progress=False, source_scenes=_list(tmp_path, [s0, s1]),
                                 target_scenes=_list(tmp_path, [s1], "t"))  # fmt: skip


def _fbp_bad(root: Path, problem: str) -> tuple[str, type[Exception], str]:
    base, scene = root / "Five-Billion-Pixels", fakes.FBP_SCENES[1]
    image, label = base / f"Image__8bit_NirRGB/{scene}.tif", base / f"Annotation__index/{scene}_24label.png"
    if problem == "missing label":
        label.unlink()
        return f"{scene}.tif", FileNotFoundError, "missing label"
    if problem == "size mismatch":
        Image.open(label).crop((0, 0, 1000, 1000)).save(label)
        return f"{scene}_24label.png", ValueError, "differs from image size"
    if problem == "band count":
        rgb = np.zeros((1008, 1100, 3), np.uint8)
        fakes._save_rgb_tiff(image, rgb)
        return f"{scene}.tif", ValueError, "3 bands, but an FBP 8-bit image has 4"
    if problem == "label value":
        array = np.asarray(Image.open(label)).copy()
        array[500, 500] = 25
        Image.frombytes("L", (array.shape[1], array.shape[0]), array.tobytes()).save(label)
        return f"{scene}_24label.png", ValueError, r"label values \[25\] are not in the class table"
    if problem == "target label missing":
        name = next(iter(fakes.MEGACITIES_IMAGES))
        (root / f"C-megacities/label_dense__color/{name}_dense.tif").unlink()
        return f"{name}.tif", FileNotFoundError, "missing label"
    raise AssertionError(problem)


@pytest.mark.parametrize(
    "problem", ["missing label", "size mismatch", "band count", "label value", "target label missing"]
)
def test_fbp_bad_input_errors_name_the_file(tmp_path: Path, problem: str) -> None:
    root = tmp_path / "raw"
    fakes.write_fbp(root)
    fakes.write_megacities(root)
    name, error, message = _fbp_bad(root, problem)
    with pytest.raises(error, match=message) as info:
        fbp.prepare_cross_sensor(root, tmp_path / "out", progress=False)
    assert name in str(info.value)
    written = tile_files(tmp_path / "out") if (tmp_path / "out").exists() else {}
    assert not [p for p in written if fakes.FBP_SCENES[1] in p]  # no tile of the bad scene
    assert not (tmp_path / "out" / INDEX_FILE).exists()


def test_fbp_off_table_colour_in_a_source_colour_label_is_an_error(tmp_path: Path) -> None:
    base = fakes.write_fbp(tmp_path / "raw", scenes=fakes.FBP_SCENES[:1])
    path = base / f"Annotation__color/{fakes.FBP_SCENES[0]}_24label.tif"
    rgb = np.asarray(Image.open(path)).copy()
    rgb[100, 100] = fakes.OFF_TABLE_COLOUR
    fakes._save_rgb_tiff(path, rgb)
    with pytest.raises(ValueError, match=r"colours \[\(123, 45, 67\)\] are not in the FBP colour table") as info:
        fbp.prepare_cross_region(tmp_path / "raw", tmp_path / "out", progress=False, source_labels="colour")
    assert path.name in str(info.value)


# ============================================================================================= FLAIR
@pytest.fixture(scope="module")
def flair_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fakes.write_flair(tmp_path_factory.mktemp("flair"))


@pytest.fixture(scope="module")
def flair_zips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fakes.write_flair(tmp_path_factory.mktemp("flairzip"), zipped=True)


FLAIR_A = {**{v: v - 1 for v in range(1, 13)}, **{v: 255 for v in range(13, 20)}}


def test_flair_tiles_bands_labels_and_domains(flair_raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    index = flair.prepare(flair_raw, out, progress=False)
    files = [(s, d, z, n) for s, entries in fakes.FLAIR_FILES.items() for d, z, n in entries]
    assert [t.image for t in index.tiles] == [f"image/{d}/{z}/{n}.tif" for _, d, z, n in files]
    assert [t.label for t in index.tiles] == [f"label/{d}/{z}/{n}.png" for _, d, z, n in files]
    for tile, (raw_split, domain, zone, number) in zip(index.tiles, files):
        assert tile.split == {"train": "source", "test": "target"}[raw_split]
        assert tile.domain == domain and tile.sensor == "flair"
        assert tile.attributes == {"zone": zone, "image_id": f"IMG_{number}", "raw_split": raw_split,
                                   "departement": domain[:4], "year": domain[5:]}  # fmt: skip
        image, profile = read_tif(out / tile.image)
        assert profile["count"] == 4 and profile["dtype"] == "uint8" and profile["crs"].to_epsg() == 2154
        np.testing.assert_array_equal(image, fakes.flair_image(int(number) % 50)[:4])  # R,G,B,NIR; elevation dropped
        label = read_png(out / tile.label)
        np.testing.assert_array_equal(label, remap(fakes.flair_raw_label(), FLAIR_A))
    label = read_png(out / index.tiles[0].label)
    assert [label[0, v] for v in (0, 11, 12, 18)] == [0, 11, 255, 255]  # raw 1, 12, 13, 19
    data = splits_json(out)
    assert data["classes"] == flair.CLASSES and len(data["classes"]) == 12
    assert data["sensors"]["flair"]["band_names"] == ["R", "G", "B", "NIR"]
    assert index.domains("source") == ["D006_2020", "D007_2020"] and index.domains("target") == ["D012_2019"]


def test_flair_zips_give_the_same_tiles_and_options(flair_raw: Path, flair_zips: Path, tmp_path: Path) -> None:
    folder, zipped = tmp_path / "folder", tmp_path / "zipped"
    a = flair.prepare(flair_raw, folder, progress=False)
    b = flair.prepare(flair_zips, zipped, progress=False)
    assert a.tiles == b.tiles
    for rel in tile_files(folder):
        other = zipped / rel
        if rel.endswith(".png"):
            np.testing.assert_array_equal(read_png(other), read_png(folder / rel))
        else:
            np.testing.assert_array_equal(read_tif(other)[0], read_tif(folder / rel)[0])
    assert not (zipped / WORK_DIR).exists()  # per-member extraction cleaned up

    index = flair.prepare(flair_zips, tmp_path / "b", progress=False, other_classes="other", keep_elevation=True)
    assert index.classes == flair.CLASSES + ["other"] and len(index.palette) == 13
    image, profile = read_tif(tmp_path / "b" / index.tiles[0].image)
    assert profile["count"] == 5
    np.testing.assert_array_equal(image, fakes.flair_image(1))
    assert {t.sensor for t in index.tiles} == {"flair-elevation"}
    label = read_png(tmp_path / "b" / index.tiles[0].label)
    np.testing.assert_array_equal(label, remap(fakes.flair_raw_label(), {**FLAIR_A, **{v: 12 for v in range(13, 20)}}))


def test_flair_rerun_with_other_options_is_refused(flair_zips: Path, tmp_path: Path) -> None:
    flair.prepare(flair_zips, tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="keep_elevation: was False, now True"):
        flair.prepare(flair_zips, tmp_path / "out", progress=False, keep_elevation=True)
    with pytest.raises(ValueError, match="other_classes: was 'ignore', now 'other'"):
        flair.prepare(flair_zips, tmp_path / "out", progress=False, other_classes="other")


def _flair_bad(root: Path, problem: str) -> tuple[str, type[Exception], str]:
    image = root / "flair_aerial_train/D007_2020/Z2_NN/img/IMG_000003.tif"
    mask = root / "flair_labels_train/D007_2020/Z2_NN/msk/MSK_000003.tif"
    if problem == "missing label":
        mask.unlink()
        return "IMG_000003.tif", FileNotFoundError, "missing label MSK_000003.tif"
    if problem == "size mismatch":
        fakes._write_geotiff(mask, fakes.flair_raw_label(32)[None])
        return "MSK_000003.tif", ValueError, "differs from image size"
    if problem == "band count":
        fakes._write_geotiff(image, fakes.flair_image(3, bands=4))
        return "IMG_000003.tif", ValueError, "4 bands, but a FLAIR image has 5"
    raw = fakes.flair_raw_label()
    raw[3, 3], raw[4, 4] = 0, 20
    fakes._write_geotiff(mask, raw[None])
    return "MSK_000003.tif", ValueError, r"label values \[0, 20\] are not in the class table"


@pytest.mark.parametrize("problem", ["missing label", "size mismatch", "band count", "label value"])
def test_flair_bad_input_errors_name_the_file(tmp_path: Path, problem: str) -> None:
    root = fakes.write_flair(tmp_path / "raw")
    name, error, message = _flair_bad(root, problem)
    with pytest.raises(error, match=message) as info:
        flair.prepare(root, tmp_path / "out", progress=False)
    assert name in str(info.value)
    assert not (tmp_path / "out/image/D007_2020").exists() and not (tmp_path / "out/label/D007_2020").exists()
    assert not (tmp_path / "out" / INDEX_FILE).exists()


def test_flair_missing_member_in_a_zip_is_named(tmp_path: Path) -> None:
    import zipfile

    root = fakes.write_flair(tmp_path / "raw", zipped=True)
    archive = root / "flair_1_labels_test.zip"
    with zipfile.ZipFile(archive) as src:
        kept = {n: src.read(n) for n in src.namelist() if "062613" not in n}
    with zipfile.ZipFile(archive, "w") as dst:
        for name, data in kept.items():
            dst.writestr(name, data)
    with pytest.raises(FileNotFoundError, match=r"flair_1_aerial_test\.zip!.*IMG_062613\.tif: missing label"):
        flair.prepare(root, tmp_path / "out", progress=False)


# ============================================================== shared behaviour, every benchmark
RUNS: dict[str, tuple[Callable[[Path], Path], Callable[..., PreparedIndex], int]] = {
    "whu-ohs": (lambda root: fakes.write_whu_ohs(root), whu_ohs.prepare, 6),
    "fbp-cross-sensor": (lambda root: (fakes.write_fbp(root), fakes.write_megacities(root), root)[-1],
                         fbp.prepare_cross_sensor, 20),
    "fbp-cross-region": (lambda root: (fakes.write_fbp(root), root)[-1], fbp.prepare_cross_region, 8),
    "flair": (lambda root: fakes.write_flair(root, zipped=True), flair.prepare, 4),
}  # fmt: skip


@pytest.mark.parametrize("benchmark", list(RUNS))
def test_resume_skips_finished_tiles_and_rewrites_only_missing_ones(tmp_path: Path, benchmark: str) -> None:
    write, prepare, count = RUNS[benchmark]
    raw, out = write(tmp_path / "raw"), tmp_path / "out"
    first = prepare(raw, out, progress=False)
    assert len(first.tiles) == count
    before = tile_files(out)
    assert len(before) == 2 * count

    again = prepare(raw, out, progress=False)  # nothing to do: no file rewritten
    assert again.tiles == first.tiles and tile_files(out) == before

    victim = first.tiles[-1]
    (out / victim.image).unlink()
    third = prepare(raw, out, progress=False)
    after = tile_files(out)
    assert third.tiles == first.tiles and set(after) == set(before)
    changed = {rel for rel in after if after[rel] != before[rel]}
    assert changed == {victim.image, victim.label}  # the pair is rewritten, nothing else
    assert PreparedIndex.load(out).tiles == first.tiles


@pytest.mark.parametrize("benchmark", list(RUNS))
def test_refuses_a_foreign_output_folder(tmp_path: Path, benchmark: str) -> None:
    write, prepare, _ = RUNS[benchmark]
    raw = write(tmp_path / "raw")
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a spectralmoe prepare output"):
        prepare(raw, stranger, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / MARKER_FILE).write_text("loveda\n")
    with pytest.raises(FileExistsError, match="prepared for 'loveda'"):
        prepare(raw, other, progress=False)
    assert sorted(os.listdir(other)) == [MARKER_FILE]


@pytest.mark.parametrize("benchmark", list(RUNS))
def test_prepared_output_reads_through_prepared_dataset(tmp_path: Path, benchmark: str) -> None:
    prepared = pytest.importorskip("spectralmoe.data.datasets.prepared")
    write, prepare, count = RUNS[benchmark]
    out = tmp_path / "out"
    index = prepare(write(tmp_path / "raw"), out, progress=False)
    for split in ("source", "target"):
        dataset = prepared.PreparedDataset(out, split=split)
        assert len(dataset) == len(index.select(split))
        sample = dataset[0]
        record = index.select(split)[0]
        sensor = index.sensors[record.sensor]
        assert sample["image"].shape[0] == sensor.num_bands and sample["image"].shape[1:] == sample["mask"].shape
        assert sample["domain"] == record.domain and sample["wavelengths"].shape == (sensor.num_bands,)
        values = set(sample["mask"].unique().tolist())
        assert values <= set(range(len(index.classes))) | {255} and values - {255}
    assert len(prepared.PreparedDataset(out)) == count
