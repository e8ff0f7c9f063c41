"""The pretraining corpus: SYNTHETIC-world tiles of every sensor and region, rendered in memory.

Each tile keeps the sensor's own product (every band, the sensor's dtype) and what the ground under
it is made of, which the world generator knows and no demo label holds:

* ``materials`` — the fractions of the 11 endmember materials (``ENDMEMBERS``: clear/turbid water,
  vigorous/stressed/dry vegetation, dry/wet soil, concrete, asphalt, tile, metal) and
* ``surface`` — the fractions of the 19 surface types (``SURFACE_TYPES``: water turbidity, crop growth
  stage, grass dryness, soil moisture, roof material, paving, street or highway, forest or garden
  trees) in every ``CELL`` × ``CELL`` cell of the tile, and
* ``height`` — the surface height map (DSM, m) and ``terrain`` — the bare-earth height under it (DTM),
  so that ``above_ground`` = height − terrain is what stands on the ground (buildings, trees, crops).

``label`` (the demo's 7 land-cover classes) is kept only to *measure* the models (probes); no
objective reads it.

Tiles come from ``tile_scene`` / ``observe`` (the exact tiles ``generate_world`` would write) with
a world seed of ``PRETRAIN_SEED_OFFSET + seed``, so the pretraining world never shares a tile with a
demo world drawn with a small seed. Rendering is deterministic, so the corpus is a pure function of
its arguments (and of the numpy version), whatever ``workers``.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from spectralmoe.data.synthetic import DEFAULT_SENSORS, REGIONS, SURFACE_TYPES, observe, tile_scene
from spectralmoe.data.synthetic.render import block_mean
from spectralmoe.data.synthetic.sensors import get_sensor_model

__all__ = ["CELL", "OVERSAMPLE", "PRETRAIN_SEED_OFFSET", "PretrainCorpus", "build_corpus"]

#: Added to the pretraining seed to get the seed of the world the corpus is drawn from.
PRETRAIN_SEED_OFFSET = 1000
#: Side (pixels) of the cells whose material and surface-type fractions are the targets: a 16-px
#: patch token predicts its 4 × 4 cells.
CELL = 4
#: Sub-samples per pixel and axis, as ``generate_world``.
OVERSAMPLE = 3


@dataclass
class PretrainCorpus:
    """Rendered tiles. ``raw[i]``: tile i's product ``[C_i, H, W]`` (the sensor's bands and dtype);
    ``height`` ``[N, H, W]`` surface height (DSM, m), ``terrain`` the bare earth under it (DTM, m);
    ``label`` ``[N, H, W]`` class ids (measurements only); ``materials``
    ``[N, M, H/CELL, W/CELL]`` and ``surface`` ``[N, T, H/CELL, W/CELL]`` fractions (float16, sum 1
    per cell); ``sensor`` / ``region`` per tile."""

    raw: list[torch.Tensor]
    height: torch.Tensor
    terrain: torch.Tensor
    label: torch.Tensor
    materials: torch.Tensor
    surface: torch.Tensor
    sensor: list[str]
    region: list[str]
    world_seed: int

    def __len__(self) -> int:
        return len(self.raw)

    @property
    def tile_size(self) -> int:
        return int(self.height.shape[-1])

    @property
    def above_ground(self) -> torch.Tensor:
        """``[N, H, W]`` height of what stands on the terrain (normalised DSM: height − terrain, m)."""
        return self.height - self.terrain

    def heights(self, kind: str) -> torch.Tensor:
        """``"surface"`` (DSM) or ``"above_ground"`` (normalised DSM) heights ``[N, H, W]``."""
        if kind not in ("surface", "above_ground"):
            raise ValueError(f"height kind must be 'surface' or 'above_ground', got {kind!r}")
        return self.height if kind == "surface" else self.above_ground

    def domains(self) -> list[tuple[str, str]]:
        """The (sensor, region) pairs present, in first-seen order."""
        return list(dict.fromkeys(zip(self.sensor, self.region)))

    def indices(self, sensor: str, region: str) -> list[int]:
        """Tiles of one domain."""
        return [i for i, d in enumerate(zip(self.sensor, self.region)) if d == (sensor, region)]

    def subset(self, index: Sequence[int] | torch.Tensor) -> "PretrainCorpus":
        """The tiles at ``index`` (a new corpus sharing no list with this one)."""
        pick = torch.as_tensor(index, dtype=torch.long).tolist()
        idx = torch.as_tensor(pick, dtype=torch.long)
        return PretrainCorpus(
            [self.raw[i] for i in pick], self.height[idx], self.terrain[idx], self.label[idx], self.materials[idx],
            self.surface[idx],
            [self.sensor[i] for i in pick], [self.region[i] for i in pick], self.world_seed,
        )  # fmt: skip


def _cell_fractions(fine_types: np.ndarray, count: int, block: int) -> np.ndarray:
    """``[count, H/block, W/block]`` fraction of each type in every ``block`` × ``block`` block of the
    ``uint8`` map ``fine_types`` (one bincount, no loop over cells)."""
    h, w = fine_types.shape[0] // block, fine_types.shape[1] // block
    cell = (np.arange(h)[:, None] * w + np.arange(w)[None, :]).repeat(block, axis=0).repeat(block, axis=1)
    counts = np.bincount((cell * count + fine_types.astype(np.int64)).ravel(), minlength=h * w * count)
    return (counts.reshape(h, w, count).transpose(2, 0, 1) / float(block * block)).astype(np.float32)


def _render(job: tuple[str, str, int, int, int]) -> tuple[np.ndarray, ...]:
    sensor, region, index, seed, tile_size = job
    if tile_size % CELL:
        raise ValueError(f"tile_size {tile_size} must be a multiple of {CELL}")
    gsd = get_sensor_model(sensor).gsd_m
    scene = tile_scene(sensor, region, index, seed=seed, tile_size=tile_size)
    view = observe(scene, sensor, gsd_m=gsd, size=tile_size, oversample=OVERSAMPLE)
    fine = scene.ground(gsd / OVERSAMPLE, tile_size * OVERSAMPLE)  # cached by observe: not sampled again
    materials = block_mean(fine.abundances, OVERSAMPLE * CELL)
    materials = materials / np.maximum(materials.sum(axis=0, keepdims=True), 1e-6)
    assert fine.surface is not None
    surface = _cell_fractions(fine.surface, len(SURFACE_TYPES), OVERSAMPLE * CELL)
    terrain = block_mean(fine.terrain, OVERSAMPLE).astype(np.float32)  # on the sensor grid, like view.height
    return (view.image, view.height.astype(np.float32), terrain, view.label.astype(np.uint8),
            materials.astype(np.float16), surface.astype(np.float16))  # fmt: skip


def build_corpus(
    seed: int = 0,
    *,
    tiles_per_domain: int = 24,
    tile_size: int = 256,
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
            tiles = list(pool.map(_render, jobs, chunksize=4))
    else:
        tiles = [_render(job) for job in jobs]
    height, terrain, label, materials, surface = (torch.from_numpy(np.stack([t[k] for t in tiles])) for k in range(1, 6))
    return PretrainCorpus([torch.from_numpy(t[0]) for t in tiles], height, terrain, label, materials, surface,
                          [j[0] for j in jobs], [j[1] for j in jobs], world_seed)  # fmt: skip

