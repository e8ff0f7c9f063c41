"""SenPa-MAE: a ViT-B/16 where every band is its own set of tokens, told apart by its spectral response.

SenPa-MAE ("SenPa-MAE: Sensor Parameter Aware Masked Autoencoder for Multi-Satellite Self-Supervised
Pretraining", Prexl & Schmitt 2024, arXiv:2408.11000, code github.com/JonathanPrexl/SenPa-MAE,
``src/model.py``). **No weights are public** (the README asks to contact the author), so the loader
reads the format the authors' training code writes (``src/train.py``): ``torch.save({'model_state_dict':
SenPaMAE.state_dict(), 'optimizer_state_dict': …, …})``, keys ``encoder.*`` / ``decoder.*``, with an
``_orig_mod.`` prefix when the model was ``torch.compile``-d. Only the encoder is kept (strictly).
Used FROZEN only, as in the paper (``adapter_refusal``).

Facts from the official encoder (``Encoder`` with ``channels_seperate_tokens=True``,
``sensor_parameter_embedding_active=True``, ``positional_embedding_3D=False``):

* each band is cut into 16 × 16 patches, flattened row-major (256 values) and embedded by ONE shared
  ``Linear(256, 768)`` (``linEmmbedingLayer``), so a C-band image gives C × h·w tokens, band-major;
* a learned position table ``[1, 1, 81, 768]`` for the 9 × 9 grid of 144 px images, shared by the bands
  (``pos_embedding``); here resampled bicubically to the actual grid;
* per band, an MLP of its spectral response curve (2301 samples, 300-2600 nm at 1 nm, peak 1):
  2301 → 1536 → 768 → 768 → 768 → 768 with ReLU after every layer, the last included
  (``linEmmbedingLayerResponsefunction.network``), and an MLP of its GSD in metres:
  1 → 384 → 768 → 1536 → 768 → 768, ReLU between layers, none after the last
  (``linEmmbedingLayerGSD.network.0``); both are added to every token of the band;
* 12 timm ``Block(768, 12)`` (qkv without bias, GELU MLP ×4, LayerNorm eps 1e-5), no cls token, a
  final LayerNorm (``layer_norm``);
* pretraining masked 66 % of the tokens (``PatchShuffle``); at inference nothing is masked (with a
  ratio of 0 the original's slice ``[:-0]`` would even return no token), so it is skipped.

**Response curves.** A band's curve comes from ``response_curves`` when given (an array or ``.npy``
file of ``[bands, 2301]`` or ``[2301, bands]`` samples, the layout of the authors'
``src/responsefunctions/*.npy``), otherwise it is a Gaussian at the band's centre wavelength whose
full width at half maximum is the band's bandwidth (from the sensor record, else
``bands.default_bandwidths_um``), peak 1, sampled on the same 300-2600 nm grid.

**Feature maps**: at each of the ``out_indices`` the tokens pass the final LayerNorm and the bands'
tokens of each patch position are averaged → ``[B, D, H/16, W/16]``.

**Input values**: pretraining saw reflectance (DN / 10000). The backbone takes the segmentor's
normalised input as is: with the WHU-OHS task's statistics (mean 0, std 10000) that is reflectance;
for 8-bit products it is the dataset z-score (no reflectance exists for them).
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spectralmoe.bands import DEFAULT_GSD_M, as_wavelength_list, default_bandwidths_um
from spectralmoe.models.backbones.base import FrozenBackbone, default_out_indices
from spectralmoe.models.backbones.common import (
    FamilyConfig,
    load_tensors_only,
    random_weights_requested,
    resample_pos_embed,
    resolve_preset,
    strict_load,
)

logger = logging.getLogger(__name__)

__all__ = [
    "RESPONSE_GRID_NM",
    "SENPAMAE_CONFIGS",
    "SenPaMAEBackbone",
    "SenPaMAEConfig",
    "SenPaMAEEncoder",
    "build_senpamae_backbone",
    "convert_training_checkpoint",
    "gaussian_response_curves",
]

#: Wavelengths (nm) of the response-curve samples: 300, 301, …, 2600.
RESPONSE_GRID_NM = (300, 2600)
RESPONSE_SAMPLES = RESPONSE_GRID_NM[1] - RESPONSE_GRID_NM[0] + 1


@dataclass(frozen=True)
class SenPaMAEConfig(FamilyConfig):
    """Sizes of a SenPa-MAE encoder (``src/configs/pretrain/senpamae_*.yaml``)."""

    family_label: ClassVar[str] = "SenPa-MAE"

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    image_size: int = 144
    response_samples: int = RESPONSE_SAMPLES
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads or self.embed_dim % 2:
            raise ValueError(f"embed_dim {self.embed_dim} must be even and divisible by num_heads {self.num_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def pos_grid(self) -> int:
        return self.image_size // self.patch_size


SENPAMAE_CONFIGS: dict[str, SenPaMAEConfig] = {
    "senpamae-vitb16": SenPaMAEConfig(),
    # Test-sized stand-in with the same structure (not a released model); full 2301-sample curves.
    "tiny-senpamae": SenPaMAEConfig(embed_dim=32, depth=4, num_heads=2, image_size=48),
}


def gaussian_response_curves(wavelengths_um: Sequence[float], bandwidths_um: Sequence[float]) -> torch.Tensor:
    """``[C, 2301]`` Gaussian responses on 300-2600 nm: peak 1 at each centre, half maximum at ±FWHM/2."""
    grid = torch.arange(RESPONSE_GRID_NM[0], RESPONSE_GRID_NM[1] + 1, dtype=torch.float64)
    centre = torch.tensor([1000.0 * w for w in wavelengths_um], dtype=torch.float64)[:, None]
    fwhm = torch.tensor([1000.0 * b for b in bandwidths_um], dtype=torch.float64)[:, None]
    return torch.exp(-4.0 * math.log(2.0) * (grid[None] - centre) ** 2 / fwhm**2).float()


def _read_curves(curves: Any, bands: int) -> torch.Tensor:
    """User response curves (array or ``.npy`` path, [bands, 2301] or [2301, bands]) as ``[bands, 2301]``."""
    source = "response_curves"
    if isinstance(curves, (str, os.PathLike)):
        source = os.fspath(curves)
        try:
            curves = np.load(source, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"{source}: not a readable .npy array of response curves ({err})") from err
    array = torch.as_tensor(np.asarray(curves, dtype=np.float32), device="cpu")
    if array.ndim == 2 and array.shape[0] == RESPONSE_SAMPLES and array.shape[1] != RESPONSE_SAMPLES:
        array = array.T
    if array.ndim != 2 or tuple(array.shape) != (bands, RESPONSE_SAMPLES):
        raise ValueError(f"{source}: response curves must be [{bands} bands, {RESPONSE_SAMPLES} samples "
                         f"(300-2600 nm)], got shape {tuple(array.shape)}")  # fmt: skip
    if not bool(torch.isfinite(array).all()):
        raise ValueError(f"{source}: response curves hold non-finite values")
    return array.contiguous()


# --------------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------------


def _mlp(sizes: Sequence[int], relu_after_last: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or relu_after_last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class SenPaMAEAttention(nn.Module):
    """timm ``Attention``: fused qkv without bias, output projection with bias, via SDPA."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, length, dim))


