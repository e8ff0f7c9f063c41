"""Helpers of the engine tests: a tiny prepared DG benchmark and tiny tasks.

The benchmark (written with the converters' ``PrepareRun``): 4 source tiles of 32×32 px (GF-2,
4 bands, 3 classes) and two target domains of 2 tiles of 48×48 px each; domain ``beta`` has no pixel of class
2 in its ground truth, ``alpha`` has all three. Labels follow the image (class = which third of
band 1's range a pixel is in) so a few steps can learn something.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

from spectralmoe.bands import get_sensor
from spectralmoe.data.benchmarks import DGTask
from spectralmoe.data.datamodule import DGDataModule
from spectralmoe.data.prepare.common import PrepareRun, TileArrays
from spectralmoe.engine import SegmentationTask

SIZE = 32  # source tiles = training crop
TARGET_SIZE = 48  # target tiles: room for a sliding window of 32
CLASSES = ("soil", "water", "forest")
PALETTE = ((200, 150, 100), (0, 0, 255), (0, 160, 0))
TARGETS = {"alpha": 2, "beta": 2}
TINY_M2F = {"hidden_dim": 32, "decoder_layers": 2, "encoder_layers": 1, "num_heads": 2, "train_num_points": 256,
            "dim_feedforward": 64, "encoder_feedforward_dim": 64}  # fmt: skip
TINY_SMOE = {"token_length": 8, "query_dim": 32, "num_experts": 3, "rank": 4}

TASK = DGTask(
    name="engine-toy", benchmark="engine-toy", classes=CLASSES, palette=PALETTE, source_sensors=("gf2",),
    mean=(100.0, 110.0, 120.0, 90.0), std=(50.0, 55.0, 60.0, 45.0), value_scale=255.0, train_pipeline="flip",
    crop_size=SIZE, max_iters=4, val_interval=2, batch_size=2, eval_batch_size=2,
)  # fmt: skip


def _tile(seed: int, classes: tuple[int, ...], size: int = SIZE) -> TileArrays:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (4, size, size), dtype=np.uint8)
    label = np.clip(image[1] // 86, 0, 2).astype(np.uint8)
    if classes != (0, 1, 2):  # keep only the allowed classes
        label = np.where(np.isin(label, classes), label, classes[0]).astype(np.uint8)
    label[:3, :3] = 255
    return TileArrays(image, label)


def make_root(out: Path) -> Path:
    """Write the tiny prepared benchmark into ``out`` and return it."""
    run = PrepareRun("engine-toy", out, progress=False)
    for i in range(4):
        run.add_tile(f"source/s{i}", lambda i=i: _tile(i, (0, 1, 2)), split="source", domain="gf2", sensor="gf2")
    seed = 100
    for domain, count in TARGETS.items():
        allowed = (0, 1, 2) if domain == "alpha" else (0, 1)
        for k in range(count):
            run.add_tile(f"target/{domain}/t{k}", lambda s=seed, a=allowed: _tile(s, a, TARGET_SIZE), split="target",
                         domain=domain, sensor="gf2")  # fmt: skip
            seed += 1
    run.finish(classes=list(CLASSES), palette=list(PALETTE), sensors={"gf2": get_sensor("gf2")})
    return out


def datamodule(root: Path, **kwargs: Any) -> DGDataModule:
    return DGDataModule(root, TASK, **{"num_workers": 0, "seed": 0, **kwargs})


def tiny_task(head: str = "fpn", adapter: str = "spectralmoe", **kwargs: Any) -> SegmentationTask:
    """A task on the tiny DINOv3 and depth stand-ins (random weights); data facts from the datamodule."""
    adapter_options = dict(TINY_SMOE) if adapter == "spectralmoe" else None
    head_options = dict(TINY_M2F) if head == "mask2former" else ({"channels": 64} if head == "fpn" else None)
    options: dict[str, Any] = {
        "backbone": "tiny-dinov3", "adapter": adapter, "head": head, "depth": "tiny-depth-anything",
        "adapter_options": adapter_options, "head_options": head_options, "pretrained": False, "lr": 1e-3,
    }  # fmt: skip
    options.update(kwargs)
    return SegmentationTask(**options)


def trainer(tmp: Path, **kwargs: Any) -> L.Trainer:
    """A quiet CPU trainer writing under ``tmp``."""
    options: dict[str, Any] = {
        "accelerator": "cpu", "devices": 1, "max_steps": 4, "logger": False, "enable_checkpointing": False,
        "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
        "limit_val_batches": 0, "default_root_dir": str(tmp),
    }  # fmt: skip
    options.update(kwargs)
    return L.Trainer(**options)


def trainable(task: SegmentationTask) -> dict[str, Any]:
    """Copies of the trainable parameters, by name."""
    return {n: p.detach().clone() for n, p in task.named_parameters() if p.requires_grad}
