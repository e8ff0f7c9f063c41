"""The SYNTHETIC world: deterministic, fast, structured like land cover, spectrally faithful to the
band definitions, and readable by the same datasets / DataModule as a prepared benchmark."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from scipy import ndimage

from spectralmoe.bands import get_sensor
from spectralmoe.data.datamodule import DGDataModule
from spectralmoe.data.datasets.prepared import PreparedDataset
from spectralmoe.data.layout import PreparedIndex
from spectralmoe.data.synthetic import (
    BENCHMARK,
    CLASSES,
    PALETTE,
    SENSOR_MODELS,
    WAVELENGTHS_UM,
    class_spectra,
    generate_world,
    get_sensor_model,
    make_scene,
    observe,
    read_height,
    render_scene,
    render_tile,
    rgb_for_height,
    srf_matrix,
    synthetic_task,
    target_groups,
    world_statistics,
)

SENSORS = ("gf2", "planetscope", "sentinel2", "ohs", "rgb")
REGIONS = ("north", "south")
K = {name: i for i, name in enumerate(CLASSES)}
VEGETATION = (K["forest"], K["cropland"], K["grassland"])
FOUR_BAND = ("gf2", "planetscope", "sentinel2")  # all NIR,R,G,B


def band(sensor: str, wavelength_um: float) -> int:
    """Index of the sensor's band nearest ``wavelength_um``."""
    waves = np.array(get_sensor(sensor).wavelengths_um)
    return int(np.argmin(np.abs(waves - wavelength_um)))


