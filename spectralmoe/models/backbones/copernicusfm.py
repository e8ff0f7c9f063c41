"""Copernicus-FM: a DOFA-like ViT whose patch kernel comes from each band's wavelength AND bandwidth.

Copernicus-FM ("Towards a Unified Copernicus Foundation Model for Earth Vision", Wang et al., ICCV
2025, arXiv:2503.11849, code github.com/zhu-xlab/Copernicus-FM ``Copernicus-FM/src/model_vit.py``,
``dynamic_hypernetwork.py``, ``aurora/fourier.py``). Only ViT-B/16 has released weights
(``wangyi111/Copernicus-FM`` ``CopernicusFM_ViT_base_varlang_e100.pth``; torchgeo's re-upload
``torchgeo/copernicus-fm`` ``CopernicusFM_ViT_base_varlang-085350e4.pth`` drops ``norm``/``mask_token``).

* **Spectral patch embedding** (``patch_embed_spectral``, class ``Dynamic_MLP_OFA_spectral``): each
  band's centre wavelength and bandwidth, **in nm**, are Fourier-expanded (Aurora's expansion,
  wavelengths 100 nm…1e9 nm and bandwidths 1 nm…1e9 nm, 128 dims each) and **summed**; the rest —
  ``fclayer``, the transformer ``weight_generator``, the ``[C, k, k, D]`` kernel layout, the 0.01
  scale and the ``stride 16, padding 1`` convolution — is DOFA's hypernetwork, shared code
  (:class:`~spectralmoe.models.backbones.common.HypernetworkPatchEmbedding`). The FlexiViT kernel
  resize (``kernel_size`` ≠ 16) is not used here: the token grid is always H/16 × W/16.
* **Position table** ``[1, 197, D]`` (fixed 2-D sin-cos for 224 px, stored as a frozen parameter),
  resized to the grid bicubically **with antialias** (``resize_abs_pos_embed`` of the original).
* **Metadata** ``[lon°, lat°, time (days since 1970-01-01), patch-token area (km²)]``: each is
  Fourier-expanded (lon+180 and lat+90 over 1e-4…720, D/2 each; area over 1e-3…5.1e8 km²; time over
  1…365.25 days), passed through ``coord_fc`` / ``scale_fc`` / ``time_fc`` and added to every
  position (cls included). NaN → the learned ``coord_token`` / ``scale_token`` / ``time_token``
  (through the same linear). The original switches the whole batch to the learned token when any
  sample has a NaN; here each sample is decided on its own (identical for uniform batches).
* **Blocks**: timm ``Block(768, 12, qkv_bias=True)``, LayerNorm eps 1e-6 — the block DOFA uses.

Through the segmentor the metadata is the patch area from the sensor's ground sampling distance,
``(16 px · gsd_m / 1000)²`` km² (Copernicus-Bench passes the same), when it lies in the encoded range
(a GSD ≥ 1.98 m); otherwise, or without a GSD, the learned "unknown" token. lon/lat/time can be
passed to :meth:`CopernicusFMBackbone.embed` directly.

Keys: the module names are the original ones. Ignored on load: ``norm.*``, ``fc_norm.*``,
``mask_token``, ``head.*`` (not used for dense features), and the language-variable hypernetwork
``patch_embed_variable.*`` (for non-spectral variables; optical images do not use it) unless
``CopernicusFMConfig.variable_path`` builds it — then the model has the released parameter count.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from spectralmoe.bands import as_wavelength_list, default_bandwidths_um
from spectralmoe.models.backbones.base import FrozenBackbone, default_out_indices
from spectralmoe.models.backbones.common import (
    FamilyConfig,
    HypernetworkPatchEmbedding,
    PreNormBlock,
    check_out_indices,
    drop_keys,
    fourier_expansion,
    locate_weights,
    random_weights_requested,
    read_family_folder,
    read_state_file,
    resample_pos_embed,
    resolve_preset,
    save_folder,
    sincos_embedding_2d,
    strict_load,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CopernicusFMConfig",
    "COPERNICUSFM_CONFIGS",
    "COPERNICUSFM_WEIGHTS",
    "SpectralPatchEmbedding",
    "CopernicusFMModel",
    "CopernicusFMBackbone",
    "build_copernicusfm_backbone",
    "patch_area_km2",
]

# Encoded ranges of the original (model_vit.py, dynamic_hypernetwork.py).
WAVELENGTH_RANGE_NM = (100.0, 1e9)
BANDWIDTH_RANGE_NM = (1.0, 1e9)
COORD_RANGE = (0.0001, 720.0)
AREA_RANGE_KM2 = (0.001, 5.1e8)
TIME_RANGE_DAYS = (1.0, 365.25)


@dataclass(frozen=True)
class CopernicusFMConfig(FamilyConfig):
    """Sizes of a Copernicus-FM model. Defaults: the released ViT-B/16.

    ``img_size`` sets the stored position grid (img_size / patch_size squared). ``wave_dim`` … ``kernel_scale``
    size the hypernetwork as in DOFA. ``variable_path`` builds the (unused) language hypernetwork, so
    that the model holds every tensor of the released file.
    """

    family_label: ClassVar[str] = "Copernicus-FM"

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    img_size: int = 224
    layer_norm_eps: float = 1e-6
    wave_dim: int = 128
    num_weight_tokens: int = 128
    generator_heads: int = 4
    generator_ffn_dim: int = 2048
    generator_layers: int = 1
    generator_norm_eps: float = 1e-5
    kernel_scale: float = 0.01
    patch_padding: int = 1
    variable_path: bool = False
    language_dim: int = 2048

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.embed_dim % 4 or self.wave_dim % 2 or self.wave_dim % self.generator_heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by 4 and wave_dim {self.wave_dim} even "
                             f"and divisible by generator_heads {self.generator_heads}")  # fmt: skip
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def pos_grid(self) -> int:
        return self.img_size // self.patch_size


    def hypernetwork_sizes(self) -> dict[str, Any]:
        return dict(embed_dim=self.embed_dim, patch_size=self.patch_size, wave_dim=self.wave_dim,
                    num_weight_tokens=self.num_weight_tokens, generator_heads=self.generator_heads,
                    generator_ffn_dim=self.generator_ffn_dim, generator_layers=self.generator_layers,
                    generator_norm_eps=self.generator_norm_eps, kernel_scale=self.kernel_scale,
                    patch_padding=self.patch_padding)  # fmt: skip


COPERNICUSFM_CONFIGS: dict[str, CopernicusFMConfig] = {
    "copernicusfm-vitb16": CopernicusFMConfig(),
    # Test-sized stand-in with the same structure (not a released model).
    "tiny-copernicusfm": CopernicusFMConfig(
        embed_dim=32, depth=4, num_heads=2, img_size=64, wave_dim=16, num_weight_tokens=8, generator_heads=2,
        generator_ffn_dim=32, language_dim=24,
    ),
}  # fmt: skip

#: Released weights (hub repo, file); None: none released.
COPERNICUSFM_WEIGHTS: dict[str, tuple[str, str] | None] = {
    "copernicusfm-vitb16": ("wangyi111/Copernicus-FM", "CopernicusFM_ViT_base_varlang_e100.pth"),
    "tiny-copernicusfm": None,
}

_IGNORED = r"^(norm\.|fc_norm\.|head\.|mask_token$)"
_IGNORED_KEY_PATTERN = re.compile(_IGNORED)
_IGNORED_WITH_VARIABLE = re.compile(_IGNORED[:-1] + r"|patch_embed_variable\.)")


def patch_area_km2(gsd_m: float, patch_size: int = 16) -> float:
    """Ground area of one patch token: ``(patch_size · gsd_m / 1000)²`` km²."""
    return (patch_size * gsd_m / 1000.0) ** 2


# --------------------------------------------------------------------------------------------------
# Modules (official names)
# --------------------------------------------------------------------------------------------------


class SpectralPatchEmbedding(HypernetworkPatchEmbedding):
    """``patch_embed_spectral``: band descriptors = Fourier(λ nm) + Fourier(bandwidth nm); DOFA's hypernetwork."""

    def band_tokens(self, wavelengths_nm: torch.Tensor, bandwidths_nm: torch.Tensor) -> torch.Tensor:
        central = fourier_expansion(wavelengths_nm, *WAVELENGTH_RANGE_NM, self.wave_dim, what="wavelength (nm)")
        width = fourier_expansion(bandwidths_nm, *BANDWIDTH_RANGE_NM, self.wave_dim, what="bandwidth (nm)")
        return central + width

    def forward(self, image: torch.Tensor, wavelengths_nm: torch.Tensor, bandwidths_nm: torch.Tensor
                ) -> tuple[torch.Tensor, tuple[int, int]]:  # fmt: skip
        weight, bias = self.kernel_from_tokens(self.band_tokens(wavelengths_nm, bandwidths_nm))
        return self.convolve(image, weight, bias)


