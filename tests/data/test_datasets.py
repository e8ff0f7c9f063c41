"""PreparedDataset, GeoTiffFolder and band statistics on tiny fakes written here."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning
from torch.utils.data import default_collate

from spectralmoe.bands import SENSORS, Sensor
from spectralmoe.data import stats as stats_module
from spectralmoe.data.datasets import GeoTiffFolder, PreparedDataset
from spectralmoe.data.io import RasterReadError
from spectralmoe.data.prepare.common import PrepareRun, TileArrays
from spectralmoe.data.stats import compute_band_stats, format_stats

CLASSES = ["water", "forest", "urban"]
PALETTE = [(0, 0, 255), (0, 255, 0), (255, 0, 0)]
H, W = 16, 24


def banded(c: int, h: int = H, w: int = W, dtype: str = "uint8", offset: int = 0) -> np.ndarray:
    """Band k filled with 10·(k+1) + offset, so any band reordering shows."""
    return np.stack([np.full((h, w), 10 * (k + 1) + offset) for k in range(c)]).astype(dtype)


def label_map(h: int = H, w: int = W) -> np.ndarray:
    label = (np.arange(h * w).reshape(h, w) % 3).astype(np.uint8)
    label[0, :4] = 255
    return label


def write_geotiff(path: Path, array: np.ndarray, **profile: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    base = dict(driver="GTiff", height=array.shape[1], width=array.shape[2], count=array.shape[0],
                dtype=array.dtype.name)  # fmt: skip
    base.update(profile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **base) as dst:
            dst.write(array)
    return path


def write_png_label(path: Path, label: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label, "L").save(path)
    return path


def make_root(tmp_path: Path, tiles: list[dict] | None = None) -> Path:
    """A prepared root written by the converters' own machinery (PrepareRun).

    Default: 2 GF-2 (NIR,R,G,B) source tiles in domains A/B and 1 Potsdam-RGB target tile in domain C.
    """
    root = tmp_path / "prepared"
    run = PrepareRun("fake", root, progress=False)
    if tiles is None:
        tiles = [
            dict(rel="src/a0", split="source", domain="A", sensor="gf2", image=banded(4)),
            dict(rel="src/b0", split="source", domain="B", sensor="gf2", image=banded(4, offset=1)),
            dict(rel="tgt/c0", split="target", domain="C", sensor="potsdam-rgb", image=banded(3, offset=2)),
        ]
    for t in tiles:
        arrays = TileArrays(t["image"], t.get("label", label_map(*t["image"].shape[1:])), nodata=t.get("nodata"))
        run.add_tile(t["rel"], lambda a=arrays: a, split=t["split"], domain=t["domain"], sensor=t["sensor"])
    sensors = {name: SENSORS[name] for name in {t["sensor"] for t in tiles} if name in SENSORS}
    sensors.update({t["sensor"]: t["sensor_obj"] for t in tiles if "sensor_obj" in t})
    run.finish(classes=CLASSES, palette=PALETTE, sensors=sensors)
    return root


# ------------------------------------------------------------------------------------- PreparedDataset
def test_prepared_dataset_samples(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    ds = PreparedDataset(root)
    assert len(ds) == 3 and ds.classes == CLASSES and ds.num_classes == 3 and ds.palette == PALETTE
    assert set(ds.sensors) == {"gf2", "potsdam-rgb"} and ds.domains == ["A", "B", "C"]
    s = ds[0]
    assert set(s) == {"image", "mask", "domain", "wavelengths", "sensor", "path"}
    assert s["image"].dtype == torch.float32 and s["image"].shape == (4, H, W)
    assert s["image"][:, 5, 5].tolist() == [10.0, 20.0, 30.0, 40.0]  # file order, raw values, not normalised
    assert s["mask"].dtype == torch.int64 and s["mask"].shape == (H, W)
    np.testing.assert_array_equal(s["mask"].numpy(), label_map())
    assert s["domain"] == "A" and s["sensor"] == "gf2" and s["path"].endswith("image/src/a0.tif")
    assert s["wavelengths"].dtype == torch.float32
    assert s["wavelengths"].tolist() == pytest.approx([0.830, 0.665, 0.560, 0.490])
    t = ds[2]
    assert t["image"].shape == (3, H, W) and t["image"][:, 1, 1].tolist() == [12.0, 22.0, 32.0]
    assert t["wavelengths"].tolist() == pytest.approx(list(SENSORS["potsdam-rgb"].wavelengths_um))
    batch = default_collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 4, H, W) and batch["domain"] == ["A", "B"]


def test_prepared_dataset_split_domain_selection_and_transform(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    source = PreparedDataset(root, split="source")
    assert [r.domain for r in source.records] == ["A", "B"]
    target = PreparedDataset(root, split="target")
    assert len(target) == 1 and target[0]["domain"] == "C"
    only_b = PreparedDataset(root, split="source", domains=["B"])
    assert len(only_b) == 1 and only_b[0]["image"][0, 3, 3] == 11.0

    def flip(sample: dict) -> dict:
        return {**sample, "image": sample["image"].flip(-1), "flipped": True}

    flipped = PreparedDataset(root, split="source", transform=flip)[0]
    assert flipped["flipped"] is True


def test_empty_selection_names_root_split_and_domains(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    with pytest.raises(ValueError, match=r"prepared.*split='target'.*\['A'\].*\['C'\]"):
        PreparedDataset(root, split="target", domains=["A"])


def test_missing_files_listed_at_construction(tmp_path: Path) -> None:
    tiles = [dict(rel=f"t{i:02d}", split="source", domain="A", sensor="gf2", image=banded(4, 4, 4))
             for i in range(13)]  # fmt: skip
    root = make_root(tmp_path, tiles)
    for i in range(12):
        (root / f"label/t{i:02d}.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"12 listed file\(s\) missing") as info:
        PreparedDataset(root)
    message = str(info.value)
    assert "t00.png" in message and "t09.png" in message and "t11.png" not in message and "2 more" in message


def test_band_count_differs_from_sensor(tmp_path: Path) -> None:
    root = make_root(tmp_path, [dict(rel="x", split="source", domain="A", sensor="gf2", image=banded(3))])
    with pytest.raises(ValueError, match=r"x\.tif: 3 bands .*\(3, 16, 24\).*'gf2' has 4 bands"):
        PreparedDataset(root)[0]


def test_image_label_size_mismatch(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    write_png_label(root / "label/src/b0.png", np.zeros((H, W - 1), np.uint8))
    ds = PreparedDataset(root)
    ds[0]
    with pytest.raises(ValueError, match=r"image/src/b0\.tif.*label/src/b0\.png.*sizes must match"):
        ds[1]


def test_label_values_outside_class_table(tmp_path: Path) -> None:
    label = label_map()
    label[3, 3], label[4, 4] = 7, 3
    tile = dict(rel="bad", split="source", domain="A", sensor="gf2", image=banded(4), label=label)
    root = make_root(tmp_path, [tile])
    with pytest.raises(ValueError, match=r"bad\.png: label values \[3, 7\] .*num_classes 3"):
        PreparedDataset(root)[0]
    assert PreparedDataset(root, classes_check=False)[0]["mask"][3, 3] == 7


def test_nan_inf_and_nodata_pixels_are_masked_to_ignore(tmp_path: Path) -> None:
    image = banded(4, dtype="float32")
    image[1, 2, 3] = np.nan  # NaN in one band only: the whole pixel is invalid
    image[:, 5, 6] = np.inf
    image[:, 7, 8] = -9999.0  # nodata in all bands
    image[0, 9, 9] = -9999.0  # nodata in one band only: still a valid pixel
    root = make_root(tmp_path, [dict(rel="holes", split="source", domain="A", sensor="gf2", image=image,
                                     nodata=-9999.0)])  # fmt: skip
    s = PreparedDataset(root)[0]
    assert torch.isfinite(s["image"]).all()
    for y, x in [(2, 3), (5, 6), (7, 8)]:
        assert s["mask"][y, x] == 255 and s["image"][:, y, x].tolist() == [0.0] * 4
    assert s["mask"][9, 9] == label_map()[9, 9] and s["image"][0, 9, 9] == -9999.0
    assert int((s["mask"] == 255).sum()) == int((label_map() == 255).sum()) + 3
    assert s["image"][:, 10, 10].tolist() == [10.0, 20.0, 30.0, 40.0]


def test_uint8_nodata_zero_masks_only_all_zero_pixels(tmp_path: Path) -> None:
    image = banded(4)
    image[:, 6, 6] = 0
    image[2, 8, 8] = 0
    root = make_root(tmp_path, [dict(rel="z", split="source", domain="A", sensor="gf2", image=image, nodata=0)])
    mask = PreparedDataset(root)[0]["mask"]
    assert mask[6, 6] == 255 and mask[8, 8] == label_map()[8, 8]


def test_truncated_tile_error_names_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (4, 64, 64), dtype=np.uint8)
    root = make_root(tmp_path, [dict(rel="cut", split="source", domain="A", sensor="gf2", image=image)])
    path = root / "image/cut.tif"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(RasterReadError, match=r"image/cut\.tif"):
        PreparedDataset(root)[0]


def test_custom_sensor_record_with_nonspectral_band(tmp_path: Path) -> None:
    sensor = Sensor("rgbe", ("R", "G", "B", "E"), (0.665, 0.56, 0.49, float("nan")), 255.0)
    root = make_root(tmp_path, [dict(rel="e", split="target", domain="Z", sensor="rgbe", sensor_obj=sensor,
                                     image=banded(4, dtype="uint16"))])  # fmt: skip
    w = PreparedDataset(root)[0]["wavelengths"]
    assert w[:3].tolist() == pytest.approx([0.665, 0.56, 0.49]) and math.isnan(float(w[3]))


# ---------------------------------------------------------------------------------------- GeoTiffFolder
def make_folder(tmp_path: Path) -> tuple[Path, Path]:
    images, labels = tmp_path / "img", tmp_path / "lab"
    write_geotiff(images / "a.tif", banded(4))
    write_geotiff(images / "sub/b.tif", banded(4, offset=5))
    raw = label_map()
    raw[raw == 255] = 0  # raw 0 = unlabelled, 1..3 = classes (reduce_zero_label style)
    raw_a = raw + 1
    raw_a[1, 1] = 255  # raw 255 stays ignore under any offset
    write_png_label(labels / "a.png", raw_a)
    write_geotiff(labels / "sub/b.tif", (raw[None] + 1) % 4)  # raw 0 where the class index would be 3
    return images, labels


def test_geotiff_folder_pairs_and_offsets_labels(tmp_path: Path) -> None:
    images, labels = make_folder(tmp_path)
    classes_file = tmp_path / "classes.txt"
    classes_file.write_text("# my classes\nwater\n\nforest\nurban\n")
    ds = GeoTiffFolder(images, labels, sensor="gf2", classes=classes_file, label_offset=1, domain="mine")
    assert ds.classes == CLASSES and len(ds) == 2
    assert [p.name for p, _ in ds.records] == ["a.tif", "b.tif"]
    assert [l.name for _, l in ds.records] == ["a.png", "b.tif"]
    a, b = ds[0], ds[1]
    raw = label_map()
    raw[raw == 255] = 0
    expected_a = raw.astype(np.int64)  # (raw + 1) - 1
    expected_a[1, 1] = 255
    np.testing.assert_array_equal(a["mask"].numpy(), expected_a)
    expected_b = ((raw + 1) % 4).astype(np.int64) - 1
    expected_b[expected_b < 0] = 255  # raw 0 → ignore
    np.testing.assert_array_equal(b["mask"].numpy(), expected_b)
    assert a["domain"] == "mine" and a["sensor"] == "gf2" and b["image"][:, 2, 2].tolist() == [15.0, 25.0, 35.0, 45.0]
    assert a["wavelengths"].tolist() == pytest.approx([0.830, 0.665, 0.560, 0.490])


def test_geotiff_folder_missing_label_and_prediction_only(tmp_path: Path) -> None:
    images, labels = make_folder(tmp_path)
    (labels / "sub/b.tif").unlink()
    missing = r"(?s)searched \.png, \.tif, \.tiff.*1 listed file\(s\) missing.*sub/b\.png"
    with pytest.raises(FileNotFoundError, match=missing):
        GeoTiffFolder(images, labels, sensor="gf2", classes=CLASSES)
    pred = GeoTiffFolder(images, wavelengths=[0.83, 0.665, 0.56, 0.49])
    s = pred[1]
    assert "mask" not in s and s["image"].shape == (4, H, W) and s["sensor"] == "custom"
    assert s["wavelengths"].tolist() == pytest.approx([0.83, 0.665, 0.56, 0.49])


def test_geotiff_folder_argument_and_content_errors(tmp_path: Path) -> None:
    images, labels = make_folder(tmp_path)
    with pytest.raises(ValueError, match="exactly one"):
        GeoTiffFolder(images, sensor="gf2", wavelengths=[0.5])
    with pytest.raises(ValueError, match="exactly one"):
        GeoTiffFolder(images)
    with pytest.raises(ValueError, match="no `classes`"):
        GeoTiffFolder(images, labels, sensor="gf2")
    with pytest.raises(ValueError, match=r"a\.tif: 4 bands.*has 3"):
        GeoTiffFolder(images, wavelengths=[0.665, 0.56, 0.49])[0]
    # Without the offset, raw value 3 is outside a 3-class table.
    with pytest.raises(ValueError, match=r"a\.png: label values \[3\]"):
        GeoTiffFolder(images, labels, sensor="gf2", classes=CLASSES)[0]
    with pytest.raises(ValueError, match="no image files"):
        GeoTiffFolder(labels, sensor="gf2", suffixes=(".jp2",))


# ----------------------------------------------------------------------------------------------- stats
def valid_reference(arrays: list[np.ndarray], nodata: float | None) -> np.ndarray:
    columns = []
    for a in arrays:
        ok = np.isfinite(a).all(axis=0)
        if nodata is not None:
            ok &= ~(a == nodata).all(axis=0)
        columns.append(a[:, ok].astype(np.float64))
    return np.concatenate(columns, axis=1)


def test_band_stats_match_numpy_and_skip_nan_and_nodata(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    arrays = [rng.normal(1000 * (k + 1), 50, (4, H, W)).astype(np.float32) for k in range(3)]
    arrays[0][2, 1, 1] = np.nan
    arrays[1][:, 3, 3] = -1.0
    arrays[2][:, 4, 4] = 1e9  # would dominate the std if it were counted
    arrays[2][:, 4, 4] = -1.0
    tiles = [dict(rel=f"t{k}", split="source" if k < 2 else "target", domain="A", sensor="gf2", image=a,
                  nodata=-1.0) for k, a in enumerate(arrays)]  # fmt: skip
    root = make_root(tmp_path, tiles)
    ref = valid_reference(arrays, -1.0)
    stats = compute_band_stats(root)
    assert stats.count == ref.shape[1] == 3 * H * W - 3 and stats.tiles == 3
    np.testing.assert_allclose(stats.mean, ref.mean(axis=1), rtol=1e-10)
    np.testing.assert_allclose(stats.std, ref.std(axis=1), rtol=1e-8)
    np.testing.assert_allclose(stats.minimum, ref.min(axis=1))
    np.testing.assert_allclose(stats.maximum, ref.max(axis=1))
    source = compute_band_stats(root, split="source")
    np.testing.assert_allclose(source.mean, valid_reference(arrays[:2], -1.0).mean(axis=1), rtol=1e-10)
    same = compute_band_stats(PreparedDataset(root, split="source"))
    assert same == source
    # A folder of GeoTIFFs, with an explicit nodata for files that carry none.
    folder = tmp_path / "folder"
    for k, a in enumerate(arrays):
        write_geotiff(folder / f"d{k}/x.tif", a)
    folder_stats = compute_band_stats(folder, nodata=-1.0)
    np.testing.assert_allclose(folder_stats.std, ref.std(axis=1), rtol=1e-8)
    assert compute_band_stats(folder).count == 3 * H * W - 1  # only the NaN pixel skipped


def test_band_stats_stream_one_tile_at_a_time_and_max_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "many"
    arrays = [banded(3, 4, 4, dtype="uint16", offset=k) for k in range(40)]
    for k, a in enumerate(arrays):
        write_geotiff(folder / f"{k:03d}.tif", a)
    seen: list[tuple[int, ...]] = []
    real = stats_module.read_image

    def spy(path: Path):
        data = real(path)
        seen.append(data.array.shape)
        return data

    monkeypatch.setattr(stats_module, "read_image", spy)
    stats = compute_band_stats(folder, max_samples=5)
    assert stats.tiles == 5 and len(seen) == 5 and all(s == (3, 4, 4) for s in seen)
    picked = [arrays[i] for i in (0, 10, 20, 29, 39)]  # evenly spaced over the 40 files
    np.testing.assert_allclose(stats.mean, valid_reference(picked, None).mean(axis=1))
    with pytest.raises(ValueError, match="max_samples"):
        compute_band_stats(folder, max_samples=0)


def test_band_stats_generic_dataset_and_format(tmp_path: Path) -> None:
    samples = [{"image": torch.full((2, 3, 3), float(v))} for v in (1.0, 3.0)]
    samples[1]["image"][:, 0, 0] = float("nan")
    stats = compute_band_stats(samples)
    assert stats.count == 17 and stats.mean == pytest.approx([(9 + 3 * 8) / 17] * 2)
    text, payload = format_stats(stats, ["NIR", "R"])
    assert "NIR" in text and "17 valid pixels in 2 tiles" in text
    assert json.loads(json.dumps(payload))["band_names"] == ["NIR", "R"] and payload["count"] == 17
    with pytest.raises(ValueError, match="3 band names"):
        format_stats(stats, ["a", "b", "c"])