def digest(root: Path) -> dict[str, str]:
    """sha256 of every tile file under ``root`` (image, label, height), by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in ("image", "label", "height")
        for p in sorted((root / folder).rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, PreparedIndex, float]:
    """30 tiles of 64² across the 5 sensors and 2 regions, with the time it took."""
    out = tmp_path_factory.mktemp("synthetic") / "world"
    start = time.perf_counter()
    index = generate_world(out, regions=REGIONS, sensors=SENSORS, tiles_per_domain=3, tile_size=64, seed=0)
    return out, index, time.perf_counter() - start


# ------------------------------------------------------------------------------ determinism, speed
def test_generation_is_fast(world):
    _, index, seconds = world
    assert len(index.tiles) == 30
    assert seconds < 5.0, f"30 tiles of 64x64 took {seconds:.1f} s"


def test_same_seed_same_bytes_other_seed_other_tiles(tmp_path):
    kwargs = dict(regions=("south",), sensors=("gf2", "ohs"), tiles_per_domain=2, tile_size=32, source=("gf2", "south"))
    generate_world(tmp_path / "a", seed=3, **kwargs)
    generate_world(tmp_path / "b", seed=3, **kwargs)
    generate_world(tmp_path / "c", seed=4, **kwargs)
    a, b, c = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert len(a) == 4 * 3 and a == b
    assert (tmp_path / "a" / "splits.json").read_bytes() == (tmp_path / "b" / "splits.json").read_bytes()
    images = [k for k in a if k.startswith("image/")]
    assert all(a[k] != c[k] for k in images)


def test_second_call_is_cached_and_resume_rebuilds_identical_tiles(world, tmp_path):
    out, index, _ = world
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.tif")}
    start = time.perf_counter()
    again = generate_world(out, regions=REGIONS, sensors=SENSORS, tiles_per_domain=3, tile_size=64, seed=0)
    assert time.perf_counter() - start < 1.0
    assert again.tiles == index.tiles
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.tif")} == before

    small = tmp_path / "small"
    kwargs = dict(regions=("north",), sensors=("gf2",), tiles_per_domain=2, tile_size=32)
    generate_world(small, **kwargs)
    original = digest(small)
    (small / "image" / "gf2" / "north" / "0001.tif").unlink()
    (small / "height" / "gf2" / "north" / "0000.tif").unlink()
    generate_world(small, **kwargs)
    assert digest(small) == original
    with pytest.raises(ValueError, match="other options"):
        generate_world(small, **{**kwargs, "tile_size": 48})


def test_render_tile_regenerates_the_files(world):
    out, index, _ = world
    record = next(t for t in index.tiles if t.domain == "planetscope/south")
    number = int(Path(record.image).stem)
    view = render_tile("planetscope", "south", number, seed=0, tile_size=64)
    with rasterio.open(out / record.image) as src:
        np.testing.assert_array_equal(src.read(), view.image)
    np.testing.assert_array_equal(read_height(out, record), view.height)


# --------------------------------------------------------------------------------------- layout
def test_output_loads_through_prepared_dataset(world):
    out, index, _ = world
    assert index.benchmark == BENCHMARK and index.options["SYNTHETIC"] is True
    assert "SYNTHETIC" in (out / "SYNTHETIC.txt").read_text()
    assert list(index.classes) == list(CLASSES) and [tuple(c) for c in index.palette] == list(PALETTE)
    dataset = PreparedDataset(out)
    assert len(dataset) == 30 and set(dataset.domains) == {f"{s}/{r}" for s in SENSORS for r in REGIONS}
    dtypes = {"gf2": "uint8", "planetscope": "uint8", "sentinel2": "uint8", "ohs": "int16", "rgb": "uint8"}
    seen = set()
    for i, record in enumerate(dataset.records):
        if record.sensor in seen:
            continue
        seen.add(record.sensor)
        sample = dataset[i]
        sensor = get_sensor(record.sensor)
        assert sample["image"].shape == (sensor.num_bands, 64, 64)
        np.testing.assert_allclose(sample["wavelengths"].numpy(), sensor.wavelengths_um, rtol=1e-6)
        assert sample["mask"].max() < len(CLASSES)
        region = record.domain.split("/")[1]
        assert record.attributes == {"sensor": record.sensor, "region": region, "synthetic": "true"}
        with rasterio.open(out / record.image) as src, rasterio.open(out / "height" / record.image[6:]) as h:
            assert src.dtypes[0] == dtypes[record.sensor] and src.crs is not None
            assert src.transform.a == pytest.approx(SENSOR_MODELS[record.sensor].gsd_m)
            assert src.descriptions == sensor.band_names
            assert h.dtypes[0] == "float32" and h.transform == src.transform and h.shape == src.shape
        assert np.isfinite(read_height(out, record)).all()
    assert seen == set(SENSORS)
    assert [t.domain for t in index.tiles if t.split == "source"] == ["gf2/north"] * 3


def test_task_and_datamodule(world):
    out, index, _ = world
    groups = target_groups(index)
    assert groups["same_sensor"] == ["gf2/south"]
    assert sorted(groups["same_bands"]) == [f"{s}/{r}" for s in ("planetscope", "sentinel2") for r in REGIONS]
    assert sorted(groups["other_bands"]) == ["ohs/north", "ohs/south", "rgb/north", "rgb/south"]
    task = synthetic_task(out, "gf2", max_iters=10, val_interval=5, batch_size=2, eval_batch_size=2)
    assert task.benchmark == BENCHMARK and len(task.mean) == 4 and task.source_domains == ("gf2/north",)
    assert 20 < task.mean[0] < 250 and all(s > 1 for s in task.std)  # raw 8-bit units, NIR first
    with pytest.raises(ValueError, match="source"):
        synthetic_task(out, "ohs")
    module = DGDataModule(out, task, num_workers=0)  # the world root itself: OHS/RGB tiles are not read
    module.setup()
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (2, 4, 64, 64) and batch["mask"].shape == (2, 64, 64)
    assert module.target_domains == sorted(groups["same_sensor"] + groups["same_bands"])
    loaders = module.val_dataloader()
    assert len(loaders) == 5
    for name, loader in zip(module.target_domains, loaders):
        target = next(iter(loader))
        assert target["image"].shape[1] == 4 and set(target["domain"]) == {name}


def test_world_statistics_and_all_classes(world):
    out, index, _ = world
    stats = world_statistics(index)
    assert stats == world_statistics(out)
    assert set(stats) == set(index.domains())
    for fractions in stats.values():
        assert sum(fractions.values()) == pytest.approx(1.0, abs=1e-4)
    present = {name for fractions in stats.values() for name, v in fractions.items() if v > 0}
    assert present == set(CLASSES)


# ------------------------------------------------------------------------------------- structure
def first_ground(region: str, extent_m: float, wanted) -> object:
    """The first scene (seeds 0..19) of ``region`` whose 2 m ground satisfies ``wanted``."""
    for seed in range(20):
        ground = make_scene(seed, region, extent_m).ground(2.0)
        if wanted(ground):
            return ground
    raise AssertionError(f"no {region} scene of seeds 0..19 has the wanted content")


def test_roads_are_thin_lines_and_buildings_stand_on_terrain():
    ground = first_ground("east", 256.0, lambda g: g.building.sum() > 500 and (g.label == K["forest"]).mean() > 0.05)
    label = ground.label
    road, built = label == K["road"], label == K["built_up"]
    assert road.mean() > 0.02 and ground.building.sum() > 100
    survive = ndimage.binary_erosion(road, np.ones((9, 9))).sum() / road.sum()  # roads < 18 m wide
    assert survive < 0.05
    wide = built | (label == K["forest"]) | (label == K["cropland"]) | (label == K["grassland"])
    assert ndimage.binary_erosion(wide, np.ones((9, 9))).sum() / wide.sum() > 0.3
    above = ground.height - ground.terrain
    assert np.median(above[ground.building]) > 3.0
    assert np.abs(above[road]).max() < 0.5
    assert not (ground.building & ~built).any()


def test_forest_has_a_canopy_and_water_is_flat():
    ground = first_ground(
        "west", 320.0, lambda g: (g.label == K["water"]).mean() > 0.02 and (g.label == K["forest"]).mean() > 0.2
    )
    forest, water = ground.label == K["forest"], ground.label == K["water"]
    assert forest.mean() > 0.2 and water.mean() > 0.01
    assert np.median((ground.height - ground.terrain)[forest]) > 10.0
    assert np.median(ground.height[water]) == pytest.approx(0.0, abs=0.5)


# --------------------------------------------------------------------------------------- spectra
def test_reference_spectra_have_the_physical_features():
    wl = WAVELENGTHS_UM
    spectra = class_spectra("north")
    at = {w: int(np.argmin(np.abs(wl - w))) for w in (0.45, 0.55, 0.67, 0.75, 0.85, 0.95)}
    forest, water, soil, road = spectra[K["forest"]], spectra[K["water"]], spectra[K["bare_soil"]], spectra[K["road"]]
    assert forest[at[0.55]] > forest[at[0.45]] and forest[at[0.55]] > forest[at[0.67]]  # green bump
    assert forest[at[0.85]] > 5 * forest[at[0.67]]  # red edge
    assert water[at[0.85]] < 0.02 and water[at[0.85]] < water[at[0.55]] / 3
    assert np.all(np.diff(soil) > 0)  # soils rise
    assert np.ptp(road) < 0.05 and road.mean() < spectra[K["built_up"]].mean()  # flat, darker


def test_rendered_products_show_the_spectral_features():
    view = {s: [] for s in ("gf2", "ohs")}
    labels = {s: [] for s in ("gf2", "ohs")}
    for seed in range(3):
        rendering = render_scene(seed, "north", ("gf2", "ohs"), extent_m=320.0)
        for s in view:
            view[s].append(rendering[s].image.astype(np.float64))
            labels[s].append(rendering[s].label)
    gf2, gl = np.concatenate(view["gf2"], axis=2), np.concatenate(labels["gf2"], axis=1)
    nir, red = gf2[band("gf2", 0.83)], gf2[band("gf2", 0.665)]
    veg = np.isin(gl, VEGETATION)
    water = ndimage.binary_erosion(gl == K["water"], np.ones((3, 3)))  # pure water, no shore mixing
    assert veg.sum() > 500 and water.sum() > 20
    assert nir[veg].mean() / red[veg].mean() > 2.0
    assert nir[water].mean() < 0.25 * nir[veg].mean() and nir[water].mean() < red[water].mean()

    ohs, ol = np.concatenate(view["ohs"], axis=2), np.concatenate(labels["ohs"], axis=1)
    oveg = ndimage.binary_erosion(np.isin(ol, VEGETATION), np.ones((3, 3)))
    red_edge = ohs[band("ohs", 0.75)][oveg].mean() / ohs[band("ohs", 0.68)][oveg].mean()
    assert red_edge > 3.0, f"OHS vegetation 0.75/0.68 µm ratio {red_edge:.2f}"
    assert 0.1 < ohs[band("ohs", 0.85)][oveg].mean() / 10000 < 0.6  # reflectance x 10^4

    south = render_scene(11, "south", ("ohs",), extent_m=640.0)["ohs"]
    soil = ndimage.binary_erosion(south.label == K["bare_soil"], np.ones((3, 3)))
    assert soil.sum() > 20
    spectrum = south.image[:, soil].astype(np.float64).mean(axis=1)
    waves = np.array(get_sensor("ohs").wavelengths_um)
    assert np.corrcoef(waves, spectrum)[0, 1] > 0.9 and spectrum[-1] > 1.5 * spectrum[0]


# ------------------------------------------------------------------------------ sensor differences
def test_srf_matrix_follows_centre_and_fwhm():
    wl = np.linspace(0.4, 1.0, 6001)
    for name, model in SENSOR_MODELS.items():
        srf = srf_matrix(model.sensor.wavelengths_um, model.fwhm_um, wl)
        np.testing.assert_allclose(srf.sum(axis=1), 1.0, rtol=1e-9)
        for row, centre, fwhm in zip(srf, model.sensor.wavelengths_um, model.fwhm_um):
            assert wl[np.argmax(row)] == pytest.approx(centre, abs=1e-4), name
            half = row[np.argmin(np.abs(wl - (centre + fwhm / 2)))] / row.max()
            assert half == pytest.approx(0.5, abs=0.01), name


def test_band_values_follow_the_spectral_responses():
    """Same ground, same grid, no radiometry: each sensor's band equals the OHS spectrum weighted
    by ITS OWN response much better than by another sensor's response of the same colour."""
    rendering = render_scene(5, "north", ("gf2", "planetscope", "sentinel2", "ohs"), extent_m=256.0, gsd_m=4.0,
                             radiometry="ideal")  # fmt: skip
    ohs = rendering["ohs"].image.reshape(32, -1).astype(np.float64)
    ohs_waves = get_sensor("ohs").wavelengths_um

    def synthesised(sensor: str, b: int) -> np.ndarray:
        model = get_sensor_model(sensor)
        return srf_matrix([model.sensor.wavelengths_um[b]], [model.fwhm_um[b]], np.array(ohs_waves))[0] @ ohs

    for b in (0, 1, 2):  # NIR, R, G of the three NIR,R,G,B sensors
        for truth in ("gf2", "planetscope", "sentinel2"):
            values = rendering[truth].image[b].ravel()
            errors = {s: np.abs(synthesised(s, b) - values).mean() / values.mean() for s in FOUR_BAND}
            assert min(errors, key=errors.get) == truth, (b, truth, errors)
    # PlanetScope's red (0.63 µm, 80 nm) sits beside the chlorophyll well that Sentinel-2's narrow B4 hits
    veg = np.isin(rendering["gf2"].label, VEGETATION)
    assert rendering["planetscope"].image[1][veg].mean() > 1.1 * rendering["sentinel2"].image[1][veg].mean()


