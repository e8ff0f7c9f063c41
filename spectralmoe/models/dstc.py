"""DSTC: the paper's one task-specific spectral segmentation model, complete (not backbone + adapter + head).

"Dual-stage Hyperspectral Image Classification Model with Spectral Supertoken" (Liu et al., ECCV 2024,
arXiv:2407.07307, code github.com/laprf/DSTC). SpectralMoE's tables use it as the non-foundation-model
baseline. It is written here from the facts of the authors' code (``models/modeling.py``,
``models/spectrum_pixel_clustering.py``, ``models/VIT.py``, ``train.py``, ``test.py``):

1. **Encoder.** ResNet-18 stem + ``layer1`` + ``layer2`` (torchvision's module and key names, so an
   ImageNet ``resnet18`` state dict loads; its first convolution takes the N input bands and is
   skipped when N ≠ 3, as the authors do). A 1×1-conv decoder (``up1``/``up2``/``up3``: conv, BN,
   ReLU, nearest upsampling, concatenation with the stride-4 and stride-2 features) brings the
   features to full resolution with ``feature_dim`` (96) channels.
2. **Spectral derivative** (their "SDF"): the first difference of the image over wavelength divided
   by the wavelength step in nm. The authors hard-coded the 32 OHS wavelengths and divided by the
   step only when C = 32; here the bands are sorted by the sensor's wavelengths and divided by their
   own steps, for any band count (identical to theirs for OHS).
3. **Supertoken clustering** (SSN style): the image is folded into ``fold`` × ``fold`` windows with
   ``proposal`` × ``proposal`` seeds each (1024 supertokens for 16 × 16 windows and 2 × 2 seeds).
   Seeds start as the window's average-pooled decoder features; each pixel's vector is
   decoder feature + 1×1 conv(image) + 1×1 conv(derivative); ``iterations`` (2) rounds compute the
   squared distance of every pixel to the seeds of its 3 × 3 seed neighbourhood, a softmax over
   them, and (except in the last round) move the seeds to the affinity-weighted mean of the decoder
   features. All of this runs without gradient, as in the original, whose distance is an inline CUDA
   kernel: here it is one batched matrix product per round (the softmax over a pixel's seeds does not
   depend on ‖pixel‖², so −‖p − s‖² becomes 2⟨p, s⟩ − ‖s‖²), no loop over pixels or seeds. Each pixel is hard-assigned to its highest-affinity seed; a supertoken's feature is
   ``(Σ_pixels a·feature + its pooled feature) / (Σ_pixels a + 1)`` over its pixels, a being each
   pixel's affinity to it (the original's ``sim * mask``).
   Consequence kept from the original: the two 1×1 convolutions only steer the assignment, which has
   no gradient, so they never change from their initialisation (their values still matter and are
   saved).
4. **Transformer** over the supertokens (their ``ViT``): LayerNorm, linear to 256, LayerNorm, a cls
   token, a learned position table, 4 pre-norm blocks (4 heads of 64, bias-free qkv, GELU MLP of
   1024, dropout 0.1), final LayerNorm, a linear classifier per supertoken (cls dropped).
5. **Loss**: cross-entropy of each supertoken's logits against its UNNORMALISED per-class pixel
   counts (``torch.nn.CrossEntropyLoss`` with probability targets, mean over supertokens), so large
   supertokens weigh more. Pixels labelled 255 are not counted.
6. **Inference**: every pixel takes its supertoken's scores (``spix_map`` in the original).

**The authors' unused position rows.** Their ``ViT(image_size=512, patch_size=1)`` allocates a
position table of 512² + 1 = 262,145 rows, of which only the first ``fold²·proposal² + 1`` (1025) are
ever read (``pos_embedding[:, :n + 1]``): 67.1 M of their 71.1 M parameters. Here the table has the
rows that are used (``position_rows``), and the authors' checkpoints load by keeping those rows.

**Sizes.** H and W must be multiples of ``fold``: inputs that are not are padded (band means, i.e.
zero after normalisation; label 255) and the outputs cropped back.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from spectralmoe.bands import as_wavelength_list
from spectralmoe.models.heads.light import IGNORE_INDEX, check_mask
from spectralmoe.models.backbones.base import exact_patch_embedding
from spectralmoe.models.backbones.common import load_tensors_only
from spectralmoe.models.segmentor import sliding_window_logits

logger = logging.getLogger(__name__)

__all__ = [
    "AUTHORS_IMAGE_SIZE",
    "DSTC",
    "DSTCConfig",
    "DSTC_CONFIGS",
    "RESNET18_IMAGENET_URL",
    "ResNetEncoder",
    "SupertokenClustering",
    "SupertokenTransformer",
    "build_dstc",
    "convert_official_state_dict",
    "spectral_derivative",
    "supertoken_affinity",
]

#: torchvision's ImageNet ResNet-18 (``IMAGENET1K_V1``), what the authors' ``resnet18(pretrained=True)`` loads.
RESNET18_IMAGENET_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
#: ``img_size`` of the authors' config (``models/yamls/resnet.yaml``): their position table has img_size² + 1 rows.
AUTHORS_IMAGE_SIZE = 512


@dataclass(frozen=True)
class DSTCConfig:
    """Sizes of a DSTC model. Defaults are the authors' ResNet-18 configuration (``models/yamls/resnet.yaml``).

    ``widths`` are the channels of the ResNet stem/``layer1`` and ``layer2`` (64, 128 in ResNet-18),
    ``blocks`` their numbers of basic blocks. ``position_rows``: rows of the position table; None =
    the rows that are used (supertokens + cls).
    """

    widths: tuple[int, int] = (64, 128)
    blocks: tuple[int, int] = (2, 2)
    feature_dim: int = 96
    fold: int = 16
    proposal: int = 2
    iterations: int = 2
    dim: int = 256
    depth: int = 4
    heads: int = 4
    head_dim: int = 64
    mlp_dim: int = 1024
    dropout: float = 0.1
    position_rows: int | None = None

    def __post_init__(self) -> None:
        if self.fold < 1 or self.proposal < 1 or self.iterations < 1:
            raise ValueError(f"fold, proposal and iterations must be >= 1, got {self.fold}, {self.proposal}, "
                             f"{self.iterations}")  # fmt: skip
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.position_rows is not None and self.position_rows < self.num_supertokens + 1:
            raise ValueError(f"position_rows {self.position_rows} < {self.num_supertokens} supertokens + cls")

    @property
    def num_supertokens(self) -> int:
        """Supertokens per image: fold² windows × proposal² seeds (independent of the image size)."""
        return self.fold**2 * self.proposal**2

    @property
    def table_rows(self) -> int:
        return self.position_rows if self.position_rows is not None else self.num_supertokens + 1

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "DSTCConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown DSTC options {unknown}; known: {sorted(known)}")
        values = {k: tuple(v) if k in ("widths", "blocks") else v for k, v in values.items()}
        return cls(**values)


DSTC_CONFIGS: dict[str, DSTCConfig] = {
    "resnet18": DSTCConfig(),
    # Test-sized stand-in with the same structure (not a released model): 4 × 4 windows of 2 × 2 seeds.
    "tiny-resnet18": DSTCConfig(widths=(8, 16), blocks=(1, 1), feature_dim=16, fold=4, dim=32, depth=1, heads=2,
                                head_dim=16, mlp_dim=64),
}  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Encoder: ResNet-18 stem, layer1, layer2 (torchvision key names) and the 1×1-conv decoder
# --------------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 conv + BN, identity (or 1×1 conv + BN) shortcut, ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(channels))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class ResNetEncoder(nn.Module):
    """ResNet stem (7×7/2 conv, BN, ReLU, 3×3/2 max-pool), ``layer1`` and ``layer2`` with N input bands.

    Returns the stride-8 ``layer2`` features and the stride-2 stem / stride-4 ``layer1`` features.
    """

    def __init__(self, in_channels: int, widths: tuple[int, int] = (64, 128), blocks: tuple[int, int] = (2, 2)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = nn.Sequential(*(BasicBlock(widths[0], widths[0]) for _ in range(blocks[0])))
        self.layer2 = nn.Sequential(BasicBlock(widths[0], widths[1], stride=2),
                                    *(BasicBlock(widths[1], widths[1]) for _ in range(blocks[1] - 1)))  # fmt: skip
        for module in self.modules():  # torchvision's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        stem = F.relu(self.bn1(self.conv1(x)))
        quarter = self.layer1(F.max_pool2d(stem, 3, 2, 1))
        return self.layer2(quarter), quarter, stem


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels), nn.ReLU())


class FeatureDecoder(nn.Module):
    """1×1-conv U-decoder: stride 8 → 4 → 2 → 1 with nearest upsampling and skip concatenations."""

    def __init__(self, widths: tuple[int, int], out_channels: int) -> None:
        super().__init__()
        low, high = widths
        self.up1 = _conv_bn_relu(high, low)
        self.up2 = _conv_bn_relu(2 * low, low)
        self.up3 = _conv_bn_relu(2 * low, out_channels)

    def forward(self, deep: torch.Tensor, quarter: torch.Tensor, stem: torch.Tensor, size: tuple[int, int]):
        x = F.interpolate(self.up1(deep), size=quarter.shape[-2:], mode="nearest")
        x = F.interpolate(self.up2(torch.cat([x, quarter], 1)), size=stem.shape[-2:], mode="nearest")
        return F.interpolate(self.up3(torch.cat([x, stem], 1)), size=size, mode="nearest")


# --------------------------------------------------------------------------------------------------
# Spectral derivative and supertoken clustering
# --------------------------------------------------------------------------------------------------


def spectral_derivative(image: torch.Tensor, wavelengths_um: Sequence[float]) -> torch.Tensor:
    """First difference over wavelength divided by the step in nm: ``[B, C, H, W]`` → ``[B, C-1, H, W]``.

    Bands are taken in increasing wavelength (so a NIR,R,G,B file gives the same derivative as its
    B,G,R,NIR reordering).
    """
    waves = as_wavelength_list(wavelengths_um)
    if len(waves) != image.shape[1]:
        raise ValueError(f"image has {image.shape[1]} bands (shape {tuple(image.shape)}) but {len(waves)} "
                         f"wavelengths were given")  # fmt: skip
    order = sorted(range(len(waves)), key=lambda i: waves[i])
    steps = [round((waves[b] - waves[a]) * 1000.0, 6) for a, b in zip(order, order[1:])]
    sorted_image = image[:, order]
    step = torch.tensor(steps, dtype=image.dtype, device=image.device).view(1, -1, 1, 1)
    return (sorted_image[:, 1:] - sorted_image[:, :-1]) / step


def _fold(x: torch.Tensor, fold: int) -> torch.Tensor:
    """``[B, C, H, W]`` → ``[B·fold², C, H/fold, W/fold]`` windows, row-major over the window grid."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, fold, h // fold, fold, w // fold).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b * fold * fold, c, h // fold, w // fold)


