"""Band metadata (bandwidths, GSD) from sensor records or user options through build_segmentor / build_backbone
to the backbones that use them (Copernicus-FM, SoftCon), into exports, and predict-scene's --gsd."""

import math

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from spectralmoe.bands import DEFAULT_GSD_M, default_bandwidths_um, get_sensor
from spectralmoe.engine.export import export_trainable, load_exported, read_export_config
from spectralmoe.models.backbones import build_backbone
from spectralmoe.models.factory import build_segmentor, resolve_band_metadata
from spectralmoe.predict import add_predict_scene_parser, predict_scene

GF2 = get_sensor("gf2")
SMALL = {"adapter": "freeze", "head": "fpn", "depth": None, "num_classes": 3, "pretrained": False,
         "head_kwargs": {"channels": 16}}  # fmt: skip


def test_sensor_record_reaches_copernicus_fm():
    model = build_segmentor(backbone="tiny-copernicusfm", sensor="gf2", **SMALL)
    backbone = model.backbone
    assert backbone.in_wavelengths == list(GF2.wavelengths_um)
    assert backbone.in_bandwidths == list(GF2.bandwidths()) == [0.12, 0.06, 0.07, 0.07]
    assert backbone.gsd_m == 4.0 and backbone.area_km2 == pytest.approx((16 * 4.0 / 1000) ** 2)


def test_user_options_win_and_defaults_are_documented():
    own = build_segmentor(backbone="tiny-copernicusfm", sensor="gf2", in_bandwidths=[0.1, 0.05, 0.05, 0.05],
                          gsd_m=8.0, **SMALL).backbone  # fmt: skip
    assert own.in_bandwidths == [0.1, 0.05, 0.05, 0.05] and own.gsd_m == 8.0
    waves = [0.83, 0.665, 0.56, 0.49]
    bare = build_segmentor(backbone="tiny-copernicusfm", wavelengths=waves, **SMALL).backbone
    assert bare.in_bandwidths == list(default_bandwidths_um(waves)) and bare.gsd_m == DEFAULT_GSD_M
    widths, gsd = resolve_band_metadata("flair-elevation", list(get_sensor("flair-elevation").wavelengths_um),
                                        [0.06, 0.06, 0.06, 0.06, None], None)  # fmt: skip
    assert math.isnan(widths[4]) and gsd == 0.2  # JSON null → nan for the non-spectral band; the record's GSD
    with pytest.raises(ValueError, match=r"3 bandwidths .* for 4 bands"):
        build_segmentor(backbone="tiny-copernicusfm", sensor="gf2", in_bandwidths=[0.1] * 3, **SMALL)
    with pytest.raises(ValueError, match="gsd_m must be a positive number"):
        build_segmentor(backbone="tiny-copernicusfm", sensor="gf2", gsd_m=0.0, **SMALL)


def test_softcon_slots_follow_the_bandwidths_it_is_given():
    with_record = build_segmentor(backbone="tiny-softcon", sensor="gf2", **SMALL).backbone
    bare = build_segmentor(backbone="tiny-softcon", wavelengths=list(GF2.wavelengths_um), **SMALL).backbone
    assert with_record.slots[6] == 0  # B7 (783 nm) within the 120-nm-wide GF-2 NIR band of the record
    assert bare.slots[6] is None  # the default 60 nm FWHM does not reach it


def test_backbones_without_band_metadata_ignore_it():
    backbone = build_backbone("tiny-eva02", pretrained=False, in_wavelengths=GF2.wavelengths_um,
                              in_bandwidths=GF2.bandwidths(), gsd_m=4.0)  # fmt: skip
    assert backbone.in_channels == 4
    dofa = build_backbone("tiny-dofa", pretrained=False, in_wavelengths=GF2.wavelengths_um, gsd_m=4.0)
    assert dofa.in_wavelengths == list(GF2.wavelengths_um)


def test_export_keeps_the_band_metadata(tmp_path):
    build = {"backbone": "tiny-copernicusfm", "adapter": "freeze", "head": "fpn", "depth": None, "num_classes": 3,
             "head_kwargs": {"channels": 16}, "sensor": "gf2", "in_bandwidths": [0.1, 0.05, 0.05, 0.05],
             "gsd_m": 8.0}  # fmt: skip
    model = build_segmentor(**build, pretrained=False)
    export_trainable(model, tmp_path / "export", build_config=build)
    assert read_export_config(tmp_path / "export")["build"]["gsd_m"] == 8.0
    loaded = load_exported(tmp_path / "export", pretrained=False)
    assert loaded.backbone.in_bandwidths == [0.1, 0.05, 0.05, 0.05] and loaded.backbone.gsd_m == 8.0


def test_predict_scene_gsd_option(tmp_path):
    torch.manual_seed(0)
    model = build_segmentor(backbone="tiny-copernicusfm", sensor="gf2", **SMALL).eval()
    scene = tmp_path / "scene.tif"
    data = np.random.default_rng(0).uniform(0, 255, (4, 40, 50)).astype(np.float32)
    with rasterio.open(scene, "w", driver="GTiff", height=40, width=50, count=4, dtype="float32", crs="EPSG:32650",
                       transform=Affine(2.0, 0, 500000.0, 0, -2.0, 4000000.0)) as dst:  # fmt: skip
        dst.write(data)
    predict_scene(model, scene, tmp_path / "map.tif", tile=32, overlap=8, pretrained=False, progress=False,
                  preview=False, gsd_m=2.0)  # fmt: skip
    assert model.backbone.gsd_m == 2.0 and model.backbone.area_km2 == pytest.approx(0.001024)
    other = build_segmentor(backbone="tiny-dinov3", sensor="gf2", **SMALL).eval()
    with pytest.warns(UserWarning, match="gsd_m=2 ignored"):
        summary = predict_scene(other, scene, tmp_path / "map2.tif", tile=32, overlap=8, pretrained=False,
                                progress=False, preview=False, gsd_m=2.0)  # fmt: skip
    assert any("uses no GSD" in note for note in summary.warnings)
    import argparse

    parser = argparse.ArgumentParser()
    add_predict_scene_parser(parser.add_subparsers())
    args = parser.parse_args(["predict-scene", "--checkpoint", "x", "--input", "a.tif", "--output", "b.tif",
                              "--gsd", "0.8"])  # fmt: skip
    assert args.gsd_m == 0.8