def test_same_scene_by_two_sensors_correlates_by_band_but_differs_in_values():
    rendering = render_scene(2, "north", ("gf2", "planetscope"), extent_m=256.0, gsd_m=4.0)
    g = rendering["gf2"].image.reshape(4, -1).astype(np.float64)
    p = rendering["planetscope"].image.reshape(4, -1).astype(np.float64)
    corr = np.corrcoef(np.concatenate([g, p]))[:4, 4:]
    assert corr[0, 0] > 0.95 and corr[1, 1] > 0.6
    assert corr[0, 0] > abs(corr[0, 1]) + 0.5 and corr[1, 1] > abs(corr[1, 0]) + 0.3
    assert np.all(np.abs(g - p).mean(axis=1) > 3.0)  # gain, offset, haze and SRF differ


def test_sensor_pixels_are_box_averages_of_the_ground():
    """The 4 m product of a scene is the 4/3 m product averaged over 3x3 blocks (mixed pixels)."""
    scene = make_scene(3, "east", 256.0)
    coarse = observe(scene, "gf2", gsd_m=4.0, oversample=3, radiometry="ideal")
    fine = observe(scene, "gf2", gsd_m=4.0 / 3, size=192, oversample=1, radiometry="ideal")
    blocks = fine.image.reshape(4, 64, 3, 64, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(coarse.image, blocks, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(coarse.height, fine.height.reshape(64, 3, 64, 3).mean(axis=(1, 3)), rtol=1e-4, atol=1e-4)
    mixed = np.abs(coarse.image[0] - fine.image[0, 1::3, 1::3])  # vs. sampling the block centres
    assert np.percentile(mixed, 99) > 0.01
    votes = np.stack([(fine.label.reshape(64, 3, 64, 3) == k).sum(axis=(1, 3)) for k in range(len(CLASSES))])
    assert np.all(votes[coarse.label.astype(int), np.arange(64)[:, None], np.arange(64)] == votes.max(axis=0))


def test_coarser_gsd_is_blurrier():
    def energy(a: np.ndarray) -> float:
        gy, gx = np.gradient(a.astype(np.float64))
        return float((gx**2 + gy**2).mean())

    native = render_scene(1, "north", ("gf2", "sentinel2"), extent_m=320.0, radiometry="ideal")
    control = render_scene(1, "north", ("sentinel2",), extent_m=320.0, gsd_m=4.0, radiometry="ideal")
    assert native["gf2"].image.shape[1:] == (80, 80) and native["sentinel2"].image.shape[1:] == (32, 32)
    gf2 = energy(native["gf2"].image[0])
    sentinel_up = energy(ndimage.zoom(native["sentinel2"].image[0], 2.5, order=1))
    assert sentinel_up < 0.6 * gf2
    assert energy(control["sentinel2"].image[0]) == pytest.approx(gf2, rel=0.3)  # GSD, not bands, blurs


# --------------------------------------------------------------------------------------- regions
def test_regions_differ_in_cover_and_vegetation():
    fractions, ndvi, forest_nir = {}, {}, {}
    for region in ("north", "south"):
        counts, values, forest = np.zeros(len(CLASSES)), [], []
        for seed in range(6):
            view = render_scene(seed, region, ("gf2",), extent_m=256.0, radiometry="ideal")["gf2"]
            counts += np.bincount(view.label.ravel(), minlength=len(CLASSES))
            nir, red = view.image[band("gf2", 0.83)], view.image[band("gf2", 0.665)]
            values.append(((nir - red) / (nir + red))[np.isin(view.label, VEGETATION)])
            forest.append(nir[view.label == K["forest"]])
        fractions[region] = counts / counts.sum()
        ndvi[region] = float(np.concatenate(values).mean())
        forest_nir[region] = float(np.concatenate(forest).mean())
    assert fractions["north"][K["forest"]] > fractions["south"][K["forest"]] + 0.1
    assert fractions["south"][K["bare_soil"]] > fractions["north"][K["bare_soil"]] + 0.1
    assert ndvi["north"] > ndvi["south"] + 0.2  # summer crops and grass vs dry season
    assert forest_nir["north"] > 1.15 * forest_nir["south"]  # vigour: a higher NIR plateau


def test_rgb_for_height_picks_colour_bands():
    view = render_scene(0, "north", ("gf2", "ohs"), extent_m=256.0)
    rgb = rgb_for_height(view["gf2"].image, "gf2", stretch=False)
    np.testing.assert_allclose(rgb, view["gf2"].image[[1, 2, 3]] / 255.0, rtol=1e-6)
    stretched = rgb_for_height(view["ohs"].image, "ohs")
    assert stretched.shape == (3,) + view["ohs"].image.shape[1:] and stretched.dtype == np.float32
    assert stretched.min() >= 0.0 and stretched.max() <= 1.0 and stretched.std() > 0.1
    with pytest.raises(ValueError, match="bands"):
        rgb_for_height(view["ohs"].image, "gf2")
