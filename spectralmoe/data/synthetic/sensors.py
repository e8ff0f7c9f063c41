"""How each built-in sensor sees the SYNTHETIC world: band widths, GSD, radiometry.

Centre wavelengths, band order and value scale come from ``spectralmoe.bands`` (never repeated
here). This table adds what rendering needs and ``bands.py`` does not hold:

* ``fwhm_um`` — full width at half maximum of each band, in the sensor record's band order. The
  response is a Gaussian at the record's centre with this FWHM. Approximate public figures:
  GF-2 PMS multispectral 0.45–0.52 / 0.52–0.59 / 0.63–0.69 / 0.77–0.89 µm (FWHM ≈ 70/70/60/120 nm);
  Sentinel-2 MSI B2/B3/B4/B8 bandwidths ≈ 66/36/31/106 nm; PlanetScope PS2 "Dove" blue
  0.455–0.515, green 0.500–0.590, red 0.590–0.670, NIR 0.780–0.860 µm (≈ 60/90/80/80 nm); OHS
  32 contiguous bands treated as ≈ 15 nm wide (the band spacing; the real SRFs are not at hand);
  an RGB aerial camera's broad colour filters ≈ 80–100 nm.
* ``gsd_m`` — ground sampling distance: GF-2 4 m, PlanetScope 3 m, Sentinel-2 10 m, OHS 10 m,
  RGB aerial 1 m (``generate_world(gsd_scale=…)`` scales all of them together).
* radiometry of the stored product — ``gain``/``offset`` turn apparent reflectance into a fraction
  of the product's full scale (8-bit products are stretched: dark visible bands get larger gains);
  ``haze_range`` is the path reflectance at 0.55 µm an acquisition draws; ``shot_noise`` and
  ``read_noise`` (reflectance units) give the noise σ² = shot·ρ + read²; ``dtype`` is the stored type.
  These numbers are invented so that the products differ like real ones do, not calibrated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from spectralmoe.bands import DEFAULT_RGB_TOLERANCE_UM, Sensor, get_sensor
from spectralmoe.data.synthetic.spectra import WAVELENGTHS_UM

__all__ = [
    "SensorModel",
    "SENSOR_MODELS",
    "get_sensor_model",
    "srf_matrix",
    "band_compatible",
    "compatible_sensor_groups",
]

_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


@dataclass(frozen=True)
class SensorModel:
    """Rendering model of one built-in sensor (see the module docstring for each field)."""

    name: str
    fwhm_um: tuple[float, ...]
    gsd_m: float
    gain: tuple[float, ...]
    offset: tuple[float, ...]
    haze_range: tuple[float, float]
    shot_noise: float
    read_noise: float
    dtype: str

    def __post_init__(self) -> None:
        bands = self.sensor.num_bands
        for field_name in ("fwhm_um", "gain", "offset"):
            if len(getattr(self, field_name)) != bands:
                raise ValueError(
                    f"sensor model {self.name!r}: {field_name} has {len(getattr(self, field_name))} values "
                    f"but the sensor has {bands} bands {list(self.sensor.band_names)}"
                )
        if self.dtype not in ("uint8", "int16", "uint16"):
            raise ValueError(f"sensor model {self.name!r}: dtype must be uint8, int16 or uint16, got {self.dtype!r}")

    @property
    def sensor(self) -> Sensor:
        """The ``bands.py`` record: band names, centre wavelengths, value scale."""
        return get_sensor(self.name)

    @property
    def max_value(self) -> int:
        """Largest storable value of ``dtype``."""
        return int(np.iinfo(np.dtype(self.dtype)).max)

    def srf(self, wavelengths: np.ndarray | None = None) -> np.ndarray:
        """``[C, L]`` spectral responses on ``wavelengths`` (default: the 5 nm grid), rows sum to 1."""
        return srf_matrix(self.sensor.wavelengths_um, self.fwhm_um, wavelengths)


def srf_matrix(
    centres_um: Sequence[float], fwhm_um: Sequence[float], wavelengths: np.ndarray | None = None
) -> np.ndarray:
    """Gaussian band responses ``[C, L]``, each normalised to sum 1 over the grid, so that
    ``srf @ spectrum`` is the band-averaged value of a spectrum sampled on the grid."""
    wl = WAVELENGTHS_UM if wavelengths is None else np.asarray(wavelengths, dtype=np.float64)
    centres = np.asarray(centres_um, dtype=np.float64)[:, None]
    sigma = np.asarray(fwhm_um, dtype=np.float64)[:, None] * _FWHM_TO_SIGMA
    response = np.exp(-0.5 * ((wl[None, :] - centres) / sigma) ** 2)
    total = response.sum(axis=1, keepdims=True)
    if (total <= 1e-9).any():
        raise ValueError(f"a band (centres {list(centres_um)}) lies outside the wavelength grid {wl[0]}–{wl[-1]} µm")
    return response / total


SENSOR_MODELS: dict[str, SensorModel] = {
    m.name: m
    for m in (
        # band order of each tuple = the bands.py record's order
        SensorModel("gf2", fwhm_um=(0.12, 0.06, 0.07, 0.07), gsd_m=4.0,  # NIR, R, G, B
                    gain=(1.45, 2.6, 2.5, 2.6), offset=(0.01, 0.02, 0.03, 0.04), haze_range=(0.005, 0.035),
                    shot_noise=2e-4, read_noise=0.004, dtype="uint8"),
        SensorModel("planetscope", fwhm_um=(0.08, 0.08, 0.09, 0.06), gsd_m=3.0,  # NIR, R, G, B
                    gain=(1.25, 2.1, 2.3, 2.2), offset=(0.03, 0.04, 0.05, 0.06), haze_range=(0.02, 0.07),
                    shot_noise=3e-4, read_noise=0.006, dtype="uint8"),
        SensorModel("sentinel2", fwhm_um=(0.106, 0.031, 0.036, 0.066), gsd_m=10.0,  # B8, B4, B3, B2
                    gain=(1.6, 3.2, 3.2, 3.0), offset=(0.0, 0.0, 0.0, 0.0), haze_range=(0.005, 0.03),
                    shot_noise=1e-4, read_noise=0.002, dtype="uint8"),
        SensorModel("ohs", fwhm_um=(0.015,) * 32, gsd_m=10.0, gain=(1.0,) * 32, offset=(0.0,) * 32,
                    haze_range=(0.005, 0.02), shot_noise=4e-4, read_noise=0.006, dtype="int16"),
        SensorModel("rgb", fwhm_um=(0.09, 0.10, 0.08), gsd_m=1.0,  # R, G, B
                    gain=(2.2, 2.2, 2.3), offset=(0.02, 0.02, 0.03), haze_range=(0.0, 0.02),
                    shot_noise=1e-4, read_noise=0.003, dtype="uint8"),
    )
}  # fmt: skip


def get_sensor_model(name: str | SensorModel) -> SensorModel:
    """The rendering model of a built-in sensor (or the model itself)."""
    if isinstance(name, SensorModel):
        return name
    try:
        return SENSOR_MODELS[name]
    except KeyError:
        raise KeyError(
            f"no synthetic rendering model for sensor {name!r}; available: {', '.join(SENSOR_MODELS)}"
        ) from None


def band_compatible(a: Sensor, b: Sensor, tolerance_um: float = DEFAULT_RGB_TOLERANCE_UM) -> bool:
    """True when a model built for ``a``'s bands can read ``b`` as is: same band count, same value
    scale, and band i of both within ``tolerance_um`` of each other (GF-2 / PlanetScope /
    Sentinel-2 as NIR,R,G,B are; OHS's 32 bands and RGB's 3 are not)."""
    if a.num_bands != b.num_bands or a.value_scale != b.value_scale:
        return False
    return all(
        (math.isnan(x) and math.isnan(y)) or abs(x - y) <= tolerance_um
        for x, y in zip(a.wavelengths_um, b.wavelengths_um)
    )


def compatible_sensor_groups(names: Sequence[str]) -> list[list[str]]:
    """``names`` partitioned into groups of mutually band-compatible sensors (first-seen order)."""
    groups: list[list[str]] = []
    for name in names:
        sensor = get_sensor(name)
        for group in groups:
            if band_compatible(get_sensor(group[0]), sensor):
                group.append(name)
                break
        else:
            groups.append([name])
    return groups
