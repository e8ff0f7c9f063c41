"""DOFA: a ViT whose patch embedding is generated from the input bands' wavelengths (METHOD §3.4).

DOFA ("Neural plasticity-inspired multimodal foundation model for Earth observation", Xiong et al.
2024, arXiv:2403.15356, code github.com/zhu-xlab/DOFA) is not in transformers, so it is written here,
with parameter names equal to the official checkpoint's keys so that its state dict loads strictly.

How one model takes any band set: every band's centre wavelength λ (µm) becomes a 1-D sin-cos
embedding of 1000·λ, a residual MLP refines it, and a one-layer transformer encoder reads
``[learned weight tokens; one token per band; a bias token]``. Each band's output token (plus its
input, a residual) is mapped linearly to that band's 16×16×D kernel, the bias token to the D conv
biases; both are scaled by 0.01. A stride-16 convolution with the generated kernel embeds the image.

Facts taken from the official code (zhu-xlab/DOFA ``wave_dynamic_layer.py`` / ``dofa_v1.py``, torchgeo
``torchgeo/models/dofa.py``, SpectralMoE ``SpectralMoE/models/backbones/dofa.py``):

* Blocks are timm ``Block(dim, heads, mlp_ratio=4, qkv_bias=True, norm_layer=LayerNorm(eps=1e-6))``:
  pre-norm attention and GELU MLP, no LayerScale. Fixed (non-trainable) 2-D sin-cos position
  embedding for ``img_size=224`` plus a cls token. The segmentation wrappers use no final norm.
* **Padding.** The official convolution uses ``stride=16, padding=1``. Output size
  ``floor((H + 2 - 16) / 16) + 1`` equals ``H / 16`` when H is a multiple of 16, so the token grid is
  exactly H/16 × W/16 — no deviation from the original. What the padding does: patch (i, j) covers
  input rows ``16i - 1 … 16i + 14`` (shifted one pixel up/left; row -1 is zero padding) and the last
  image row/column is never seen. We keep ``patch_padding=1`` so the pretrained weights see what they
  were trained on, and require H, W to be multiples of 16 (other sizes raise).
* **Kernel layout.** The generator gives ``[C, k·k·D]`` per band. Weights released since Aug/Sep 2024
  (torchgeo PR #2256, "DOFA: fix bug in patch embedding"; the hub files were re-uploaded then) read it
  as ``[C, k, k, D]`` → ``[D, C, k, k]``, i.e. band c gets the kernel generated from its own
  wavelength token. The first release (March 2024) reshaped the same memory straight to
  ``[D, C, k, k]``, which mixes bands (output channel d of band c comes from token ``(d·C + c) // D``)
  and makes results depend on band order; even for one band the two layouts arrange the kernel
  differently, so old and new files are not interchangeable. ``DOFAConfig.legacy_kernel_layout=True``
  reproduces the old reshape for the old files; the default is the fixed layout, which SpectralMoE's
  copy of DOFA (``SpectralMoE/models/backbones/DOFA/wave_dynamic_layer.py``) also uses.
* Checkpoint keys (``DOFA_ViT_large_e100.pth``): ``patch_embed.fclayer.w{1,2}.{weight,bias}``,
  ``patch_embed.weight_generator.{weight_tokens, bias_token, fc_weight.*, fc_bias.*,
  transformer_encoder.layers.0.{self_attn.in_proj_weight, self_attn.in_proj_bias,
  self_attn.out_proj.*, linear1.*, linear2.*, norm1.*, norm2.*}}``, ``cls_token``, ``pos_embed``
  ``[1, 197, D]``, ``blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.*``. The file
  also holds pretraining-only keys that this backbone ignores (the zhu-xlab README lists them as
  unexpected when loading): ``mask_token``, ``norm.*``, ``projector.*``; classification wrappers add
  ``head.*``, ``fc_norm.*``. The weight generator's transformer layer is torch's
  ``nn.TransformerEncoderLayer`` (post-norm, GELU, feed-forward 2048, LayerNorm eps 1e-5, no dropout).
* ``pos_embed`` is an ``nn.Parameter`` with ``requires_grad=False`` in the original, so it counts as a
  parameter: DOFA-L has 337,103,360 parameters without head and pretraining keys.

Position embedding at other sizes: the stored table (14×14 for img_size 224) is resampled bicubically
(``align_corners=False``) to the actual grid, as SpectralMoE's converter did offline to 32×32. A
checkpoint whose table already has another square grid (e.g. the converted 1025-token one) is taken as
is, with ``img_size`` set to match.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from spectralmoe.bands import as_wavelength_list
from spectralmoe.models.backbones.base import FrozenBackbone, default_out_indices

logger = logging.getLogger(__name__)

__all__ = [
    "DOFAConfig",
    "DOFA_CONFIGS",
    "DOFA_WEIGHTS",
    "DOFA_WEIGHT_FILES",
    "WavelengthEmbedding",
    "ResidualWaveMLP",
    "WavelengthWeightGenerator",
    "WavelengthPatchEmbedding",
    "DOFAAttention",
    "DOFAMLP",
    "DOFABlock",
    "DOFAModel",
    "DOFABackbone",
    "build_dofa_backbone",
    "load_official_state_dict",
]


@dataclass(frozen=True)
class DOFAConfig:
    """All sizes of a DOFA model. Defaults are DOFA-L/16 as released.

    ``img_size`` only sets the grid of the stored position-embedding table (img_size / patch_size
    squared); images of other sizes get the table resampled. ``wave_dim``, ``num_weight_tokens``,
    ``generator_*`` size the wavelength-conditioned kernel generator (128, 128, 4 heads, FFN 2048 in
    the original). ``legacy_kernel_layout`` reproduces the March-2024 weights' band-mixing reshape.
    """

    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    patch_size: int = 16
    img_size: int = 224
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    wave_dim: int = 128
    num_weight_tokens: int = 128
    generator_heads: int = 4
    generator_ffn_dim: int = 2048
    generator_layers: int = 1
    generator_norm_eps: float = 1e-5
    kernel_scale: float = 0.01
    patch_padding: int = 1
    legacy_kernel_layout: bool = False

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.wave_dim % 2 or self.wave_dim % self.generator_heads:
            raise ValueError(
                f"wave_dim {self.wave_dim} must be even and divisible by generator_heads {self.generator_heads}"
            )
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def pos_grid(self) -> int:
        """Side of the stored square position-embedding grid."""
        return self.img_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "DOFAConfig":
        """Build from a dict (config.json), rejecting unknown keys so that typos do not pass silently."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known - {"model_type"})
        if unknown:
            raise ValueError(f"unknown DOFA config keys {unknown}; known keys: {sorted(known)}")
        return cls(**{k: v for k, v in values.items() if k in known})


