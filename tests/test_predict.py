"""Scene-scale inference: georeference and format of the map, nodata, blending without seams, band
matching by wavelength, the three checkpoint forms, atomic outputs, the CLI parser, bounded memory."""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from affine import Affine

from spectralmoe.engine.export import export_trainable, load_exported
from spectralmoe.engine.task import SegmentationTask
from spectralmoe.models.factory import build_segmentor
from spectralmoe.predict import (
    BandMismatchError,
    ModelSource,
    add_predict_scene_parser,
    blend_window,
    match_bands,
    predict_scene,
    resolve_checkpoint,
    tile_starts,
)
from tests import perturb_trainable

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["water", "field", "forest", "urban"]
PALETTE = [(0, 90, 200), (230, 200, 90), (20, 130, 40), (200, 40, 40)]
MEAN, STD = [100.0, 110.0, 120.0, 90.0], [50.0, 55.0, 60.0, 45.0]
SMOE = {"token_length": 8, "query_dim": 32, "num_experts": 3, "rank": 4}
BUILD = {
    "backbone": "tiny-dinov3", "adapter": "spectralmoe", "head": "fpn", "depth": "tiny-depth-anything",
    "sensor": "gf2", "num_classes": 4, "adapter_kwargs": SMOE, "head_kwargs": {"channels": 64},
    "pixel_mean": MEAN, "pixel_std": STD,
}  # fmt: skip
CRS = "EPSG:32650"
TRANSFORM = Affine(0.8, 0.0, 500000.0, 0.0, -0.8, 4000000.0)  # 0.8 m pixels, UTM 50N
H, W = 217, 300  # odd, not a multiple of the tile
TILE, OVERLAP = 64, 16
NODATA = -9999.0
FAST = {"tile": TILE, "overlap": OVERLAP, "pretrained": False, "progress": False}


def tiny_model(adapter: str = "spectralmoe") -> torch.nn.Module:
    """The tiny GF-2 model, trainable weights moved off their init (zero routers would route every token
    to expert 0)."""
    build = {**BUILD, "adapter": adapter, "adapter_kwargs": SMOE if adapter == "spectralmoe" else {}}
    torch.manual_seed(0)
    model = build_segmentor(**build, pretrained=False)
    perturb_trainable(model)
    return model.eval()


def write_scene(path: Path, array: np.ndarray, nodata: float | None = NODATA) -> Path:
    profile = {"driver": "GTiff", "height": array.shape[1], "width": array.shape[2], "count": array.shape[0],
               "dtype": array.dtype.name, "crs": CRS, "transform": TRANSFORM, "nodata": nodata}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
    return path


