"""``spectralmoe viz`` refuses outputs that would replace an input and rasters that do not fit the class
list, instead of drawing (and scoring) them; every refusal exits 2 naming the file and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.robustness.conftest import CLASSES, PALETTE, refused, run, scene_array, snapshot, write_raster

K = len(CLASSES)


def class_map(path: Path, labels: np.ndarray, names: list[str] | None = CLASSES) -> Path:
    import rasterio

    write_raster(path, labels[None].astype(np.uint8), nodata=255)
    with rasterio.open(path, "r+") as dst:
        dst.write_colormap(1, {i: (*c, 255) for i, c in enumerate(PALETTE)})
        if names is not None:
            dst.update_tags(CLASS_NAMES=json.dumps(names))
    return path


@pytest.fixture
def maps(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, K, (96, 120)).astype(np.uint8)
    pred = np.where(rng.random(truth.shape) < 0.8, truth, (truth + 1) % K).astype(np.uint8)
    return {"pred": class_map(tmp_path / "map.tif", pred), "truth": class_map(tmp_path / "gt.tif", truth),
            "image": write_raster(tmp_path / "scene.tif", scene_array()), "truth_array": truth}  # fmt: skip


def viz(capsys, maps, output, *extra):
    return run(capsys, "viz", "--prediction", maps["pred"], "--output", output, *extra)


def test_control_a_fitting_ground_truth_is_scored(capsys, maps, tmp_path):
    result = viz(capsys, maps, tmp_path / "fig.png", "--ground-truth", maps["truth"])
    assert result.rc == 0 and "overall accuracy 80.1 %" in result.out


def test_output_same_as_prediction(capsys, maps, tmp_path):
    before = snapshot(tmp_path)
    refused(viz(capsys, maps, maps["pred"]), "--output", "map.tif")
    assert snapshot(tmp_path) == before


def test_output_same_as_image(capsys, maps, tmp_path):
    before = snapshot(tmp_path)
    refused(viz(capsys, maps, maps["image"], "--image", maps["image"]), "--output", "scene.tif")
    assert snapshot(tmp_path) == before


def test_confusion_figure_would_replace_the_ground_truth(capsys, maps, tmp_path):
    truth = class_map(tmp_path / "fig_confusion.png", maps["truth_array"])  # a PNG-named label: GDAL reads it
    before = snapshot(tmp_path)
    refused(viz(capsys, maps, tmp_path / "fig.png", "--ground-truth", truth), "confusion figure", "fig_confusion.png")
    assert snapshot(tmp_path) == before


def test_colour_ground_truth(capsys, maps, tmp_path):
    colour = write_raster(tmp_path / "colour_gt.tif", np.stack([maps["truth_array"] * 60] * 3).astype(np.uint8))
    refused(viz(capsys, maps, tmp_path / "fig.png", "--ground-truth", colour), "colour_gt.tif", "3 band(s)")
    assert not (tmp_path / "fig.png").exists()


def test_one_based_ground_truth(capsys, maps, tmp_path):
    one_based = class_map(tmp_path / "gt1.tif", maps["truth_array"] + 1)
    refused(viz(capsys, maps, tmp_path / "fig.png", "--ground-truth", one_based), "gt1.tif", "{4}", "outside the 4")
    assert not (tmp_path / "fig.png").exists()


def test_probability_raster_as_prediction(capsys, maps, tmp_path):
    probabilities = write_raster(tmp_path / "prob.tif", np.random.default_rng(0).random((K, 96, 120)).astype("float32"))
    (tmp_path / "c.json").write_text(json.dumps(CLASSES))
    result = run(capsys, "viz", "--prediction", probabilities, "--classes", tmp_path / "c.json", "--output",
                 tmp_path / "fig.png")  # fmt: skip
    refused(result, "--prediction", "prob.tif", "float32")
    assert not (tmp_path / "fig.png").exists()


def test_scene_as_prediction(capsys, maps, tmp_path):
    single = write_raster(tmp_path / "band.tif", np.round(scene_array()[:1]).astype(np.uint16))
    (tmp_path / "c.json").write_text(json.dumps(CLASSES))
    result = run(capsys, "viz", "--prediction", single, "--classes", tmp_path / "c.json", "--output", tmp_path / "f.png")
    refused(result, "--prediction", "band.tif", "outside the 4 classes")


def test_ignore_index_out_of_range(capsys, maps, tmp_path):
    refused(viz(capsys, maps, tmp_path / "fig.png", "--ground-truth", maps["truth"], "--ignore-index", "300"),
            "--ignore-index", "300")  # fmt: skip
    assert not (tmp_path / "fig.png").exists()


def test_class_list_shorter_than_the_map(capsys, maps, tmp_path):
    (tmp_path / "two.txt").write_text("water\nfield\n")
    refused(viz(capsys, maps, tmp_path / "fig.png", "--classes", tmp_path / "two.txt"), "map.tif", "outside the 2")


def test_missing_ground_truth(capsys, maps, tmp_path):
    refused(viz(capsys, maps, tmp_path / "fig.png", "--ground-truth", tmp_path / "none.tif"), "none.tif")


def test_ground_truth_of_another_size(capsys, maps, tmp_path):
    small = class_map(tmp_path / "small.tif", maps["truth_array"][:50, :50])
    refused(viz(capsys, maps, tmp_path / "fig.png", "--ground-truth", small), "small.tif", "50 × 50 px (width × height)")
