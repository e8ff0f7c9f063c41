"""One large SYNTHETIC scene as georeferenced GeoTIFFs: what a mapping job starts from.

The world's tiles (``world.py``) are small, independent scenes for training and testing. A mapping
team's input is different: one large product of a sensor over contiguous ground, to be turned into a
class map. ``write_scene`` draws one scene of ``size`` × ``size`` pixels at the sensor's GSD (e.g.
2048² PlanetScope-like pixels = 6.1 km of ground, with many fields, towns, roads and perhaps a river)
and writes it window by window (``render.observe_window``), so memory stays bounded by one strip of
windows whatever the size::

    OUT/image.tif     the sensor product: bands in the ``bands.py`` order, the sensor's dtype, band
                      descriptions = band names, CRS EPSG:32650, a north-up grid at the sensor's GSD
    OUT/label.tif     uint8 land-cover class ids (``CLASSES``) on the same grid (the ground truth),
                      255 = nodata (none here), the palette as colour table
    OUT/scene.json    how it was made (sensor, region, size, seed, GSD, generator version); a second
                      call with the same parameters finds it and returns at once

The scene is its own piece of ground, drawn from (seed, sensor, size) with a seed tuple no world tile
uses. Files are written under temporary names and renamed when both are complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from spectralmoe.bands import get_sensor
from spectralmoe.data.synthetic.landcover import CLASSES, PALETTE, make_scene, stable_hash
from spectralmoe.data.synthetic.regions import get_region
from spectralmoe.data.synthetic.render import observe_window
from spectralmoe.data.synthetic.sensors import get_sensor_model
from spectralmoe.data.synthetic.world import CRS, GENERATOR_VERSION
from spectralmoe.outputs import sweep_stale, temporary_path

__all__ = ["SCENE_FILES", "SceneFiles", "write_scene"]

SCENE_FILES = ("image.tif", "label.tif", "scene.json")
_NODATA_CLASS = 255
_SCENE_TAG = stable_hash("large-scene")  # a 4-element seed tuple: never equal to a tile's (seed, sensor, index)


@dataclass(frozen=True)
class SceneFiles:
    """Where ``write_scene`` put the scene and how it was made."""

    folder: Path
    image: Path
    label: Path
    sensor: str
    region: str
    size: int
    gsd_m: float
    seconds: float
    cached: bool

    @property
    def extent_km(self) -> float:
        return self.size * self.gsd_m / 1000.0


def _parameters(sensor: str, region: str, size: int, seed: int, oversample: int) -> dict[str, Any]:
    return {"generator": "spectralmoe.data.synthetic", "version": GENERATOR_VERSION, "kind": "large-scene",
            "sensor": sensor, "region": region, "size": int(size), "seed": int(seed), "oversample": int(oversample),
            "gsd_m": get_sensor_model(sensor).gsd_m, "crs": CRS}  # fmt: skip


def _cached(folder: Path, parameters: dict[str, Any]) -> bool:
    try:
        recorded = json.loads((folder / "scene.json").read_text())
    except (OSError, ValueError):
        return False
    return recorded.get("parameters") == parameters and all((folder / f).is_file() for f in SCENE_FILES)


def write_scene(
    out: str | os.PathLike[str],
    *,
    sensor: str = "planetscope",
    region: str = "south",
    size: int = 2048,
    seed: int = 0,
    window: int = 256,
    oversample: int = 3,
    progress: Callable[[int, int], None] | None = None,
) -> SceneFiles:
    """Render one ``size``² scene of ``region`` seen by ``sensor`` into ``out`` (see the module doc).

    Args:
        out: output folder (created; a complete scene with the same parameters is reused).
        sensor, region: a sensor with a rendering model (``SENSOR_MODELS``) and a region (``REGIONS``).
        size: width and height in pixels (at the sensor's GSD).
        seed: scene seed (>= 0).
        window: pixels per rendered window side (memory: about ``60·(window·oversample)²·size/window``
            bytes for one strip of windows).
        oversample: sub-samples per pixel and axis, as the world's tiles (3).
        progress: called with (windows done, windows in all) after every window.
    """
    import time

    import rasterio
    from rasterio.transform import Affine

    model = get_sensor_model(sensor)
    get_region(region)
    if size < 16 or window < 16 or seed < 0 or oversample < 1:
        raise ValueError(f"need size >= 16, window >= 16, seed >= 0, oversample >= 1; got {size}, {window}, {seed}, "
                         f"{oversample}")  # fmt: skip
    start = time.perf_counter()
    folder = Path(out)
    parameters = _parameters(sensor, region, size, seed, oversample)
    gsd = model.gsd_m
    files = SceneFiles(folder, folder / "image.tif", folder / "label.tif", sensor, region, size, gsd, 0.0, True)
    if _cached(folder, parameters):
        return files
    folder.mkdir(parents=True, exist_ok=True)
    record = get_sensor(sensor)
    scene = make_scene((seed, stable_hash(sensor), _SCENE_TAG, size), region, size * gsd)
    crop_parcels = scene.crop_parcel_vote(gsd, size)  # one vote per field over the whole scene, at pixel scale
    transform = Affine(gsd, 0.0, 300_000.0, 0.0, -gsd, 3_500_000.0)
    common = {"driver": "GTiff", "height": size, "width": size, "crs": CRS, "transform": transform, "tiled": True,
              "blockxsize": 256, "blockysize": 256, "compress": "deflate"}  # fmt: skip
    # temporaries named as spectralmoe.outputs names them (host, pid, token): two runs sharing a cache never
    # rename each other's files, and what a killed run left is swept here by the next one
    sweep_stale(folder)
    image_tmp, label_tmp, note_tmp = (temporary_path(folder / name) for name in SCENE_FILES)
    starts = list(range(0, size, window))
    total, done = len(starts) ** 2, 0
    try:
        with rasterio.Env(GDAL_PAM_ENABLED="NO"), \
                rasterio.open(image_tmp, "w", count=record.num_bands, dtype=model.dtype, photometric="minisblack",
                              interleave="band", **common) as image, \
                rasterio.open(label_tmp, "w", count=1, dtype="uint8", nodata=_NODATA_CLASS, **common) as label:  # fmt: skip
            for i, name in enumerate(record.band_names, start=1):
                image.set_band_description(i, name)
            image.update_tags(SYNTHETIC="true", sensor=sensor, region=region)
            label.update_tags(SYNTHETIC="true", CLASS_NAMES=json.dumps(list(CLASSES)))
            label.write_colormap(1, {k: (*PALETTE[k], 255) for k in range(len(CLASSES))})
            for r0 in starts:
                for c0 in starts:
                    rows, cols = (r0, min(size, r0 + window)), (c0, min(size, c0 + window))
                    view = observe_window(scene, sensor, rows, cols, crop_parcels=crop_parcels, size=size,
                                          oversample=oversample)  # fmt: skip
                    win = rasterio.windows.Window(c0, r0, cols[1] - c0, rows[1] - r0)
                    image.write(view.image, window=win)
                    label.write(view.label[None], window=win)
                    done += 1
                    if progress is not None:
                        progress(done, total)
        seconds = round(time.perf_counter() - start, 1)
        note = {"SYNTHETIC": True, "note": "synthetic scene generated by spectralmoe.data.synthetic; not real imagery",
                "parameters": parameters, "classes": list(CLASSES), "band_names": list(record.band_names),
                "extent_m": size * gsd, "seconds": seconds}  # fmt: skip
        os.replace(image_tmp, files.image)
        os.replace(label_tmp, files.label)
        note_tmp.write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")
        os.replace(note_tmp, folder / "scene.json")
    except BaseException:
        for leftover in (image_tmp, label_tmp, note_tmp):
            leftover.unlink(missing_ok=True)
        raise
    return SceneFiles(folder, files.image, files.label, sensor, region, size, gsd, seconds, False)