def scene_array(seed: int = 0, height: int = H, width: int = W, holes: bool = True) -> np.ndarray:
    """NIR,R,G,B float32 scene; with ``holes`` a nodata block and one NaN pixel (in one band only)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 255, (4, height // 8 + 2, width // 8 + 2)).astype(np.float32)
    array = np.repeat(np.repeat(base, 8, 1), 8, 2)[:, :height, :width]  # blocky "fields" with local structure
    array = array + rng.normal(0, 8, array.shape).astype(np.float32)
    if holes:
        array[:, 10:40, 20:60] = NODATA
        array[2, 100, 100] = np.nan
    return np.ascontiguousarray(array)


def invalid_mask(array: np.ndarray) -> np.ndarray:
    return (array == NODATA).all(0) | np.isnan(array).any(0)


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "export"
    return export_trainable(tiny_model(), folder, build_config=BUILD, class_names=CLASSES, palette=PALETTE)


@pytest.fixture(scope="module")
def model(export: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    return load_exported(export, pretrained=False)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    array = scene_array()
    return write_scene(tmp_path_factory.mktemp("scene") / "scene.tif", array), array


@pytest.fixture(scope="module")
def full_run(export: Path, scene: tuple[Path, np.ndarray], tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("out")
    torch.manual_seed(0)
    summary = predict_scene(export, scene[0], out / "map.tif", probabilities=out / "prob.tif",
                            routing=out / "routing.tif", routing_layer=1, **FAST)  # fmt: skip
    return summary, out


# ------------------------------------------------------------------------------------- the map
def test_map_keeps_the_input_grid_palette_and_class_names(full_run, scene):
    summary, out = full_run
    assert sorted(p.name for p in out.iterdir()) == ["map.png", "map.tif", "prob.tif", "routing.tif"]  # no temp left
    with rasterio.open(scene[0]) as src, rasterio.open(out / "map.tif") as dst:
        assert dst.crs == src.crs and dst.transform == src.transform
        assert (dst.height, dst.width, dst.count) == (src.height, src.width, 1) == (H, W, 1)
        assert dst.dtypes[0] == "uint8" and dst.nodata == 255
        assert dst.profile["tiled"] and dst.block_shapes[0] == (256, 256)
        assert dst.compression.name.lower() == "deflate" and dst.overviews(1) == [2]
        colormap = dst.colormap(1)
        assert [colormap[i][:3] for i in range(4)] == PALETTE and colormap[255][3] == 0
        assert json.loads(dst.tags()["CLASS_NAMES"]) == CLASSES
    assert summary.tiles == len(tile_starts(H, TILE, TILE - OVERLAP)) * len(tile_starts(W, TILE, TILE - OVERLAP)) == 30
    assert summary.class_names == CLASSES and summary.bands_used == [0, 1, 2, 3]
    assert sum(summary.class_pixels.values()) + summary.nodata_pixels == H * W
    from PIL import Image

    with Image.open(out / "map.png") as preview:  # the colour preview with its legend
        assert preview.format == "PNG" and preview.width > 300 and preview.height > 200


def test_nodata_exactly_where_the_input_is_nodata_or_nan(full_run, scene):
    summary, out = full_run
    labels = read(out / "map.tif")[0]
    bad = invalid_mask(scene[1])
    assert bad.sum() == 30 * 40 + 1  # the block and the one NaN pixel
    assert (labels[bad] == 255).all() and (labels[~bad] < 4).all()
    assert summary.nodata_pixels == bad.sum()
    assert len(np.unique(labels[~bad])) > 1  # a real map, not a constant


def test_probability_and_routing_rasters(full_run, scene):
    _, out = full_run
    labels = read(out / "map.tif")[0]
    bad = invalid_mask(scene[1])
    with rasterio.open(out / "prob.tif") as src:
        assert src.crs == CRS and src.transform == TRANSFORM and src.count == 4 and src.dtypes[0] == "float32"
        assert [src.descriptions[i] for i in range(4)] == CLASSES
        probs = src.read()
    np.testing.assert_allclose(probs[:, ~bad].sum(0), 1.0, atol=1e-5)
    assert np.isnan(probs[:, bad]).all()
    assert (probs.argmax(0)[~bad] == labels[~bad]).all()
    with rasterio.open(out / "routing.tif") as src:
        assert src.crs == CRS and src.transform == TRANSFORM and src.dtypes[0] == "uint8"
        assert src.tags()["NUM_EXPERTS"] == "3" and src.tags()["ROUTING_LAYER"] == "1"
        routing = src.read(1)
    assert (routing[bad] == 255).all() and (routing[~bad] < 3).all()
    assert len(np.unique(routing[~bad])) > 1  # the perturbed routers use several experts


def test_single_tile_scene_equals_the_models_own_prediction(model, tmp_path):
    array = scene_array(3, TILE, TILE, holes=False)
    path = write_scene(tmp_path / "one.tif", array)
    predict_scene(model, path, tmp_path / "one_map.tif", preview=False, **FAST)
    expected = model.predict_logits(torch.from_numpy(array)[None]).argmax(1)[0].numpy()
    assert (read(tmp_path / "one_map.tif")[0] == expected).all()


# ---------------------------------------------------------------------------------- blending
def local_logits(model: torch.nn.Module, kernel: int):
    """A stand-in whose scores depend on local content only (a box filter then a fixed linear map of the
    normalised bands): with it, correct tiling + blending must reproduce the whole-scene result."""
    weight = torch.tensor([[1.0, -0.5, 0.3, 0.0], [-0.4, 1.0, 0.0, 0.6], [0.2, 0.1, -1.0, 0.5], [0.0, 0.0, 0.4, -0.9]])
    bias = torch.tensor([0.1, -0.2, 0.05, 0.0])

    def predict_logits(image: torch.Tensor, wavelengths=None, **_: object) -> torch.Tensor:
        x = model.normalize(image.float())
        if kernel > 1:
            x = F.avg_pool2d(x, kernel, stride=1, padding=kernel // 2, count_include_pad=False)
        return torch.einsum("kc,bchw->bkhw", weight, x) + bias[:, None, None]

    return predict_logits


def test_blending_reproduces_a_local_model_exactly(model, scene, tmp_path, monkeypatch):
    monkeypatch.setattr(model, "predict_logits", local_logits(model, 1))
    path, array = scene
    summary = predict_scene(model, path, tmp_path / "map.tif", probabilities=tmp_path / "p.tif", preview=False, **FAST)
    bad = invalid_mask(array)
    expected = local_logits(model, 1)(torch.from_numpy(np.nan_to_num(array))[None])[0].softmax(0).numpy()
    probs = read(tmp_path / "p.tif")
    np.testing.assert_allclose(probs[:, ~bad], expected[:, ~bad], atol=2e-6)
    assert (read(tmp_path / "map.tif")[0][~bad] == expected.argmax(0)[~bad]).all()
    assert summary.tiles == 30


@pytest.mark.parametrize("shape", [(H, W), (50, 150)])  # (50, 150): shorter than a tile, mirrored up to it
def test_constant_scene_gives_a_constant_map_without_seams(model, tmp_path, monkeypatch, shape):
    monkeypatch.setattr(model, "predict_logits", local_logits(model, 3))
    array = np.empty((4, *shape), dtype=np.float32)
    array[:] = np.array([30.0, 200.0, 40.0, 220.0], dtype=np.float32)[:, None, None]  # far from the band means
    path = write_scene(tmp_path / "constant.tif", array)
    predict_scene(model, path, tmp_path / "map.tif", probabilities=tmp_path / "p.tif", preview=False, **FAST)
    labels, probs = read(tmp_path / "map.tif")[0], read(tmp_path / "p.tif")
    assert len(np.unique(labels)) == 1
    assert np.ptp(probs, axis=(1, 2)).max() < 1e-6  # no seam, no border effect: every pixel identical


def test_tiles_without_a_valid_pixel_are_not_run(model, tmp_path, monkeypatch):
    array = scene_array(5, holes=False)
    array[:, :100, :120] = NODATA  # holds tiles (0, 0) and (0, 48) entirely
    path = write_scene(tmp_path / "holes.tif", array)
    run, original = [], model.predict_logits
    monkeypatch.setattr(model, "predict_logits", lambda image, *a, **k: run.append(len(image)) or original(image))
    summary = predict_scene(model, path, tmp_path / "map.tif", preview=False, **FAST)
    assert summary.tiles_skipped == 2 and sum(run) == summary.tiles - 2 == 28
    labels = read(tmp_path / "map.tif")[0]
    assert (labels[:100, :120] == 255).all() and (labels[100:] < 4).all() and (labels[:, 120:] < 4).all()


def test_blend_window_and_tile_starts():
    w = blend_window(64)
    assert w.shape == (64, 64) and np.allclose(w, w.T) and np.allclose(w, w[::-1, ::-1])
    assert w.min() > 0.0025 - 1e-6 and w.max() <= 1.0 and w[32, 32] > 20 * w[0, 0]
    assert tile_starts(217, 64, 48) == [0, 48, 96, 144, 153] and tile_starts(50, 64, 48) == [0]
    for length in (64, 65, 300, 1000):
        starts = tile_starts(length, 64, 48)
        assert starts[-1] + 64 == length and all(b - a <= 48 for a, b in zip(starts, starts[1:]))


# ------------------------------------------------------------------------------------- bands
def test_band_mismatch_is_an_error_before_any_work(export, scene, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the model was built before the bands were checked")

    monkeypatch.setattr(ModelSource, "load", never)
    three = write_scene(tmp_path / "rgb.tif", scene[1][1:])
    out = tmp_path / "out" / "map.tif"
    with pytest.raises(BandMismatchError, match=r"rgb\.tif \(shape 3x217x300, float32\) has 3 band.*trained on 4"):
        predict_scene(export, three, out, **FAST)
    with pytest.raises(BandMismatchError, match=r"model band 1 \(0\.830 µm\) is missing"):
        predict_scene(export, three, out, sensor="rgb", **FAST)
    with pytest.raises(BandMismatchError, match="has 4 band.*sensor 'rgb' describes 3"):
        predict_scene(export, scene[0], out, sensor="rgb", **FAST)
    assert not out.parent.exists()  # nothing written, not even a temporary file


def test_bands_are_selected_and_reordered_by_wavelength(model, scene, tmp_path):
    path, array = scene
    predict_scene(model, path, tmp_path / "ref.tif", preview=False, **FAST)
    reference = read(tmp_path / "ref.tif")
    bgrn = write_scene(tmp_path / "bgrn.tif", array[::-1].copy())  # B,G,R,NIR: the 16-bit GF-2 product's order
    summary = predict_scene(model, bgrn, tmp_path / "a.tif", wavelengths=[0.49, 0.56, 0.665, 0.83], preview=False,
                            **FAST)  # fmt: skip
    assert summary.bands_used == [3, 2, 1, 0]
    assert (read(tmp_path / "a.tif") == reference).all()
    with pytest.warns(UserWarning, match="value scale 1023"):
        predict_scene(model, bgrn, tmp_path / "b.tif", sensor="gf2-16bit", preview=False, **FAST)
    assert (read(tmp_path / "b.tif") == reference).all()
    swir = np.full((1, H, W), 77.0, dtype=np.float32)  # an extra band the model never saw
    five = write_scene(tmp_path / "five.tif", np.concatenate([array[3:], swir, array[:3]]))
    predict_scene(model, five, tmp_path / "c.tif", wavelengths=[0.49, 1.61, 0.83, 0.665, 0.56], preview=False,
                  **FAST)  # fmt: skip
    assert (read(tmp_path / "c.tif") == reference).all()


def test_match_bands_rules():
    gf2 = [0.830, 0.665, 0.560, 0.490]
    assert match_bands(gf2, 4) == [0, 1, 2, 3]
    assert match_bands(gf2, 4, sensor="planetscope") == [0, 1, 2, 3]  # 35 nm off in red: within tolerance
    assert match_bands(gf2, 4, sensor="flair") == [3, 0, 1, 2]
    assert match_bands([0.665, 0.56, float("nan")], 4, wavelengths=[float("nan"), 0.56, 0.665, 0.49]) == [2, 1, 0]
    with pytest.raises(BandMismatchError, match="non-spectral"):
        match_bands([0.665, float("nan")], 2, wavelengths=[0.665, 0.56])
    with pytest.raises(BandMismatchError, match="feed several model bands"):
        match_bands([0.66, 0.67], 2, wavelengths=[0.665, 0.9])
    with pytest.raises(ValueError, match="not both"):
        match_bands(gf2, 4, sensor="gf2", wavelengths=gf2)


# ------------------------------------------------------------------------------- checkpoints
def test_export_run_folder_and_ckpt_forms_give_the_same_map(export, scene, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(export, run / "export")
    task = SegmentationTask(backbone="tiny-dinov3", adapter="spectralmoe", head="fpn", depth="tiny-depth-anything",
                            adapter_options=SMOE, head_options={"channels": 64}, pretrained=False, num_classes=4,
                            class_names=CLASSES, palette=[list(c) for c in PALETTE],
                            wavelengths=[0.83, 0.665, 0.56, 0.49], pixel_mean=MEAN, pixel_std=STD,
                            value_scale=255.0)  # fmt: skip
    task.configure_model()
    task.segmentor.load_state_dict(tiny_model().state_dict())
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.strategy.connect(task)
    trainer.save_checkpoint(tmp_path / "last.ckpt")

    maps = {}
    for name, checkpoint in {"export": export, "run": run, "ckpt": tmp_path / "last.ckpt"}.items():
        source = resolve_checkpoint(checkpoint)
        assert source.class_names == CLASSES and source.palette == PALETTE and source.num_classes == 4
        assert source.wavelengths == pytest.approx([0.83, 0.665, 0.56, 0.49]) and source.adapter == "spectralmoe"
        torch.manual_seed(0)  # the same random frozen parts (pretrained=False) for every form
        predict_scene(checkpoint, scene[0], tmp_path / f"{name}.tif", preview=False, **FAST)
        maps[name] = read(tmp_path / f"{name}.tif")
    assert (maps["export"] == maps["run"]).all() and (maps["export"] == maps["ckpt"]).all()
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        resolve_checkpoint(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="export_best"):
        resolve_checkpoint(tmp_path)


def test_routing_needs_spectralmoe_and_a_valid_layer(export, scene, tmp_path):
    rein = export_trainable(tiny_model("rein"), tmp_path / "rein", build_config={**BUILD, "adapter": "rein",
                                                                                 "adapter_kwargs": {}})  # fmt: skip
    with pytest.raises(ValueError, match="SpectralMoE model.*'rein'"):
        predict_scene(rein, scene[0], tmp_path / "a.tif", routing=tmp_path / "r.tif", **FAST)
    with pytest.raises(ValueError, match="routing-layer 9 out of range for 4"):
        predict_scene(export, scene[0], tmp_path / "a.tif", routing=tmp_path / "r.tif", routing_layer=9, **FAST)
    assert not list(tmp_path.glob("*.tif"))


# ------------------------------------------------------------------------ atomicity, devices
def test_a_failure_midway_leaves_no_file_and_keeps_the_old_map(model, scene, tmp_path, monkeypatch):
    out = tmp_path / "map.tif"
    out.write_bytes(b"previous map")
    calls = {"n": 0}
    original = model.predict_logits

    def flaky(image, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated failure in batch 4")
        return original(image, *args, **kwargs)

    monkeypatch.setattr(model, "predict_logits", flaky)
    with pytest.raises(RuntimeError, match="batch 4"):
        predict_scene(model, scene[0], out, probabilities=tmp_path / "p.tif", **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.tif"] and out.read_bytes() == b"previous map"


def test_bf16_autocast_runs_on_cpu_and_cuda_is_checked(model, scene, tmp_path):
    predict_scene(model, scene[0], tmp_path / "fp32.tif", preview=False, **FAST)
    summary = predict_scene(model, scene[0], tmp_path / "bf16.tif", precision="bf16", preview=False, **FAST)
    assert summary.precision == "bf16"
    fp32, bf16 = read(tmp_path / "fp32.tif")[0], read(tmp_path / "bf16.tif")[0]
    assert ((bf16 == 255) == (fp32 == 255)).all()
    assert (bf16 == fp32).mean() > 0.9  # same model in bfloat16: nearly the same map
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            predict_scene(model, scene[0], tmp_path / "gpu.tif", device="cuda", **FAST)


# ------------------------------------------------------------------------------------------ CLI
def test_cli_parser_runs_predict_scene_with_a_progress_bar(export, scene, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="spectralmoe")
    add_predict_scene_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["predict-scene", "--checkpoint", str(export), "--input", str(scene[0]),
                              "--output", str(tmp_path / "map.tif"), "--tile", "64", "--overlap", "16",
                              "--random-frozen", "--json", "--wavelengths", "0.83,0.665", "0.56", "0.49"])  # fmt: skip
    torch.manual_seed(0)
    assert args.func(args) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["output"] == str(tmp_path / "map.tif") and report["tiles"] == 30 and report["precision"] == "fp32"
    assert report["input_bands"] == [1, 2, 3, 4]  # printed band numbers count from 1, as GDAL does
    assert "30/30" in captured.err  # the tqdm bar over tiles
    assert (tmp_path / "map.tif").is_file() and (tmp_path / "map.png").is_file()
    with pytest.raises(SystemExit):  # --sensor and --wavelengths exclude each other
        parser.parse_args(["predict-scene", "--checkpoint", "x", "--input", "a", "--output", "b", "--sensor", "gf2",
                           "--wavelengths", "0.5"])  # fmt: skip


# --------------------------------------------------------------------------------------- memory
MEMORY_SCRIPT = r"""
import json, sys, torch
torch.set_num_threads(1)
from spectralmoe.predict import predict_scene

