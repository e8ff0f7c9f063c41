"""The pretraining corpus: SYNTHETIC-world tiles of every sensor and region, rendered in memory.

Both pretrained models learn from the same tiles: the vision backbone from their R, G, B bands
(chosen by wavelength, standardised per image), the depth model from the same bands stretched to
[0, 1] (``rgb_for_height``) and the tiles' height maps. Labels are kept only to *measure* the
result (linear probe); no pretraining objective reads them.

Tiles come from ``render_tile`` (the exact tiles ``generate_world`` would write) with a world seed
of ``PRETRAIN_SEED_OFFSET + seed``, so that the pretraining world never shares a tile with a demo
world drawn with a small seed. Rendering is deterministic, so the corpus is a pure function of its
arguments (and of the numpy version).
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from spectralmoe.bands import get_sensor
from spectralmoe.data.synthetic import DEFAULT_SENSORS, REGIONS, render_tile, rgb_for_height

__all__ = ["PRETRAIN_SEED_OFFSET", "PretrainCorpus", "build_corpus", "standardize_per_image"]

#: Added to the pretraining seed to get the seed of the world the corpus is drawn from.
PRETRAIN_SEED_OFFSET = 1000


@dataclass
class PretrainCorpus:
    """Tiles as tensors: ``raw_rgb`` [N, 3, H, W] R, G, B in units of the sensor's full scale,
    ``rgb`` the same bands 2–98 % stretched to [0, 1] (depth input), ``height`` [N, H, W] metres,
    ``label`` [N, H, W] class ids (for measurements only), ``sensor`` / ``region`` per tile."""

    raw_rgb: torch.Tensor
    rgb: torch.Tensor
    height: torch.Tensor
    label: torch.Tensor
    sensor: list[str]
    region: list[str]
    world_seed: int

    def __len__(self) -> int:
        return int(self.rgb.shape[0])

    def subset(self, index: Sequence[int] | torch.Tensor) -> "PretrainCorpus":
        """The tiles at ``index`` (a new corpus sharing nothing mutable with this one)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        pick = idx.tolist()
        return PretrainCorpus(
            self.raw_rgb[idx], self.rgb[idx], self.height[idx], self.label[idx],
            [self.sensor[i] for i in pick], [self.region[i] for i in pick], self.world_seed,
        )  # fmt: skip


def _render(job: tuple[str, str, int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    sensor, region, index, seed, tile_size = job
    view = render_tile(sensor, region, index, seed=seed, tile_size=tile_size)
    record = get_sensor(sensor)
    raw = view.image[list(record.rgb_indices())].astype(np.float32) / np.float32(record.value_scale)
    stretched = rgb_for_height(view.image, sensor)
    return raw, stretched, view.height.astype(np.float32), view.label.astype(np.uint8)


def build_corpus(
    seed: int = 0,
    *,
    tiles_per_domain: int = 24,
    tile_size: int = 128,
    sensors: Sequence[str] = DEFAULT_SENSORS,
    regions: Sequence[str] | None = None,
    first_index: int = 0,
    workers: int = 1,
) -> PretrainCorpus:
    """Render ``tiles_per_domain`` tiles (indices ``first_index…``) of every (sensor, region) pair.

    ``regions`` defaults to every region of the synthetic world. ``workers`` > 1 renders in that many
    processes; the result does not depend on it (every tile is drawn from its own seed).
    """
    regions = list(REGIONS) if regions is None else list(regions)
    world_seed = PRETRAIN_SEED_OFFSET + int(seed)
    jobs = [(s, r, first_index + i, world_seed, tile_size) for s in sensors for r in regions
            for i in range(tiles_per_domain)]  # fmt: skip
    if not jobs:
        raise ValueError(
            f"empty corpus: sensors={list(sensors)}, regions={regions}, tiles_per_domain={tiles_per_domain}"
        )
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            tiles = list(pool.map(_render, jobs, chunksize=8))
    else:
        tiles = [_render(job) for job in jobs]
    raw, rgb, height, label = (torch.from_numpy(np.stack([t[k] for t in tiles])) for k in range(4))
    return PretrainCorpus(raw, rgb, height, label, [j[0] for j in jobs], [j[1] for j in jobs], world_seed)


def standardize_per_image(raw_rgb: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Each band of each image to zero mean and unit variance — how the vision backbone sees tiles
    in pretraining, so that sensors with other gains, offsets and haze look alike."""
    mean = raw_rgb.mean(dim=(-2, -1), keepdim=True)
    std = raw_rgb.std(dim=(-2, -1), keepdim=True)
    return (raw_rgb - mean) / std.clamp_min(eps)
