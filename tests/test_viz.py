"""Pictures: colour maps, composites chosen by wavelength, confusion matrices, the `viz` command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from affine import Affine

from spectralmoe.bands import get_sensor
from spectralmoe.viz import (
    add_viz_parser,
    colorize,
    composite,
    composite_bands,
    confusion_from_rasters,
    confusion_matrix,
    default_palette,
    error_map,
    load_classes_file,
    percentile_stretch,
    read_class_info,
    read_decimated,
    render_routing_map,
    viz_figure,
    write_preview,
)

CLASSES = ["water", "field", "forest"]
PALETTE = [(0, 90, 200), (230, 200, 90), (20, 130, 40)]
GRID = {"crs": "EPSG:32650", "transform": Affine(1.0, 0.0, 500000.0, 0.0, -1.0, 4000000.0)}


def write_map(path: Path, labels: np.ndarray, *, names: list[str] | None = CLASSES, colours=PALETTE,
              nodata: int | None = 255, grid: dict | None = None) -> Path:  # fmt: skip
    """A class map as predict_scene writes it (colour table + CLASS_NAMES tag)."""
    profile = {"driver": "GTiff", "height": labels.shape[0], "width": labels.shape[1], "count": 1, "dtype": "uint8",
               "nodata": nodata, **(GRID if grid is None else grid)}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(labels[None])
        if colours is not None:
            dst.write_colormap(1, {i: (*c, 255) for i, c in enumerate(colours)})
        if names is not None:
            dst.update_tags(CLASS_NAMES=json.dumps(names))
    return path


def labels_and_truth(height: int = 90, width: int = 130) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, (height, width)).astype(np.uint8)
    pred = truth.copy()
    flip = rng.random((height, width)) < 0.2
    pred[flip] = (pred[flip] + 1) % 3
    truth[:5] = 255  # ignored rows
    pred[:, :4] = 255  # nodata columns
    return pred, truth


def test_colorize_uses_the_palette_and_makes_nodata_transparent():
    labels = np.array([[0, 1, 2], [255, 7, 0]], dtype=np.uint8)
    rgba = colorize(labels, PALETTE)
    assert rgba.shape == (2, 3, 4) and rgba.dtype == np.uint8
    assert [tuple(rgba[0, i, :3]) for i in range(3)] == PALETTE and (rgba[0, :, 3] == 255).all()
    assert rgba[1, 0, 3] == 0  # nodata
    assert tuple(rgba[1, 1]) == (128, 128, 128, 255)  # a value outside the palette: neutral grey
    assert len(set(default_palette(12))) == 12
    with pytest.raises(ValueError, match="palette entry 1"):
        colorize(labels, [(0, 0, 0), (300, 0, 0)])


def test_composites_choose_bands_by_wavelength():
    gf2 = get_sensor("gf2").wavelengths_um  # NIR, R, G, B
    assert composite_bands(gf2, 4, "true")[0] == [1, 2, 3]
    assert composite_bands(gf2, 4, "false")[0] == [0, 1, 2]
    assert composite_bands(gf2, 4, "auto")[0] == [0, 1, 2]
    assert composite_bands(get_sensor("gf2-16bit").wavelengths_um, 4, "auto")[0] == [3, 2, 1]  # B,G,R,NIR file
    assert composite_bands(get_sensor("rgb").wavelengths_um, 3, "auto")[0] == [0, 1, 2]  # no NIR: true colour
    assert composite_bands(None, 5)[0] == [0, 1, 2]
    with pytest.raises(ValueError, match="no blue band"):
        composite_bands(get_sensor("vaihingen").wavelengths_um, 3, "true")
    with pytest.raises(ValueError, match="near-infrared"):
        composite_bands(get_sensor("rgb").wavelengths_um, 3, "false")

    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1000, (4, 20, 30)).astype(np.float32)
    image[:, 0, 0] = -1  # nodata pixel
    image[2, 1, 1] = np.nan
    rgba, label = composite(image, gf2, mode="true", nodata=-1)
    assert "true colour" in label and rgba.shape == (20, 30, 4)
    assert rgba[0, 0, 3] == 0 and rgba[1, 1, 3] == 0 and rgba[5, 5, 3] == 255
    stretched = percentile_stretch(image[1:4], valid=rgba[..., 3] > 0)
    assert stretched.min() == 0.0 and stretched.max() == 1.0
    assert 0.01 < (stretched[0] == 1.0).mean() <= 0.04  # ~2 % of pixels at or above the 98th percentile


def test_confusion_matrix_in_memory_and_streamed(tmp_path):
    pred, truth = labels_and_truth()
    matrix = confusion_matrix(pred, truth, 3)
    scored = (truth != 255) & (pred != 255)
    assert matrix.sum() == scored.sum()
    for t in range(3):
        for p in range(3):
            assert matrix[t, p] == ((truth == t) & (pred == p) & scored).sum()
    pred_path, truth_path = write_map(tmp_path / "pred.tif", pred), write_map(tmp_path / "gt.tif", truth)
    assert (confusion_from_rasters(pred_path, truth_path, 3, rows_per_read=7) == matrix).all()
    moved = {"crs": "EPSG:32650", "transform": Affine(1.0, 0.0, 500010.0, 0.0, -1.0, 4000000.0)}
    shifted = write_map(tmp_path / "shifted.tif", truth, grid=moved)
    with pytest.raises(ValueError, match="pred.tif.*shifted.tif.*not on the same grid"):
        confusion_from_rasters(pred_path, shifted, 3)
    with pytest.raises(ValueError, match=r"is 130 × 90 px \(width × height\) but ground truth .*small.tif is 10 × 10 px"):
        confusion_from_rasters(pred_path, write_map(tmp_path / "small.tif", truth[:10, :10]), 3)
    errors = error_map(pred, truth)
    assert (errors[..., 3] > 0).sum() == scored.sum()
    assert (errors[scored & (pred != truth)][:, 0] == 220).all()


def test_viz_command_writes_the_figure_and_confusion_matrix(tmp_path, capsys):
    pred, truth = labels_and_truth()
    pred_path, truth_path = write_map(tmp_path / "map.tif", pred), write_map(tmp_path / "gt.tif", truth)
    image = np.random.default_rng(1).integers(1, 255, (4, *pred.shape)).astype(np.uint16)
    with rasterio.open(tmp_path / "scene.tif", "w", driver="GTiff", height=pred.shape[0], width=pred.shape[1],
                       count=4, dtype="uint16", nodata=0, **GRID) as dst:  # fmt: skip
        dst.write(image)
    routing = write_map(tmp_path / "routing.tif", (np.arange(pred.size).reshape(pred.shape) // 500 % 3).astype(
        np.uint8), names=None, colours=None)  # fmt: skip
    parser = argparse.ArgumentParser(prog="spectralmoe")
    add_viz_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["viz", "--prediction", str(pred_path), "--ground-truth", str(truth_path),
                              "--image", str(tmp_path / "scene.tif"), "--sensor", "gf2", "--routing", str(routing),
                              "--output", str(tmp_path / "figs" / "fig.png")])  # fmt: skip
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    matrix = confusion_matrix(pred, truth, 3)
    assert f"overall accuracy {100 * np.trace(matrix) / matrix.sum():.1f} %" in printed  # percent, as everywhere
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["fig.png", "fig_confusion.png", "fig_routing.png"]
    with Image.open(tmp_path / "figs" / "fig.png") as figure, Image.open(tmp_path / "figs" / "fig_confusion.png") as cm:
        assert figure.width > 3 * figure.height / 1.5 and cm.width > 200  # four panels side by side
    result = viz_figure(pred_path, tmp_path / "only.png")  # prediction alone: one panel, no matrix
    assert result.confusion_figure is None and result.class_names == CLASSES and (tmp_path / "only.png").is_file()


def test_class_names_come_from_files_or_the_map(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(CLASSES))
    (tmp_path / "b.json").write_text(json.dumps({"classes": CLASSES, "palette": [list(c) for c in PALETTE]}))
    (tmp_path / "c.txt").write_text("# classes\nwater\nfield\n\nforest\n")
    assert load_classes_file(tmp_path / "a.json") == (CLASSES, None)
    assert load_classes_file(tmp_path / "b.json") == (CLASSES, PALETTE)
    assert load_classes_file(tmp_path / "c.txt") == (CLASSES, None)
    pred, truth = labels_and_truth()
    assert read_class_info(write_map(tmp_path / "m.tif", pred)) == (CLASSES, PALETTE)
    bare = write_map(tmp_path / "bare.tif", pred, names=None, colours=None)
    assert read_class_info(bare) == (None, None)
    with pytest.raises(ValueError, match="no CLASS_NAMES tag"):
        viz_figure(bare, tmp_path / "x.png")
    result = viz_figure(bare, tmp_path / "x.png", classes=tmp_path / "b.json", ground_truth=write_map(
        tmp_path / "t.tif", truth))  # fmt: skip
    assert result.class_names == CLASSES and result.confusion_figure.is_file()
    assert 0.75 < result.overall_accuracy < 0.85  # 20 % of the labels were flipped


def test_previews_read_large_maps_decimated(tmp_path):
    labels = np.zeros((3000, 2000), dtype=np.uint8)
    labels[:, 1000:] = 2
    labels[:100] = 255
    path = write_map(tmp_path / "big.tif", labels)
    small, nodata = read_decimated(path, max_size=300)
    assert small.shape == (1, 300, 200) and nodata == 255
    write_preview(path, tmp_path / "big.png", max_size=300)
    with Image.open(tmp_path / "big.png") as png:
        assert png.format == "PNG" and png.width < 1200
    routing = write_map(tmp_path / "routing.tif", (labels % 3).astype(np.uint8), names=None, colours=None)
    render_routing_map(routing, tmp_path / "routing.png", num_experts=3, max_size=200)
    assert (tmp_path / "routing.png").stat().st_size > 1000
