"""Reflectance spectra of the SYNTHETIC world, 0.40–1.00 µm on a 5 nm grid.

Every pixel is a linear mixture of a few endmember spectra (water, vegetation in three states,
two soils, four man-made materials). Mixing is linear in reflectance, so a sensor band of a
pixel is the same mixture of the endmembers' band values: rendering integrates the M endmember
curves through the sensor's response once per scene (an ``[M, L] @ [L, C]`` product) and never
handles a per-pixel spectrum. That is what keeps 32-band rendering as cheap as 4-band.

The curves are parametric shapes with the features that decide what sensors see:

* vegetation — green bump at ~0.55 µm, chlorophyll absorption at ~0.67 µm, a steep red edge
  (sigmoid, inflection 0.705–0.725 µm by region/vigour), an NIR plateau of 0.3–0.5 with a slight
  fall and the 0.97 µm water dip; stressed vegetation has a lower plateau and an earlier edge,
  dry (senescent) vegetation has no red absorption and rises smoothly;
* water — low everywhere, decaying from blue to ~0 beyond 0.72 µm (turbid water is brighter in
  green–red with a weak 0.81 µm bump, still low in NIR);
* soils — rising monotonically with wavelength (wet soil darker and flatter);
* man-made — nearly flat: concrete bright, asphalt dark, dark metal roofs; red tile roofs rise
  at ~0.59 µm like iron-oxide soils.

Values are plausible, not measured library spectra.
"""

from __future__ import annotations

import numpy as np

from spectralmoe.data.synthetic.regions import Region, get_region

__all__ = [
    "WAVELENGTHS_UM",
    "ENDMEMBERS",
    "endmember_spectra",
    "class_abundances",
    "class_spectra",
    "vegetation_spectrum",
]

WAVELENGTHS_UM: np.ndarray = np.round(np.arange(0.400, 1.0001, 0.005), 3)
"""The fine wavelength grid (µm), 121 samples every 5 nm from 0.400 to 1.000."""

ENDMEMBERS: tuple[str, ...] = (
    "water_clear", "water_turbid", "veg_vigorous", "veg_stressed", "veg_dry", "soil_dry", "soil_wet",
    "concrete", "asphalt", "roof_tile", "roof_metal",
)  # fmt: skip
"""Names of the endmember spectra, in the order of ``endmember_spectra``'s rows."""

E = {name: i for i, name in enumerate(ENDMEMBERS)}


def _gauss(wl: np.ndarray, centre: float, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((wl - centre) / sigma) ** 2)


def _sigmoid(wl: np.ndarray, centre: float, width: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(wl - centre) / width))


def vegetation_spectrum(
    wl: np.ndarray, *, plateau: float, red_edge_um: float, chlorophyll: float = 1.0
) -> np.ndarray:
    """Green vegetation: visible part (green bump, red absorption scaled by ``chlorophyll``)
    joined to a slowly falling NIR ``plateau`` by a red-edge sigmoid centred at ``red_edge_um``."""
    visible = (
        0.035 + 0.05 * chlorophyll * _gauss(wl, 0.55, 0.035) - 0.022 * chlorophyll * _gauss(wl, 0.675, 0.022)
        + 0.012 * (1.0 - chlorophyll)
    )  # fmt: skip
    nir = plateau * (1.0 - 0.08 * (wl - 0.8) / 0.2) - 0.04 * plateau * _gauss(wl, 0.97, 0.02)
    return visible + (nir - visible) * _sigmoid(wl, red_edge_um, 0.011)


