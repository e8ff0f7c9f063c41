"""EVA-02: a pre-LN ViT with 2-D RoPE on the patch tokens and a SwiGLU MLP with a sub-LayerNorm.

EVA-02 ("EVA-02: A Visual Representation for Neon Genesis", Fang et al. 2023, arXiv:2303.11331, code
github.com/baaivision/EVA ``EVA-02/asuka``) is the EVA02-L backbone of Rein and of the paper's
backbone table. It is neither in transformers nor usable through timm here (DESIGN §6), so it is
written here; module names follow the original checkpoints so that they load strictly.

Facts taken from the official code (``modeling_finetune.py``, ``modeling_pretrain.py``, ``rope.py``)
and Rein's copy (``w1oves/Rein rein/models/backbones/eva_02.py``, config
``rein_eva02-L_mask2former.py``: img 512, patch 16, ``mlp_ratio=4*2/3``, ``qkv_bias``, ``subln``,
``naiveswiglu``, ``rope``, ``pt_hw_seq_len=16``, ``intp_freq``):

* **Block.** ``x + attn(norm1(x))``, ``x + mlp(norm2(x))``, LayerNorm eps 1e-6, no LayerScale.
  Attention has separate ``q_proj``/``k_proj``/``v_proj`` without bias plus ``q_bias`` and ``v_bias``
  (no k bias), scale ``head_dim^-0.5``. The MLP is ``w3(ffn_ln(silu(w1 x) * w2 x))`` with hidden
  width ``int(D·4·2/3)`` (2730 at D=1024).
* **RoPE** (``VisionRotaryEmbeddingFast``): per axis ``head_dim/2`` channels with frequencies
  ``1/10000^(2i/(head_dim/2))``; positions ``t = arange(n)/n·pt`` with ``pt = 16`` (the 224/14
  pretraining grid), so a 32×32 grid sees 0, 0.5, … 15.5 (``intp_freq``); each frequency repeated
  pairwise, row (h) half then column (w) half; rotation of interleaved pairs
  ``(x₀, x₁) → (−x₁, x₀)``. Applied to q and k of the patch tokens only: here to the **last h·w**
  tokens, so tokens inserted after the cls token (VPT prompts) carry no position, as in DINOv3.
* **Position table** ``[1, 1 + 16², D]`` (224/14 pretraining), bicubically resampled
  (``align_corners=False``, no antialias) to the grid, as Rein's ``convert_eva2_512x512.py`` does
  offline for 32×32. A checkpoint whose table already has another square grid is taken as is.

Two released key layouts load strictly into the same module:

* **Original / Rein** (``Yuxin-CV/EVA-02`` ``eva02/pt/eva02_L_pt_m38m_p14to16.pt``, a dict under
  ``model``): ``patch_embed.proj`` (16×16 in the p14to16 files), ``cls_token``, ``pos_embed``,
  ``blocks.N.{norm1, attn.q_proj, attn.k_proj, attn.v_proj, attn.q_bias, attn.v_bias, attn.proj,
  norm2, mlp.w1, mlp.w2, mlp.ffn_ln, mlp.w3}``, ``norm``. Ignored: ``mask_token``, ``lm_head.*`` (MIM
  pretraining), ``head.*``, and the RoPE buffers ``rope.freqs_cos/sin`` and
  ``blocks.N.attn.rope.freqs_cos/sin``, which are regenerated — and checked against ours, so a file
  made with other RoPE settings is refused.
* **timm** (``timm/eva02_large_patch14_224.mim_m38m``): ``mlp.fc1_g/fc1_x/fc2``, ``mlp.norm``,
  ``attn.q_proj.bias``/``attn.v_proj.bias``, ``fc_norm``; renamed to the names above. Its 14×14
  kernel is resized to 16×16 (bicubic by default, as Rein's converter; ``kernel_resize="pi"`` for
  FlexiViT's rule).

``norm`` (the final LayerNorm) is loaded and counted but not used by the segmentor, which taps raw
block outputs like Rein's ``EVA2``; :meth:`EVA02Backbone.final_norm` exposes it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from spectralmoe.bands import RGB_TARGETS_UM, as_wavelength_list
from spectralmoe.models.backbones.base import FrozenBackbone, default_out_indices
from spectralmoe.models.backbones.common import (
    FamilyConfig,
    check_out_indices,
    drop_keys,
    locate_weights,
    random_weights_requested,
    read_family_folder,
    read_state_file,
    resample_pos_embed,
    resolve_preset,
    save_folder,
    strict_load,
)
from spectralmoe.models.patch_embed import adapt_kernel_to_bands, band_colour_assignment, resize_patch_kernel

logger = logging.getLogger(__name__)

__all__ = [
    "EVA02Config",
    "EVA02_CONFIGS",
    "EVA02_WEIGHTS",
    "EVA02Attention",
    "EVA02SwiGLU",
    "EVA02Block",
    "EVA02Model",
    "EVA02Backbone",
    "eva02_rope",
    "apply_rope",
    "build_eva02_backbone",
    "convert_eva02_state_dict",
]


@dataclass(frozen=True)
class EVA02Config(FamilyConfig):
    """Sizes of an EVA-02 model. Defaults: EVA02-L/16 as in the ``p14to16`` checkpoints.

    ``patch_size`` is the kernel the model runs with (16; timm's 14×14 kernels are resized on load).
    ``img_size / patch_size`` is the side of the stored position table (16: the 224/14 pretraining
    grid, hence 256 at patch 16). ``rope_pt_grid`` is EVA's ``pt_hw_seq_len``; ``in_chans`` the
    channels of the stored patch kernel (3, or the band count of a saved band-adapted model).
    """

    family_label: ClassVar[str] = "EVA02"

    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4 * 2 / 3
    patch_size: int = 16
    img_size: int = 256
    in_chans: int = 3
    layer_norm_eps: float = 1e-6
    rope_pt_grid: int = 16
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 4:
            raise ValueError(f"2-D RoPE needs a head dimension divisible by 4, got {self.head_dim}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def hidden_dim(self) -> int:
        """SwiGLU width: ``int(D · mlp_ratio)`` (2730 for EVA02-L, 2048 for EVA02-B)."""
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def pos_grid(self) -> int:
        return self.img_size // self.patch_size



EVA02_CONFIGS: dict[str, EVA02Config] = {
    "eva02-vitl16": EVA02Config(embed_dim=1024, depth=24, num_heads=16),
    "eva02-vitb16": EVA02Config(embed_dim=768, depth=12, num_heads=12),
    # Test-sized stand-in with the same structure (not a released model): 4×4 table, RoPE pretrained at 4.
    "tiny-eva02": EVA02Config(embed_dim=32, depth=4, num_heads=2, img_size=64, rope_pt_grid=4),
}

#: Official MIM-pretrained files (hub repo, file): the ``p14to16`` kernels that Rein and EVA's own
#: detection / segmentation configs start from. None: no released weights.
EVA02_WEIGHTS: dict[str, tuple[str, str] | None] = {
    "eva02-vitl16": ("Yuxin-CV/EVA-02", "eva02/pt/eva02_L_pt_m38m_p14to16.pt"),
    "eva02-vitb16": ("Yuxin-CV/EVA-02", "eva02/pt/eva02_B_pt_in21k_p14to16.pt"),
    "tiny-eva02": None,
}

# Keys of released files that the backbone does not use (MIM pretraining, classification head) or
# regenerates (RoPE tables; checked, then dropped).
_IGNORED_KEY_PATTERN = re.compile(r"^(mask_token$|lm_head\.|head\.|rope\.|blocks\.\d+\.attn\.rope\.)")
_ROPE_KEY_PATTERN = re.compile(r"^(rope\.|blocks\.\d+\.attn\.rope\.)freqs_(cos|sin)$")
# timm names → original names (timm/models/eva.py checkpoint_filter_fn, read backwards).
_TIMM_RENAMES = (
    (".mlp.fc1_g.", ".mlp.w1."), (".mlp.fc1_x.", ".mlp.w2."), (".mlp.fc2.", ".mlp.w3."), (".mlp.norm.", ".mlp.ffn_ln."),
    (".attn.q_proj.bias", ".attn.q_bias"), (".attn.v_proj.bias", ".attn.v_bias"),
)  # fmt: skip

KernelResize = Literal["bicubic", "pi"]


# --------------------------------------------------------------------------------------------------
# RoPE
# --------------------------------------------------------------------------------------------------


def eva02_rope(
    grid: tuple[int, int], head_dim: int, pt_grid: int = 16, theta: float = 10000.0, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each ``[h·w, head_dim]`` float32, of EVA-02's 2-D RoPE for an ``h × w`` patch grid.

    Same arithmetic (float32, same operation order) as ``VisionRotaryEmbeddingFast``, so that at the
    pretraining grid the tables equal the buffers the official code stores.
    """
    axis_dim = head_dim // 2
    freqs = 1.0 / (theta ** (torch.arange(0, axis_dim, 2, device=device)[: axis_dim // 2].float() / axis_dim))

    def axis(n: int) -> torch.Tensor:
        t = torch.arange(n, device=device) / n * pt_grid
        return (t[:, None] * freqs[None, :]).repeat_interleave(2, dim=-1)  # [n, axis_dim], pairs repeated

    rows, cols = axis(grid[0]), axis(grid[1])
    table = torch.cat([rows[:, None, :].expand(-1, grid[1], -1), cols[None, :, :].expand(grid[0], -1, -1)], dim=-1)
    table = table.reshape(grid[0] * grid[1], head_dim)
    return table.cos(), table.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of the last axis: ``x·cos + rot(x)·sin`` with ``rot(x₀, x₁) = (−x₁, x₀)``."""
    pairs = x.unflatten(-1, (-1, 2))
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return x * cos + rotated * sin


# --------------------------------------------------------------------------------------------------
# Modules (official names)
# --------------------------------------------------------------------------------------------------


class EVA02Attention(nn.Module):
    """q/k/v projections without bias, ``q_bias``/``v_bias``, RoPE on the last h·w tokens, SDPA.

    The projections are called as modules (not ``F.linear`` on their weights) so that LoRA can wrap them.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        batch, length, dim = x.shape
        q = self.q_proj(x)
        q = q + self.q_bias.to(q.dtype)
        k = self.k_proj(x)
        v = self.v_proj(x)
        v = v + self.v_bias.to(v.dtype)
        q, k, v = (t.reshape(batch, length, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        cos, sin = rope
        n = cos.shape[0]
        q = torch.cat([q[:, :, :-n], apply_rope(q[:, :, -n:], cos, sin).to(v.dtype)], dim=2)
        k = torch.cat([k[:, :, :-n], apply_rope(k[:, :, -n:], cos, sin).to(v.dtype)], dim=2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class EVA02SwiGLU(nn.Module):
    """``w3(ffn_ln(silu(w1 x) · w2 x))``: SwiGLU with the sub-LayerNorm (EVA's ``subln``)."""

    def __init__(self, dim: int, hidden_dim: int, eps: float) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim)
        self.w2 = nn.Linear(dim, hidden_dim)
        self.ffn_ln = nn.LayerNorm(hidden_dim, eps=eps)
        self.w3 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(self.ffn_ln(F.silu(self.w1(x)) * self.w2(x)))


class EVA02Block(nn.Module):
    """Pre-LN block: ``x + attn(norm1(x), rope)``, then ``x + mlp(norm2(x))``."""

    def __init__(self, config: EVA02Config) -> None:
        super().__init__()
        dim, eps = config.embed_dim, config.layer_norm_eps
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = EVA02Attention(dim, config.num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = EVA02SwiGLU(dim, config.hidden_dim, eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    """Holds the patch convolution under the official name ``patch_embed.proj``."""

    def __init__(self, in_chans: int, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)


class EVA02Model(nn.Module):
    """EVA-02 encoder: patch conv, cls token, learned position table, RoPE blocks, final norm.

    ``forward`` runs every block and returns the last block's tokens (no final norm), as Rein's
    backbone taps them. State-dict keys are the original checkpoints' keys (RoPE tables are not stored).
    """

    def __init__(self, config: EVA02Config) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.patch_embed = _PatchEmbed(config.in_chans, dim, config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.pos_grid**2, dim))
        self.blocks = nn.ModuleList(EVA02Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self._rope_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random init like the original (truncated normal 0.02, zero biases, unit norms)."""
        if self.cls_token.is_meta:
            return
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def rope(self, grid: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE (cos, sin) for the grid, cached per (grid, device)."""
        key = (tuple(grid), str(device))
        cached = self._rope_cache.get(key)
        if cached is None:
            cfg = self.config
            cached = eva02_rope(tuple(grid), cfg.head_dim, cfg.rope_pt_grid, cfg.rope_theta, device=device)
            if len(self._rope_cache) >= 16:
                self._rope_cache.clear()
            self._rope_cache[key] = cached
        return cached

    def embed(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Image ``[B, C, H, W]`` → ``[B, 1 + h·w, D]`` (cls first) and ``(h, w)``."""
        maps = self.patch_embed.proj(image)
        grid = (maps.shape[-2], maps.shape[-1])
        patches = maps.flatten(2).transpose(1, 2)
        pos = resample_pos_embed(self.pos_embed, grid)
        patches = patches + pos[:, 1:]
        cls = (self.cls_token + pos[:, :1]).expand(patches.shape[0], -1, -1)
        return torch.cat([cls.to(patches.dtype), patches], dim=1), grid

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        tokens, grid = self.embed(image)
        rope = self.rope(grid, tokens.device)
        for block in self.blocks:
            tokens = block(tokens, rope)
        return tokens


# --------------------------------------------------------------------------------------------------
# FrozenBackbone wrapper
# --------------------------------------------------------------------------------------------------


class EVA02Backbone(FrozenBackbone):
    """Frozen EVA-02 stepped block by block (DESIGN §4); any band count.

    The RGB patch kernel is spread over the input bands by wavelength
    (:func:`~spectralmoe.models.patch_embed.adapt_kernel_to_bands`, identity for R, G, B), as for the
    transformers backbones.

    Args:
        model: a built (and loaded) ``EVA02Model``; it is adapted in place and frozen.
        in_wavelengths: centre wavelength (µm) of each input band (default R, G, B).
        out_indices: blocks tapped for the decoder; default [7, 11, 15, 23] at 24 layers.
        gradient_checkpointing: recompute blocks in backward (through ``run_block``).
    """

    family = "eva02"
    num_prefix_tokens = 1

    def __init__(
        self,
        model: EVA02Model,
        in_wavelengths: Sequence[float] | torch.Tensor | None = None,
        out_indices: Sequence[int] | None = None,
        gradient_checkpointing: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        config = model.config
        self.name = name or "eva02"
        self.embed_dim, self.num_layers, self.patch_size = config.embed_dim, config.depth, config.patch_size
        self.in_wavelengths = tuple(as_wavelength_list(RGB_TARGETS_UM if in_wavelengths is None else in_wavelengths))
        if not self.in_wavelengths:
            raise ValueError(f"{self.name}: in_wavelengths is empty; give one wavelength (µm) per input band")
        self.in_channels = len(self.in_wavelengths)
        self.out_indices = check_out_indices(out_indices, config.depth, "EVA-02", default_out_indices(config.depth))
        self._adapt_patch_kernel()
        self.gradient_checkpointing = gradient_checkpointing
        self.freeze()

    @property
    def blocks(self) -> nn.ModuleList:  # type: ignore[override]
        return self.model.blocks

    @property
    def config(self) -> EVA02Config:
        return self.model.config

    def _adapt_patch_kernel(self) -> None:
        """Spread an RGB kernel over the input bands by wavelength (kept as is for R, G, B or a matching count)."""
        conv = self.model.patch_embed.proj
        stored = conv.weight.shape[1]
        if stored == 3:
            if self.in_channels == 3 and band_colour_assignment(self.in_wavelengths) == [[0], [1], [2]]:
                return
        elif stored == self.in_channels:
            return
        else:
            raise ValueError(
                f"{self.name}: the loaded patch kernel has {stored} input channels; it can be adapted from RGB "
                f"(3 channels) or used as is for {stored} bands, but in_wavelengths gives {self.in_channels} bands"
            )
        new = nn.Conv2d(self.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                        device=conv.weight.device, dtype=conv.weight.dtype)  # fmt: skip
        if not conv.weight.is_meta:
            with torch.no_grad():
                new.weight.copy_(adapt_kernel_to_bands(conv.weight.detach(), self.in_wavelengths))
                new.bias.copy_(conv.bias)
        self.model.patch_embed.proj = new
        self.model.config = dataclasses.replace(self.model.config, in_chans=self.in_channels)

    def embed(
        self, image: torch.Tensor, wavelengths: torch.Tensor | Sequence[float] | None = None
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Image ``[B, C, H, W]`` (H, W multiples of 16) → tokens ``[B, 1 + H/16·W/16, D]`` and the grid."""
        if image.ndim != 4:
            raise ValueError(f"{self.name}: expected an image batch [B, C, H, W], got shape {tuple(image.shape)}")
        if image.shape[1] != self.in_channels:
            raise ValueError(
                f"{self.name}: backbone built for {self.in_channels} bands (wavelengths {list(self.in_wavelengths)} µm) "
                f"but the image has {image.shape[1]} bands (shape {tuple(image.shape)}); build it with in_wavelengths "
                "of this sensor"
            )
        if wavelengths is not None and len(as_wavelength_list(wavelengths)) != self.in_channels:
            raise ValueError(
                f"{self.name}: {len(as_wavelength_list(wavelengths))} wavelengths were passed with the image (shape "
                f"{tuple(image.shape)}) but the backbone was built for {self.in_channels} bands"
            )
        if image.shape[-2] % self.patch_size or image.shape[-1] % self.patch_size:
            raise ValueError(
                f"{self.name}: image height and width must be multiples of {self.patch_size}, got shape "
                f"{tuple(image.shape)}"
            )
        return self.model.embed(image.to(self.model.patch_embed.proj.weight.dtype))

    def _block_forward(self, index: int, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Block ``index``; RoPE acts on the last h·w tokens, so prompts after the cls token are allowed."""
        if tokens.shape[1] < grid[0] * grid[1] + 1:
            raise ValueError(f"{self.name}: {tokens.shape[1]} tokens cannot hold a cls token and a {grid} grid")
        return self.model.blocks[index](tokens, self.model.rope(grid, tokens.device))

    def final_norm(self, tokens: torch.Tensor) -> torch.Tensor:
        """The model's final LayerNorm (loaded, not used by the segmentor)."""
        return self.model.norm(tokens)


    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``model.safetensors`` (original key names) and ``config.json`` for ``build_eva02_backbone``."""
        return save_folder(folder, self.model.state_dict(), self.config.to_dict(), "eva02")


# --------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------


def convert_eva02_state_dict(state: dict[str, torch.Tensor], source: str, config: EVA02Config
                             ) -> dict[str, torch.Tensor]:  # fmt: skip
    """A released EVA-02 state dict (original or timm layout) → this module's keys.

    RoPE buffers are compared with the tables ``config`` generates (refused when they differ: the
    file was pretrained with other RoPE settings) and dropped with the other ignored keys.
    """
    timm_layout = any(".mlp.fc1_g." in k for k in state)
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = _ROPE_KEY_PATTERN.match(key)
        if match:
            _check_rope_buffer(key, value, match.group(2), source, config)
            continue
        if timm_layout:
            for old, new in _TIMM_RENAMES:
                if old in key:
                    key = key.replace(old, new)
            if key.startswith("fc_norm."):
                key = "norm." + key[len("fc_norm."):]
        converted[key] = value
    return drop_keys(converted, _IGNORED_KEY_PATTERN)


def _check_rope_buffer(key: str, value: torch.Tensor, kind: str, source: str, config: EVA02Config) -> None:
    head_dim = config.head_dim
    cells = value.numel() // head_dim if value.numel() % head_dim == 0 else 0
    side = math.isqrt(cells)
    if value.shape[-1] != head_dim or side * side != cells or side == 0:
        raise ValueError(
            f"{source}: RoPE buffer {key} has shape {tuple(value.shape)}, not a square grid × head_dim {head_dim} "
            f"(embed_dim {config.embed_dim} / {config.num_heads} heads)"
        )
    cos, sin = eva02_rope((side, side), head_dim, config.rope_pt_grid, config.rope_theta)
    ours = cos if kind == "cos" else sin
    if not torch.allclose(value.reshape(cells, head_dim).float(), ours, atol=1e-5, rtol=0):
        raise ValueError(
            f"{source}: RoPE buffer {key} differs from the tables of rope_pt_grid={config.rope_pt_grid}, "
            f"rope_theta={config.rope_theta} at a {side}×{side} grid; the file was made with other RoPE settings"
        )


def _config_for_state_dict(config: EVA02Config, state: dict[str, torch.Tensor], source: str) -> EVA02Config:
    """Adopt the file's position grid (e.g. Rein's 32×32 table) and kernel channel count."""
    changes: dict[str, int] = {}
    pos = state.get("pos_embed")
    if pos is not None and pos.ndim == 3 and pos.shape[1] != 1 + config.pos_grid**2:
        side = math.isqrt(pos.shape[1] - 1)
        if side * side != pos.shape[1] - 1:
            raise ValueError(f"{source}: pos_embed {tuple(pos.shape)} is not 1 cls + a square grid")
        logger.info("%s: position table is %dx%d; using img_size %d", source, side, side, side * config.patch_size)
        changes["img_size"] = side * config.patch_size
    kernel = state.get("patch_embed.proj.weight")
    if kernel is not None and kernel.ndim == 4 and kernel.shape[1] != config.in_chans:
        changes["in_chans"] = int(kernel.shape[1])
    return dataclasses.replace(config, **changes) if changes else config


def _resize_kernel_in_state(state: dict[str, torch.Tensor], patch: int, method: KernelResize) -> None:
    kernel = state.get("patch_embed.proj.weight")
    if kernel is not None and kernel.ndim == 4 and kernel.shape[-1] != patch:
        state["patch_embed.proj.weight"] = resize_patch_kernel(kernel, patch, method=method)



def build_eva02_backbone(
    name: str | EVA02Config,
    *,
    in_wavelengths: Sequence[float] | torch.Tensor | None = None,
    pretrained: bool = True,
    weights: str | os.PathLike | None = None,
    out_indices: Sequence[int] | None = None,
    kernel_resize: KernelResize = "bicubic",
    gradient_checkpointing: bool = False,
) -> EVA02Backbone:
    """Build a frozen EVA-02 backbone from a preset name (or an ``EVA02Config``) and load its weights.

    ``weights``: an original (``.pt``, Rein's converted file included) or timm (``.safetensors`` /
    ``.bin`` / its hub folder) checkpoint; a folder or hub id in our ``save_pretrained`` format; or
    None → the preset's official hub file (``EVA02_WEIGHTS``). ``pretrained=False`` → random init
    (with a warning); works inside ``with torch.device("meta"):``.
    """
    if kernel_resize not in ("bicubic", "pi"):
        raise ValueError(f"unknown kernel_resize {kernel_resize!r}; use 'bicubic' or 'pi'")
    preset, config = resolve_preset(name, EVA02_CONFIGS, EVA02Config)
    wrap = dict(in_wavelengths=in_wavelengths, out_indices=out_indices, gradient_checkpointing=gradient_checkpointing,
                name=preset or "eva02")  # fmt: skip
    if random_weights_requested(pretrained, weights, "EVA02", preset):
        return EVA02Backbone(EVA02Model(config), **wrap)

    hub = EVA02_WEIGHTS.get(preset or "")
    kind, where = locate_weights(weights, family="EVA02", preset=preset, hub_repo=hub[0] if hub else None,
                                 hub_file=hub[1] if hub else None, model_type="eva02")  # fmt: skip
    source = str(where)
    if kind == "official":
        state = convert_eva02_state_dict(read_state_file(where), source, config)
    else:
        config, state = read_family_folder(Path(where), "eva02", config, preset)
    config = _config_for_state_dict(config, state, source)
    _resize_kernel_in_state(state, config.patch_size, kernel_resize)
    with torch.device("meta"):  # no random init of 300 M parameters that are overwritten anyway
        model = EVA02Model(config)
    strict_load(model, state, source, "EVA02")
    return EVA02Backbone(model, **wrap)
