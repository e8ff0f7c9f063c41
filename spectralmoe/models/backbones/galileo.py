"""Galileo: a remote-sensing foundation model that makes one token per channel GROUP per patch position.

Galileo ("Galileo: Learning Global & Local Features of Many Remote Sensing Modalities", Tseng et al.
2025, arXiv:2502.09356, code github.com/nasaharvest/galileo, ``single_file_galileo.py``) is written
here with the released encoder's key names, so ``encoder.pt`` (nano in the repository, nano / tiny /
base on the hub ``nasaharvest/galileo``, ``models/<size>/encoder.pt``) loads strictly. Used FROZEN only,
as in the paper (``adapter_refusal``).

Facts from the official code, and what we do with them:

* **Channel groups.** Galileo's space-time input holds 13 channels (VV, VH, S2 B2 B3 B4 B5 B6 B7 B8
  B8A B11 B12, NDVI) in 7 groups: S1, S2_RGB (B2 B3 B4), S2_Red_Edge (B5 B6 B7), S2_NIR_10m (B8),
  S2_NIR_20m (B8A), S2_SWIR (B11 B12), NDVI; each group has its own 8×8 patch convolution
  (``space_time_embed.<group>.proj``) and a learned channel embedding. The space (SRTM, DW, WC),
  time (ERA5, TC, VIIRS) and static (LS, location, DW_static, WC_static) inputs have their own
  embeddings; their weights are loaded (strict) but never used on images.
* **Bands.** Each input band goes into the Sentinel-2 slot nearest its centre wavelength
  (``bands.SENTINEL2_BANDS``), if within 60 nm; a slot reached by several bands takes the nearest.
  A group is visible when all its slots are filled, otherwise masked: a 4-band GF-2 image uses
  exactly S2_RGB and S2_NIR_10m (its NIR, 0.83 µm, is nearest B8, not B8A); OHS's 32 bands fill every
  group up to B8A but not SWIR. S1 and NDVI are always masked (NDVI is not derived here).
* **Masked groups are dropped before attention**, as the original does (its ``remove_masked_tokens``);
  since the visible groups are the same for every pixel and every image of a batch, no padding or
  attention mask is needed: the sequence is the visible groups' tokens, group-major ``[B, G·N, D]``
  (attention is order-free, the positions are in the embeddings).
* **Position encoding**: four D/4 parts concatenated and added to each token — the group's channel
  embedding, the time position (single time step: row 0 of ``pos_embed``), the month
  (``month_embed``; default month 6, i.e. July counting from 0, the default of the terratorch
  wrapper — configurable with ``month``), and a 2-D sin-cos of the patch's column and row scaled by
  ``gsd_ratio = GSD × patch / 10 m`` (its ``BASE_GSD``). Galileo's 1-D sin-cos divides the exponent
  by 2·dim where MAE divides by dim/2: the same as MAE's rule with temperature 10. Its 2-D encoding
  asserts a square grid; here the natural extension to h ≠ w is used.
* **Blocks**: pre-norm, separate q/k/v projections with bias, GELU MLP ×4, LayerNorm eps 1e-5, no
  LayerScale; final ``norm`` at the exit.
* **Patch size and the H/16 grid.** Galileo's kernels are 8×8 and pretraining used patch sizes 1-8
  (FlexiViT pseudo-inverse resizing, bicubic with antialiasing). We run patch 8 by default (in the
  training range; at 10 m the token resolution is 80 m, Galileo's largest) and reach the H/16 × W/16
  grid by 2 × 2 average pooling of each feature map; ``patch_size=16`` (kernel resized by the same
  pseudo-inverse rule, outside the training range, 4× fewer tokens) or 4 are options.
* **Feature maps**: at each of the ``out_indices`` the tokens pass the final ``norm`` (as the
  encoder's exit does) and the visible groups' tokens of each patch position are averaged (the
  released ``GalileoWrapper`` averages over time and groups), giving ``[B, D, H/16, W/16]``.
* **Input values.** Galileo normalises each band as ``(x − (μ − 2σ)) / 4σ``. With
  ``normalization="dataset"`` (default) the segmentor's z-scored input z = (x − μ)/σ (task
  statistics) becomes ``z/4 + 1/2``, which is that formula with the dataset's μ, σ. With
  ``normalization="sentinel2"`` the input is taken as reflectance (DN / 10000, what the WHU-OHS task's
  mean 0 / std 10000 gives) and Galileo's own Sentinel-2 pretraining statistics are applied per slot.

Cost: every visible group adds (H/p)·(W/p) tokens (OHS at 512 px, patch 8: 4 groups × 4096).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from spectralmoe.bands import DEFAULT_GSD_M, SENTINEL2_BANDS, as_wavelength_list, wavelength_distance
from spectralmoe.models.backbones.base import FrozenBackbone, default_out_indices
from spectralmoe.models.backbones.common import (
    FamilyConfig,
    load_tensors_only,
    random_weights_requested,
    resolve_preset,
    sincos_embedding_1d,
    strict_load,
)
from spectralmoe.models.patch_embed import resize_patch_kernel

logger = logging.getLogger(__name__)

__all__ = [
    "GALILEO_CONFIGS",
    "GALILEO_HUB_REPO",
    "GalileoBackbone",
    "GalileoConfig",
    "GalileoEncoder",
    "S2_SLOTS",
    "SPACE_TIME_GROUPS",
    "build_galileo_backbone",
    "galileo_band_slots",
    "load_galileo_state_dict",
    "visible_groups",
]

#: Galileo's reference resolution (m) for the spatial encoding (its ``BASE_GSD``).
BASE_GSD_M = 10.0
#: How far (µm) an input band may be from a Sentinel-2 slot's centre to fill it.
SLOT_TOLERANCE_UM = 0.060
#: The Sentinel-2 bands Galileo knows, in its channel order.
S2_SLOTS: tuple[str, ...] = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
#: Galileo's space-time channel groups in its order (``SPACE_TIME_BANDS_GROUPS_IDX``).
SPACE_TIME_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("S1", ("VV", "VH")),
    ("S2_RGB", ("B2", "B3", "B4")),
    ("S2_Red_Edge", ("B5", "B6", "B7")),
    ("S2_NIR_10m", ("B8",)),
    ("S2_NIR_20m", ("B8A",)),
    ("S2_SWIR", ("B11", "B12")),
    ("NDVI", ("NDVI",)),
)
#: Channels of the space, time and static groups (embedded but unused on images).
SPACE_GROUPS: tuple[tuple[str, int], ...] = (("SRTM", 2), ("DW", 9), ("WC", 5))
TIME_GROUPS: tuple[tuple[str, int], ...] = (("ERA5", 2), ("TC", 3), ("VIIRS", 1))
STATIC_GROUPS: tuple[tuple[str, int], ...] = (("LS", 1), ("location", 3), ("DW_static", 9), ("WC_static", 5))
#: Galileo's pretraining statistics of the S2 slots (``config/normalization.json``, key "13", DN = reflectance × 1e4).
S2_PRETRAINING_MEAN: tuple[float, ...] = (
    1395.3408730676722, 1338.4026921784578, 1343.09883810357, 1543.8607982512297, 2186.2022069512263,
    2525.0932853316694, 2410.3377187373408, 2750.2854646886753, 2234.911100061487, 1474.5311266077113,
)  # fmt: skip
S2_PRETRAINING_STD: tuple[float, ...] = (
    917.7041440370853, 913.2988423581528, 1092.678723527555, 1047.2206083460424, 1048.0101611156767,
    1143.6903026819996, 1098.979177731649, 1204.472755085893, 1145.9774063078878, 980.2429840007796,
)  # fmt: skip

GALILEO_HUB_REPO = "nasaharvest/galileo"
Normalization = Literal["dataset", "sentinel2"]


@dataclass(frozen=True)
class GalileoConfig(FamilyConfig):
    """Sizes of a Galileo encoder (``config/models/<size>.json``, ``model.encoder``)."""

    family_label: ClassVar[str] = "Galileo"

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    max_patch_size: int = 8
    max_sequence_length: int = 24
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.embed_dim % 16:
            raise ValueError(f"embed_dim must be a multiple of 16 (four D/4 parts, 2-D sin-cos), got {self.embed_dim}")

    @property
    def quarter(self) -> int:
        return self.embed_dim // 4


GALILEO_CONFIGS: dict[str, GalileoConfig] = {
    "galileo-base": GalileoConfig(embed_dim=768, depth=12, num_heads=12),
    "galileo-tiny": GalileoConfig(embed_dim=192, depth=12, num_heads=3),
    "galileo-nano": GalileoConfig(embed_dim=128, depth=4, num_heads=8),
    # Test-sized stand-in with the same structure (not a released model).
    "tiny-galileo": GalileoConfig(embed_dim=32, depth=4, num_heads=2),
}
#: Hub sub-folder of each released size.
GALILEO_HUB_FOLDERS: dict[str, str] = {"galileo-base": "models/base", "galileo-tiny": "models/tiny",
                                       "galileo-nano": "models/nano"}  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Bands → Sentinel-2 slots → visible groups
# --------------------------------------------------------------------------------------------------


def galileo_band_slots(wavelengths_um: Sequence[float], tolerance_um: float = SLOT_TOLERANCE_UM) -> dict[str, int]:
    """Which input band fills each Sentinel-2 slot: ``{slot name: band index}`` (unfilled slots absent).

    Every spectral band goes to the slot nearest its centre wavelength (within ``tolerance_um``); a
    slot reached by several bands takes the nearest one (the lower index on ties).
    """
    centres = {b.name: b.centre_um for b in SENTINEL2_BANDS if b.name in S2_SLOTS}
    best: dict[str, tuple[float, int]] = {}
    for index, wave in enumerate(as_wavelength_list(wavelengths_um)):
        if math.isnan(wave):
            continue
        slot = min(S2_SLOTS, key=lambda s: (wavelength_distance(centres[s], wave), S2_SLOTS.index(s)))
        distance = wavelength_distance(centres[slot], wave)
        if distance <= tolerance_um and (slot not in best or distance < best[slot][0]):
            best[slot] = (distance, index)
    return {slot: best[slot][1] for slot in S2_SLOTS if slot in best}


def visible_groups(slots: dict[str, int]) -> list[str]:
    """The space-time groups whose every band is filled (S1 and NDVI never are), in Galileo's order."""
    return [name for name, bands in SPACE_TIME_GROUPS if all(b in slots for b in bands)]


