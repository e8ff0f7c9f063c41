"""Rendering a SYNTHETIC scene as a sensor product: spectra → bands → light → GSD → radiometry.

For one sensor (``observe``):

1. sample the scene on a fine grid, ``oversample`` times finer than the sensor's GSD: class
   labels, surface heights, and per pixel the fractions of the endmember spectra;
2. illumination: Lambertian shading of the surface-height map (DSM) by the scene's sun, with a
   diffuse sky fraction that grows towards the blue (shadowed slopes turn bluish); no cast
   shadows;
3. GSD: box-average ``oversample``×``oversample`` blocks into sensor pixels (mixed pixels for
   thin roads, blurrier images for coarse sensors); labels by majority of the block (ties go to
   the block's centre sample); heights by block mean;
4. spectral response: each band is the pixel's endmember mixture times the endmember spectra
   integrated through the band's Gaussian response (``[M, L] @ [L, C]`` once per scene). Mixing,
   shading and averaging are all linear, so steps 2–4 commute and the M abundance maps are
   averaged before they become C bands (32 bands cost little more than 4);
5. atmosphere and product: transmission and additive haze (path reflectance ∝ λ^-α, stronger in
   the blue, thin patches from a smooth field), shot + read noise, per-acquisition gain/offset,
   quantisation to the product's dtype and value scale (8-bit 0–255; OHS int16 reflectance×10⁴).

``radiometry="ideal"`` stops after step 4 and returns float32 band reflectance — for comparing
what band definitions alone do, without gain, haze or noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import numpy as np

from spectralmoe.data.synthetic.landcover import CLASSES, Ground, NoiseField, Scene, make_scene, stable_hash
from spectralmoe.data.synthetic.regions import Region
from spectralmoe.data.synthetic.sensors import SensorModel, get_sensor_model
from spectralmoe.data.synthetic.spectra import WAVELENGTHS_UM

__all__ = ["Acquisition", "SensorView", "SceneRendering", "observe", "observe_window", "render_scene", "block_mean",
           "block_majority"]  # fmt: skip

Radiometry = Literal["sensor", "ideal"]


@dataclass(frozen=True)
class Acquisition:
    """Conditions of one image: sun, diffuse sky fraction at 0.55 µm, haze (path reflectance at
    0.55 µm and its Ångström exponent), and the product's gain/offset for this acquisition."""

    sun_elevation_deg: float
    sun_azimuth_deg: float
    diffuse: float
    haze: float
    angstrom: float
    gain: tuple[float, ...]
    offset: tuple[float, ...]


@dataclass(frozen=True)
class SensorView:
    """One sensor's product of a scene: ``image`` ``[C, H, W]`` in the sensor's dtype (float32
    reflectance when ``radiometry="ideal"``), in the ``bands.py`` band order; ``label`` uint8
    ``[H, W]``; ``height`` float32 surface height (m) at the same GSD."""

    sensor: str
    image: np.ndarray
    label: np.ndarray
    height: np.ndarray
    gsd_m: float
    acquisition: Acquisition


@dataclass(frozen=True)
class SceneRendering:
    """A scene and its views by several sensors (``views[sensor]`` or ``rendering[sensor]``)."""

    scene: Scene
    views: dict[str, SensorView]

    def __getitem__(self, sensor: str) -> SensorView:
        return self.views[sensor]


