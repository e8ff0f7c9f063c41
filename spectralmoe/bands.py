"""Sensors, their bands and centre wavelengths, and picking the R, G, B bands of any sensor.

Wavelengths are in micrometres. A band without a wavelength (e.g. FLAIR's elevation channel) is
stored as ``nan``: it is "non-spectral" and is never chosen as a colour band.

Why this module exists: the authors' code hard-codes ``x[:, 1:]`` as the RGB input of the depth
model, which is only right for NIR,R,G,B data. Everything here is chosen by wavelength instead.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from spectralmoe.errors import InputError

# Target centre wavelengths (µm) of the colour bands the RGB-pretrained models were trained on.
RED_UM, GREEN_UM, BLUE_UM = 0.665, 0.560, 0.490
RGB_TARGETS_UM: tuple[float, float, float] = (RED_UM, GREEN_UM, BLUE_UM)
DEFAULT_RGB_TOLERANCE_UM = 0.060


@dataclass(frozen=True)
class Sensor:
    """One sensor product as stored on disk: band names in file order, centre wavelengths (µm).

    ``value_scale`` is the raw value of full reflectance / full brightness (255 for 8-bit
    products, 10000 for reflectance×10⁴), used to bring raw data to about [0, 1].

    ``bandwidths_um`` are the bands' full widths at half maximum (µm, ``nan`` for non-spectral
    bands) and ``gsd_m`` the ground sampling distance in metres, as the published sensor documents
    give them; ``None`` where no document gives them. Models that need them (Copernicus-FM,
    Galileo, SenPa-MAE) read :meth:`bandwidths` and :meth:`gsd`, which fall back to the documented
    defaults :func:`default_bandwidths_um` and :data:`DEFAULT_GSD_M`.
    """

    name: str
    band_names: tuple[str, ...]
    wavelengths_um: tuple[float, ...]
    value_scale: float
    description: str = ""
    bandwidths_um: tuple[float, ...] | None = None
    gsd_m: float | None = None

    def __post_init__(self) -> None:
        if len(self.band_names) != len(self.wavelengths_um):
            raise ValueError(
                f"sensor {self.name!r}: {len(self.band_names)} band names but "
                f"{len(self.wavelengths_um)} wavelengths"
            )
        if not self.value_scale > 0 or not math.isfinite(self.value_scale):
            raise ValueError(f"sensor {self.name!r}: value_scale must be a finite number > 0, got {self.value_scale}")
        for i, w in enumerate(self.wavelengths_um):
            if not (math.isnan(w) or 0.0 < w < 100.0):
                raise ValueError(
                    f"sensor {self.name!r}: band {i + 1} ({self.band_names[i]}) has wavelength {w}; "
                    "wavelengths are in micrometres (0 < w < 100), or nan for a non-spectral band"
                )
        if self.bandwidths_um is not None:
            if len(self.bandwidths_um) != len(self.wavelengths_um):
                raise ValueError(
                    f"sensor {self.name!r}: {len(self.bandwidths_um)} bandwidths but {len(self.wavelengths_um)} bands"
                )
            for i, (w, b) in enumerate(zip(self.wavelengths_um, self.bandwidths_um)):
                if not math.isnan(w) and not (math.isfinite(b) and 0.0 < b < 10.0):
                    raise ValueError(
                        f"sensor {self.name!r}: band {i + 1} ({self.band_names[i]}) has bandwidth {b}; "
                        "bandwidths are full widths at half maximum in micrometres (0 < b < 10)"
                    )
        if self.gsd_m is not None and not (math.isfinite(self.gsd_m) and self.gsd_m > 0):
            raise ValueError(f"sensor {self.name!r}: gsd_m must be a finite number of metres > 0, got {self.gsd_m}")

    @property
    def num_bands(self) -> int:
        return len(self.band_names)

    def wavelength_tensor(self) -> torch.Tensor:
        """Centre wavelengths as a float32 tensor ``[C]`` (nan for non-spectral bands)."""
        return torch.tensor(self.wavelengths_um, dtype=torch.float32)

    def rgb_indices(self, tolerance_um: float = DEFAULT_RGB_TOLERANCE_UM) -> tuple[int, int, int]:
        return rgb_band_indices(self.wavelengths_um, tolerance_um=tolerance_um, sensor_name=self.name)

    def bandwidths(self) -> tuple[float, ...]:
        """FWHM per band (µm): the record's own, else :func:`default_bandwidths_um` of its wavelengths."""
        if self.bandwidths_um is not None:
            return tuple(float("nan") if math.isnan(w) else b for w, b in zip(self.wavelengths_um, self.bandwidths_um))
        return default_bandwidths_um(self.wavelengths_um)

    def gsd(self) -> float:
        """Ground sampling distance (m): the record's own, else :data:`DEFAULT_GSD_M`."""
        return DEFAULT_GSD_M if self.gsd_m is None else float(self.gsd_m)

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-ready record (``None`` for the nan of non-spectral bands); inverse of :meth:`from_dict`."""
        def nan_to_none(values: Sequence[float] | None) -> list[float | None] | None:
            return None if values is None else [None if math.isnan(v) else float(v) for v in values]

        return {
            "name": self.name,
            "band_names": list(self.band_names),
            "wavelengths_um": nan_to_none(self.wavelengths_um),
            "value_scale": self.value_scale,
            "description": self.description,
            "bandwidths_um": nan_to_none(self.bandwidths_um),
            "gsd_m": self.gsd_m,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "sensor record") -> "Sensor":
        """A record from a mapping (``splits.json``, a user's sensor YAML); unknown keys are refused.

        ``band_names`` may be left out (then ``B1..Bn``); ``name`` may be left out when ``source``
        names the record; ``null`` wavelengths/bandwidths mean a non-spectral band.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: a sensor record must be a mapping, got {type(data).__name__}")
        known = {"name", "band_names", "wavelengths_um", "value_scale", "description", "bandwidths_um", "gsd_m"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown sensor field(s) {unknown}; known: {sorted(known)}")
        if "wavelengths_um" not in data or "value_scale" not in data:
            raise ValueError(f"{source}: a sensor record needs `wavelengths_um` and `value_scale`")

        def floats(key: str) -> tuple[float, ...] | None:
            values = data.get(key)
            if values is None:
                return None
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
                raise ValueError(f"{source}: `{key}` must be a list of numbers, got {values!r}")
            try:
                return tuple(float("nan") if v is None else float(v) for v in values)
            except (TypeError, ValueError):
                raise ValueError(f"{source}: `{key}` must be a list of numbers (or null), got {list(values)!r}") from None

        waves = floats("wavelengths_um") or ()
        names = data.get("band_names")
        band_names = tuple(str(n) for n in names) if names is not None else tuple(f"B{i + 1}" for i in range(len(waves)))
        try:
            scale = float(data["value_scale"])
            gsd = None if data.get("gsd_m") is None else float(data["gsd_m"])
        except (TypeError, ValueError):
            raise ValueError(f"{source}: `value_scale` and `gsd_m` must be numbers") from None
        try:
            return cls(str(data.get("name", source)), band_names, waves, scale, str(data.get("description", "")),
                       floats("bandwidths_um"), gsd)  # fmt: skip
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None


# Ground sampling distance assumed when a sensor record gives none (m): Sentinel-2's 10 m, the
# reference resolution of the remote-sensing foundation models that need one (Galileo's BASE_GSD).
DEFAULT_GSD_M = 10.0
# Widest bandwidth the default rule gives a band (µm): about a broadband multispectral band.
DEFAULT_MAX_BANDWIDTH_UM = 0.060


def default_bandwidths_um(wavelengths_um: Sequence[float]) -> tuple[float, ...]:
    """Documented default FWHM (µm) for bands whose sensor document gives none.

    Each spectral band gets the mean distance to its spectral neighbours (one neighbour at the
    ends), capped at 0.060 µm: contiguous hyperspectral bands get their sampling interval (OHS:
    0.014-0.020 µm), broadband multispectral bands 0.060 µm. A sensor with a single spectral band
    gets 0.060 µm; non-spectral bands get ``nan``.
    """
    spectral = sorted((w, i) for i, w in enumerate(wavelengths_um) if not math.isnan(w))
    out = [float("nan")] * len(wavelengths_um)
    for k, (w, i) in enumerate(spectral):
        gaps = [abs(w - spectral[j][0]) for j in (k - 1, k + 1) if 0 <= j < len(spectral)]
        gaps = [g for g in gaps if g > 0]
        out[i] = min(DEFAULT_MAX_BANDWIDTH_UM, sum(gaps) / len(gaps)) if gaps else DEFAULT_MAX_BANDWIDTH_UM
    return tuple(out)


@dataclass(frozen=True)
class SpectralBand:
    """One band of a reference sensor: name, centre wavelength and FWHM (µm), native resolution (m)."""

    name: str
    centre_um: float
    bandwidth_um: float
    gsd_m: float


# Sentinel-2A MSI, the 13 bands in their usual order (B1..B8, B8A, B9..B12): central wavelength and
# bandwidth of ESA's Sentinel-2 Spectral Response Functions (document COPE-GSEG-EOPG-TN-15-0007,
# v3.0, S2A columns) and the spatial resolutions of the Sentinel-2 User Handbook (ESA, 2015).
SENTINEL2_BANDS: tuple[SpectralBand, ...] = (
    SpectralBand("B1", 0.4427, 0.021, 60.0),
    SpectralBand("B2", 0.4924, 0.066, 10.0),
    SpectralBand("B3", 0.5598, 0.036, 10.0),
    SpectralBand("B4", 0.6646, 0.031, 10.0),
    SpectralBand("B5", 0.7041, 0.015, 20.0),
    SpectralBand("B6", 0.7405, 0.015, 20.0),
    SpectralBand("B7", 0.7828, 0.020, 20.0),
    SpectralBand("B8", 0.8328, 0.106, 10.0),
    SpectralBand("B8A", 0.8647, 0.021, 20.0),
    SpectralBand("B9", 0.9451, 0.020, 60.0),
    SpectralBand("B10", 1.3735, 0.031, 60.0),
    SpectralBand("B11", 1.6137, 0.091, 20.0),
    SpectralBand("B12", 2.2024, 0.175, 20.0),
)
SENTINEL2_BAND_INDEX: dict[str, int] = {b.name: i for i, b in enumerate(SENTINEL2_BANDS)}


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

# Bandwidths (FWHM, µm) and ground sampling distances of the built-in products, from public documents:
# * GF-1 / GF-2 PMS multispectral: 0.45-0.52, 0.52-0.59, 0.63-0.69, 0.77-0.89 µm (CRESDA satellite pages);
#   GF-2 MS as distributed in Five-Billion-Pixels: 4 m, GF-1 MS: 8 m (FBP paper, Tong et al. 2023).
# * PlanetScope PS2 (Dove Classic): blue 455-515, green 500-590, red 590-670, NIR 780-860 nm (Planet
#   Imagery Product Specifications); 3 m (FBP paper).
# * Sentinel-2: SENTINEL2_BANDS above; the 10 m bands.
# * OHS (Zhuhai-1): 10 m (WHU-OHS paper). No public document gives its bandwidths: the record leaves
#   them to default_bandwidths_um (the band spacing, 0.014-0.020 µm) — UNVERIFIED.
# * FLAIR #1 (IGN BD ORTHO aerial): 0.2 m (FLAIR #1 datapaper); the camera's bandwidths are not
#   published: default rule. ISPRS Potsdam 5 cm, Vaihingen 9 cm (ISPRS benchmark pages): bandwidths
#   not published: default rule. Plain RGB (LoveDA 0.3 m, OpenEarthMap 0.25-0.5 m): GSD left unknown.
_GF_PMS_BW = {"B": 0.07, "G": 0.07, "R": 0.06, "NIR": 0.12}
_PS2_BW = {"B": 0.06, "G": 0.09, "R": 0.08, "NIR": 0.08}
_S2 = {b.name: b for b in SENTINEL2_BANDS}


def _bw(table: dict[str, float], names: Sequence[str]) -> tuple[float, ...]:
    return tuple(table[n] for n in names)


# GF-2 / GF-1 PMS, Sentinel-2 and PlanetScope as stored in the FBP "Image__8bit_NirRGB" products: NIR,R,G,B.
# Centre wavelengths of the GF-2 product follow the DOFA wave list used by the authors.
_BUILTIN = (
    Sensor("gf2", ("NIR", "R", "G", "B"), (0.830, 0.665, 0.560, 0.490), 255.0,
           "GF-2 PMS 8-bit product of Five-Billion-Pixels (Image__8bit_NirRGB), band order NIR,R,G,B",
           _bw(_GF_PMS_BW, ("NIR", "R", "G", "B")), 4.0),
    Sensor("gf2-16bit", ("B", "G", "R", "NIR"), (0.490, 0.560, 0.665, 0.830), 1023.0,
           "GF-2 PMS 16-bit product of Five-Billion-Pixels (Image_16bit_BGRNir, 10-bit values), B,G,R,NIR",
           _bw(_GF_PMS_BW, ("B", "G", "R", "NIR")), 4.0),
    Sensor("gf1", ("NIR", "R", "G", "B"), (0.830, 0.660, 0.555, 0.485), 255.0,
           "GF-1 PMS as re-saved in C-megacities (Image__8bit_NirRGB), NIR,R,G,B",
           _bw(_GF_PMS_BW, ("NIR", "R", "G", "B")), 8.0),
    Sensor("sentinel2", ("B8", "B4", "B3", "B2"), (0.842, 0.665, 0.560, 0.490), 255.0,
           "Sentinel-2 10 m bands as re-saved in C-megacities (Image__8bit_NirRGB), NIR,R,G,B",
           tuple(_S2[n].bandwidth_um for n in ("B8", "B4", "B3", "B2")), 10.0),
    Sensor("sentinel2-l1c", tuple(b.name for b in SENTINEL2_BANDS), tuple(b.centre_um for b in SENTINEL2_BANDS),
           10000.0, "Sentinel-2 L1C top-of-atmosphere reflectance x 10000, all 13 bands B1..B12 (B8A after B8), "
           "resampled to 10 m", tuple(b.bandwidth_um for b in SENTINEL2_BANDS), 10.0),
    Sensor("planetscope", ("NIR", "R", "G", "B"), (0.820, 0.630, 0.545, 0.485), 255.0,
           "PlanetScope 4-band (PS2) as re-saved in C-megacities (Image__8bit_NirRGB), NIR,R,G,B",
           _bw(_PS2_BW, ("NIR", "R", "G", "B")), 3.0),
    Sensor("ohs", tuple(f"B{i + 1:02d}" for i in range(32)), _OHS_WAVELENGTHS, 10000.0,
           "Orbita OHS hyperspectral (WHU-OHS), 32 bands 0.466-0.940 µm, reflectance x 10000", None, 10.0),
    Sensor("flair", ("R", "G", "B", "NIR"), (0.665, 0.560, 0.490, 0.830), 255.0,
           "FLAIR #1 aerial orthophoto, first four bands R,G,B,NIR (as the paper uses)", None, 0.2),
    Sensor("flair-elevation", ("R", "G", "B", "NIR", "Elevation"), (0.665, 0.560, 0.490, 0.830, _NAN), 255.0,
           "FLAIR #1 aerial orthophoto with its fifth, non-spectral elevation band", None, 0.2),
    Sensor("potsdam-rgb", ("R", "G", "B"), (0.665, 0.560, 0.490), 255.0, "ISPRS Potsdam 2_Ortho_RGB, R,G,B",
           None, 0.05),
    Sensor("potsdam-rgbir", ("R", "G", "B", "NIR"), (0.665, 0.560, 0.490, 0.830), 255.0,
           "ISPRS Potsdam 4_Ortho_RGBIR, R,G,B,NIR", None, 0.05),
    Sensor("vaihingen", ("NIR", "R", "G"), (0.830, 0.665, 0.560), 255.0,
           "ISPRS Vaihingen IRRG false colour, NIR,R,G (no blue band)", None, 0.09),
    Sensor("rgb", ("R", "G", "B"), (0.665, 0.560, 0.490), 255.0, "plain 8-bit RGB (LoveDA, OpenEarthMap, photos)"),
)  # fmt: skip

SENSORS: dict[str, Sensor] = {s.name: s for s in _BUILTIN}


def get_sensor(name: str) -> Sensor:
    """Return a built-in sensor by name, with the list of known names in the error."""
    try:
        return SENSORS[name]
    except KeyError:
        raise KeyError(f"unknown sensor {name!r}; built-in sensors: {', '.join(sorted(SENSORS))}") from None


def load_sensor(name_or_path: str | os.PathLike[str]) -> Sensor:
    """A built-in sensor by name, or a user's sensor record from a YAML/JSON file.

    The file holds the fields of :meth:`Sensor.from_dict` (``wavelengths_um`` and ``value_scale``
    required; ``band_names``, ``bandwidths_um``, ``gsd_m``, ``description`` optional); the record's
    name defaults to the file's stem. Read with ``yaml.safe_load``: a file never runs code.
    """
    text = os.fspath(name_or_path)
    if text in SENSORS:
        return SENSORS[text]
    path = Path(text)
    if path.suffix.lower() not in (".yaml", ".yml", ".json") and not path.is_file():
        raise KeyError(f"unknown sensor {text!r}; built-in sensors: {', '.join(sorted(SENSORS))} "
                       "(or give a sensor YAML file)")  # fmt: skip
    if not path.is_file():
        raise FileNotFoundError(f"sensor file {path} does not exist")
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"sensor file {path}: not valid YAML/JSON ({error})") from None
    if isinstance(data, Mapping) and "name" not in data:
        data = {**data, "name": path.stem}
    return Sensor.from_dict(data, source=f"sensor file {path}")


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


# ------------------------------------------------------------------------------ matching by wavelength
#: How far (µm) an input band's centre wavelength may be from a model band's to stand in for it.
BAND_TOLERANCE_UM = DEFAULT_RGB_TOLERANCE_UM


class BandMismatchError(InputError):
    """The input's bands cannot be matched to the bands the model was trained on."""


def band_label(index: int, wavelength: float, name: str | None = None) -> str:
    """How every message names a band: 1-based, as GDAL and GIS tools count (``band 2 (R, 0.665 µm)``)."""
    wave = "no wavelength" if math.isnan(wavelength) else f"{wavelength:.3f} µm"
    return f"band {index + 1} ({name}, {wave})" if name else f"band {index + 1} ({wave})"


def match_bands(
    model_wavelengths: Sequence[float] | torch.Tensor,
    input_count: int,
    *,
    sensor: str | os.PathLike[str] | Sensor | None = None,
    wavelengths: Sequence[float] | torch.Tensor | None = None,
    tolerance_um: float = BAND_TOLERANCE_UM,
    where: str = "input",
) -> list[int]:
    """0-based input bands to feed the model, in the model's band order — the one rule every path
    uses (training, validation, test, ``predict``, ``predict-scene``) to turn a file's bands into the
    model's.

    Without ``sensor``/``wavelengths`` the input must have exactly the model's band count (taken in
    file order). With them (``sensor``: a built-in name, a sensor YAML file or a ``Sensor``), each
    model band takes the input band nearest in wavelength, within ``tolerance_um``; non-spectral
    bands (wavelength ``nan``, e.g. elevation) pair up in order; extra input bands are ignored. An
    input band may feed one model band only. Raises ``BandMismatchError`` naming ``where``, the
    band and its wavelength (bands are counted from 1 in messages)."""
    model = as_wavelength_list(model_wavelengths)
    if sensor is not None and wavelengths is not None:
        raise ValueError("describe the input with either a sensor or wavelengths, not both")
    if sensor is None and wavelengths is None:
        if input_count != len(model):
            raise BandMismatchError(
                f"{where} has {input_count} band(s) but the model was trained on {len(model)} "
                f"(wavelengths {model} µm); pass --sensor/--wavelengths to select or reorder bands by wavelength"
            )
        return list(range(input_count))
    names: Sequence[str] | None = None
    if sensor is not None:
        record = sensor if isinstance(sensor, Sensor) else load_sensor(sensor)
        source, given, names = f"sensor {record.name!r}", list(record.wavelengths_um), record.band_names
    else:
        source, given = "the given wavelengths", as_wavelength_list(wavelengths or [])
    if len(given) != input_count:
        raise BandMismatchError(f"{where} has {input_count} band(s) but {source} describes {len(given)}: {given} µm")

    def label(i: int) -> str:
        return band_label(i, given[i], names[i] if names is not None else None)

    spectral = [(i, w) for i, w in enumerate(given) if not math.isnan(w)]
    other = [i for i, w in enumerate(given) if math.isnan(w)]
    chosen: list[int] = []
    for j, target in enumerate(model):
        if math.isnan(target):
            rank = sum(math.isnan(w) for w in model[:j])
            if rank >= len(other):
                raise BandMismatchError(
                    f"{where}: model band {j + 1} is non-spectral (no wavelength) and {source} has no such band left"
                )
            chosen.append(other[rank])
            continue
        if not spectral:
            raise BandMismatchError(f"{where}: {source} has no spectral band for model band {j + 1} at {target:.3f} µm")
        index, wave = min(spectral, key=lambda iw: (wavelength_distance(iw[1], target), iw[0]))
        if abs(wave - target) > tolerance_um:
            raise BandMismatchError(
                f"{where}: model band {j + 1} ({target:.3f} µm) is missing — the nearest input band is "
                f"{label(index)}, {abs(wave - target) * 1000:.0f} nm away (tolerance {tolerance_um * 1000:.0f} nm; "
                f"input {source}: {given} µm)"
            )
        chosen.append(index)
    repeated = sorted({i for i in chosen if chosen.count(i) > 1})
    if repeated:
        feeds = {label(i): [j + 1 for j, c in enumerate(chosen) if c == i] for i in repeated}
        raise BandMismatchError(
            f"{where}: input {', '.join(feeds)} would each feed several model bands {list(feeds.values())} "
            f"(model {model} µm, input {given} µm); the input lacks distinct bands for them"
        )
    return chosen


# --------------------------------------------------------------------------- band names → wavelength
#: Centre wavelength (µm) of the band names GeoTIFF band descriptions commonly carry. Keys are
#: lower-case with spaces, "-" and "_" removed. Colour names map to the targets the RGB-pretrained
#: models are fed (``RGB_TARGETS_UM``); broad names (red edge, SWIR) to a typical sensor's centre.
#: Bare numbered names ("B1", "band3") are deliberately absent: their meaning depends on the sensor
#: (Sentinel-2 B2 is blue, GF-2 B2 green, our own records name unknown bands B1..Bn).
BAND_NAME_WAVELENGTHS_UM: dict[str, float] = {
    **dict.fromkeys(("b", "blue", "bleu"), BLUE_UM),
    **dict.fromkeys(("g", "green", "vert"), GREEN_UM),
    **dict.fromkeys(("r", "red", "rouge"), RED_UM),
    **dict.fromkeys(("n", "nir", "nearinfrared", "nearir", "infrared", "pir", "nir1", "nir08"), 0.830),
    **dict.fromkeys(("coastal", "coastalaerosol", "coastalblue", "ultrablue"), 0.443),
    **dict.fromkeys(("yellow",), 0.610),
    **dict.fromkeys(("rededge", "re", "rededge1"), 0.710),
    **dict.fromkeys(("swir1", "swir16"), 1.610),
    **dict.fromkeys(("swir2", "swir22"), 2.200),
    # Sentinel-2 in its zero-padded spelling (B01..B12, B8A): SENTINEL2_BANDS.
    **{f"b{b.name[1:].zfill(2).lower()}": b.centre_um for b in SENTINEL2_BANDS},
}

_WAVELENGTH_IN_TEXT = None  # compiled on first use


def wavelength_from_band_name(text: str | None) -> float | None:
    """Centre wavelength (µm) a band description names, or ``None``: a known name
    (``BAND_NAME_WAVELENGTHS_UM``: "Blue", "NIR", "B08", "Red edge"…) or an explicit wavelength
    ("Band 1 (490 nm)", "0.665um", "842 nm")."""
    global _WAVELENGTH_IN_TEXT
    if not text or not text.strip():
        return None
    key = "".join(ch for ch in text.lower() if ch not in " -_")
    if key in BAND_NAME_WAVELENGTHS_UM:
        return BAND_NAME_WAVELENGTHS_UM[key]
    if _WAVELENGTH_IN_TEXT is None:
        import re

        _WAVELENGTH_IN_TEXT = re.compile(
            r"(\d+(?:\.\d+)?)\s*(nm|nanometers?|nanometres?|µm|μm|um|micrometers?|micrometres?|microns?)\b", re.I
        )
    found = _WAVELENGTH_IN_TEXT.search(text)
    if found:
        value = float(found.group(1))
        value = value / 1000.0 if found.group(2).lower().startswith("n") else value
        return value if 0.0 < value < 100.0 else None
    return None


def wavelengths_from_band_names(names: Sequence[str | None]) -> tuple[float, ...] | None:
    """The wavelengths of every band when EVERY name is recognised (``wavelength_from_band_name``)
    and no two bands get the same one; else ``None`` — a partial reading would be a guess."""
    waves = [wavelength_from_band_name(n) for n in names]
    if not waves or any(w is None for w in waves):
        return None
    if len(set(waves)) != len(waves):
        return None
    return tuple(float(w) for w in waves)  # type: ignore[arg-type]