def status_mb(key):  # VmHWM: this process's peak RSS (ru_maxrss would include the parent's RSS at fork)
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024

def reset_peak():
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")

export, warm, short, tall, out = sys.argv[1:6]
opts = dict(tile=128, overlap=32, batch_size=4, pretrained=False, progress=False, preview=False, gdal_cache_mb=4)
torch.manual_seed(0)
predict_scene(export, warm, out + "/warm.tif", **opts)
before = status_mb("VmRSS")
reset_peak()
predict_scene(export, short, out + "/short.tif", **opts)
short_peak = status_mb("VmHWM")
reset_peak()
predict_scene(export, tall, out + "/tall.tif", **opts)
print(json.dumps({"before": before, "short": short_peak, "tall": status_mb("VmHWM")}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS accounting")
def test_memory_is_bounded_by_the_strip_not_the_scene(export, tmp_path):
    """Peak RSS of a fresh process (VmHWM, reset before each scene) for a 512×768 and a 2560×768 4-band
    uint16 scene: the taller scene must not cost more (a whole-scene approach would need ≥ 48 MB more:
    its float32 image + probabilities)."""
    spec = importlib.util.spec_from_file_location("scene_memory", ROOT / "benchmarks" / "scene_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.write_scene(tmp_path / "warm.tif", 200, 768, 4)
    bench.write_scene(tmp_path / "short.tif", 512, 768, 4)
    bench.write_scene(tmp_path / "tall.tif", 2560, 768, 4)
    out = tmp_path / "out"
    out.mkdir()
    scenes = [str(tmp_path / f"{name}.tif") for name in ("warm", "short", "tall")]
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(export), *scenes, str(out)],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    mb = json.loads(result.stdout.strip().splitlines()[-1])
    extra_pixels_mb = (2560 - 512) * 768 * (4 + 4) * 4 / 2**20  # image + probabilities as float32: 48 MB
    assert mb["tall"] - mb["short"] < 0.2 * extra_pixels_mb, mb  # not proportional to the scene
    assert mb["short"] - mb["before"] < 100, mb  # strip accumulators + one tile batch + 4 MB GDAL cache
    with rasterio.open(tmp_path / "tall.tif") as src, rasterio.open(out / "tall.tif") as dst:
        assert dst.shape == src.shape == (2560, 768) and dst.transform == src.transform
        assert (dst.read(1)[:64, :64] == 255).any()  # the scene's nodata corner


def test_predict_scene_through_the_spectralmoe_command(export, scene, tmp_path, capsys):
    """The console entry point reaches predict-scene (wired in spectralmoe.cli), and a bad input is exit 2."""
    from spectralmoe.cli import main

    path, array = scene
    out = tmp_path / "cli_map.tif"
    assert main(["predict-scene", "--checkpoint", str(export), "--input", str(path), "--output", str(out),
                 "--tile", "64", "--overlap", "16", "--random-frozen", "--quiet"]) == 0  # fmt: skip
    assert read(out).shape[-2:] == array.shape[1:]
    assert main(["predict-scene", "--checkpoint", str(export), "--input", str(tmp_path / "missing.tif"),
                 "--output", str(tmp_path / "none.tif")]) == 2  # fmt: skip
    assert not (tmp_path / "none.tif").exists()
