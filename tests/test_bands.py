import math

import pytest
import torch

from spectralmoe.bands import SENSORS, Sensor, as_wavelength_list, get_sensor, rgb_band_indices


def test_builtin_sensors_cover_the_seven_benchmarks():
    for name in ("gf2", "gf1", "sentinel2", "planetscope", "ohs", "flair", "flair-elevation",
                 "potsdam-rgb", "potsdam-rgbir", "vaihingen", "rgb"):
        sensor = get_sensor(name)
        assert sensor.num_bands == len(sensor.wavelength_tensor())
    ohs = get_sensor("ohs")
    assert ohs.num_bands == 32 and ohs.wavelengths_um[0] == 0.466 and ohs.wavelengths_um[-1] == 0.940
    assert ohs.value_scale == 10000.0
    assert get_sensor("gf2").band_names == ("NIR", "R", "G", "B")


@pytest.mark.parametrize(
    "name, expected",
    [("gf2", (1, 2, 3)), ("flair", (0, 1, 2)), ("rgb", (0, 1, 2)), ("ohs", (13, 6, 1)), ("gf2-16bit", (2, 1, 0)),
     ("flair-elevation", (0, 1, 2))],
)
def test_rgb_band_indices_by_wavelength(name, expected):
    assert get_sensor(name).rgb_indices() == expected


def test_missing_colour_names_the_colour_and_nearest_band():
    with pytest.raises(ValueError, match=r"no blue band of sensor 'vaihingen'.*band 2 at 0\.560"):
        get_sensor("vaihingen").rgb_indices()
    with pytest.raises(ValueError, match="no red band"):
        rgb_band_indices([0.49, 0.56, 0.83])


def test_nan_bands_are_never_chosen_and_all_nan_fails():
    assert rgb_band_indices([math.nan, 0.665, 0.56, 0.49]) == (1, 2, 3)
    with pytest.raises(ValueError, match="no spectral band"):
        rgb_band_indices([math.nan, math.nan])


def test_wavelength_batches_must_share_a_layout():
    w = torch.tensor([[0.665, 0.56, 0.49], [0.665, 0.56, 0.49]])
    assert as_wavelength_list(w) == pytest.approx([0.665, 0.56, 0.49])
    with pytest.raises(ValueError, match="share one band layout"):
        as_wavelength_list(torch.tensor([[0.665, 0.56, 0.49], [0.49, 0.56, 0.665]]))


def test_sensor_validation_and_unknown_name():
    with pytest.raises(ValueError, match="3 band names but 2 wavelengths"):
        Sensor("bad", ("a", "b", "c"), (0.5, 0.6), 255.0)
    with pytest.raises(KeyError, match="unknown sensor 'nope'"):
        get_sensor("nope")
    assert "gf2" in SENSORS


def test_equally_near_bands_pick_the_same_band_in_float32_and_float64():
    ohs = get_sensor("ohs")
    assert rgb_band_indices(ohs.wavelengths_um) == rgb_band_indices(ohs.wavelength_tensor()) == (13, 6, 1)