def block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor``×``factor`` blocks of the last two axes (sizes must be multiples);
    summed as ``factor``² strided slices, which numpy does much faster than a 6-D mean."""
    if factor == 1:
        return array
    total = sum(array[..., i::factor, j::factor] for i in range(factor) for j in range(factor))
    return total / np.float32(factor * factor)


def block_majority(label: np.ndarray, factor: int, num_classes: int = len(CLASSES)) -> np.ndarray:
    """Most frequent class of each ``factor``×``factor`` block; a tie goes to the class of the
    block's centre sample (so no class is favoured by its index)."""
    if factor == 1:
        return label
    h, w = label.shape[0] // factor, label.shape[1] // factor
    block = (np.arange(h)[:, None] * w + np.arange(w)[None, :]).repeat(factor, axis=0).repeat(factor, axis=1)
    counts = np.bincount((block * num_classes + label).ravel(), minlength=h * w * num_classes)
    counts = counts.reshape(h, w, num_classes).astype(np.float32)
    centre = label[factor // 2 :: factor, factor // 2 :: factor].astype(np.int64)
    counts[np.arange(h)[:, None], np.arange(w)[None, :], centre] += 0.5
    return np.argmax(counts, axis=2).astype(np.uint8)


def _draw_acquisition(scene: Scene, model: SensorModel, rng: np.random.Generator) -> Acquisition:
    bands = model.sensor.num_bands
    calibrated = model.dtype != "uint8"  # reflectance products: small calibration error only
    common = rng.uniform(0.97, 1.03) if calibrated else rng.uniform(0.93, 1.07)
    gain = np.asarray(model.gain) * common * rng.uniform(0.985, 1.015, bands)
    shift = np.zeros(bands) if calibrated else rng.uniform(-0.012, 0.012, bands)
    return Acquisition(
        sun_elevation_deg=scene.sun_elevation_deg,
        sun_azimuth_deg=scene.sun_azimuth_deg,
        diffuse=float(rng.uniform(0.12, 0.25)),
        haze=float(rng.uniform(*model.haze_range)),
        angstrom=float(rng.uniform(1.0, 2.5)),
        gain=tuple(float(g) for g in gain),
        offset=tuple(float(o) for o in np.asarray(model.offset) + shift),
    )


def _cos_incidence(height: np.ndarray, gsd: float, elevation_deg: float, azimuth_deg: float) -> np.ndarray:
    """Cosine of the sun's incidence angle on the surface of ``height`` (x east, rows south)."""
    dz_dy, dz_dx = np.gradient(height, gsd)
    dz_north = -dz_dy
    e, a = math.radians(elevation_deg), math.radians(azimuth_deg)
    sun_east, sun_north, sun_up = math.cos(e) * math.sin(a), math.cos(e) * math.cos(a), math.sin(e)
    return (sun_up - dz_dx * sun_east - dz_north * sun_north) / np.sqrt(1.0 + dz_dx**2 + dz_dy**2)


def observe(
    scene: Scene,
    sensor: str | SensorModel,
    *,
    gsd_m: float | None = None,
    size: int | None = None,
    oversample: int = 3,
    radiometry: Radiometry = "sensor",
) -> SensorView:
    """Render ``scene`` as seen by ``sensor`` at ``gsd_m`` (default: the sensor's) on a ``size``²
    grid (default: the scene's extent / GSD). Deterministic for a given scene and sensor."""
    model = get_sensor_model(sensor)
    gsd, n = _check_grid(scene, model, gsd_m, size, oversample, radiometry)
    # The acquisition (sun, haze, gain) belongs to (scene, sensor), whatever the grid; noise to the grid.
    rng = np.random.default_rng([*scene.entropy, stable_hash(model.name), 0xAC9])
    acq = _draw_acquisition(scene, model, rng)
    haze_patches = NoiseField.draw(rng, scene.extent_m, (250.0,))
    noise_rng = np.random.default_rng([*scene.entropy, stable_hash(model.name), 0x5E5, n, int(round(gsd * 1e6))])
    fine = scene.ground(gsd / oversample, n * oversample)
    xs = scene.pixel_centres(gsd, n)
    return _product(scene, model, acq, haze_patches, noise_rng, fine, fine.height, xs, xs, gsd, oversample, radiometry)


def _check_grid(
    scene: Scene, model: SensorModel, gsd_m: float | None, size: int | None, oversample: int, radiometry: str
) -> tuple[float, int]:
    if oversample < 1:
        raise ValueError(f"oversample must be >= 1, got {oversample}")
    if radiometry not in ("sensor", "ideal"):
        raise ValueError(f"radiometry must be 'sensor' or 'ideal', got {radiometry!r}")
    gsd = float(model.gsd_m if gsd_m is None else gsd_m)
    n = int(round(scene.extent_m / gsd)) if size is None else int(size)
    if n < 1:
        raise ValueError(f"scene of {scene.extent_m} m at {gsd} m GSD has no pixel")
    return gsd, n


def observe_window(
    scene: Scene,
    sensor: str | SensorModel,
    rows: tuple[int, int],
    cols: tuple[int, int],
    *,
    crop_parcels: np.ndarray,
    gsd_m: float | None = None,
    size: int | None = None,
    oversample: int = 3,
    radiometry: Radiometry = "sensor",
) -> SensorView:
    """Rows ``rows[0]:rows[1]`` × columns ``cols[0]:cols[1]`` of ``observe(scene, sensor, …)``'s
    ``size``² grid, rendered alone: a large scene is written window by window in bounded memory.

    The acquisition (sun, haze, gain) is the scene's, the same in every window; the fine grid gets a
    one-sample halo so that terrain shading across window borders is computed as on the whole grid;
    ``crop_parcels`` is the scene's cropland vote (``Scene.crop_parcel_vote``), so fields do not change
    class at window borders. Sensor noise and the sub-pixel brightness noise are drawn per window:
    a window's pixels are statistically, not bitwise, those of the whole-grid rendering.
    """
    model = get_sensor_model(sensor)
    gsd, n = _check_grid(scene, model, gsd_m, size, oversample, radiometry)
    (r0, r1), (c0, c1) = rows, cols
    if not (0 <= r0 < r1 <= n and 0 <= c0 < c1 <= n):
        raise ValueError(f"window rows={rows}, cols={cols} is not inside the {n}x{n} grid")
    rng = np.random.default_rng([*scene.entropy, stable_hash(model.name), 0xAC9])
    acq = _draw_acquisition(scene, model, rng)
    haze_patches = NoiseField.draw(rng, scene.extent_m, (250.0,))
    noise_rng = np.random.default_rng([*scene.entropy, stable_hash(model.name), 0x5E5, n, int(round(gsd * 1e6)),
                                       r0, c0, r1, c1])  # fmt: skip
    fine_n = n * oversample
    halo_rows = (max(0, r0 * oversample - 1), min(fine_n, r1 * oversample + 1))
    halo_cols = (max(0, c0 * oversample - 1), min(fine_n, c1 * oversample + 1))
    haloed = scene.ground_window(gsd / oversample, halo_rows, halo_cols, crop_parcels)
    top, left = r0 * oversample - halo_rows[0], c0 * oversample - halo_cols[0]
    inner = (slice(top, top + (r1 - r0) * oversample), slice(left, left + (c1 - c0) * oversample))
    fine = Ground(haloed.gsd_m, haloed.label[inner], haloed.height[inner], haloed.terrain[inner],
                  haloed.building[inner], haloed.abundances[(slice(None), *inner)],
                  None if haloed.surface is None else haloed.surface[inner])  # fmt: skip
    shading_height = haloed.height  # gradient on the haloed grid, cropped after
    xs = scene.pixel_centres(gsd, c1)[c0:]
    ys = scene.pixel_centres(gsd, r1)[r0:]
    return _product(scene, model, acq, haze_patches, noise_rng, fine, shading_height, xs, ys, gsd, oversample,
                    radiometry, crop=inner)  # fmt: skip


def _product(
    scene: Scene, model: SensorModel, acq: Acquisition, haze_patches: NoiseField, noise_rng: np.random.Generator,
    fine: Ground, shading_height: np.ndarray, xs: np.ndarray, ys: np.ndarray, gsd: float, oversample: int,
    radiometry: str, crop: tuple[slice, slice] | None = None,
) -> SensorView:  # fmt: skip
    """Steps 2–5 of the module docstring on a sampled fine grid (``crop``: the part of the shading
    grid ``shading_height`` that ``fine`` covers)."""

    srf = model.srf().astype(np.float64)  # [C, L]
    band_endmembers = (scene.endmembers @ srf.T).astype(np.float32)  # [M, C]
    wl = WAVELENGTHS_UM
    diffuse = (srf @ np.clip(acq.diffuse * (wl / 0.55) ** -2.0, 0.03, 0.8)).astype(np.float32)
    direct = 1.0 - diffuse
    cos_i = _cos_incidence(shading_height, fine.gsd_m, acq.sun_elevation_deg, acq.sun_azimuth_deg)
    if crop is not None:
        cos_i = cos_i[crop]
    flat = direct * math.sin(math.radians(acq.sun_elevation_deg)) + diffuse
    # band b = Σ_m E[m, b]·A_m·(direct_b·cos⁺ + diffuse_b)/flat_b. Everything is linear in A, so the
    # M abundance maps (lit and unlit) are box-averaged first and mixed into bands at the sensor's
    # GSD: the cost no longer grows with the band count at the fine grid.
    # einsum, not BLAS: no thread pool on small arrays, and the same summation order everywhere.
    lit = block_mean(fine.abundances * np.maximum(cos_i, 0.0).astype(np.float32)[None], oversample)
    ambient = block_mean(fine.abundances, oversample)
    surface = (direct / flat)[:, None, None] * np.einsum("mc,mhw->chw", band_endmembers, lit) + (
        diffuse / flat
    )[:, None, None] * np.einsum("mc,mhw->chw", band_endmembers, ambient)
    surface = surface.astype(np.float32)
    label = block_majority(fine.label, oversample)
    height = block_mean(fine.height, oversample).astype(np.float32)
    if radiometry == "ideal":
        return SensorView(model.name, surface, label, height, gsd, acq)

    path = acq.haze * (wl / 0.55) ** -acq.angstrom
    path_b = (srf @ path).astype(np.float32)
    depth_b = (srf @ (8.0 * path)).astype(np.float32)
    patches = np.clip(1.0 + 0.35 * haze_patches.sample(xs, ys), 0.3, None)
    apparent = np.exp(-depth_b[:, None, None] * patches[None]) * surface + path_b[:, None, None] * patches[None]
    sigma = np.sqrt(model.shot_noise * np.maximum(apparent, 0.0) + model.read_noise**2)
    apparent = apparent + sigma * noise_rng.standard_normal(apparent.shape, dtype=np.float32)
    scale = model.sensor.value_scale
    gain = np.asarray(acq.gain, dtype=np.float32)[:, None, None]
    offset = np.asarray(acq.offset, dtype=np.float32)[:, None, None]
    values = np.rint(scale * (gain * apparent + offset))
    image = np.clip(values, 0, model.max_value).astype(model.dtype)
    return SensorView(model.name, image, label, height, gsd, acq)


def render_scene(
    seed: int | Sequence[int] = 0,
    region: str | Region = "north",
    sensors: Sequence[str] = ("gf2",),
    *,
    extent_m: float = 256.0,
    gsd_m: float | Mapping[str, float] | None = None,
    oversample: int = 3,
    radiometry: Radiometry = "sensor",
) -> SceneRendering:
    """Draw one scene of ``region`` (``extent_m`` wide) and render it by each of ``sensors``.

    ``gsd_m``: ``None`` = each sensor's own GSD (so a 10 m sensor gets fewer, blurrier pixels of
    the same ground), one number = every sensor on that grid (to compare band definitions pixel
    by pixel), or a mapping sensor → GSD. The scene is the same for all sensors; each sensor gets
    its own acquisition (gain, haze, noise).
    """
    scene = make_scene(seed, region, extent_m)
    views = {}
    for name in sensors:
        gsd = gsd_m.get(name) if isinstance(gsd_m, Mapping) else gsd_m
        views[name] = observe(scene, name, gsd_m=gsd, oversample=oversample, radiometry=radiometry)
    return SceneRendering(scene, views)