DOFA_CONFIGS: dict[str, DOFAConfig] = {
    "dofa-vitl": DOFAConfig(embed_dim=1024, depth=24, num_heads=16),
    "dofa-vitb": DOFAConfig(embed_dim=768, depth=12, num_heads=12),
    # Test-sized stand-in with the same structure (not a released model).
    "tiny-dofa": DOFAConfig(
        embed_dim=32, depth=2, num_heads=2, img_size=64, wave_dim=16, num_weight_tokens=8,
        generator_heads=2, generator_ffn_dim=32,
    ),
}  # fmt: skip

# Hub repository of the official weights (first published as "XShadow/DOFA", now "earthflow/DOFA";
# the hub redirects). None: no released weights.
DOFA_WEIGHTS: dict[str, str | None] = {
    "dofa-vitl": "earthflow/DOFA",
    "dofa-vitb": "earthflow/DOFA",
    "tiny-dofa": None,
}
# File inside that repository: plain state dicts (OrderedDict of tensors), re-uploaded on 2024-09-01
# (large, 1.35 GB) and 2024-08-30 (base, 448 MB) after the kernel-layout fix.
DOFA_WEIGHT_FILES: dict[str, str] = {
    "dofa-vitl": "DOFA_ViT_large_e100.pth",
    "dofa-vitb": "DOFA_ViT_base_e100.pth",
}

# Keys of official files that the backbone does not use: classification head, MAE pretraining parts.
_IGNORED_KEY_PATTERN = re.compile(r"^(head\.|fc_norm\.|norm\.|projector\.|mask_token$|decoder)")
_WRAPPER_PREFIXES = ("module.", "backbone.", "encoder.")


# --------------------------------------------------------------------------------------------------
# Sin-cos embeddings
# --------------------------------------------------------------------------------------------------


