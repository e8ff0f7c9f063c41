"""``spectralmoe predict-scene`` with bad arguments, inputs, outputs and checkpoints: every one exits 2 with
one line naming the argument or file, builds no model where the input can be checked first, and leaves
no file behind."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.robustness.conftest import FAST, leftovers, refused, run, scene_array, snapshot, write_raster


def predict(capsys, export, scene, output, *extra):
    return run(capsys, "predict-scene", "--checkpoint", export, "--input", scene, "--output", output, *FAST, *extra)


# ------------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--tile", "1"], "--tile 1"),
        (["--tile", "7"], "--tile 7"),
        (["--tile", "1000000", "--overlap", "0"], "--tile 1000000"),
        (["--tile", "64", "--overlap", "64"], "--overlap 64"),
        (["--batch-size", "0"], "--batch-size"),
        (["--device", "tpu"], "--device 'tpu'"),
        (["--wavelengths", "0.83", "red", "0.56", "0.49"], "--wavelengths"),
        (["--nodata", "none"], "--nodata"),
        (["--tile", "abc"], "--tile"),
        (["--routing-layer", "99", "--routing", "ROUTING"], "--routing-layer 99"),
    ],
    ids=["tile-1", "tile-7", "tile-1e6", "overlap-eq-tile", "batch-0", "device-tpu", "wavelength-word",
         "nodata-word", "tile-word", "routing-layer-99"],
)  # fmt: skip
def test_bad_argument_is_refused_before_any_output(capsys, export, scene, tmp_path, options, named):
    options = [str(tmp_path / "r.tif") if o == "ROUTING" else o for o in options]
    (tmp_path / "map.tif").write_bytes(b"an older map")
    before = snapshot(tmp_path)
    result = run(capsys, "predict-scene", "--checkpoint", export, "--input", scene, "--output", tmp_path / "map.tif",
                 "--random-frozen", "--quiet", *(["--tile", "64", "--overlap", "16"] if "--tile" not in options else []),
                 *options)  # fmt: skip
    refused(result, named)
    assert snapshot(tmp_path) == before and not leftovers(tmp_path)


def test_device_cuda_without_cuda(capsys, export, scene, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    refused(predict(capsys, export, scene, tmp_path / "map.tif", "--device", "cuda"), "--device cuda", "CUDA")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------- inputs
def test_missing_input(capsys, export, tmp_path):
    refused(predict(capsys, export, tmp_path / "absent.tif", tmp_path / "map.tif"), "absent.tif")
    assert not list(tmp_path.iterdir())


def test_input_that_is_not_a_raster(capsys, export, tmp_path):
    text = tmp_path / "notes.tif"
    text.write_text("not an image")
    refused(predict(capsys, export, text, tmp_path / "out" / "map.tif"), "notes.tif")
    assert not (tmp_path / "out").exists()


def test_truncated_input(capsys, export, tmp_path):
    whole = write_raster(tmp_path / "whole.tif", scene_array())  # uncompressed strips
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    refused(predict(capsys, export, truncated, tmp_path / "out" / "map.tif"), "truncated.tif")
    assert not (tmp_path / "out").exists()


def test_input_with_other_band_count(capsys, export, tmp_path):
    rgb = write_raster(tmp_path / "rgb.tif", scene_array(bands=3))
    refused(predict(capsys, export, rgb, tmp_path / "map.tif"), "rgb.tif", "3 band(s)", "trained on 4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rgb.tif"]


def test_sensor_without_a_band_the_model_needs(capsys, export, tmp_path):
    rgb = write_raster(tmp_path / "rgb.tif", scene_array(bands=3))
    refused(predict(capsys, export, rgb, tmp_path / "map.tif", "--sensor", "rgb"), "rgb.tif", "0.830 µm")


# -------------------------------------------------------------------------------------- outputs
def test_output_same_as_input(capsys, export, tmp_path):
    scene = write_raster(tmp_path / "scene.tif", scene_array())
    before = snapshot(tmp_path)
    refused(predict(capsys, export, scene, scene), "--output", "same file as the input")
    assert snapshot(tmp_path) == before


def test_output_is_an_existing_folder(capsys, export, scene, tmp_path):
    folder = tmp_path / "maps"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    refused(predict(capsys, export, scene, folder), "--output", "is a folder")
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"]


def test_output_under_a_file(capsys, export, scene, tmp_path):
    (tmp_path / "plain.txt").write_text("x")
    refused(predict(capsys, export, scene, tmp_path / "plain.txt" / "map.tif"), "plain.txt", "not a folder")


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs a read-only system folder (Linux /sys)")
def test_output_in_an_unwritable_folder(capsys, export, scene):
    refused(predict(capsys, export, scene, Path("/sys/map.tif")), "--output /sys/map.tif", "cannot write in /sys")


def test_not_enough_free_space(capsys, export, scene, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    refused(predict(capsys, export, scene, tmp_path / "map.tif"), "not enough free space", str(tmp_path))
    assert not list(tmp_path.iterdir())


def test_probabilities_same_as_output(capsys, export, scene, tmp_path):
    out = tmp_path / "map.tif"
    refused(predict(capsys, export, scene, out, "--probabilities", out), "--probabilities", "same file")
    assert not list(tmp_path.iterdir())


def test_probabilities_over_the_checkpoint_weights(capsys, export, scene, tmp_path):
    weights = export / "model.safetensors"
    before = weights.read_bytes()
    refused(predict(capsys, export, scene, tmp_path / "map.tif", "--probabilities", weights), "--probabilities",
            "model.safetensors")  # fmt: skip
    assert weights.read_bytes() == before


def test_output_named_png(capsys, export, scene, tmp_path):
    refused(predict(capsys, export, scene, tmp_path / "map.png"), "--output", "map.png")


# ---------------------------------------------------------------------------------- checkpoints
def test_missing_checkpoint(capsys, scene, tmp_path):
    refused(predict(capsys, tmp_path / "nothing", scene, tmp_path / "map.tif"), "nothing")


def test_checkpoint_config_is_not_json(capsys, export_copy, scene, tmp_path):
    (export_copy / "spectralmoe.json").write_text("{ not json")
    refused(predict(capsys, export_copy, scene, tmp_path / "map.tif"), "spectralmoe.json", "not valid JSON")


def test_checkpoint_config_without_build(capsys, export_copy, scene, tmp_path):
    info = json.loads((export_copy / "spectralmoe.json").read_text())
    del info["build"]
    (export_copy / "spectralmoe.json").write_text(json.dumps(info))
    refused(predict(capsys, export_copy, scene, tmp_path / "map.tif"), "spectralmoe.json", "'build'")


def test_truncated_safetensors(capsys, export_copy, scene, tmp_path):
    weights = export_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    refused(predict(capsys, export_copy, scene, tmp_path / "out" / "map.tif"), "model.safetensors", "truncated")
    assert not (tmp_path / "out").exists()


def test_empty_safetensors(capsys, export_copy, scene, tmp_path):
    (export_copy / "model.safetensors").write_bytes(b"")
    refused(predict(capsys, export_copy, scene, tmp_path / "out" / "map.tif"), "model.safetensors")


def test_weights_with_nan(capsys, export_copy, scene, tmp_path):
    tensors = load_file(str(export_copy / "model.safetensors"))
    name = sorted(tensors)[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(export_copy / "model.safetensors"))
    refused(predict(capsys, export_copy, scene, tmp_path / "map.tif"), "model.safetensors", name)


@pytest.mark.parametrize(("field", "value", "named"), [
    ("build_pixel_mean", [100.0, float("nan"), 120.0, 90.0], "pixel_mean of band 2"),
    ("build_pixel_std", [50.0, 55.0, 1e-30, 45.0], "pixel_std of band 3"),
    ("classes", ["water", "field"], "2 class names in 'classes' for num_classes=4"),
    ("build_num_classes", 2.5, "num_classes"),
], ids=["nan-mean", "tiny-std", "fewer-class-names", "fractional-classes"])  # fmt: skip
def test_export_with_unusable_facts_is_refused_when_loaded(capsys, export_copy, scene, tmp_path, field, value, named):
    from tests.robustness.conftest import edit_export

    text = (export_copy / "spectralmoe.json").read_text()
    edit_export(export_copy, **{field: value})
    assert (export_copy / "spectralmoe.json").read_text() != text
    refused(predict(capsys, export_copy, scene, tmp_path / "map.tif"), "spectralmoe.json", named)
    assert not list(tmp_path.glob("*.tif"))


def test_garbage_ckpt(capsys, scene, tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(os.urandom(4096))
    refused(predict(capsys, ckpt, scene, tmp_path / "map.tif"), "model.ckpt", "unreadable")


class _Payload:
    def __reduce__(self):  # runs os.system(...) when unpickled without a restriction
        return (os.system, (f"touch {_Payload.marker}",))


def test_malicious_pickle_never_runs(capsys, scene, tmp_path):
    _Payload.marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.ckpt"
    ckpt.write_bytes(pickle.dumps({"hyper_parameters": _Payload()}))
    refused(predict(capsys, ckpt, scene, tmp_path / "map.tif"), "evil.ckpt")
    assert not (tmp_path / "pwned").exists()  # the payload's command never ran