class VariablePatchEmbedding(HypernetworkPatchEmbedding):
    """``patch_embed_variable``: the language-embedding hypernetwork for non-spectral variables.

    Built only to hold the released tensors (``CopernicusFMConfig.variable_path``); not used here.
    """

    def __init__(self, language_dim: int, **sizes: Any) -> None:
        super().__init__(**sizes)
        self.language_proj = nn.Linear(language_dim, sizes["wave_dim"])


class CopernicusFMModel(nn.Module):
    """The Copernicus-FM encoder: spectral patch embedding, cls, position table + metadata, blocks.

    No final norm, no head (dense features are the raw block outputs, as in Copernicus-Bench's
    segmentation wrapper). State-dict keys are the original checkpoint's keys.
    """

    def __init__(self, config: CopernicusFMConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.patch_embed_spectral = SpectralPatchEmbedding(**config.hypernetwork_sizes())
        if config.variable_path:
            self.patch_embed_variable = VariablePatchEmbedding(config.language_dim, **config.hypernetwork_sizes())
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        # A parameter with requires_grad=False, as in the original: same key, same count.
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.pos_grid**2, dim), requires_grad=False)
        self.coord_fc = nn.Linear(dim, dim)
        self.scale_fc = nn.Linear(dim, dim)
        self.time_fc = nn.Linear(dim, dim)
        self.coord_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.scale_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.time_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(
            PreNormBlock(dim, config.num_heads, config.mlp_ratio, config.layer_norm_eps) for _ in range(config.depth)
        )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random init (hypernetwork as DOFA, N(0, 0.02) tokens, sin-cos table, xavier blocks)."""
        if self.cls_token.is_meta:
            return
        for embedding in (self.patch_embed_spectral, getattr(self, "patch_embed_variable", None)):
            if embedding is not None:
                embedding.reset_parameters()
        for token in (self.cls_token, self.coord_token, self.scale_token, self.time_token):
            nn.init.normal_(token, std=0.02)
        self.pos_embed.copy_(sincos_embedding_2d(self.config.embed_dim, self.config.pos_grid, self.pos_embed.device))
        for module in [self.coord_fc, self.scale_fc, self.time_fc, *self.blocks.modules()]:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def metadata_embedding(self, metadata: torch.Tensor | None, batch: int) -> torch.Tensor:
        """``[B, 4]`` (lon°, lat°, days, km²; NaN = unknown) or None → ``[B or 1, 1, D]`` added to every position."""
        dim = self.config.embed_dim
        if metadata is None:
            return (self.coord_fc(self.coord_token) + self.scale_fc(self.scale_token)
                    + self.time_fc(self.time_token))  # fmt: skip
        # Offsets are added in the caller's dtype, then expanded in float64, as the original does: the finest
        # coordinate wavelength (1e-4) makes the code sensitive to the float32 rounding of lon + 180.
        meta = metadata if metadata.is_floating_point() else metadata.double()
        if meta.shape != (batch, 4):
            raise ValueError(f"metadata must be [B, 4] = (lon, lat, days, km²) for {batch} images, got {tuple(meta.shape)}")
        lon, lat, days, area = meta.unbind(-1)
        known_coord = ~(lon.isnan() | lat.isnan())
        coord = torch.cat([
            fourier_expansion(torch.where(known_coord, lon + 180, 0.0), *COORD_RANGE, dim // 2, what="longitude + 180"),
            fourier_expansion(torch.where(known_coord, lat + 90, 0.0), *COORD_RANGE, dim // 2, what="latitude + 90"),
        ], dim=-1)  # fmt: skip
        known_area, known_time = ~area.isnan(), ~days.isnan()
        area_code = fourier_expansion(torch.where(known_area, area, 0.0), *AREA_RANGE_KM2, dim, what="patch area (km²)")
        time_code = fourier_expansion(torch.where(known_time, days, 0.0), *TIME_RANGE_DAYS, dim,
                                      what="time (days)", check_range=False)  # fmt: skip
        pick = lambda known, code, token, fc: torch.where(  # noqa: E731
            known[:, None, None], fc(code.to(token.dtype)[:, None]), fc(token).expand(batch, 1, dim))
        return (pick(known_coord, coord, self.coord_token, self.coord_fc)
                + pick(known_area, area_code, self.scale_token, self.scale_fc)
                + pick(known_time, time_code, self.time_token, self.time_fc))  # fmt: skip

    def embed(
        self, image: torch.Tensor, wavelengths_um: torch.Tensor, bandwidths_um: torch.Tensor,
        metadata: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[int, int]]:  # fmt: skip
        """Image ``[B, C, H, W]``, ``[C]`` wavelengths and bandwidths (µm) → ``[B, 1 + h·w, D]`` and ``(h, w)``."""
        patches, grid = self.patch_embed_spectral(image, wavelengths_um * 1000.0, bandwidths_um * 1000.0)
        pos = resample_pos_embed(self.pos_embed, grid, antialias=True)
        pos = pos + self.metadata_embedding(metadata, image.shape[0])
        patches = patches + pos[:, 1:]
        cls = (self.cls_token + pos[:, :1]).expand(patches.shape[0], -1, -1)
        return torch.cat([cls.to(patches.dtype), patches], dim=1), grid

    def forward(self, image: torch.Tensor, wavelengths_um: torch.Tensor, bandwidths_um: torch.Tensor,
                metadata: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """All blocks; the last block's tokens (no final norm)."""
        tokens, _ = self.embed(image, wavelengths_um, bandwidths_um, metadata)
        for block in self.blocks:
            tokens = block(tokens)
        return tokens


