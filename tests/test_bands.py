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


# --- band metadata: bandwidths, GSD, the Sentinel-2 table, user sensor records -----------------------------------

from spectralmoe.bands import (  # noqa: E402
    DEFAULT_GSD_M,
    SENTINEL2_BANDS,
    SENTINEL2_BAND_INDEX,
    default_bandwidths_um,
    load_sensor,
)


def test_every_builtin_sensor_has_a_gsd_or_documents_none_and_bandwidths_for_every_spectral_band():
    for sensor in SENSORS.values():
        widths = sensor.bandwidths()
        assert len(widths) == sensor.num_bands
        for w, b in zip(sensor.wavelengths_um, widths):
            assert math.isnan(b) if math.isnan(w) else 0.001 <= b <= 0.2, (sensor.name, w, b)
        assert sensor.gsd() > 0
    assert SENSORS["gf2"].gsd_m == 4.0 and SENSORS["gf1"].gsd_m == 8.0 and SENSORS["planetscope"].gsd_m == 3.0
    assert SENSORS["rgb"].gsd_m is None and SENSORS["rgb"].gsd() == DEFAULT_GSD_M
    # The GF-2 record's bandwidths follow its band order (NIR,R,G,B), the 16-bit product's (B,G,R,NIR).
    assert SENSORS["gf2"].bandwidths() == (0.12, 0.06, 0.07, 0.07)
    assert SENSORS["gf2-16bit"].bandwidths() == (0.07, 0.07, 0.06, 0.12)


def test_sentinel2_table_is_ordered_by_band_with_b8a_after_b8():
    names = [b.name for b in SENTINEL2_BANDS]
    assert names == ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]
    assert SENTINEL2_BAND_INDEX["B8A"] == 8
    assert SENSORS["sentinel2-l1c"].num_bands == 13
    # The 4-band C-megacities record uses the same bandwidths as the table.
    assert SENSORS["sentinel2"].bandwidths()[0] == SENTINEL2_BANDS[7].bandwidth_um


def test_default_bandwidths_follow_the_band_spacing_capped_at_60_nm():
    ohs = default_bandwidths_um(SENSORS["ohs"].wavelengths_um)
    assert all(0.013 <= b <= 0.021 for b in ohs)
    assert default_bandwidths_um((0.665, 0.56, 0.49, 0.83)) == (0.06, 0.06, 0.06, 0.06)
    widths = default_bandwidths_um((0.50, float("nan"), 0.51))
    assert widths[0] == pytest.approx(0.01) and math.isnan(widths[1]) and widths[2] == pytest.approx(0.01)
    assert default_bandwidths_um((0.5,)) == (0.06,)


def test_sensor_record_round_trips_through_a_dict_and_refuses_bad_fields():
    for sensor in SENSORS.values():
        again = Sensor.from_dict(sensor.to_dict())
        assert again.to_dict() == sensor.to_dict()
    with pytest.raises(ValueError, match="unknown sensor field"):
        Sensor.from_dict({"wavelengths_um": [0.5], "value_scale": 1, "wavelength": 3})
    with pytest.raises(ValueError, match="micrometres"):
        Sensor.from_dict({"name": "nm", "wavelengths_um": [490, 560], "value_scale": 255})
    with pytest.raises(ValueError, match="bandwidth"):
        Sensor.from_dict({"name": "x", "wavelengths_um": [0.49, 0.56], "bandwidths_um": [0.05], "value_scale": 1})
    with pytest.raises(ValueError, match="gsd_m"):
        Sensor.from_dict({"name": "x", "wavelengths_um": [0.49], "value_scale": 1, "gsd_m": -2})
    with pytest.raises(ValueError, match="value_scale"):
        Sensor.from_dict({"name": "x", "wavelengths_um": [0.49], "value_scale": float("nan")})


def test_load_sensor_reads_a_builtin_name_or_a_yaml_file(tmp_path):
    assert load_sensor("gf2") is SENSORS["gf2"]
    path = tmp_path / "my-camera.yaml"
    path.write_text("band_names: [B, G, R, NIR]\nwavelengths_um: [0.49, 0.56, 0.665, 0.83]\n"
                    "bandwidths_um: [0.06, 0.08, 0.06, 0.1]\ngsd_m: 0.5\nvalue_scale: 4095\n")
    sensor = load_sensor(path)
    assert sensor.name == "my-camera" and sensor.band_names == ("B", "G", "R", "NIR") and sensor.gsd() == 0.5
    assert sensor.rgb_indices() == (2, 1, 0)
    with pytest.raises(KeyError, match="unknown sensor 'gf9'"):
        load_sensor("gf9")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_sensor(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("!!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_sensor(bad)
