"""Every tile reaches the model in the model's band order, matched by wavelength (``bands.match_bands``,
the one rule of training, validation, test, predict and predict-scene) — and for the paper's seven
benchmarks, whose targets share the source's band order, nothing changes (identity orders, samples equal
to the files bit for bit)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from spectralmoe.bands import (
    SENSORS,
    BandMismatchError,
    get_sensor,
    match_bands,
    wavelength_from_band_name,
    wavelengths_from_band_names,
)
from spectralmoe.data.benchmarks import DG_TASKS
from spectralmoe.data.datamodule import DGDataModule
from spectralmoe.data.io import read_band_info, read_image
from spectralmoe.data.layout import write_image_tile
from spectralmoe.data.prepare.common import PrepareRun, TileArrays
from tests.test_configs import FAKE_TARGETS, make_prepared_root

#: the target sensors of each benchmark as prepared (DATA.md), against its source sensor
BENCHMARK_SENSORS = {
    "whu-ohs": ("ohs", ["ohs"]),
    "fbp-cross-sensor": ("gf2", ["gf1", "planetscope", "sentinel2"]),
    "fbp-cross-region": ("gf2", ["gf2"]),
    "flair": ("flair", ["flair"]),
    "loveda-rural2urban": ("rgb", ["rgb"]),
    "potsdam2vaihingen": ("potsdam-rgb", ["vaihingen"]),
    "openearthmap-europe": ("rgb", ["rgb"]),
}


@pytest.mark.parametrize("task_name", sorted(DG_TASKS))
def test_paper_benchmarks_keep_the_file_order(task_name, tmp_path):
    """The real sensors: identity by wavelength (within 60 nm), or by position for Potsdam→Vaihingen (the
    paper's protocol feeds IRRG where RGB was; Vaihingen has no blue band to match)."""
    task = DG_TASKS[task_name]
    source, targets = BENCHMARK_SENSORS[task_name]
    assert task.source_sensors[0] == source
    model = get_sensor(source).wavelengths_um
    for name in targets:
        sensor = get_sensor(name)
        if task.band_matching == "position":
            assert sensor.num_bands == len(model)
        else:
            assert match_bands(model, sensor.num_bands, sensor=sensor) == list(range(sensor.num_bands)), name
    # and through the DataModule on a fake prepared root: identity orders, samples = files bit for bit
    root = make_prepared_root(task_name, tmp_path / task_name, source_tiles=1, tiles_per_target=1)
    dm = DGDataModule(root, task, num_workers=0)
    dm.setup()
    used = {FAKE_TARGETS[task_name][0], *(s for _, s, _ in FAKE_TARGETS[task_name][1])}
    assert set(dm.band_orders) == used
    for name, order in dm.band_orders.items():
        assert order == list(range(SENSORS[name].num_bands)), name
    for dataset in dm.target_datasets.values():
        sample = dataset[0]
        raw = read_image(sample["path"]).array.astype(np.float32)
        assert torch.equal(sample["image"], torch.from_numpy(raw))


def test_potsdam_to_vaihingen_cannot_match_by_wavelength():
    """Why that task feeds by position: by wavelength, Vaihingen's NIR,R,G has no band for Potsdam's blue."""
    with pytest.raises(BandMismatchError, match=r"model band 3 \(0.490 µm\) is missing"):
        match_bands(get_sensor("potsdam-rgb").wavelengths_um, 3, sensor="vaihingen")


def _two_order_root(out: Path, target_sensor: str) -> Path:
    """A gf2 (NIR,R,G,B) source and one target domain of ``target_sensor`` whose band k holds value 10·k+1."""
    run = PrepareRun("fbp-cross-sensor", out, progress=False)
    label = np.zeros((32, 32), dtype=np.uint8)
    for i in range(2):
        run.add_tile(f"s{i}", lambda: TileArrays(np.full((4, 32, 32), 50, np.uint8), label),
                     split="source", domain="source", sensor="gf2")  # fmt: skip
    target = get_sensor(target_sensor)
    image = np.stack([np.full((32, 32), 10 * k + 1, np.uint8) for k in range(target.num_bands)])
    run.add_tile("t0", lambda: TileArrays(image, label), split="target", domain="other", sensor=target_sensor)
    run.finish(classes=list(DG_TASKS["fbp-cross-sensor"].classes), palette=list(DG_TASKS["fbp-cross-sensor"].palette),
               sensors={"gf2": get_sensor("gf2"), target_sensor: target})  # fmt: skip
    return out


def test_a_target_in_another_band_order_is_reordered_in_every_loader(tmp_path):
    root = _two_order_root(tmp_path / "root", "gf2-16bit")  # B,G,R,NIR
    dm = DGDataModule(root, "fbp-cross-sensor", num_workers=0, eval_batch_size=1)
    with pytest.warns(UserWarning, match=r"value scale .* 'gf2-16bit' \(other\): 1023.*fed unchanged"):
        dm.setup()  # the 10-bit product next to an 8-bit model: said, not silently rescaled
    assert dm.band_orders["gf2-16bit"] == [3, 2, 1, 0]
    for batch in (next(iter(dm.val_dataloader()[0])), next(iter(dm.test_dataloader()[0])),
                  next(iter(dm.predict_dataloader()))):  # fmt: skip
        assert batch["image"][0, :, 0, 0].tolist() == [31.0, 21.0, 11.0, 1.0]  # NIR, R, G, B
        assert batch["wavelengths"][0].tolist() == pytest.approx([0.83, 0.665, 0.56, 0.49])
    # a model with other wavelengths (e.g. restored from a checkpoint) re-matches every sensor
    dm.set_model_wavelengths([0.49, 0.56, 0.665, 0.83])
    assert dm.band_orders == {"gf2": [3, 2, 1, 0], "gf2-16bit": [0, 1, 2, 3]}
    assert next(iter(dm.val_dataloader()[0]))["image"][0, :, 0, 0].tolist() == [1.0, 11.0, 21.0, 31.0]
    dm.set_model_wavelengths([0.83, 0.665, 0.56, 0.49])  # back to the source's own order
    assert dm.band_orders["gf2"] == [0, 1, 2, 3]


def test_a_missing_band_fails_in_setup_before_any_tile_is_read(tmp_path, monkeypatch):
    root = _two_order_root(tmp_path / "root", "rgb")  # no NIR
    import spectralmoe.data.datasets.prepared as prepared

    monkeypatch.setattr(prepared, "read_image", lambda *a, **k: pytest.fail("a tile was read"))
    dm = DGDataModule(root, "fbp-cross-sensor", num_workers=0)
    with pytest.raises(BandMismatchError, match=r"domain\(s\) \['other'\] \(sensor 'rgb'.*model band 1 \(0.830 µm\) "
                                                r"is missing.*band 1 \(R, 0.665 µm\), 165 nm away"):  # fmt: skip
        dm.setup()


def test_band_names_and_metadata_give_wavelengths(tmp_path):
    assert wavelengths_from_band_names(["B", "G", "R", "NIR"]) == (0.49, 0.56, 0.665, 0.83)
    assert wavelengths_from_band_names(["Blue", "green", "RED", "Near-Infrared"]) == (0.49, 0.56, 0.665, 0.83)
    assert wavelengths_from_band_names(["B08", "B04", "B03", "B02"]) == (0.8328, 0.6646, 0.5598, 0.4924)
    assert wavelength_from_band_name("Band 1 (490 nm)") == 0.49 and wavelength_from_band_name("0.842 µm") == 0.842
    # ambiguous or partial readings are refused, never guessed
    assert wavelengths_from_band_names(["B1", "B2", "B3", "B4"]) is None  # S2 B2 is blue, GF-2 B2 green
    assert wavelengths_from_band_names(["B", "G", "R", "band 4"]) is None
    assert wavelengths_from_band_names(["R", "Red"]) is None  # two bands, one wavelength
    assert wavelengths_from_band_names(["B01", "B13"]) is None  # OHS-style numbering, not Sentinel-2
    described = tmp_path / "d.tif"
    write_image_tile(described, np.zeros((3, 8, 8), np.uint16), band_names=["NIR", "Red", "Green"])
    assert read_band_info(described).wavelengths() == ((0.83, 0.665, 0.56), "band descriptions NIR,Red,Green")
    import rasterio

    envi = tmp_path / "e.tif"
    with rasterio.open(envi, "w", driver="GTiff", width=8, height=8, count=2, dtype="uint16") as dst:
        dst.update_tags(1, wavelength="490", wavelength_units="Nanometers")
        dst.update_tags(2, ns="IMAGERY", CENTRAL_WAVELENGTH_UM="0.665")
    info = read_band_info(envi)
    assert info.tag_wavelengths_um == (0.49, 0.665) and info.wavelengths() == ((0.49, 0.665), "wavelength metadata")
    plain = tmp_path / "p.tif"
    write_image_tile(plain, np.zeros((2, 8, 8), np.uint8))
    assert read_band_info(plain).wavelengths() is None and read_band_info(plain).names() == ["band 1", "band 2"]
    assert all(not math.isnan(w) for w in wavelengths_from_band_names(["coastal", "yellow", "rededge", "swir1"]))