def _seed_neighbourhood(proposal: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """``[M, N]`` bool: seed m is in the 3 × 3 seed neighbourhood of pixel n's initial seed.

    A window of ``height × width`` pixels starts with ``proposal²`` seeds; pixel n's initial seed is
    the nearest-neighbour upsampling of the seed grid (the original's ``init_label_map``).
    """
    seeds = torch.arange(proposal * proposal, device=device, dtype=torch.float32).view(1, 1, proposal, proposal)
    initial = F.interpolate(seeds, size=(height, width), mode="nearest").flatten().long()  # [N]
    row, col = initial // proposal, initial % proposal
    seed_row = torch.arange(proposal, device=device).repeat_interleave(proposal)
    seed_col = torch.arange(proposal, device=device).repeat(proposal)
    return ((seed_row[:, None] - row[None]).abs() <= 1) & ((seed_col[:, None] - col[None]).abs() <= 1)


@torch.no_grad()
def supertoken_affinity(
    values: torch.Tensor, pixel_vectors: torch.Tensor, proposal: int, iterations: int = 2
) -> torch.Tensor:
    """Soft assignment ``[W, M, N]`` of each window's N pixels to its M = proposal² seeds (SSN iterations).

    Args:
        values: ``[W, C, h, w]`` features the seeds are made of (decoder features of each window).
        pixel_vectors: ``[W, C, h, w]`` what a pixel is compared with (decoder + image + derivative terms).
        proposal: seeds per window side.
        iterations: rounds; every round but the last moves the seeds to the affinity-weighted mean of ``values``.
    """
    values, pixel_vectors = values.float(), pixel_vectors.float()
    height, width = values.shape[-2:]
    seeds = F.adaptive_avg_pool2d(values, (proposal, proposal)).flatten(2)  # [W, C, M]
    pixels = pixel_vectors.flatten(2)  # [W, C, N]
    flat_values = values.flatten(2).transpose(1, 2)  # [W, N, C]
    allowed = _seed_neighbourhood(proposal, height, width, values.device)  # [M, N]
    affinity = values.new_empty(0)
    for round_index in range(iterations):
        # softmax over seeds of −‖p − s‖² = softmax of 2⟨p, s⟩ − ‖s‖²: ‖p‖² is the same for every seed of a
        # pixel, so it is left out (no large term to cancel), and one batched product replaces a loop
        logits = 2.0 * seeds.transpose(1, 2) @ pixels - seeds.square().sum(1)[..., None]  # [W, M, N]
        affinity = logits.masked_fill(~allowed, float("-inf")).softmax(1)
        if round_index < iterations - 1:
            seeds = (affinity @ flat_values / (affinity.sum(2, keepdim=True) + 1e-16)).transpose(1, 2)
    return affinity


class SupertokenClustering(nn.Module):
    """Pixels → supertokens: the assignment (no gradient) and the supertoken features (with gradient)."""

    def __init__(self, in_channels: int, feature_dim: int, fold: int, proposal: int, iterations: int) -> None:
        super().__init__()
        if in_channels < 2:
            raise ValueError(f"DSTC needs at least 2 bands for its spectral derivative, got {in_channels}")
        self.fold, self.proposal, self.iterations = fold, proposal, iterations
        self.image_proj = nn.Conv2d(in_channels, feature_dim, 1)  # the original's ``f``
        self.derivative_proj = nn.Conv2d(in_channels - 1, feature_dim, 1)  # the original's ``f_sdf1``
        for conv in (self.image_proj, self.derivative_proj):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def forward(
        self, image: torch.Tensor, features: torch.Tensor, derivative: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Supertoken features ``[B, S, C]`` and the supertoken index of every pixel ``[B, H, W]``.

        Supertoken s = window·proposal² + seed, windows row-major over the fold grid, seeds row-major
        inside a window (the original's ``spix_map`` numbering).
        """
        batch, _, height, width = image.shape
        fold, proposal = self.fold, self.proposal
        if height % fold or width % fold:
            raise ValueError(f"DSTC needs H and W divisible by fold={fold}, got image shape {tuple(image.shape)}")
        values = _fold(features, fold)
        guide = _fold(self.image_proj(image) + self.derivative_proj(derivative), fold)
        affinity = supertoken_affinity(values, values + guide, proposal, self.iterations)  # [W, M, N]
        seeds = proposal * proposal
        with torch.no_grad():
            assignment = affinity.argmax(1)  # [W, N], first maximum on ties
            # each pixel's affinity to its own supertoken only, 0 elsewhere
            weights = (affinity * F.one_hot(assignment, seeds).transpose(1, 2)).to(values.dtype)  # [W, M, N]
        pooled = F.adaptive_avg_pool2d(values, (proposal, proposal)).flatten(2).transpose(1, 2)  # [W, M, C]
        tokens = (weights @ values.flatten(2).transpose(1, 2) + pooled) / (weights.sum(2, keepdim=True) + 1.0)
        tokens = tokens.reshape(batch, fold * fold * seeds, -1)
        window_h, window_w = height // fold, width // fold
        index = assignment.view(batch, fold, fold, window_h, window_w)
        index = index + torch.arange(fold * fold, device=index.device).view(1, fold, fold, 1, 1) * seeds
        return tokens, index.permute(0, 1, 3, 2, 4).reshape(batch, height, width)


# --------------------------------------------------------------------------------------------------
# Transformer over supertokens
# --------------------------------------------------------------------------------------------------


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + proj(attn(norm(x)))``, ``x + fc2(gelu(fc1(norm(x))))``; dropout as the original."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads, self.dropout = heads, dropout
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.proj = nn.Linear(inner, dim) if not (heads == 1 and head_dim == dim) else nn.Identity()
        self.mlp_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        p = self.dropout if self.training else 0.0
        q, k, v = self.qkv(self.attn_norm(x)).reshape(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p).transpose(1, 2).reshape(batch, length, -1)
        x = x + F.dropout(self.proj(out), p, self.training)
        hidden = F.dropout(F.gelu(self.fc1(self.mlp_norm(x))), p, self.training)
        return x + F.dropout(self.fc2(hidden), p, self.training)


class SupertokenTransformer(nn.Module):
    """The original's ``ViT`` with patch size 1 over supertoken features: per-supertoken class logits."""

    def __init__(self, in_dim: int, num_classes: int, config: DSTCConfig) -> None:
        super().__init__()
        dim = config.dim
        self.dropout = config.dropout
        self.input_norm = nn.LayerNorm(in_dim)
        self.input_proj = nn.Linear(in_dim, dim)
        self.token_norm = nn.LayerNorm(dim)
        self.pos_embedding = nn.Parameter(torch.randn(1, config.table_rows, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, config.heads, config.head_dim, config.mlp_dim, config.dropout)
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_norm(self.input_proj(self.input_norm(tokens)))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], 1)
        x = F.dropout(x + self.pos_embedding[:, : x.shape[1]], self.dropout, self.training)
        for block in self.blocks:
            x = block(x)
        return self.classifier(self.norm(x)[:, 1:])


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


class DSTC(nn.Module):
    """The complete DSTC segmentation model, with the interface the engine and ``predict-scene`` use.

    Images enter in raw sensor units (``pixel_mean`` / ``pixel_std`` normalise them, as the
    segmentor does; WHU-OHS's task statistics, mean 0 and std 10000, give the authors' ``/10000``).
    ``loss(image, mask)`` → ``{"loss_ce"}``; ``predict_logits(image)`` → per-pixel class scores.

    Args:
        config: sizes (``DSTC_CONFIGS``).
        num_classes: number of classes.
        wavelengths: centre wavelength (µm) of each input band, in file order (all spectral, distinct).
        pixel_mean, pixel_std: per-band statistics in raw units (default 0 / 1).
        value_scale: raw value of full brightness (kept for ``predict-scene``'s band checks).
    """

    def __init__(
        self,
        config: DSTCConfig,
        num_classes: int,
        wavelengths: Sequence[float],
        pixel_mean: Sequence[float] | None = None,
        pixel_std: Sequence[float] | None = None,
        value_scale: float = 255.0,
    ) -> None:
        super().__init__()
        waves = as_wavelength_list(wavelengths)
        bad = [w for w in waves if not (math.isfinite(w) and 0.0 < w < 100.0)]
        if bad:
            raise ValueError(f"DSTC's spectral derivative needs a wavelength (µm) for every band; got {waves}")
        if len(set(round(w, 6) for w in waves)) != len(waves):
            raise ValueError(f"DSTC's spectral derivative needs distinct wavelengths; got {waves}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        bands = len(waves)
        mean = [0.0] * bands if pixel_mean is None else [float(v) for v in pixel_mean]
        std = [1.0] * bands if pixel_std is None else [float(v) for v in pixel_std]
        if len(mean) != bands or len(std) != bands or any(s <= 0 for s in std):
            raise ValueError(f"{bands} bands need {bands} means and {bands} positive stds, got {mean}, {std}")
        self.config = config
        self.num_classes = int(num_classes)
        self.band_wavelengths = waves
        self.value_scale = float(value_scale)
        self.register_buffer("wavelengths", torch.tensor(waves, dtype=torch.float32), persistent=False)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.encoder = ResNetEncoder(bands, config.widths, config.blocks)
        self.decoder = FeatureDecoder(config.widths, config.feature_dim)
        self.cluster = SupertokenClustering(bands, config.feature_dim, config.fold, config.proposal,
                                            config.iterations)  # fmt: skip
        self.transformer = SupertokenTransformer(config.feature_dim, num_classes, config)

    @property
    def num_bands(self) -> int:
        return len(self.band_wavelengths)

    @property
    def fold(self) -> int:
        return self.config.fold

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.pixel_mean) / self.pixel_std

    def _check_image(self, image: torch.Tensor, wavelengths: torch.Tensor | Sequence[float] | None) -> None:
        if image.ndim != 4 or image.shape[1] != self.num_bands:
            raise ValueError(f"DSTC expects images [B, {self.num_bands}, H, W], got shape {tuple(image.shape)}")
        if wavelengths is not None:
            given = as_wavelength_list(wavelengths)
            if len(given) != self.num_bands or any(abs(a - b) > 1e-5 for a, b in zip(given, self.band_wavelengths)):
                raise ValueError(
                    f"DSTC's first convolution is tied to the bands it was built for ({self.band_wavelengths} µm) and "
                    f"cannot take other wavelengths ({given} µm); feed the training bands (band_wavelengths='model')"
                )

    def _pad(self, image: torch.Tensor, mask: torch.Tensor | None = None):
        """Pad H, W up to multiples of ``fold`` (band means → 0 after normalisation; label 255)."""
        height, width = image.shape[-2:]
        pad_h, pad_w = (-height) % self.fold, (-width) % self.fold
        if not (pad_h or pad_w):
            return image, mask
        padded = self.pixel_mean.to(image.dtype).expand(image.shape[0], -1, height + pad_h, width + pad_w).clone()
        padded[..., :height, :width] = image
        if mask is not None:
            mask = F.pad(mask, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
        return padded, mask

    def forward(
        self, image: torch.Tensor, wavelengths: torch.Tensor | Sequence[float] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw image (H, W multiples of ``fold``) → supertoken logits ``[B, S, K]``, supertoken map ``[B, H, W]``."""
        self._check_image(image, wavelengths)
        x = self.normalize(image)
        with exact_patch_embedding(image):  # CPU bf16 convolutions can be wrong (segmentor note): fp32 there
            x = x.float()
            deep, quarter, stem = self.encoder(x)
            features = self.decoder(deep, quarter, stem, x.shape[-2:])
            derivative = spectral_derivative(x, self.band_wavelengths)
            tokens, supertoken_map = self.cluster(x, features, derivative)
        return self.transformer(tokens), supertoken_map

    def supertoken_targets(self, supertoken_map: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-supertoken pixel counts of each class ``[B, S, K]`` (255 not counted): the soft targets."""
        batch = mask.shape[0]
        classes, tokens = self.num_classes, self.config.num_supertokens
        valid = mask != IGNORE_INDEX
        index = (supertoken_map * classes + torch.where(valid, mask, 0).long()).flatten(1)
        counts = torch.zeros(batch, tokens * classes, device=mask.device)
        counts.scatter_add_(1, index, valid.flatten(1).float())
        return counts.view(batch, tokens, classes)

    def loss(
        self, image: torch.Tensor, mask: torch.Tensor, wavelengths: torch.Tensor | Sequence[float] | None = None
    ) -> dict[str, torch.Tensor]:
        """``loss_ce``: cross-entropy of supertoken logits against unnormalised class counts (mean over supertokens)."""
        if mask.shape[-2:] != image.shape[-2:] or mask.shape[0] != image.shape[0]:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match image shape {tuple(image.shape)}")
        check_mask(mask, self.num_classes)
        image, mask = self._pad(image, mask)
        logits, supertoken_map = self(image, wavelengths)
        targets = self.supertoken_targets(supertoken_map, mask)
        return {"loss_ce": F.cross_entropy(logits.float().transpose(1, 2), targets.transpose(1, 2))}

    @torch.no_grad()
    def predict_logits(
        self,
        image: torch.Tensor,
        wavelengths: torch.Tensor | Sequence[float] | None = None,
        mode: Literal["whole", "slide"] = "whole",
        crop: int = 512,
        stride: int | None = None,
        batch_size: int = 4,
        pad: bool = True,
    ) -> torch.Tensor:
        """Per-pixel class scores ``[B, K, H, W]``: each pixel gets its supertoken's logits.

        ``whole`` pads to a multiple of ``fold`` and crops back (``pad=False``: a size that is not a
        multiple is an error, as the authors' code asserts); ``slide`` averages ``crop`` windows every
        ``stride`` pixels (as the segmentor's).
        """
        self._check_image(image, wavelengths)
        fold = self.fold
        if not pad and (image.shape[-2] % fold or image.shape[-1] % fold):
            raise ValueError(f"pad=False: image size {tuple(image.shape[-2:])} is not a multiple of the fold {fold}")
        if mode == "whole":
            return self._whole_logits(image)
        if mode != "slide":
            raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
        return sliding_window_logits(image, self._whole_logits, crop=crop, stride=stride, batch_size=batch_size)

    def _whole_logits(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        padded, _ = self._pad(image)
        logits, supertoken_map = self(padded)
        batch, _, classes = logits.shape
        pixels = supertoken_map.flatten(1)[..., None].expand(-1, -1, classes)
        scores = logits.float().gather(1, pixels).transpose(1, 2).reshape(batch, classes, *supertoken_map.shape[-2:])
        return scores[..., :height, :width]

    def parameter_parts(self) -> dict[str, int]:
        """Parameters per part (all trainable)."""
        return {name: sum(p.numel() for p in part.parameters()) for name, part in self.named_children()}


# --------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------

#: The authors' state-dict names (``models/modeling.py``, ``VIT.py``) → ours, first match wins.
_OFFICIAL_KEY_MAP: tuple[tuple[str, str], ...] = (
    (r"^UNet\.encoder\.", "encoder."),
    (r"^UNet\.up_sample\.", "decoder."),
    (r"^cluster\.f\.", "cluster.image_proj."),
    (r"^cluster\.f_sdf1\.", "cluster.derivative_proj."),
    (r"^vit\.to_patch_embedding\.0\.", "transformer.input_norm."),
    (r"^vit\.to_patch_embedding\.1\.", "transformer.input_proj."),
    (r"^vit\.to_patch_embedding\.2\.", "transformer.token_norm."),
    (r"^vit\.transformer\.layers\.(\d+)\.0\.norm\.", r"transformer.blocks.\1.attn_norm."),
    (r"^vit\.transformer\.layers\.(\d+)\.0\.to_qkv\.", r"transformer.blocks.\1.qkv."),
    (r"^vit\.transformer\.layers\.(\d+)\.0\.to_out\.0\.", r"transformer.blocks.\1.proj."),
    (r"^vit\.transformer\.layers\.(\d+)\.1\.net\.0\.", r"transformer.blocks.\1.mlp_norm."),
    (r"^vit\.transformer\.layers\.(\d+)\.1\.net\.1\.", r"transformer.blocks.\1.fc1."),
    (r"^vit\.transformer\.layers\.(\d+)\.1\.net\.4\.", r"transformer.blocks.\1.fc2."),
    (r"^vit\.transformer\.norm\.", "transformer.norm."),
    (r"^vit\.mlp_head\.", "transformer.classifier."),
    (r"^vit\.(pos_embedding|cls_token)$", r"transformer.\1"),
)


def convert_official_state_dict(state: dict[str, torch.Tensor], source: str = "state dict") -> dict[str, torch.Tensor]:
    """The authors' DSTC state dict (``best_model.pth``, optional ``module.`` prefix) with our key names.

    Every key must be known (unknown keys raise, naming them); the position table keeps all its rows
    (``build_dstc`` keeps the ones the model uses).
    """
    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        key = key.removeprefix("module.")
        for pattern, replacement in _OFFICIAL_KEY_MAP:
            new, hits = re.subn(pattern, replacement, key)
            if hits:
                converted[new] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{source}: keys that are not DSTC's {unknown[:20]}{' …' if len(unknown) > 20 else ''}")
    return converted


def _state_of(raw: Any, source: str) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ValueError(f"{source}: expected a state dict of tensors")
    return raw


def _read_state(source: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return {k: v.clone() for k, v in load_file(str(path)).items()}
    return _state_of(load_tensors_only(path, "re-save only the state dict"), str(path))


def load_imagenet_encoder(model: DSTC, source: str | os.PathLike | None = None) -> list[str]:
    """Initialise the ResNet encoder from torchvision's ImageNet ResNet-18 (a ``.pth``/``.safetensors`` file,
    or ``RESNET18_IMAGENET_URL`` when ``source`` is None), as the authors do: every stem / layer1 / layer2
    tensor, except ``conv1.weight`` when the input is not 3 bands. Returns the keys that were skipped."""
    if source is None:
        try:
            state = torch.hub.load_state_dict_from_url(RESNET18_IMAGENET_URL, map_location="cpu", weights_only=True)
        except Exception as err:  # offline and the like: one message for the user
            raise RuntimeError(
                f"could not download the ImageNet ResNet-18 weights from {RESNET18_IMAGENET_URL} "
                f"({type(err).__name__}: {err}); download the file elsewhere and pass it as backbone_weights=<path>, "
                "or pretrained=False"
            ) from err
        where = RESNET18_IMAGENET_URL
    else:
        state, where = _read_state(source), os.fspath(source)
    own = model.encoder.state_dict()
    skipped = []
    for key in own:
        if key == "conv1.weight" and model.num_bands != 3:
            skipped.append(key)
            continue
        if key not in state:
            raise ValueError(f"{where}: not a torchvision ResNet-18 state dict (missing {key!r})")
        if tuple(state[key].shape) != tuple(own[key].shape):
            raise ValueError(f"{where}: {key} has shape {tuple(state[key].shape)}, the DSTC encoder needs "
                             f"{tuple(own[key].shape)} (is it a ResNet-18?)")  # fmt: skip
        own[key] = state[key]
    model.encoder.load_state_dict(own)
    logger.info("DSTC encoder initialised from %s (skipped %s)", where, skipped or "nothing")
    return skipped


def load_official_dstc(model: DSTC, source: str | os.PathLike) -> None:
    """Load the authors' trained DSTC checkpoint (``best_model.pth``) strictly; the position table keeps
    the rows the model reads."""
    state = convert_official_state_dict(_read_state(source), os.fspath(source))
    table = state.get("transformer.pos_embedding")
    rows = model.transformer.pos_embedding.shape[1]
    if table is not None and table.ndim == 3 and table.shape[1] > rows:
        state["transformer.pos_embedding"] = table[:, :rows].clone()
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{source}: does not match this DSTC (missing {missing[:20]}, unexpected {unexpected[:20]})")
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}" for k, v in state.items()
             if tuple(v.shape) != tuple(expected[k].shape)]  # fmt: skip
    if wrong:
        raise ValueError(f"{source}: shape mismatch {wrong[:10]} (band count / classes / sizes differ)")
    model.load_state_dict(state, strict=True)


def build_dstc(
    name: str | DSTCConfig = "resnet18",
    *,
    num_classes: int,
    wavelengths: Sequence[float],
    pixel_mean: Sequence[float] | None = None,
    pixel_std: Sequence[float] | None = None,
    value_scale: float = 255.0,
    pretrained: bool = True,
    weights: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    **options: Any,
) -> DSTC:
    """Build DSTC from a preset name (``DSTC_CONFIGS``) and options overriding its sizes.

    Args:
        pretrained: read initial weights: the authors' ``checkpoint`` when given, else ImageNet ResNet-18 for
            the encoder (``weights``, else torchvision's URL), as the authors do. False: random init
            (torchvision's), and ``weights`` / ``checkpoint`` are not read — what rebuilding a trained
            model from its export or Lightning checkpoint needs, since those hold every tensor.
        weights: a torchvision ResNet-18 state dict file.
        checkpoint: the authors' trained DSTC ``best_model.pth`` (loaded strictly over everything).
        options: ``DSTCConfig`` fields (``fold``, ``proposal``, ``dim``…).
    """
    if isinstance(name, DSTCConfig):
        config = name
    else:
        try:
            config = DSTC_CONFIGS[name]
        except KeyError:
            raise KeyError(f"unknown DSTC preset {name!r}; known: {', '.join(sorted(DSTC_CONFIGS))}") from None
    if options:
        config = DSTCConfig.from_dict({**dataclasses.asdict(config), **options})
    model = DSTC(config, num_classes, wavelengths, pixel_mean, pixel_std, value_scale)
    if not pretrained:
        if weights is not None or checkpoint is not None:
            logger.info("DSTC built without reading its initial weights (pretrained=False)")
    elif checkpoint is not None:
        load_official_dstc(model, checkpoint)
    else:
        load_imagenet_encoder(model, weights)
    return model