def sincos_embedding_1d(dim: int, positions: torch.Tensor, temperature: float = 10000.0) -> torch.Tensor:
    """``[M]`` positions → ``[M, dim]``: sines then cosines at frequencies temperature^(-i/(dim/2)) (MAE rule).

    Galileo's tables use temperature 10: its code divides the exponent by 2·dim instead of dim/2, and
    10000^(-i/(2·dim)) = 10^(-i/(dim/2)).
    """
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float32, device=positions.device) / (dim / 2.0)
    omega = 1.0 / (temperature**omega)
    angles = positions.reshape(-1).float()[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_embedding_2d(dim: int, grid: int, device: torch.device | None = None) -> torch.Tensor:
    """The fixed ``[1, 1 + grid², dim]`` table of DOFA/MAE: zero cls row, then the grid row-major.

    As in MAE, the first half of the channels encodes the column index, the second half the row index.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a dimension divisible by 4, got {dim}")
    coords = torch.arange(grid, dtype=torch.float32, device=device)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    table = torch.cat([sincos_embedding_1d(dim // 2, cols), sincos_embedding_1d(dim // 2, rows)], dim=1)
    return torch.cat([table.new_zeros(1, dim), table], dim=0)[None]


def resample_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], num_prefix: int = 1) -> torch.Tensor:
    """Bicubically resample the patch part of a square ``[1, P + g², D]`` table to ``grid`` (h, w)."""
    prefix, patches = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ValueError(f"position table with {patches.shape[1]} patch entries is not a square grid")
    if (side, side) == tuple(grid):
        return pos_embed
    table = patches.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    table = F.interpolate(table, size=grid, mode="bicubic", align_corners=False)
    table = table.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(pos_embed.dtype)
    return torch.cat([prefix, table], dim=1)


# --------------------------------------------------------------------------------------------------
# Wavelength-conditioned patch embedding
# --------------------------------------------------------------------------------------------------


class WavelengthEmbedding(nn.Module):
    """Wavelengths (µm) → fixed sin-cos features of 1000·λ, i.e. of the wavelength in nm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, wavelengths_um: torch.Tensor) -> torch.Tensor:
        return sincos_embedding_1d(self.dim, wavelengths_um * 1000.0)


