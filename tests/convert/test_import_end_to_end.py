"""The README's three commands on tiny stand-ins: the authors' .pth (+ their converted backbone file)
→ ``import-checkpoint`` → ``spectralmoe test`` on a prepared benchmark → ``predict-scene`` on a GeoTIFF."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine

from spectralmoe.cli import main
from spectralmoe.data.datasets.prepared import PreparedDataset
from spectralmoe.engine.export import load_exported
from spectralmoe.engine.metrics import SegConfusion
from tests.convert.fakes import authors_backbone_file, authors_spectralmoe_checkpoint, tiny_depth_preset  # noqa: F401
from tests.test_configs import cpu_trainer_args, make_prepared_root, tiny_task_file

REPO = Path(__file__).resolve().parents[2]
TASK = "fbp-cross-sensor"


def test_authors_pth_to_per_domain_metrics_and_a_georeferenced_map(tmp_path, tiny_depth_preset):
    ckpt, _ = authors_spectralmoe_checkpoint(tmp_path / "cross_sensor_iter_78760.pth")
    backbone_file = authors_backbone_file(tmp_path / "dinov3_converted_depthmoe.pth")
    export = tmp_path / "imported"

    # 1. import (tiny presets stand in for dinov3-vitl16 / prompt-depth-anything-large)
    assert main(["import-checkpoint", str(ckpt), "--backbone-weights", str(backbone_file), "--task", TASK,
                 "--out", str(export), "--backbone", "tiny-dinov3", "--depth", tiny_depth_preset]) == 0  # fmt: skip

    # 2. test on a prepared benchmark: the task file only, the model comes from the export
    root = make_prepared_root(TASK, tmp_path / "fbp", source_tiles=1, tiles_per_target=2, target_size=64)
    assert main([
        "test", "-c", str(REPO / "configs" / "tasks" / f"{TASK}.yaml"), "--model.export", str(export),
        "--data.root", str(root), "--data.task", str(tiny_task_file(TASK, tmp_path)), "--data.num_workers", "0",
        "--run.root", str(tmp_path / "runs"), "--run.name", "imported", *cpu_trainer_args(),
    ]) == 0  # fmt: skip
    run = next((tmp_path / "runs" / "imported").glob("version_*"))
    report = json.loads((run / "metrics_test.json").read_text())
    assert set(report["domains"]) == {"gf1", "planetscope"}

    # the same numbers from the export by hand: whole tiles, no padding, bands as stored (model order)
    model = load_exported(export)
    target = PreparedDataset(root, split="target")
    for domain, row in report["domains"].items():
        confusion = SegConfusion(24)
        for sample in (target[i] for i in range(len(target))):
            if sample["sensor"] != domain:
                continue
            with torch.no_grad():
                pred = model.predict_logits(sample["image"][None], mode="whole", pad=False).argmax(1)
            confusion.update(pred, sample["mask"][None])
        matrix = confusion.compute()
        expected = 100.0 * matrix.diag().sum().item() / matrix.sum().item()
        assert abs(row["aAcc"] - expected) < 1e-6, (domain, row["aAcc"], expected)

    # 3. map a GeoTIFF scene (NIR,R,G,B, 8-bit) with the imported model
    scene, output = tmp_path / "scene.tif", tmp_path / "map.tif"
    transform = Affine(0.8, 0.0, 500000.0, 0.0, -0.8, 4000000.0)
    pixels = np.random.default_rng(0).integers(0, 255, (4, 80, 96)).astype(np.uint8)
    with rasterio.open(scene, "w", driver="GTiff", height=80, width=96, count=4, dtype="uint8", crs="EPSG:32650",
                       transform=transform) as dst:  # fmt: skip
        dst.write(pixels)
    assert main(["predict-scene", "--checkpoint", str(export), "--input", str(scene), "--output", str(output),
                 "--tile", "64", "--overlap", "16", "--quiet"]) == 0  # fmt: skip
    with rasterio.open(output) as src:
        assert src.crs.to_string() == "EPSG:32650" and src.transform == transform
        classes = src.read(1)
    assert classes.shape == (80, 96) and classes.max() < 24