# --------------------------------------------------------------------------------------------------
# Encoder (released key names)
# --------------------------------------------------------------------------------------------------


def month_table(dim: int) -> torch.Tensor:
    """``[12, dim]``: sin(2πm/12) in the first half of the channels, cos(2πm/12) in the second (Galileo's)."""
    angles = torch.arange(12, dtype=torch.float32) * (2 * math.pi / 12)
    return torch.cat([angles.sin()[:, None].expand(12, dim // 2), angles.cos()[:, None].expand(12, dim // 2)], 1)


def spatial_encoding(dim: int, grid: tuple[int, int], gsd_ratio: float, device: torch.device | None = None):
    """``[h·w, dim]`` row-major: sin-cos (temperature 10) of the column × ratio, then of the row × ratio."""
    rows, cols = torch.meshgrid(torch.arange(grid[0], device=device, dtype=torch.float32),
                                torch.arange(grid[1], device=device, dtype=torch.float32), indexing="ij")  # fmt: skip
    return torch.cat([sincos_embedding_1d(dim // 2, cols * gsd_ratio, temperature=10.0),
                      sincos_embedding_1d(dim // 2, rows * gsd_ratio, temperature=10.0)], 1)  # fmt: skip


class GroupPatchEmbed(nn.Module):
    """One channel group's patch convolution (``<group>.proj``)."""

    def __init__(self, channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, patch, patch)


class GalileoAttention(nn.Module):
    """Self-attention with separate q, k, v projections (bias) and an output projection, via SDPA."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = (p(x).view(batch, length, self.num_heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, length, dim))


class GalileoMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class GalileoBlock(nn.Module):
    """Pre-norm block ``x + attn(norm1(x))``, ``x + mlp(norm2(x))``."""

    def __init__(self, config: GalileoConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attn = GalileoAttention(dim, config.num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = GalileoMLP(dim, int(dim * config.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GalileoEncoder(nn.Module):
    """Galileo's encoder with the released state-dict keys (``encoder.pt``)."""

    def __init__(self, config: GalileoConfig) -> None:
        super().__init__()
        self.config = config
        dim, quarter, patch = config.embed_dim, config.quarter, config.max_patch_size
        # Frozen sin-cos tables, parameters with requires_grad=False in the original (same keys, same count).
        self.pos_embed = nn.Parameter(torch.zeros(config.max_sequence_length, quarter), requires_grad=False)
        self.month_embed = nn.Embedding(12, quarter)
        self.month_embed.weight.requires_grad_(False)
        self.s_t_channel_embed = nn.Parameter(torch.zeros(len(SPACE_TIME_GROUPS), quarter))
        self.sp_channel_embed = nn.Parameter(torch.zeros(len(SPACE_GROUPS), quarter))
        self.t_channel_embed = nn.Parameter(torch.zeros(len(TIME_GROUPS), quarter))
        self.st_channel_embed = nn.Parameter(torch.zeros(len(STATIC_GROUPS), quarter))
        self.space_time_embed = nn.ModuleDict({n: GroupPatchEmbed(len(b), dim, patch) for n, b in SPACE_TIME_GROUPS})
        self.space_embed = nn.ModuleDict({n: GroupPatchEmbed(c, dim, patch) for n, c in SPACE_GROUPS})
        self.time_embed = nn.ModuleDict({n: nn.Linear(c, dim) for n, c in TIME_GROUPS})
        self.static_embed = nn.ModuleDict({n: nn.Linear(c, dim) for n, c in STATIC_GROUPS})
        self.blocks = nn.ModuleList(GalileoBlock(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random init as the original (xavier-uniform linears with zero bias; zero channel embeddings)."""
        quarter = self.config.quarter
        positions = torch.arange(self.config.max_sequence_length, device=self.pos_embed.device)
        self.pos_embed.copy_(sincos_embedding_1d(quarter, positions, temperature=10.0))
        self.month_embed.weight.copy_(month_table(quarter).to(self.month_embed.weight.device))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def group_tokens(
        self, image: torch.Tensor, slots: dict[str, int], groups: Sequence[str], patch: int, gsd_m: float, month: int
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Galileo-normalised image ``[B, C, H, W]`` → visible groups' tokens ``[B, G·h·w, D]``, group-major."""
        batch = image.shape[0]
        grid = (image.shape[-2] // patch, image.shape[-1] // patch)
        names = [name for name, _ in SPACE_TIME_GROUPS]
        quarter = self.config.quarter
        spatial = spatial_encoding(quarter, grid, gsd_m * patch / BASE_GSD_M, image.device)  # [N, D/4]
        shared = torch.cat([self.pos_embed[0], self.month_embed.weight[month]])  # time 0, month
        tokens = []
        for group in groups:
            bands = [slots[b] for b in dict(SPACE_TIME_GROUPS)[group]]
            conv = self.space_time_embed[group].proj
            weight = conv.weight
            if patch != weight.shape[-1]:
                weight = resize_patch_kernel(weight, patch, "pi", pi_interpolation="bicubic", antialias=True)
            out = F.conv2d(image[:, bands], weight, conv.bias, stride=patch).flatten(2).transpose(1, 2)
            channel = self.s_t_channel_embed[names.index(group)]
            encoding = torch.cat([torch.cat([channel, shared])[None].expand(spatial.shape[0], -1), spatial], 1)
            tokens.append(out + encoding)
        return torch.stack(tokens, 1).reshape(batch, len(groups) * grid[0] * grid[1], -1), grid


# --------------------------------------------------------------------------------------------------
# FrozenBackbone wrapper
# --------------------------------------------------------------------------------------------------


class GalileoBackbone(FrozenBackbone):
    """Frozen Galileo stepped block by block; maps average the visible groups per patch position.

    Args:
        config: encoder sizes (``GALILEO_CONFIGS``).
        in_wavelengths: band wavelengths (µm) for ``embed`` when none are passed.
        gsd_m: ground sampling distance of the input (m); None → ``bands.DEFAULT_GSD_M`` (10 m).
        month: 0-11, the month every image is said to be from (default 6).
        patch_size: Galileo's patch (divides 16; default 8, maps pooled 2 × 2 to the H/16 grid).
        normalization: ``"dataset"`` (z-scored input → z/4 + 1/2) or ``"sentinel2"`` (reflectance
            input, Galileo's Sentinel-2 statistics).
        out_indices: blocks whose outputs feed the decoder (default [3, 5, 7, 11] at 12 blocks).
    """

    num_prefix_tokens = 0
    adapter_refusal = (
        "Galileo makes one token per channel group at every patch position and is used frozen only, as in the "
        "paper; the adapters expect one token per patch"
    )

    def __init__(
        self,
        config: GalileoConfig,
        in_wavelengths: Sequence[float] | torch.Tensor | None = None,
        gsd_m: float | None = None,
        month: int = 6,
        patch_size: int = 8,
        normalization: Normalization = "dataset",
        out_indices: Sequence[int] | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if not (isinstance(month, int) and 0 <= month < 12):
            raise ValueError(f"month must be an integer 0-11 (0 = January), got {month!r}")
        if patch_size < 1 or 16 % patch_size:
            raise ValueError(f"Galileo patch_size must divide 16 (1, 2, 4, 8, 16), got {patch_size}")
        if normalization not in ("dataset", "sentinel2"):
            raise ValueError(f"normalization must be 'dataset' or 'sentinel2', got {normalization!r}")
        if gsd_m is not None and not (math.isfinite(gsd_m) and gsd_m > 0):
            raise ValueError(f"gsd_m must be a positive number of metres, got {gsd_m}")
        self.config = config
        self.model = GalileoEncoder(config)
        self.embed_dim, self.num_layers = config.embed_dim, config.depth
        self.patch_size = 16  # the grid of the feature maps; tokens use token_patch_size
        self.token_patch_size = patch_size
        self.month, self.normalization = month, normalization
        if gsd_m is None:
            logger.warning("Galileo: no ground sampling distance given; assuming %.0f m (bands.DEFAULT_GSD_M)",
                           DEFAULT_GSD_M)  # fmt: skip
        self.gsd_m = float(DEFAULT_GSD_M if gsd_m is None else gsd_m)
        indices = tuple(int(i) for i in (default_out_indices(config.depth) if out_indices is None else out_indices))
        if any(not 0 <= i < config.depth for i in indices):
            raise ValueError(f"out_indices {indices} outside 0..{config.depth - 1} for a {config.depth}-block Galileo")
        self.out_indices = indices
        self.in_wavelengths = None if in_wavelengths is None else as_wavelength_list(in_wavelengths)
        self.gradient_checkpointing = gradient_checkpointing
        if self.in_wavelengths is not None:
            self._groups(self.in_wavelengths)  # fail at build time when no group can be formed
        self.freeze()

    @property
    def blocks(self) -> nn.ModuleList:  # type: ignore[override]
        return self.model.blocks

    def _groups(self, waves: list[float]) -> tuple[dict[str, int], list[str]]:
        slots = galileo_band_slots(waves)
        groups = visible_groups(slots)
        if not groups:
            raise ValueError(
                f"no Galileo channel group can be formed from bands at {waves} µm: Galileo sees Sentinel-2 "
                f"{', '.join(S2_SLOTS)} in groups {[(n, list(b)) for n, b in SPACE_TIME_GROUPS[1:6]]}, and a group "
                f"needs every one of its bands within {SLOT_TOLERANCE_UM * 1000:.0f} nm"
            )
        return slots, groups

    def band_use(self, wavelengths: Sequence[float] | None = None) -> dict[str, Any]:
        """Which input band fills which Sentinel-2 slot and which groups are visible (for logs and tests)."""
        waves = as_wavelength_list(wavelengths) if wavelengths is not None else self.in_wavelengths
        if waves is None:
            raise ValueError("no wavelengths: pass them or build the backbone with in_wavelengths=")
        slots, groups = self._groups(waves)
        return {"slots": slots, "groups": groups}

    def _galileo_values(self, image: torch.Tensor, slots: dict[str, int]) -> torch.Tensor:
        if self.normalization == "dataset":
            return image / 4.0 + 0.5
        values = image.clone()
        for slot, band in slots.items():
            i = S2_SLOTS.index(slot)
            shift = S2_PRETRAINING_MEAN[i] - 2 * S2_PRETRAINING_STD[i]
            values[:, band] = (image[:, band] * 10000.0 - shift) / (4 * S2_PRETRAINING_STD[i])
        return values

    def embed(
        self, image: torch.Tensor, wavelengths: torch.Tensor | Sequence[float] | None = None
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Image ``[B, C, H, W]`` (H, W multiples of 16) → ``[B, G·h·w, D]`` and the token grid (h, w)."""
        if image.ndim != 4:
            raise ValueError(f"Galileo expects an image [B, C, H, W], got shape {tuple(image.shape)}")
        if wavelengths is None and self.in_wavelengths is None:
            raise ValueError(f"no wavelengths for image of shape {tuple(image.shape)}: pass wavelengths= or "
                             "build the backbone with in_wavelengths=")  # fmt: skip
        waves = self.in_wavelengths if wavelengths is None else as_wavelength_list(wavelengths)
        if len(waves) != image.shape[1]:
            raise ValueError(f"image has {image.shape[1]} bands (shape {tuple(image.shape)}) but {len(waves)} "
                             f"wavelengths were given: {waves}")  # fmt: skip
        if image.shape[-2] % 16 or image.shape[-1] % 16:
            raise ValueError(f"Galileo needs H and W divisible by 16 (got image shape {tuple(image.shape)}); "
                             "pad or crop")  # fmt: skip
        slots, groups = self._groups(waves)
        values = self._galileo_values(image, slots)
        return self.model.group_tokens(values, slots, groups, self.token_patch_size, self.gsd_m, self.month)

    def _block_forward(self, index: int, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return self.model.blocks[index](tokens)

    def tokens_to_map(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``[B, G·h·w, D]`` → final norm → mean over the G groups → ``[B, D, H/16, W/16]``."""
        h, w = grid
        groups = tokens.shape[1] // (h * w)
        normed = self.model.norm(tokens).view(tokens.shape[0], groups, h, w, -1).mean(1)
        maps = normed.permute(0, 3, 1, 2)
        pool = 16 // self.token_patch_size
        return F.avg_pool2d(maps, pool) if pool > 1 else maps



# --------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------


def load_galileo_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a released ``encoder.pt`` (a plain state dict) safely; drop the stray ``.backbone`` some keys carry."""
    raw = load_tensors_only(path, "expected Galileo's encoder.pt state dict")
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ValueError(f"{path}: expected a state dict of tensors (Galileo's encoder.pt)")
    return {k.replace(".backbone", "").removeprefix("module."): v.float() for k, v in raw.items()}



def _resolve_weights(preset: str | None, config: GalileoConfig, weights: str | os.PathLike | None) -> Path:
    if weights is None:
        folder = GALILEO_HUB_FOLDERS.get(preset or "")
        if folder is None:
            raise ValueError(f"Galileo {preset or 'config'} has no released weights; pass weights=<encoder.pt> or "
                             "pretrained=False")  # fmt: skip
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(repo_id=GALILEO_HUB_REPO, subfolder=folder, filename="encoder.pt"))
        except Exception as err:  # offline, missing file, auth: one message for the user
            raise RuntimeError(
                f"could not download {folder}/encoder.pt from the hub repo {GALILEO_HUB_REPO!r} ({type(err).__name__}: "
                f"{err}); download it elsewhere and pass weights=<encoder.pt or its folder>"
            ) from err
    path = Path(weights)
    if path.is_dir():
        config_file = path / "config.json"
        if config_file.is_file():
            encoder = json.loads(config_file.read_text()).get("model", {}).get("encoder", {})
            found = (encoder.get("embedding_size"), encoder.get("depth"), encoder.get("num_heads"))
            if None not in found and found != (config.embed_dim, config.depth, config.num_heads):
                raise ValueError(f"{config_file}: encoder (embedding_size, depth, num_heads) = {found}, but preset "
                                 f"{preset!r} has {(config.embed_dim, config.depth, config.num_heads)}")  # fmt: skip
        path = path / "encoder.pt"
    if not path.is_file():
        raise FileNotFoundError(f"Galileo weights {os.fspath(weights)!r}: no such file (expected encoder.pt or "
                                "its folder)")  # fmt: skip
    return path


def build_galileo_backbone(
    name: str | GalileoConfig,
    *,
    in_wavelengths: Sequence[float] | torch.Tensor | None = None,
    in_bandwidths: Sequence[float] | None = None,
    gsd_m: float | None = None,
    pretrained: bool = True,
    weights: str | os.PathLike | None = None,
    out_indices: Sequence[int] | None = None,
    gradient_checkpointing: bool = False,
    month: int = 6,
    patch_size: int = 8,
    normalization: Normalization = "dataset",
) -> GalileoBackbone:
    """Build a frozen Galileo from a preset name (``GALILEO_CONFIGS``) and load its ``encoder.pt``.

    ``weights``: an ``encoder.pt`` file or a folder holding it (its ``config.json``, when present, must
    match the preset); None → the preset's file on the hub. ``pretrained=False`` → random init (a
    warning); works under ``torch.device("meta")``. ``in_bandwidths`` is accepted for the common
    builder signature and not used (Galileo's bands are fixed slots).
    """
    del in_bandwidths
    preset, config = resolve_preset(name, GALILEO_CONFIGS, GalileoConfig)
    kwargs = dict(in_wavelengths=in_wavelengths, gsd_m=gsd_m, month=month, patch_size=patch_size,
                  normalization=normalization, out_indices=out_indices, gradient_checkpointing=gradient_checkpointing)
    if random_weights_requested(pretrained, weights, "Galileo", preset):
        return GalileoBackbone(config, **kwargs)
    path = _resolve_weights(preset, config, weights)
    state = load_galileo_state_dict(path)
    with torch.device("meta"):
        backbone = GalileoBackbone(config, **kwargs)
    strict_load(backbone.model, state, str(path), "Galileo encoder")
    backbone.freeze()
    return backbone