# --------------------------------------------------------------------------------------------------
# FrozenBackbone wrapper
# --------------------------------------------------------------------------------------------------


class CopernicusFMBackbone(FrozenBackbone):
    """Frozen Copernicus-FM stepped block by block (DESIGN §4). Any band set, given wavelengths and bandwidths.

    Args:
        model: a built (and loaded) ``CopernicusFMModel``; frozen here.
        in_wavelengths: band centre wavelengths (µm) for ``embed`` when none are passed.
        in_bandwidths: band FWHM (µm); None → :func:`spectralmoe.bands.default_bandwidths_um`.
        gsd_m: ground sampling distance (m) of the input → the patch-area metadata; None → unknown.
        out_indices: blocks tapped for the decoder; default [3, 5, 7, 11] at 12 layers.
        gradient_checkpointing: recompute blocks in backward (through ``run_block``).
    """

    num_prefix_tokens = 1

    def __init__(
        self,
        model: CopernicusFMModel,
        in_wavelengths: Sequence[float] | torch.Tensor | None = None,
        in_bandwidths: Sequence[float] | torch.Tensor | None = None,
        gsd_m: float | None = None,
        out_indices: Sequence[int] | None = None,
        gradient_checkpointing: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        config = model.config
        self.name = name or "copernicusfm"
        self.embed_dim, self.num_layers, self.patch_size = config.embed_dim, config.depth, config.patch_size
        self.out_indices = check_out_indices(out_indices, config.depth, "Copernicus-FM",
                                             default_out_indices(config.depth))  # fmt: skip
        self.in_wavelengths: list[float] | None = None
        self.in_bandwidths: list[float] | None = None
        if in_wavelengths is not None:
            self.in_wavelengths = self._check_wavelengths(in_wavelengths)
            widths = default_bandwidths_um(self.in_wavelengths) if in_bandwidths is None else in_bandwidths
            self.in_bandwidths = self._check_bandwidths(widths, self.in_wavelengths)
        elif in_bandwidths is not None:
            raise ValueError(f"{self.name}: in_bandwidths were given without in_wavelengths")
        self.set_gsd(gsd_m)
        self._warned_layouts: set[tuple[float, ...]] = set()
        self.gradient_checkpointing = gradient_checkpointing
        self.freeze()

    @property
    def blocks(self) -> nn.ModuleList:  # type: ignore[override]
        return self.model.blocks

    @property
    def config(self) -> CopernicusFMConfig:
        return self.model.config

    def set_gsd(self, gsd_m: float | None) -> None:
        """Describe inputs of another ground sampling distance (m; None → unknown), e.g. a scene to predict."""
        self.gsd_m = None if gsd_m is None or math.isnan(float(gsd_m)) else float(gsd_m)
        self.area_km2 = self._area_for(self.gsd_m)

    def _area_for(self, gsd_m: float | None) -> float | None:
        if gsd_m is None:
            return None
        if not gsd_m > 0:
            raise ValueError(f"{self.name}: gsd_m must be a positive number of metres, got {gsd_m}")
        area = patch_area_km2(gsd_m, self.patch_size)
        low, high = AREA_RANGE_KM2
        if not low <= area <= high:
            logger.warning(
                "%s: a %g m GSD gives %.3g km² per %d-px patch, outside Copernicus-FM's encoded range [%g, %g] km²; "
                "the learned 'unknown area' token is used instead", self.name, gsd_m, area, self.patch_size, low, high)
            return None
        return area

    def _check_wavelengths(self, wavelengths: Sequence[float] | torch.Tensor) -> list[float]:
        waves = as_wavelength_list(wavelengths)
        missing = [i for i, w in enumerate(waves) if math.isnan(w)]
        if missing:
            raise ValueError(
                f"{self.name}: Copernicus-FM builds each band's kernel from its wavelength, but band(s) {missing} have "
                f"none (nan: a non-spectral band such as elevation) in wavelengths {waves}; drop those bands"
            )
        odd = [w for w in waves if not WAVELENGTH_RANGE_NM[0] <= w * 1000 < 1e5]
        if odd:
            raise ValueError(f"{self.name}: wavelengths must be in micrometres (0.1 ≤ λ < 100), got {odd} in {waves}")
        return waves

    def _check_bandwidths(self, widths: Sequence[float] | torch.Tensor, waves: Sequence[float]) -> list[float]:
        values = as_wavelength_list(widths)
        if len(values) != len(waves):
            raise ValueError(f"{self.name}: {len(values)} bandwidths for {len(waves)} bands (wavelengths {list(waves)})")
        bad = [b for b in values if not (math.isfinite(b) and BANDWIDTH_RANGE_NM[0] <= b * 1000)]
        if bad:
            raise ValueError(f"{self.name}: bandwidths are FWHM in micrometres (≥ 0.001 µm), got {bad} in {values}")
        return values

    def _band_description(self, wavelengths: torch.Tensor | Sequence[float] | None, image: torch.Tensor
                          ) -> tuple[list[float], list[float]]:  # fmt: skip
        if wavelengths is None:
            if self.in_wavelengths is None:
                raise ValueError(
                    f"{self.name}: no wavelengths for image of shape {tuple(image.shape)}: pass wavelengths= or build "
                    "the backbone with in_wavelengths="
                )
            return self.in_wavelengths, self.in_bandwidths  # type: ignore[return-value]
        waves = self._check_wavelengths(wavelengths)
        known = {round(w, 6): b for w, b in zip(self.in_wavelengths or [], self.in_bandwidths or [])}
        if all(round(w, 6) in known for w in waves):
            return waves, [known[round(w, 6)] for w in waves]
        widths = list(default_bandwidths_um(waves))
        key = tuple(round(w, 6) for w in waves)
        if key not in self._warned_layouts:
            self._warned_layouts.add(key)
            logger.warning("%s: bands %s µm are not the ones the backbone was built with; their bandwidths follow the "
                           "default rule (%s µm)", self.name, waves, [round(b, 4) for b in widths])  # fmt: skip
        return waves, widths

    def default_metadata(self, batch: int, device: torch.device) -> torch.Tensor | None:
        """``[B, 4]`` metadata from the GSD (lon, lat, time unknown), or None when the area is unknown too."""
        if self.area_km2 is None:
            return None
        meta = torch.full((batch, 4), float("nan"), dtype=torch.float64, device=device)
        meta[:, 3] = self.area_km2
        return meta

    def embed(
        self,
        image: torch.Tensor,
        wavelengths: torch.Tensor | Sequence[float] | None = None,
        metadata: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Image ``[B, C, H, W]`` (H, W multiples of 16) → tokens ``[B, 1 + H/16·W/16, D]`` and the grid.

        ``metadata``: ``[B, 4]`` (lon°, lat°, days since 1970-01-01, patch area km²; NaN = unknown);
        default: the area from ``gsd_m``.
        """
        if image.ndim != 4:
            raise ValueError(f"{self.name}: expected an image [B, C, H, W], got shape {tuple(image.shape)}")
        waves, widths = self._band_description(wavelengths, image)
        if len(waves) != image.shape[1]:
            raise ValueError(f"{self.name}: image has {image.shape[1]} bands (shape {tuple(image.shape)}) but "
                             f"{len(waves)} wavelengths were given: {waves}")  # fmt: skip
        if image.shape[-2] % self.patch_size or image.shape[-1] % self.patch_size:
            raise ValueError(f"{self.name}: H and W must be multiples of {self.patch_size} (got image shape "
                             f"{tuple(image.shape)}); pad or crop the image")  # fmt: skip
        if metadata is None:
            metadata = self.default_metadata(image.shape[0], image.device)
        device = image.device
        return self.model.embed(image, torch.tensor(waves, dtype=torch.float32, device=device),
                                torch.tensor(widths, dtype=torch.float32, device=device), metadata)  # fmt: skip

    def _block_forward(self, index: int, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return self.model.blocks[index](tokens)


    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``model.safetensors`` (original key names) and ``config.json``."""
        return save_folder(folder, self.model.state_dict(), self.config.to_dict(), "copernicusfm")


# --------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------



def build_copernicusfm_backbone(
    name: str | CopernicusFMConfig,
    *,
    in_wavelengths: Sequence[float] | torch.Tensor | None = None,
    in_bandwidths: Sequence[float] | torch.Tensor | None = None,
    gsd_m: float | None = None,
    pretrained: bool = True,
    weights: str | os.PathLike | None = None,
    out_indices: Sequence[int] | None = None,
    gradient_checkpointing: bool = False,
) -> CopernicusFMBackbone:
    """Build a frozen Copernicus-FM backbone from a preset name (or a config) and load its weights.

    ``weights``: the released ``.pth`` (original or torchgeo's re-upload); a folder or hub id in our
    ``save_pretrained`` format; or None → the preset's hub file (``COPERNICUSFM_WEIGHTS``).
    ``pretrained=False`` → random init (with a warning); works inside ``with torch.device("meta"):``.
    """
    preset, config = resolve_preset(name, COPERNICUSFM_CONFIGS, CopernicusFMConfig)
    wrap = dict(in_wavelengths=in_wavelengths, in_bandwidths=in_bandwidths, gsd_m=gsd_m, out_indices=out_indices,
                gradient_checkpointing=gradient_checkpointing, name=preset or "copernicusfm")  # fmt: skip
    if random_weights_requested(pretrained, weights, "Copernicus-FM", preset):
        return CopernicusFMBackbone(CopernicusFMModel(config), **wrap)

    hub = COPERNICUSFM_WEIGHTS.get(preset or "")
    kind, where = locate_weights(weights, family="Copernicus-FM", preset=preset, hub_repo=hub[0] if hub else None,
                                 hub_file=hub[1] if hub else None, model_type="copernicusfm")  # fmt: skip
    source = str(where)
    if kind == "official":
        pattern = _IGNORED_KEY_PATTERN if config.variable_path else _IGNORED_WITH_VARIABLE
        state = drop_keys(read_state_file(where), pattern)
    else:
        config, state = read_family_folder(Path(where), "copernicusfm", config, preset)
    pos = state.get("pos_embed")
    if pos is not None and pos.ndim == 3 and pos.shape[1] != 1 + config.pos_grid**2:
        side = math.isqrt(pos.shape[1] - 1)
        if side * side != pos.shape[1] - 1:
            raise ValueError(f"{source}: pos_embed {tuple(pos.shape)} is not 1 cls + a square grid")
        config = dataclasses.replace(config, img_size=side * config.patch_size)
    with torch.device("meta"):
        model = CopernicusFMModel(config)
    strict_load(model, state, source, "Copernicus-FM")
    model.pos_embed.requires_grad_(False)
    return CopernicusFMBackbone(model, **wrap)
