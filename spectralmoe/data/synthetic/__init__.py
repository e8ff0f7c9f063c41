"""A SYNTHETIC multi-sensor, multi-region world for exercising the pipeline (no download needed).

No real imagery or weights can be fetched on our machines, so the package draws its own small
world, clearly labelled synthetic everywhere (``splits.json`` options, ``SYNTHETIC.txt``), to run
the real pipeline end to end and compare methods at small scale. Numbers measured on it say
nothing about real benchmarks.

* ``landcover`` — scenes: 7 classes (``CLASSES``) with field parcels, towns with streets and
  buildings, roads, lakes and rivers, forests; heights (terrain, buildings, trees).
* ``spectra`` — endmember reflectance spectra 0.40–1.00 µm (vegetation red edge, water, soils,
  man-made), per region and season; every pixel is a mixture of them.
* ``regions`` — what differs between places (class mix, season, soils, sun).
* ``sensors`` — band widths (FWHM), GSD and radiometry of the built-in sensors of ``bands.py``.
* ``render`` — spectral response integration, shading, GSD, haze, noise, quantisation
  (``render_scene``, ``observe``).
* ``world`` — the prepared-benchmark folder (``generate_world``), its DG task
  (``synthetic_task``), statistics and height maps for depth pretraining.

Typical use::

    from spectralmoe.data.synthetic import generate_world, synthetic_task
    from spectralmoe.data.datamodule import DGDataModule

    index = generate_world("data/synthetic", tiles_per_domain=24)      # ~seconds, cached
    task = synthetic_task("data/synthetic")                           # gf2/north -> 4-band targets
    dm = DGDataModule("data/synthetic", task, num_workers=0)
"""

from spectralmoe.data.synthetic.landcover import CLASSES, PALETTE, SURFACE_CLASS, SURFACE_TYPES, Ground, Scene, make_scene
from spectralmoe.data.synthetic.regions import REGIONS, Region, get_region
from spectralmoe.data.synthetic.render import SceneRendering, SensorView, observe, render_scene
from spectralmoe.data.synthetic.sensors import (
    SENSOR_MODELS,
    SensorModel,
    band_compatible,
    compatible_sensor_groups,
    get_sensor_model,
    srf_matrix,
)
from spectralmoe.data.synthetic.spectra import ENDMEMBERS, WAVELENGTHS_UM, class_spectra, endmember_spectra
from spectralmoe.data.synthetic.world import (
    BENCHMARK,
    DEFAULT_REGIONS,
    DEFAULT_SENSORS,
    HEIGHT_DIR,
    generate_world,
    height_path,
    read_height,
    render_tile,
    tile_scene,
    rgb_for_height,
    synthetic_task,
    target_groups,
    world_statistics,
)

__all__ = [
    "BENCHMARK", "CLASSES", "PALETTE", "DEFAULT_REGIONS", "DEFAULT_SENSORS", "ENDMEMBERS", "HEIGHT_DIR", "REGIONS",
    "SENSOR_MODELS", "SURFACE_CLASS", "SURFACE_TYPES", "WAVELENGTHS_UM", "Ground", "Region", "Scene", "SceneRendering", "SensorModel", "SensorView",
    "band_compatible", "class_spectra", "compatible_sensor_groups", "endmember_spectra", "generate_world",
    "get_region", "get_sensor_model", "height_path", "make_scene", "observe", "read_height", "render_scene",
    "render_tile", "rgb_for_height", "tile_scene", "srf_matrix", "synthetic_task", "target_groups",
    "world_statistics",
]  # fmt: skip
