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

The hypernetwork (``fclayer``, ``weight_generator``, kernel layout, convolution), the timm-style
block and the weights IO live in :mod:`.common`, shared with Copernicus-FM; this module keeps what is
DOFA's own (the sin-cos wavelength descriptor, the config, presets and hub files).

Position embedding at other sizes: the stored table (14×14 for img_size 224) is resampled bicubically
(``align_corners=False``) to the actual grid, as SpectralMoE's converter did offline to 32×32. A
checkpoint whose table already has another square grid (e.g. the converted 1025-token one) is taken as
is, with ``img_size`` set to match.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import torch
from torch import nn

from spectralmoe.bands import as_wavelength_list
from spectralmoe.models.backbones.base import FrozenBackbone, default_out_indices
from spectralmoe.models.backbones.common import (  # noqa: F401 - sin-cos helpers re-exported for older imports
    FamilyConfig,
    HypernetworkPatchEmbedding,
    PreNormAttention,
    PreNormBlock,
    PreNormMLP,
    ResidualWaveMLP,
    WavelengthWeightGenerator,
    drop_keys,
    locate_weights,
    random_weights_requested,
    read_family_folder,
    read_state_file,
    resample_pos_embed,
    resolve_preset,
    save_folder,
    sincos_embedding_1d,
    sincos_embedding_2d,
    strict_load,
)

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
class DOFAConfig(FamilyConfig):
    """All sizes of a DOFA model. Defaults are DOFA-L/16 as released.

    ``img_size`` only sets the grid of the stored position-embedding table (img_size / patch_size
    squared); images of other sizes get the table resampled. ``wave_dim``, ``num_weight_tokens``,
    ``generator_*`` size the wavelength-conditioned kernel generator (128, 128, 4 heads, FFN 2048 in
    the original). ``legacy_kernel_layout`` reproduces the March-2024 weights' band-mixing reshape.
    """

    family_label: ClassVar[str] = "DOFA"

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


# --------------------------------------------------------------------------------------------------
# Wavelength-conditioned patch embedding (the hypernetwork itself lives in .common, shared with
# Copernicus-FM; DOFA only decides how a band becomes a descriptor token)
# --------------------------------------------------------------------------------------------------


class WavelengthEmbedding(nn.Module):
    """Wavelengths (µm) → fixed sin-cos features of 1000·λ, i.e. of the wavelength in nm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, wavelengths_um: torch.Tensor) -> torch.Tensor:
        return sincos_embedding_1d(self.dim, wavelengths_um * 1000.0)


class WavelengthPatchEmbedding(HypernetworkPatchEmbedding):
    """DOFA's dynamic patch embedding: a 16×16 stride-16 conv whose kernel is made from the wavelengths.

    Official module name ``patch_embed`` (class ``Dynamic_MLP_OFA``); children ``fclayer`` and
    ``weight_generator`` keep the official names so that the checkpoint loads.
    """

    def __init__(self, config: DOFAConfig) -> None:
        super().__init__(
            embed_dim=config.embed_dim, patch_size=config.patch_size, wave_dim=config.wave_dim,
            num_weight_tokens=config.num_weight_tokens, generator_heads=config.generator_heads,
            generator_ffn_dim=config.generator_ffn_dim, generator_layers=config.generator_layers,
            generator_norm_eps=config.generator_norm_eps, kernel_scale=config.kernel_scale,
            patch_padding=config.patch_padding, legacy_kernel_layout=config.legacy_kernel_layout,
        )  # fmt: skip
        self.config = config
        self.wave_embedding = WavelengthEmbedding(config.wave_dim)

    def generate_kernel(self, wavelengths_um: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[C]`` wavelengths → conv kernel ``[D, C, k, k]`` and bias ``[D]`` (both scaled by 0.01)."""
        return self.kernel_from_tokens(self.wave_embedding(wavelengths_um))

    def forward(self, image: torch.Tensor, wavelengths_um: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Image ``[B, C, H, W]`` → patch tokens ``[B, h·w, D]`` and the grid ``(h, w)``."""
        weight, bias = self.generate_kernel(wavelengths_um)
        return self.convolve(image, weight, bias)


# --------------------------------------------------------------------------------------------------
# Transformer blocks (timm ``Block`` layout, SDPA attention; shared with Copernicus-FM)
# --------------------------------------------------------------------------------------------------

DOFAAttention = PreNormAttention
DOFAMLP = PreNormMLP


class DOFABlock(PreNormBlock):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``; any token count."""

    def __init__(self, config: DOFAConfig) -> None:
        super().__init__(config.embed_dim, config.num_heads, config.mlp_ratio, config.layer_norm_eps, config.qkv_bias)


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
        self.patch_embed.reset_parameters()
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


    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``model.safetensors`` (official key names) and ``config.json`` for ``build_dofa_backbone``."""
        return save_folder(folder, self.model.state_dict(), self.config.to_dict(), "dofa")


# --------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------


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


def load_official_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an official DOFA ``.pth`` into a cleaned state dict with this module's (= official) keys."""
    return drop_keys(read_state_file(path), _IGNORED_KEY_PATTERN)



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
    preset, config = resolve_preset(name, DOFA_CONFIGS, DOFAConfig)
    kwargs = dict(in_wavelengths=in_wavelengths, out_indices=out_indices, gradient_checkpointing=gradient_checkpointing)
    if random_weights_requested(pretrained, weights, "DOFA", preset):
        return DOFABackbone(config, **kwargs)

    kind, where = locate_weights(weights, family="DOFA", preset=preset, hub_repo=DOFA_WEIGHTS.get(preset or ""),
                                 hub_file=DOFA_WEIGHT_FILES.get(preset or ""), model_type="dofa")  # fmt: skip
    source = str(where)
    if kind == "official":
        state = load_official_state_dict(where)
    else:
        config, state = read_family_folder(Path(where), "dofa", config, preset)
    config = _config_for_state_dict(config, state, source)
    with torch.device("meta"):  # no random init of 300 M parameters that are overwritten anyway
        backbone = DOFABackbone(config, **kwargs)
    strict_load(backbone.model, state, source, "DOFA")
    backbone.freeze()
    return backbone
