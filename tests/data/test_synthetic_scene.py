"""A large SYNTHETIC scene rendered window by window is the same ground as the scene rendered whole,
and ``write_scene`` writes it as georeferenced GeoTIFFs (image + ground truth), cached."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio

from spectralmoe.bands import get_sensor
from spectralmoe.data.synthetic import CLASSES, PALETTE, make_scene, observe
from spectralmoe.data.synthetic.render import observe_window
from spectralmoe.data.synthetic.scene_raster import write_scene
from spectralmoe.outputs import parse_temporary, temporary_path


def _windows(scene, sensor: str, size: int, step: int, radiometry: str = "sensor"):
    vote = scene.crop_parcel_vote(scene.extent_m / size / 3, size * 3)
    return [
        [observe_window(scene, sensor, (r, min(size, r + step)), (c, min(size, c + step)), crop_parcels=vote,
                        size=size, radiometry=radiometry) for c in range(0, size, step)]  # fmt: skip
        for r in range(0, size, step)
    ]


def test_windows_tile_the_whole_scene_without_seams() -> None:
    """Labels and heights of windows (incl. ragged edge windows) equal the whole-grid rendering exactly;
    reflectance differs only by the per-window white noise (well under 2 % on average, no bias)."""
    scene = make_scene((9, 1, 4), "north", 4.0 * 100)
    whole = observe(scene, "gf2", size=100, radiometry="ideal")
    parts = _windows(scene, "gf2", 100, 40, radiometry="ideal")
    label = np.block([[p.label for p in row] for row in parts])
    height = np.block([[p.height for p in row] for row in parts])
    image = np.concatenate([np.concatenate([p.image for p in row], axis=2) for row in parts], axis=1)
    assert label.shape == whole.label.shape == (100, 100)
    np.testing.assert_array_equal(label, whole.label)
    np.testing.assert_array_equal(height, whole.height)
    relative = (image - whole.image) / np.abs(whole.image).clip(1e-3)
    assert np.abs(relative).mean() < 0.02 and abs(relative.mean()) < 0.002
    # a window is not a copy of its neighbour: content changes across the scene
    assert not np.array_equal(parts[0][0].label, parts[1][1].label[:40, :40])


def test_window_outside_the_grid_is_refused() -> None:
    scene = make_scene(1, "south", 3.0 * 32)
    vote = scene.crop_parcel_vote(1.0, 96)
    with pytest.raises(ValueError, match="not inside"):
        observe_window(scene, "planetscope", (0, 40), (0, 16), crop_parcels=vote, size=32)


def test_write_scene_writes_georeferenced_image_and_truth(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    files = write_scene(tmp_path / "scene", sensor="planetscope", region="south", size=96, seed=2, window=64,
                        progress=lambda done, total: calls.append((done, total)))  # fmt: skip
    assert not files.cached and calls[-1] == (4, 4)
    record = get_sensor("planetscope")
    with rasterio.open(files.image) as image, rasterio.open(files.label) as label:
        assert (image.count, image.height, image.width, image.dtypes[0]) == (record.num_bands, 96, 96, "uint8")
        assert image.crs.to_epsg() == 32650 and label.crs == image.crs and label.transform == image.transform
        assert image.transform.a == pytest.approx(3.0) and image.transform.e == pytest.approx(-3.0)
        assert list(image.descriptions) == list(record.band_names)
        truth = label.read(1)
        assert json.loads(label.tags()["CLASS_NAMES"]) == list(CLASSES)
        assert label.colormap(1)[0][:3] == PALETTE[0]
        pixels = image.read()
    assert truth.max() < len(CLASSES) and len(np.unique(truth)) >= 2
    assert pixels.std() > 5  # not blank
    assert not list(tmp_path.glob("scene/.*"))  # no temporary left
    again = write_scene(tmp_path / "scene", sensor="planetscope", region="south", size=96, seed=2, window=64)
    assert again.cached
    other = write_scene(tmp_path / "other", sensor="planetscope", region="south", size=96, seed=3, window=64)
    with rasterio.open(other.label) as label:
        assert not np.array_equal(label.read(1), truth)  # another seed, other ground


def test_parallel_world_generation_writes_the_same_files(tmp_path: Path) -> None:
    import hashlib

    from spectralmoe.data.synthetic import generate_world

    kwargs = dict(regions=("north", "south"), sensors=("gf2", "rgb"), tiles_per_domain=2, tile_size=32, seed=5)
    one = generate_world(tmp_path / "one", workers=1, **kwargs)
    two = generate_world(tmp_path / "two", workers=2, **kwargs)
    assert [t.image for t in one.tiles] == [t.image for t in two.tiles]
    assert one.options["domains"] == two.options["domains"]
    for folder in ("image", "label", "height"):
        files = sorted((tmp_path / "one" / folder).rglob("*.*"))
        assert len(files) == 8
        for path in files:
            twin = tmp_path / "two" / path.relative_to(tmp_path / "one")
            assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(twin.read_bytes()).digest(), path


def test_every_pixel_has_a_surface_type_inside_its_class() -> None:
    from spectralmoe.data.synthetic import SURFACE_CLASS, SURFACE_TYPES

    seen: set[int] = set()
    for region in ("north", "south", "east", "west"):
        for index in range(3):
            ground = make_scene((2, 7, index), region, 500.0).ground(2.0, 250)
            assert ground.surface is not None and ground.surface.dtype == np.uint8
            assert (ground.surface < len(SURFACE_TYPES)).all(), region  # none left unassigned (255)
            np.testing.assert_array_equal(np.asarray(SURFACE_CLASS)[ground.surface], ground.label)
            seen |= set(np.unique(ground.surface).tolist())
    assert len(seen) >= 15  # most types occur in a dozen scenes


def test_a_killed_render_leaves_named_temporaries_that_the_next_render_sweeps(tmp_path: Path) -> None:
    """A render killed outright (SIGKILL) leaves temporaries named as ``spectralmoe.outputs`` names them;
    the next render into that cache folder removes them and leaves a live process's alone."""
    folder = tmp_path / "scene"
    folder.mkdir()
    child = subprocess.Popen(["true"])
    child.wait()  # a pid that no longer runs
    live = temporary_path(folder / "image.tif")  # this process: alive
    dead = live.with_name(live.name.replace(f"-{os.getpid()}-", f"-{child.pid}-"))
    assert parse_temporary(dead) is not None and parse_temporary(dead).pid == child.pid
    dead.write_bytes(b"half a GeoTIFF")
    live.write_bytes(b"another run, still writing")
    write_scene(folder, sensor="planetscope", region="south", size=32, seed=2, window=32)
    assert not dead.exists() and live.exists()
