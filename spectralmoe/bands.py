"""Sensors, their bands and centre wavelengths, and picking the R, G, B bands of any sensor.

Wavelengths are in micrometres. A band without a wavelength (e.g. FLAIR's elevation channel) is
stored as ``nan``: it is "non-spectral" and is never chosen as a colour band.

Why this module exists: the authors' code hard-codes ``x[:, 1:]`` as the RGB input of the depth
model, which is only right for NIR,R,G,B data. Everything here is chosen by wavelength instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

# Target centre wavelengths (µm) of the colour bands the RGB-pretrained models were trained on.
RED_UM, GREEN_UM, BLUE_UM = 0.665, 0.560, 0.490
RGB_TARGETS_UM: tuple[float, float, float] = (RED_UM, GREEN_UM, BLUE_UM)
DEFAULT_RGB_TOLERANCE_UM = 0.060


@dataclass(frozen=True)
class Sensor:
    """One sensor product as stored on disk: band names in file order, centre wavelengths (µm).

    ``value_scale`` is the raw value of full reflectance / full brightness (255 for 8-bit
    products, 10000 for reflectance×10⁴), used to bring raw data to about [0, 1].
    """

    name: str
    band_names: tuple[str, ...]
    wavelengths_um: tuple[float, ...]
    value_scale: float
    description: str = ""

    def __post_init__(self) -> None:
        if len(self.band_names) != len(self.wavelengths_um):
            raise ValueError(
                f"sensor {self.name!r}: {len(self.band_names)} band names but "
                f"{len(self.wavelengths_um)} wavelengths"
            )
        if self.value_scale <= 0:
            raise ValueError(f"sensor {self.name!r}: value_scale must be > 0, got {self.value_scale}")

    @property
    def num_bands(self) -> int:
        return len(self.band_names)

    def wavelength_tensor(self) -> torch.Tensor:
        """Centre wavelengths as a float32 tensor ``[C]`` (nan for non-spectral bands)."""
        return torch.tensor(self.wavelengths_um, dtype=torch.float32)

    def rgb_indices(self, tolerance_um: float = DEFAULT_RGB_TOLERANCE_UM) -> tuple[int, int, int]:
        return rgb_band_indices(self.wavelengths_um, tolerance_um=tolerance_um, sensor_name=self.name)


_NAN = float("nan")


def wavelength_distance(a: float, b: float) -> float:
    """|a − b| rounded to 1 pm, so that float32 and float64 copies of a wavelength list pick the same
    band when two bands are equally near (OHS: 0.480 and 0.500 µm around blue's 0.490 µm)."""
    return round(abs(a - b), 6)
_OHS_WAVELENGTHS = (
    0.466, 0.480, 0.500, 0.520, 0.536, 0.550, 0.566, 0.580, 0.596, 0.610, 0.626, 0.640, 0.656, 0.670, 0.686,
    0.700, 0.716, 0.730, 0.746, 0.760, 0.776, 0.790, 0.806, 0.820, 0.836, 0.850, 0.866, 0.880, 0.896, 0.910,
    0.926, 0.940,
)  # fmt: skip

# GF-2 / GF-1 PMS, Sentinel-2 and PlanetScope as stored in the FBP "Image__8bit_NirRGB" products: NIR,R,G,B.
# Centre wavelengths of the GF-2 product follow the DOFA wave list used by the authors.
_BUILTIN = (
    Sensor("gf2", ("NIR", "R", "G", "B"), (0.830, 0.665, 0.560, 0.490), 255.0,
           "GF-2 PMS 8-bit product of Five-Billion-Pixels (Image__8bit_NirRGB), band order NIR,R,G,B"),
    Sensor("gf2-16bit", ("B", "G", "R", "NIR"), (0.490, 0.560, 0.665, 0.830), 1023.0,
           "GF-2 PMS 16-bit product of Five-Billion-Pixels (Image_16bit_BGRNir, 10-bit values), B,G,R,NIR"),
    Sensor("gf1", ("NIR", "R", "G", "B"), (0.830, 0.660, 0.555, 0.485), 255.0,
           "GF-1 PMS as re-saved in C-megacities (Image__8bit_NirRGB), NIR,R,G,B"),
    Sensor("sentinel2", ("B8", "B4", "B3", "B2"), (0.842, 0.665, 0.560, 0.490), 255.0,
           "Sentinel-2 10 m bands as re-saved in C-megacities (Image__8bit_NirRGB), NIR,R,G,B"),
    Sensor("planetscope", ("NIR", "R", "G", "B"), (0.820, 0.630, 0.545, 0.485), 255.0,
           "PlanetScope 4-band (PS2) as re-saved in C-megacities (Image__8bit_NirRGB), NIR,R,G,B"),
    Sensor("ohs", tuple(f"B{i + 1:02d}" for i in range(32)), _OHS_WAVELENGTHS, 10000.0,
           "Orbita OHS hyperspectral (WHU-OHS), 32 bands 0.466-0.940 µm, reflectance x 10000"),
    Sensor("flair", ("R", "G", "B", "NIR"), (0.665, 0.560, 0.490, 0.830), 255.0,
           "FLAIR #1 aerial orthophoto, first four bands R,G,B,NIR (as the paper uses)"),
    Sensor("flair-elevation", ("R", "G", "B", "NIR", "Elevation"), (0.665, 0.560, 0.490, 0.830, _NAN), 255.0,
           "FLAIR #1 aerial orthophoto with its fifth, non-spectral elevation band"),
    Sensor("potsdam-rgb", ("R", "G", "B"), (0.665, 0.560, 0.490), 255.0, "ISPRS Potsdam 2_Ortho_RGB, R,G,B"),
    Sensor("potsdam-rgbir", ("R", "G", "B", "NIR"), (0.665, 0.560, 0.490, 0.830), 255.0,
           "ISPRS Potsdam 4_Ortho_RGBIR, R,G,B,NIR"),
    Sensor("vaihingen", ("NIR", "R", "G"), (0.830, 0.665, 0.560), 255.0,
           "ISPRS Vaihingen IRRG false colour, NIR,R,G (no blue band)"),
    Sensor("rgb", ("R", "G", "B"), (0.665, 0.560, 0.490), 255.0, "plain 8-bit RGB (LoveDA, OpenEarthMap, photos)"),
)  # fmt: skip

SENSORS: dict[str, Sensor] = {s.name: s for s in _BUILTIN}


def get_sensor(name: str) -> Sensor:
    """Return a built-in sensor by name, with the list of known names in the error."""
    try:
        return SENSORS[name]
    except KeyError:
        raise KeyError(f"unknown sensor {name!r}; built-in sensors: {', '.join(sorted(SENSORS))}") from None


def as_wavelength_list(wavelengths: Sequence[float] | torch.Tensor) -> list[float]:
    """Wavelengths as a plain list of floats (a ``[C]`` tensor, or ``[B, C]`` with identical rows)."""
    if isinstance(wavelengths, torch.Tensor):
        w = wavelengths.detach().float().cpu()
        if w.ndim == 2:
            if not torch.equal(torch.nan_to_num(w, nan=-1.0), torch.nan_to_num(w[:1].expand_as(w), nan=-1.0)):
                raise ValueError("all images of a batch must share one band layout (wavelength rows differ)")
            w = w[0]
        if w.ndim != 1:
            raise ValueError(f"wavelengths must be [C] or [B, C], got shape {tuple(wavelengths.shape)}")
        return [float(v) for v in w]
    return [float(v) for v in wavelengths]


def rgb_band_indices(
    wavelengths: Sequence[float] | torch.Tensor,
    tolerance_um: float = DEFAULT_RGB_TOLERANCE_UM,
    sensor_name: str | None = None,
) -> tuple[int, int, int]:
    """Indices of the bands nearest 0.665 / 0.560 / 0.490 µm, in R, G, B order.

    Raises ``ValueError`` naming the colour and the nearest band when no band lies within
    ``tolerance_um`` of a colour (e.g. Vaihingen's NIR,R,G has no blue).
    """
    waves = as_wavelength_list(wavelengths)
    where = f" of sensor {sensor_name!r}" if sensor_name else ""
    spectral = [(i, w) for i, w in enumerate(waves) if not math.isnan(w)]
    if not spectral:
        raise ValueError(f"no spectral band{where}: wavelengths {waves}")
    picked = []
    for colour, target in zip(("red", "green", "blue"), RGB_TARGETS_UM):
        index, wave = min(spectral, key=lambda iw: (wavelength_distance(iw[1], target), iw[0]))
        if abs(wave - target) > tolerance_um:
            raise ValueError(
                f"no {colour} band{where}: the nearest band to {target:.3f} µm is band {index} at {wave:.3f} µm, "
                f"more than {tolerance_um * 1000:.0f} nm away (wavelengths {waves})"
            )
        picked.append(index)
    return picked[0], picked[1], picked[2]