class ResidualWaveMLP(nn.Module):
    """``x + relu(w2(relu(w1(x))))`` on the wavelength features (official name: ``fclayer``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, dim)
        self.w2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.relu(self.w2(F.relu(self.w1(x))))


class WavelengthWeightGenerator(nn.Module):
    """One transformer layer over [weight tokens; band tokens; bias token] → per-band kernels and a bias.

    Returns the raw (unscaled) ``[C, k·k·D]`` band kernels and the ``[D]`` bias.
    """

    def __init__(self, config: DOFAConfig) -> None:
        super().__init__()
        dim = config.wave_dim
        layer = nn.TransformerEncoderLayer(
            d_model=dim,
            nhead=config.generator_heads,
            dim_feedforward=config.generator_ffn_dim,
            dropout=0.0,
            activation="gelu",
            layer_norm_eps=config.generator_norm_eps,
            batch_first=False,
            norm_first=False,
        )
        self.transformer_encoder = nn.TransformerEncoder(
            layer, num_layers=config.generator_layers, enable_nested_tensor=False
        )
        self.fc_weight = nn.Linear(dim, config.patch_size * config.patch_size * config.embed_dim)
        self.fc_bias = nn.Linear(dim, config.embed_dim)
        self.weight_tokens = nn.Parameter(torch.empty(config.num_weight_tokens, dim))
        self.bias_token = nn.Parameter(torch.empty(1, dim))

    def forward(self, band_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        num_weight = self.weight_tokens.shape[0]
        sequence = torch.cat([self.weight_tokens, band_tokens.to(self.weight_tokens.dtype), self.bias_token], dim=0)
        encoded = self.transformer_encoder(sequence)  # [T, dim], unbatched as in the original
        kernels = self.fc_weight(encoded[num_weight:-1] + band_tokens)
        bias = self.fc_bias(encoded[-1])
        return kernels, bias


class WavelengthPatchEmbedding(nn.Module):
    """DOFA's dynamic patch embedding: a 16×16 stride-16 conv whose kernel is made from the wavelengths.

    Official module name ``patch_embed`` (class ``Dynamic_MLP_OFA``); children ``fclayer`` and
    ``weight_generator`` keep the official names so that the checkpoint loads.
    """

    def __init__(self, config: DOFAConfig) -> None:
        super().__init__()
        self.config = config
        self.wave_embedding = WavelengthEmbedding(config.wave_dim)
        self.fclayer = ResidualWaveMLP(config.wave_dim)
        self.weight_generator = WavelengthWeightGenerator(config)

    def generate_kernel(self, wavelengths_um: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[C]`` wavelengths → conv kernel ``[D, C, k, k]`` and bias ``[D]`` (both scaled by 0.01)."""
        cfg = self.config
        k, dim, bands = cfg.patch_size, cfg.embed_dim, wavelengths_um.shape[0]
        band_tokens = self.fclayer(self.wave_embedding(wavelengths_um))
        kernels, bias = self.weight_generator(band_tokens)
        if cfg.legacy_kernel_layout:  # March-2024 weights: raw reshape, mixes bands (see module doc)
            weight = kernels.reshape(dim, bands, k, k)
        else:
            weight = kernels.reshape(bands, k, k, dim).permute(3, 0, 1, 2)
        return weight * cfg.kernel_scale, bias * cfg.kernel_scale

    def forward(self, image: torch.Tensor, wavelengths_um: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Image ``[B, C, H, W]`` → patch tokens ``[B, h·w, D]`` and the grid ``(h, w)``."""
        weight, bias = self.generate_kernel(wavelengths_um)
        if not torch.is_autocast_enabled(image.device.type):
            weight, bias = weight.to(image.dtype), bias.to(image.dtype)
        size = self.config.patch_size
        out = F.conv2d(image, weight, bias, stride=size, padding=self.config.patch_padding)
        return out.flatten(2).transpose(1, 2), (out.shape[-2], out.shape[-1])


# --------------------------------------------------------------------------------------------------
# Transformer blocks (timm ``Block`` layout, SDPA attention)
# --------------------------------------------------------------------------------------------------


class DOFAAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection, via scaled_dot_product_attention."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class DOFAMLP(nn.Module):
    """``fc2(gelu(fc1(x)))`` with exact (erf) GELU, as timm's ``Mlp``."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class DOFABlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``; any token count."""

    def __init__(self, config: DOFAConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attn = DOFAAttention(dim, config.num_heads, qkv_bias=config.qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = DOFAMLP(dim, int(dim * config.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DOFAModel(nn.Module):
    """The DOFA encoder: dynamic patch embedding, cls token, fixed sin-cos position table, blocks.

    No final norm, no head (the segmentation use of DOFA takes raw block outputs). Its state-dict keys
    are the official checkpoint's keys.
    """

    def __init__(self, config: DOFAConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = WavelengthPatchEmbedding(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim))
        # A parameter (not a buffer) with requires_grad=False, as in the original: same key, same count.
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.pos_grid**2, config.embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(DOFABlock(config) for _ in range(config.depth))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random init following the original (xavier / 0.01 bias in the generator, N(0, 0.02) tokens)."""
        for module in (self.patch_embed.fclayer, self.patch_embed.weight_generator):
            for sub in module.modules():
                if isinstance(sub, nn.Linear):
                    nn.init.xavier_uniform_(sub.weight)
                    nn.init.constant_(sub.bias, 0.01)
        nn.init.normal_(self.patch_embed.weight_generator.weight_tokens, std=0.02)
        nn.init.normal_(self.patch_embed.weight_generator.bias_token, std=0.02)
        nn.init.normal_(self.cls_token, std=0.02)
        self.pos_embed.copy_(sincos_embedding_2d(self.config.embed_dim, self.config.pos_grid, self.pos_embed.device))
        for block in self.blocks:
            for sub in block.modules():
                if isinstance(sub, nn.Linear):
                    nn.init.xavier_uniform_(sub.weight)
                    nn.init.zeros_(sub.bias)

    def embed(self, image: torch.Tensor, wavelengths_um: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Image ``[B, C, H, W]`` and ``[C]`` wavelengths → ``[B, 1 + h·w, D]`` (cls first) and ``(h, w)``."""
        patches, grid = self.patch_embed(image, wavelengths_um)
        pos = resample_pos_embed(self.pos_embed, grid)
        # Under autocast the conv gives bf16; adding the fp32 table promotes the residual stream to fp32,
        # as in the original.
        patches = patches + pos[:, 1:]
        cls = (self.cls_token + pos[:, :1]).expand(patches.shape[0], -1, -1)
        return torch.cat([cls.to(patches.dtype), patches], dim=1), grid

    def forward(self, image: torch.Tensor, wavelengths_um: torch.Tensor) -> torch.Tensor:
        """All blocks; returns the last block's tokens (no final norm)."""
        tokens, _ = self.embed(image, wavelengths_um)
        for block in self.blocks:
            tokens = block(tokens)
        return tokens


# --------------------------------------------------------------------------------------------------
# FrozenBackbone wrapper
# --------------------------------------------------------------------------------------------------


class DOFABackbone(FrozenBackbone):
    """Frozen DOFA stepped block by block (DESIGN §4). Any band set, given its wavelengths (µm).

    Args:
        config: model sizes (see ``DOFA_CONFIGS``).
        in_wavelengths: default band wavelengths (µm) for ``embed`` when none are passed.
        out_indices: 0-based blocks whose outputs feed the decoder; default [7, 11, 15, 23] at 24 layers.
        gradient_checkpointing: recompute blocks in backward (through ``run_block``).
    """

    num_prefix_tokens = 1

    def __init__(
        self,
        config: DOFAConfig,
        in_wavelengths: Sequence[float] | torch.Tensor | None = None,
        out_indices: Sequence[int] | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.config = config
        self.model = DOFAModel(config)
        self.embed_dim = config.embed_dim
        self.num_layers = config.depth
        self.patch_size = config.patch_size
        indices = tuple(int(i) for i in (out_indices if out_indices is not None else default_out_indices(config.depth)))
        bad = [i for i in indices if not 0 <= i < config.depth]
        if bad:
            raise ValueError(f"out_indices {bad} outside 0..{config.depth - 1} for a {config.depth}-block DOFA")
        self.out_indices = indices
        self.in_wavelengths = None if in_wavelengths is None else self._check_wavelengths(in_wavelengths)
        self.gradient_checkpointing = gradient_checkpointing
        self.freeze()

    @property
    def blocks(self) -> nn.ModuleList:  # type: ignore[override]
        """The block modules (a view of ``model.blocks``, so state-dict keys are not duplicated)."""
        return self.model.blocks

    @staticmethod
    def _check_wavelengths(wavelengths: Sequence[float] | torch.Tensor) -> list[float]:
        waves = as_wavelength_list(wavelengths)
        missing = [i for i, w in enumerate(waves) if math.isnan(w)]
        if missing:
            raise ValueError(
                f"DOFA builds each band's kernel from its wavelength, but band(s) {missing} have none (nan: a "
                f"non-spectral band such as elevation) in wavelengths {waves}; drop those bands from the input"
            )
        odd = [w for w in waves if not 0.0 < w < 100.0]
        if odd:
            raise ValueError(f"wavelengths must be in micrometres (0 < λ < 100), got {odd} in {waves}")
        return waves

    def embed(
        self, image: torch.Tensor, wavelengths: torch.Tensor | Sequence[float] | None = None
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Image ``[B, C, H, W]`` (H, W multiples of 16) → tokens ``[B, 1 + H/16·W/16, D]`` and the grid."""
        if image.ndim != 4:
            raise ValueError(f"DOFA expects an image [B, C, H, W], got shape {tuple(image.shape)}")
        if wavelengths is None:
            if self.in_wavelengths is None:
                raise ValueError(
                    f"no wavelengths for image of shape {tuple(image.shape)}: pass wavelengths= or build the "
                    "backbone with in_wavelengths="
                )
            waves = self.in_wavelengths
        else:
            waves = self._check_wavelengths(wavelengths)
        if len(waves) != image.shape[1]:
            raise ValueError(
                f"image has {image.shape[1]} bands (shape {tuple(image.shape)}) but {len(waves)} wavelengths "
                f"were given: {waves}"
            )
        height, width = image.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"DOFA needs H and W divisible by {self.patch_size} (got image shape {tuple(image.shape)}); "
                "pad or crop the image"
            )
        wave_tensor = torch.tensor(waves, dtype=torch.float32, device=image.device)
        return self.model.embed(image, wave_tensor)

    def _block_forward(self, index: int, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Block ``index`` on ``[B, P' + N, D]`` tokens; prompts after the cls token are just more tokens."""
        return self.model.blocks[index](tokens)

    def forward(
        self, image: torch.Tensor, wavelengths: torch.Tensor | Sequence[float] | None = None
    ) -> list[torch.Tensor]:
        """Feature maps ``[B, D, H/16, W/16]`` after the blocks in ``out_indices`` (no adapter)."""
        tokens, grid = self.embed(image, wavelengths)
        maps: dict[int, torch.Tensor] = {}
        for index in range(max(self.out_indices) + 1):
            tokens = self.run_block(index, tokens, grid)
            if index in self.out_indices:
                maps[index] = self.tokens_to_map(tokens, grid)
        return [maps[index] for index in self.out_indices]  # one per entry, repeats included

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``model.safetensors`` (official key names) and ``config.json`` for ``build_dofa_backbone``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        tmp_weights, tmp_config = folder / "model.safetensors.tmp", folder / "config.json.tmp"
        save_file(state, str(tmp_weights), metadata={"format": "pt", "model_type": "dofa"})
        tmp_config.write_text(json.dumps({"model_type": "dofa", **self.config.to_dict()}, indent=2) + "\n")
        os.replace(tmp_weights, folder / "model.safetensors")
        os.replace(tmp_config, folder / "config.json")
        return folder


# --------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------


def _clean_official_state_dict(raw: Any, source: str) -> dict[str, torch.Tensor]:
    """Unwrap ``model``/``state_dict``, strip ``module.``/``backbone.`` prefixes, drop head/pretraining keys."""
    state = raw
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{source}: expected a state dict of tensors (optionally under 'model'/'state_dict')")
    cleaned: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        if _IGNORED_KEY_PATTERN.match(key):
            continue
        cleaned[key] = value.float() if value.is_floating_point() else value
    return cleaned


def _config_for_state_dict(config: DOFAConfig, state: dict[str, torch.Tensor], source: str) -> DOFAConfig:
    """Adopt the checkpoint's position grid (e.g. a table already resized to 32×32) when it differs."""
    pos = state.get("pos_embed")
    if pos is None or pos.ndim != 3 or pos.shape[1] == 1 + config.pos_grid**2:
        return config
    side = math.isqrt(pos.shape[1] - 1)
    if side * side != pos.shape[1] - 1:
        raise ValueError(f"{source}: pos_embed {tuple(pos.shape)} is not 1 cls + a square grid")
    logger.info("%s: position table is %dx%d; using img_size %d", source, side, side, side * config.patch_size)
    return dataclasses.replace(config, img_size=side * config.patch_size)


def _load_into(model: DOFAModel, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with an error that lists missing and unexpected keys and names the file."""
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{source} does not match the DOFA architecture: missing keys {missing[:20]}"
            f"{' …' if len(missing) > 20 else ''}, unexpected keys {unexpected[:20]}"
            f"{' …' if len(unexpected) > 20 else ''}"
        )
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise ValueError(f"{source}: tensor shapes do not match the DOFA config {model.config}: {err}") from err


def load_official_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an official DOFA ``.pth`` into a cleaned state dict with this module's (= official) keys."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: holds objects other than tensors (a training checkpoint with optimizer/args?); "
            "re-save only its model state dict"
        ) from err
    return _clean_official_state_dict(raw, str(path))


def _download(repo_id: str, filename: str) -> str:
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id=repo_id, filename=filename)
    except Exception as err:  # offline, missing file, auth: all end the same way for the user
        raise RuntimeError(
            f"could not download {filename!r} from the Hugging Face hub repo {repo_id!r} ({type(err).__name__}: "
            f"{err}). Without internet, download it elsewhere and pass weights=<local .pth file or folder>"
        ) from err


def _resolve_config(name: str | DOFAConfig) -> tuple[str | None, DOFAConfig]:
    if isinstance(name, DOFAConfig):
        return None, name
    try:
        return name, DOFA_CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown DOFA preset {name!r}; known: {', '.join(sorted(DOFA_CONFIGS))}") from None


def build_dofa_backbone(
    name: str | DOFAConfig,
    *,
    in_wavelengths: Sequence[float] | torch.Tensor | None = None,
    pretrained: bool = True,
    weights: str | os.PathLike | None = None,
    out_indices: Sequence[int] | None = None,
    gradient_checkpointing: bool = False,
) -> DOFABackbone:
    """Build a frozen DOFA backbone from a preset name (or a ``DOFAConfig``) and load its weights.

    ``weights``: an official ``.pth``/``.pt`` file; a folder or hub id in our ``save_pretrained``
    format (its ``config.json`` is used; its size must match the preset's); or None → the preset's official hub file
    (``DOFA_WEIGHTS`` / ``DOFA_WEIGHT_FILES``). ``pretrained=False`` → random init (with a warning);
    works inside ``with torch.device("meta"):``.
    """
    preset, config = _resolve_config(name)
    kwargs = dict(in_wavelengths=in_wavelengths, out_indices=out_indices, gradient_checkpointing=gradient_checkpointing)
    if not pretrained:
        if weights is not None:
            raise ValueError("weights= was given with pretrained=False; drop one of them")
        logger.warning("DOFA %s built with random weights (pretrained=False)", preset or "config")
        return DOFABackbone(config, **kwargs)

    state, source = _fetch_weights(preset, config, weights)
    if isinstance(state, tuple):  # our format: (config from config.json, state)
        saved_config, state = state
        if preset is not None:
            differ = [k for k in ("embed_dim", "depth", "num_heads") if getattr(saved_config, k) != getattr(config, k)]
            if differ:
                raise ValueError(
                    f"{source}: its config.json has {', '.join(f'{k}={getattr(saved_config, k)}' for k in differ)} "
                    f"but preset {preset!r} has {', '.join(f'{k}={getattr(config, k)}' for k in differ)}; choose the "
                    "preset that matches the weights"
                )
        config = saved_config
    config = _config_for_state_dict(config, state, source)
    with torch.device("meta"):  # no random init of 300 M parameters that are overwritten anyway
        backbone = DOFABackbone(config, **kwargs)
    _load_into(backbone.model, state, source)
    backbone.freeze()
    return backbone


def _fetch_weights(
    preset: str | None, config: DOFAConfig, weights: str | os.PathLike | None
) -> tuple[dict[str, torch.Tensor] | tuple[DOFAConfig, dict[str, torch.Tensor]], str]:
    """Find and read the weights; our format comes back with its config."""
    if weights is None:
        repo = DOFA_WEIGHTS.get(preset) if preset else None
        if repo is None:
            raise ValueError(
                f"DOFA {preset or 'config'} has no released weights; pass weights=<file or folder> or pretrained=False"
            )
        path = _download(repo, DOFA_WEIGHT_FILES[preset])  # type: ignore[index]
        return load_official_state_dict(path), path
    path = Path(weights)
    if path.is_file():
        if path.name == "model.safetensors":
            return _read_our_format(path.parent), str(path.parent)
        if path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
            return load_official_state_dict(path), str(path)
        raise ValueError(f"{path}: expected an official .pth/.pt file or a folder with model.safetensors")
    if path.is_dir():
        return _read_our_format(path), str(path)
    text = str(weights)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        if preset in DOFA_WEIGHT_FILES and text in {r for r in DOFA_WEIGHTS.values() if r}:
            local = _download(text, DOFA_WEIGHT_FILES[preset])
            return load_official_state_dict(local), local
        config_path = _download(text, "config.json")
        _download(text, "model.safetensors")
        return _read_our_format(Path(config_path).parent), text
    raise FileNotFoundError(f"DOFA weights {text!r}: no such file or folder, and not a hub id (owner/name)")


def _read_our_format(folder: Path) -> tuple[DOFAConfig, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    config_file, weights_file = folder / "config.json", folder / "model.safetensors"
    for needed in (config_file, weights_file):
        if not needed.is_file():
            raise FileNotFoundError(f"{folder}: missing {needed.name} (expected save_pretrained output)")
    values = json.loads(config_file.read_text())
    if values.get("model_type", "dofa") != "dofa":
        raise ValueError(f"{config_file}: model_type is {values.get('model_type')!r}, not 'dofa'")
    # Copy out of the memory map: its tensors are not 64-byte aligned, which changes CPU kernels'
    # rounding (outputs then differ from the saved model's in the last bits) and pins the file open.
    state = {k: v.clone() for k, v in load_file(str(weights_file), device="cpu").items()}
    return DOFAConfig.from_dict(values), state