def endmember_spectra(
    region: str | Region = "north", rng: np.random.Generator | None = None, wavelengths: np.ndarray | None = None
) -> np.ndarray:
    """``[M, L]`` reflectance of the endmembers (``ENDMEMBERS`` order) in ``region``'s season.

    ``rng`` jitters each curve a little (per scene: no two fields of the same crop are the same
    green); ``None`` gives the region's typical curves.
    """
    region = get_region(region)
    wl = WAVELENGTHS_UM if wavelengths is None else np.asarray(wavelengths, dtype=np.float64)

    def jitter(scale: float) -> float:
        return 0.0 if rng is None else float(rng.uniform(-scale, scale))

    vig = region.vigour * (1.0 + jitter(0.06))
    edge = region.red_edge_um + jitter(0.003)
    soil = region.soil_brightness * (1.0 + jitter(0.08))
    x = (wl - 0.4) / 0.6  # 0 at 0.40 µm, 1 at 1.00 µm
    rows = {
        "water_clear": 0.004 + 0.055 * np.exp(-np.clip(wl - 0.45, 0.0, None) / 0.13) * (1.0 - _sigmoid(wl, 0.72, 0.02)),
        "water_turbid": (0.03 + 0.055 * _gauss(wl, 0.58, 0.07)) * (1.0 - 0.8 * _sigmoid(wl, 0.71, 0.02))
        + 0.012 * _gauss(wl, 0.81, 0.025),
        "veg_vigorous": vegetation_spectrum(wl, plateau=vig, red_edge_um=edge, chlorophyll=1.0),
        "veg_stressed": vegetation_spectrum(wl, plateau=0.68 * vig, red_edge_um=edge - 0.010, chlorophyll=0.6),
        "veg_dry": 0.06 + 0.20 * _sigmoid(wl, 0.62, 0.05) + 0.08 * np.clip(wl - 0.7, 0.0, None),
        "soil_dry": soil * (0.09 + 0.25 * x**0.75 - 0.012 * _gauss(wl, 0.50, 0.04)),
        "soil_wet": 0.6 * soil * (0.07 + 0.17 * x**0.9),
        "concrete": 0.25 + 0.05 * x + jitter(0.03),
        "asphalt": 0.075 + 0.025 * x + jitter(0.01),
        "roof_tile": 0.07 + 0.23 * _sigmoid(wl, 0.59, 0.025) + 0.04 * x,
        "roof_metal": 0.11 + 0.01 * x + jitter(0.015),
    }
    return np.clip(np.stack([rows[name] for name in ENDMEMBERS]), 0.001, 0.95)


def class_abundances(region: str | Region = "north") -> np.ndarray:
    """``[K, M]`` typical endmember fractions of each land-cover class (``landcover.CLASSES``
    order) in ``region`` — the mean of what ``landcover`` draws per pixel, for reference spectra."""
    region = get_region(region)
    dry = 1.0 / (1.0 + np.exp(-region.dryness))
    wet = 1.0 / (1.0 + np.exp(-region.soil_moisture))
    g = float(np.mean(region.growth))
    t = region.turbidity
    roof = np.array(region.roof_mix) / np.sum(region.roof_mix)
    table = np.zeros((7, len(ENDMEMBERS)))
    table[0, [E["water_clear"], E["water_turbid"]]] = (1 - t, t)
    table[1, [E["veg_vigorous"], E["veg_stressed"], E["veg_dry"], E["soil_wet"]]] = (0.7, 0.22, 0.03, 0.05)
    table[2, [E["veg_vigorous"], E["veg_stressed"], E["soil_wet"], E["soil_dry"]]] = (
        0.6 * g, 0.4 * g, (1 - g) * wet, (1 - g) * (1 - wet))  # fmt: skip
    table[3, [E["veg_stressed"], E["veg_vigorous"], E["veg_dry"], E["soil_dry"]]] = (
        0.6 * 0.85 * (1 - dry), 0.25 * 0.85 * (1 - dry), 0.85 * dry + 0.15 * 0.85 * (1 - dry), 0.15)  # fmt: skip
    table[4, [E["concrete"], E["asphalt"], E["roof_tile"], E["roof_metal"], E["veg_vigorous"]]] = (
        0.3 + 0.3 * roof[0], 0.15, 0.3 * roof[1], 0.3 * roof[2], 0.25)  # fmt: skip
    table[5, [E["asphalt"], E["concrete"]]] = (0.8, 0.2)
    table[6, [E["soil_wet"], E["soil_dry"], E["veg_dry"]]] = (0.92 * wet, 0.92 * (1 - wet), 0.08)
    return table / table.sum(axis=1, keepdims=True)


def class_spectra(region: str | Region = "north") -> np.ndarray:
    """``[K, L]`` typical reflectance of each land-cover class on ``WAVELENGTHS_UM`` in ``region``."""
    return class_abundances(region) @ endmember_spectra(region)