class SenPaMAEBlock(nn.Module):
    """timm ``Block``: ``x + attn(norm1(x))``, ``x + fc2(gelu(fc1(norm2(x))))``."""

    def __init__(self, config: SenPaMAEConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attn = SenPaMAEAttention(dim, config.num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(dim, int(dim * config.mlp_ratio))
        self.fc2 = nn.Linear(int(dim * config.mlp_ratio), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class SenPaMAEEncoder(nn.Module):
    """The SenPa-MAE encoder (our names; ``convert_training_checkpoint`` maps the authors' keys)."""

    def __init__(self, config: SenPaMAEConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.config = config
        self.patch_proj = nn.Linear(config.patch_size**2, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1, config.pos_grid**2, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.response_mlp = _mlp((config.response_samples, 2 * dim, dim, dim, dim, dim), relu_after_last=True)
        self.gsd_mlp = _mlp((1, dim // 2, dim, 2 * dim, dim, dim), relu_after_last=False)
        self.blocks = nn.ModuleList(SenPaMAEBlock(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)

    def band_tokens(
        self, image: torch.Tensor, curves: torch.Tensor, gsd_m: float
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """``[B, C, H, W]`` → ``[B, C·h·w, D]`` (band-major) and the grid (h, w)."""
        batch, bands, height, width = image.shape
        p = self.config.patch_size
        grid = (height // p, width // p)
        patches = image.reshape(batch, bands, grid[0], p, grid[1], p).permute(0, 1, 2, 4, 3, 5)
        tokens = self.patch_proj(patches.reshape(batch, bands, grid[0] * grid[1], p * p))  # [B, C, N, D]
        pos = resample_pos_embed(self.pos_embed[:, 0], grid, num_prefix=0)  # [1, N, D]
        sensor = self.response_mlp(curves.to(tokens.dtype)) + self.gsd_mlp(tokens.new_full((bands, 1), float(gsd_m)))
        tokens = tokens + pos[:, None] + sensor[None, :, None]
        return tokens.reshape(batch, bands * grid[0] * grid[1], -1), grid


class SenPaMAEBackbone(FrozenBackbone):
    """Frozen SenPa-MAE stepped block by block; maps average the bands per patch position.

    Args:
        config: encoder sizes (``SENPAMAE_CONFIGS``).
        in_wavelengths: band centres (µm) for ``embed`` when none are passed.
        in_bandwidths: FWHM (µm) per band for the Gaussian curves (None: ``bands.default_bandwidths_um``).
        gsd_m: ground sampling distance (m); None → ``bands.DEFAULT_GSD_M``.
        response_curves: measured curves ``[bands, 2301]`` (array or ``.npy`` path) for ``in_wavelengths``.
        out_indices: blocks whose outputs feed the decoder (default [3, 5, 7, 11]).
    """

    num_prefix_tokens = 0
    adapter_refusal = (
        "SenPa-MAE makes one token per band at every patch position and is used frozen only, as in the paper; "
        "the adapters expect one token per patch"
    )

    def __init__(
        self,
        config: SenPaMAEConfig,
        in_wavelengths: Sequence[float] | torch.Tensor | None = None,
        in_bandwidths: Sequence[float] | None = None,
        gsd_m: float | None = None,
        response_curves: Any = None,
        out_indices: Sequence[int] | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if gsd_m is not None and not (math.isfinite(gsd_m) and gsd_m > 0):
            raise ValueError(f"gsd_m must be a positive number of metres, got {gsd_m}")
        self.config = config
        self.model = SenPaMAEEncoder(config)
        self.embed_dim, self.num_layers, self.patch_size = config.embed_dim, config.depth, config.patch_size
        if gsd_m is None:
            logger.warning("SenPa-MAE: no ground sampling distance given; assuming %.0f m (bands.DEFAULT_GSD_M)",
                           DEFAULT_GSD_M)  # fmt: skip
        self.gsd_m = float(DEFAULT_GSD_M if gsd_m is None else gsd_m)
        indices = tuple(int(i) for i in (default_out_indices(config.depth) if out_indices is None else out_indices))
        if any(not 0 <= i < config.depth for i in indices):
            raise ValueError(f"out_indices {indices} outside 0..{config.depth - 1} for {config.depth} blocks")
        self.out_indices = indices
        self.gradient_checkpointing = gradient_checkpointing
        self.in_wavelengths = None if in_wavelengths is None else self._check_wavelengths(in_wavelengths)
        waves = self.in_wavelengths
        if in_bandwidths is not None and (waves is None or len(in_bandwidths) != len(waves)):
            raise ValueError(f"in_bandwidths {list(in_bandwidths)} need in_wavelengths with as many bands")
        self.in_bandwidths = None if in_bandwidths is None else [float(b) for b in in_bandwidths]
        self.custom_curves = None
        if response_curves is not None:
            if self.in_wavelengths is None:
                raise ValueError("response_curves need in_wavelengths (the bands they describe)")
            self.custom_curves = _read_curves(response_curves, len(self.in_wavelengths))
        self.freeze()

    @property
    def blocks(self) -> nn.ModuleList:  # type: ignore[override]
        return self.model.blocks

    @staticmethod
    def _check_wavelengths(wavelengths: Sequence[float] | torch.Tensor) -> list[float]:
        waves = as_wavelength_list(wavelengths)
        bad = [i for i, w in enumerate(waves) if not (math.isfinite(w) and 0.3 <= w <= 2.6)]
        if bad:
            raise ValueError(f"SenPa-MAE needs each band's response on 300-2600 nm, but band(s) {bad} of {waves} µm "
                             "have no wavelength there (non-spectral bands cannot enter)")  # fmt: skip
        return waves

    def response_curves(self, wavelengths: Sequence[float] | None = None) -> torch.Tensor:
        """``[C, 2301]`` curves of the given bands (default: the build-time bands)."""
        if wavelengths is None or (self.in_wavelengths is not None and _same(wavelengths, self.in_wavelengths)):
            if self.in_wavelengths is None:
                raise ValueError("no wavelengths: pass them or build the backbone with in_wavelengths=")
            if self.custom_curves is not None:
                return self.custom_curves
            widths = self.in_bandwidths or default_bandwidths_um(self.in_wavelengths)
            return gaussian_response_curves(self.in_wavelengths, widths)
        if self.custom_curves is not None:
            raise ValueError(f"the measured response_curves describe bands {self.in_wavelengths} µm, not "
                             f"{list(wavelengths)}")  # fmt: skip
        waves = self._check_wavelengths(wavelengths)
        return gaussian_response_curves(waves, default_bandwidths_um(waves))

    def embed(
        self, image: torch.Tensor, wavelengths: torch.Tensor | Sequence[float] | None = None
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Image ``[B, C, H, W]`` (H, W multiples of 16) → ``[B, C·h·w, D]`` and the grid (h, w)."""
        if image.ndim != 4:
            raise ValueError(f"SenPa-MAE expects an image [B, C, H, W], got shape {tuple(image.shape)}")
        waves = None if wavelengths is None else as_wavelength_list(wavelengths)
        curves = self.response_curves(waves)
        if curves.shape[0] != image.shape[1]:
            raise ValueError(f"image has {image.shape[1]} bands (shape {tuple(image.shape)}) but {curves.shape[0]} "
                             "wavelengths describe it")  # fmt: skip
        if image.shape[-2] % self.patch_size or image.shape[-1] % self.patch_size:
            raise ValueError(f"SenPa-MAE needs H and W divisible by {self.patch_size} (got image shape "
                             f"{tuple(image.shape)}); pad or crop")  # fmt: skip
        return self.model.band_tokens(image, curves.to(image.device), self.gsd_m)

    def _block_forward(self, index: int, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return self.model.blocks[index](tokens)

    def tokens_to_map(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``[B, C·h·w, D]`` → final norm → mean over the C bands → ``[B, D, h, w]``."""
        h, w = grid
        bands = tokens.shape[1] // (h * w)
        return self.model.norm(tokens).view(tokens.shape[0], bands, h, w, -1).mean(1).permute(0, 3, 1, 2)



def _same(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= 1e-6 for x, y in zip(a, b))


# --------------------------------------------------------------------------------------------------
# Weights: the authors' training checkpoints
# --------------------------------------------------------------------------------------------------

#: The authors' encoder keys (after ``encoder.``) → ours.
_KEY_MAP: tuple[tuple[str, str], ...] = (
    (r"^linEmmbedingLayer\.", "patch_proj."),
    (r"^pos_embedding$", "pos_embed"),
    (r"^linEmmbedingLayerResponsefunction\.network\.", "response_mlp."),
    (r"^linEmmbedingLayerGSD\.network\.0\.", "gsd_mlp."),
    (r"^transformer\.(\d+)\.mlp\.(fc[12])\.", r"blocks.\1.\2."),
    (r"^transformer\.(\d+)\.", r"blocks.\1."),
    (r"^layer_norm\.", "norm."),
)


def convert_training_checkpoint(raw: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The encoder of an authors' training checkpoint (``{'model_state_dict': …}`` or a bare state dict,
    ``_orig_mod.`` / ``module.`` prefixes allowed) with our key names; decoder keys are dropped, any
    other key is an error."""
    state = raw.get("model_state_dict", raw) if isinstance(raw, dict) else raw
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{source}: expected SenPa-MAE's training checkpoint ({{'model_state_dict': …}}) or a "
                         "state dict")  # fmt: skip
    converted, unknown = {}, []
    for key, value in state.items():
        key = key.replace("_orig_mod.", "").removeprefix("module.")
        if key.startswith("decoder."):
            continue
        inner = key.removeprefix("encoder.")
        for pattern, replacement in _KEY_MAP:
            new, hits = re.subn(pattern, replacement, inner)
            if hits and key.startswith("encoder."):
                converted[new] = value.float()
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{source}: keys that are not SenPa-MAE encoder/decoder keys {unknown[:20]}")
    return converted


def _load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    raw = load_tensors_only(path, "re-save {'model_state_dict': model.state_dict()}")
    return convert_training_checkpoint(raw, str(path))


def build_senpamae_backbone(
    name: str | SenPaMAEConfig,
    *,
    in_wavelengths: Sequence[float] | torch.Tensor | None = None,
    in_bandwidths: Sequence[float] | None = None,
    gsd_m: float | None = None,
    pretrained: bool = True,
    weights: str | os.PathLike | None = None,
    out_indices: Sequence[int] | None = None,
    gradient_checkpointing: bool = False,
    response_curves: Any = None,
) -> SenPaMAEBackbone:
    """Build a frozen SenPa-MAE from a preset name and load the encoder of an authors' training checkpoint.

    There are no public weights: ``pretrained=True`` needs ``weights=<checkpoint .pt>``.
    ``pretrained=False`` → random init (a warning); works under ``torch.device("meta")``.
    """
    preset, config = resolve_preset(name, SENPAMAE_CONFIGS, SenPaMAEConfig)
    kwargs = dict(in_wavelengths=in_wavelengths, in_bandwidths=in_bandwidths, gsd_m=gsd_m,
                  response_curves=response_curves, out_indices=out_indices,
                  gradient_checkpointing=gradient_checkpointing)  # fmt: skip
    if random_weights_requested(pretrained, weights, "SenPa-MAE", preset):
        return SenPaMAEBackbone(config, **kwargs)
    if weights is None:
        raise ValueError(
            "SenPa-MAE weights are not public (the authors share them on request, see "
            "github.com/JonathanPrexl/SenPa-MAE); pass weights=<training checkpoint .pt> (backbone_weights in a "
            "config), or pretrained=False"
        )
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"SenPa-MAE weights {os.fspath(weights)!r}: no such file")
    state = _load_checkpoint(path)
    with torch.device("meta"):
        backbone = SenPaMAEBackbone(config, **kwargs)
    strict_load(backbone.model, state, str(path), "SenPa-MAE encoder")
    backbone.freeze()
    return backbone
