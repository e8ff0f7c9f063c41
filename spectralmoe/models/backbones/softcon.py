"""SoftCon: DINOv2 ViTs continually pretrained on Sentinel-2 (13 bands) or Sentinel-1 (2 bands).

SoftCon ("Multi-label Guided Soft Contrastive Learning for Efficient Earth Observation Pretraining",
Wang, Albrecht, Zhu, TGRS 2024, arXiv:2405.20462, code github.com/zhu-xlab/softcon) releases
unmodified DINOv2 ``DinoVisionTransformer`` weights with a 13- (or 2-) channel patch embedding
(``wangyi111/softcon``: ``B13_vitb14_softcon.pth``, ``B13_vits14_softcon.pth``, ``B2_*``), built with
``img_size=224, patch_size=14, block_chunks=0, init_values=1e-5, num_register_tokens=0``. Here it
runs on transformers' ``Dinov2Model`` (the DINOv2 wrapper of :mod:`.hf_vit`): the released keys
(DINOv2's original names) are converted on load, strictly:

==============================  ===============================================================
DINOv2 original                 transformers ``Dinov2Model``
==============================  ===============================================================
``cls_token``, ``mask_token``   ``embeddings.cls_token``, ``embeddings.mask_token``
``pos_embed`` [1, 257, D]       ``embeddings.position_embeddings``
``patch_embed.proj``            ``embeddings.patch_embeddings.projection``
``blocks.N.attn.qkv`` [3D, D]   ``encoder.layer.N.attention.{q,k,v}_proj`` (rows split q, k, v)
``blocks.N.attn.proj``          ``encoder.layer.N.attention.o_proj``
``blocks.N.ls1.gamma``/``ls2``  ``encoder.layer.N.layer_scale1.lambda1`` / ``layer_scale2``
``blocks.N.{norm1,norm2,mlp}``  ``encoder.layer.N.{norm1,norm2,mlp}``
``norm``                        ``layernorm``
==============================  ===============================================================

Ignored keys: ``head.*`` (classification heads). Chunked files (``blocks.C.N.…``, ``block_chunks>0``)
are flattened. ``mask_token`` may be absent (torchgeo's ``_enc`` re-uploads; UNVERIFIED whether they
drop it): it is never used, so it is then zero.

**Bands → the 13 Sentinel-2 slots** (B1…B12 with B8A, :data:`spectralmoe.bands.SENTINEL2_BANDS`).
Each slot takes the input band nearest its centre wavelength among those whose full-width-at-half-
maximum interval overlaps the slot's (``|λ_in − λ_slot| ≤ (FWHM_in + FWHM_slot) / 2``; ties → the
lower band index); an input band may feed several slots. A slot with no such band is filled with the
pretraining mean, and a warning lists the filled slots. GF-2 (B,G,R,NIR) fills B2, B3, B4 and — its
NIR band is 120 nm wide — B7, B8, B8A; OHS's 32 narrow bands fill B2…B9 and B8A; RGB fills B2, B3, B4.
The 2-band SAR models take the input's two bands (VV, VH) in file order.

**Normalisation.** SoftCon's input is ``clip((x − (μ − 2σ)) / 4σ, 0, 1)`` per band (its README, as
uint8 ×255; Copernicus-Bench's ``SegDataAugmentationSoftCon`` as float, which is what is done here,
without the uint8 rounding). The segmentor hands the backbone ``z = (x − μ) / σ`` with the task's
band statistics, so :meth:`SoftConBackbone.embed` applies ``clip((z + 2) / 4, 0, 1)``; a filled slot
holds the mean, 0.5.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

import torch
from torch import nn
from transformers import Dinov2Config, Dinov2Model

from spectralmoe.bands import SENTINEL2_BANDS, as_wavelength_list, default_bandwidths_um, wavelength_distance
from spectralmoe.models.backbones.common import (
    FamilyConfig,
    locate_weights,
    random_weights_requested,
    read_family_folder,
    read_state_file,
    resolve_preset,
    save_folder,
    strict_load,
)
from spectralmoe.models.backbones.hf_vit import EFFECTIVE_PATCH_SIZE, DINOv2Backbone, KernelResize
from spectralmoe.models.patch_embed import resize_patch_kernel

logger = logging.getLogger(__name__)

__all__ = [
    "SoftConConfig",
    "SOFTCON_CONFIGS",
    "SOFTCON_WEIGHTS",
    "SoftConBackbone",
    "build_softcon_backbone",
    "convert_softcon_state_dict",
    "sentinel2_slots",
]

Modality = Literal["multispectral", "sar"]
#: Slots of the SAR models, in the order of the released files' two channels.
SENTINEL1_SLOTS = ("VV", "VH")
#: Value of a slot without an input band, after SoftCon's window: the pretraining mean.
FILL_VALUE = 0.5


@dataclass(frozen=True)
class SoftConConfig(FamilyConfig):
    """Sizes of a SoftCon ViT (DINOv2 ``vit_small`` / ``vit_base``). Defaults: ViT-B/14, 13 bands.

    ``patch_size`` is the stored kernel's size (14 as released; 16 in our saved folders, where the
    kernel was resized). ``img_size / patch_size`` is the side of the position table (16).
    """

    family_label: ClassVar[str] = "SoftCon"

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: int = 4
    patch_size: int = 14
    img_size: int = 224
    modality: Modality = "multispectral"
    layerscale_value: float = 1e-5
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.modality not in ("multispectral", "sar"):
            raise ValueError(f"SoftCon modality must be 'multispectral' or 'sar', got {self.modality!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def in_chans(self) -> int:
        return len(SENTINEL2_BANDS) if self.modality == "multispectral" else len(SENTINEL1_SLOTS)

    @property
    def slot_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in SENTINEL2_BANDS) if self.modality == "multispectral" else SENTINEL1_SLOTS


    def hf_config(self) -> Dinov2Config:
        """The transformers config of the same architecture."""
        return Dinov2Config(
            hidden_size=self.embed_dim, num_hidden_layers=self.depth, num_attention_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio, patch_size=self.patch_size, image_size=self.img_size,
            num_channels=self.in_chans, layerscale_value=self.layerscale_value, layer_norm_eps=self.layer_norm_eps,
            qkv_bias=True, hidden_act="gelu", use_swiglu_ffn=False, use_mask_token=True,
        )  # fmt: skip


SOFTCON_CONFIGS: dict[str, SoftConConfig] = {
    "softcon-vitb14": SoftConConfig(embed_dim=768, depth=12, num_heads=12),
    "softcon-vits14": SoftConConfig(embed_dim=384, depth=12, num_heads=6),
    "softcon-vitb14-s1": SoftConConfig(embed_dim=768, depth=12, num_heads=12, modality="sar"),
    "softcon-vits14-s1": SoftConConfig(embed_dim=384, depth=12, num_heads=6, modality="sar"),
    # Test-sized stand-ins (not released models): patch 14, 4×4 table, 4 blocks.
    "tiny-softcon": SoftConConfig(embed_dim=32, depth=4, num_heads=2, img_size=56),
    "tiny-softcon-s1": SoftConConfig(embed_dim=32, depth=4, num_heads=2, img_size=56, modality="sar"),
}

#: Released backbones (hub repo, file), README of zhu-xlab/softcon. None: no released weights.
SOFTCON_WEIGHTS: dict[str, tuple[str, str] | None] = {
    "softcon-vitb14": ("wangyi111/softcon", "B13_vitb14_softcon.pth"),
    "softcon-vits14": ("wangyi111/softcon", "B13_vits14_softcon.pth"),
    "softcon-vitb14-s1": ("wangyi111/softcon", "B2_vitb14_softcon.pth"),
    "softcon-vits14-s1": ("wangyi111/softcon", "B2_vits14_softcon.pth"),
    "tiny-softcon": None,
    "tiny-softcon-s1": None,
}

_IGNORED_KEY_PATTERN = re.compile(r"^head\.")
_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")
_RENAMES = (
    ("cls_token", "embeddings.cls_token"), ("mask_token", "embeddings.mask_token"),
    ("pos_embed", "embeddings.position_embeddings"), ("patch_embed.proj.", "embeddings.patch_embeddings.projection."),
    ("norm.", "layernorm."),
)  # fmt: skip
_BLOCK_RENAMES = (
    ("attn.proj.", "attention.o_proj."), ("ls1.gamma", "layer_scale1.lambda1"), ("ls2.gamma", "layer_scale2.lambda1"),
)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Bands → slots
# --------------------------------------------------------------------------------------------------


def sentinel2_slots(
    wavelengths_um: Sequence[float], bandwidths_um: Sequence[float] | None = None
) -> list[int | None]:
    """For each of the 13 Sentinel-2 slots, the input band that fills it (None: filled with the mean).

    A slot takes, among the spectral input bands whose FWHM interval overlaps its own, the one nearest
    its centre (ties → lower index). ``bandwidths_um=None`` → :func:`spectralmoe.bands.default_bandwidths_um`.
    """
    waves = as_wavelength_list(wavelengths_um)
    widths = list(default_bandwidths_um(waves) if bandwidths_um is None else as_wavelength_list(bandwidths_um))
    if len(widths) != len(waves):
        raise ValueError(f"{len(waves)} wavelengths but {len(widths)} bandwidths ({widths})")
    slots: list[int | None] = []
    for band in SENTINEL2_BANDS:
        candidates = [
            i for i, (w, fwhm) in enumerate(zip(waves, widths))
            if not math.isnan(w) and wavelength_distance(w, band.centre_um) <= round((fwhm + band.bandwidth_um) / 2, 6)
        ]  # fmt: skip
        slots.append(min(candidates, key=lambda i: (wavelength_distance(waves[i], band.centre_um), i))
                     if candidates else None)  # fmt: skip
    return slots


# --------------------------------------------------------------------------------------------------
# FrozenBackbone wrapper
# --------------------------------------------------------------------------------------------------


class SoftConBackbone(DINOv2Backbone):
    """Frozen SoftCon (a transformers ``Dinov2Model`` with a 13- or 2-channel kernel) on the 16-grid.

    The stored kernel is resized to 16×16 (``kernel_resize``) and keeps its slot channels; ``embed``
    windows the standardised input, places the bands in their slots and fills the others (module doc).

    Args:
        model: the loaded ``Dinov2Model`` (num_channels 13 or 2); adapted in place and frozen.
        config: its ``SoftConConfig`` (modality, sizes) for saving.
        in_wavelengths: centre wavelength (µm) of each input band (default R, G, B).
        in_bandwidths: FWHM (µm) of each input band (default :func:`~spectralmoe.bands.default_bandwidths_um`).
        out_indices, kernel_resize, gradient_checkpointing, name: as for the transformers backbones.
    """

    family = "dinov2"  # transformers' Dinov2 blocks: LoRA / AdaptFormer find their modules by this

    def __init__(
        self,
        model: Dinov2Model,
        config: SoftConConfig,
        *,
        in_wavelengths: Sequence[float] | torch.Tensor | None = None,
        in_bandwidths: Sequence[float] | torch.Tensor | None = None,
        out_indices: Sequence[int] | None = None,
        kernel_resize: KernelResize = "bicubic",
        gradient_checkpointing: bool = False,
        name: str | None = None,
    ) -> None:
        self.softcon_config = config
        super().__init__(model, in_wavelengths=in_wavelengths, out_indices=out_indices, kernel_resize=kernel_resize,
                         gradient_checkpointing=gradient_checkpointing, name=name or "softcon")  # fmt: skip
        self.in_bandwidths = None if in_bandwidths is None else tuple(as_wavelength_list(in_bandwidths))
        if self.in_bandwidths is not None and len(self.in_bandwidths) != self.in_channels:
            raise ValueError(f"{self.name}: {len(self.in_bandwidths)} bandwidths for {self.in_channels} bands")
        self._slot_cache: dict[tuple[tuple[float, ...], str], tuple[torch.Tensor, torch.Tensor]] = {}
        self.slots = self._slots_for(self.in_wavelengths, self.in_bandwidths)

    def _adapt_patch_conv(self) -> None:
        """Resize the slot kernel to 16×16; its channels stay the 13 (2) slots."""
        owner, attr = self._patch_conv_owner()
        conv: nn.Conv2d = getattr(owner, attr)
        slots = self.softcon_config.in_chans
        if conv.in_channels != slots:
            raise ValueError(f"{self.name}: the patch kernel has {conv.in_channels} channels, SoftCon needs {slots}")
        if conv.kernel_size[0] != EFFECTIVE_PATCH_SIZE:
            new = nn.Conv2d(slots, conv.out_channels, EFFECTIVE_PATCH_SIZE, stride=EFFECTIVE_PATCH_SIZE,
                            device=conv.weight.device, dtype=conv.weight.dtype)  # fmt: skip
            if not conv.weight.is_meta:
                with torch.no_grad():
                    new.weight.copy_(resize_patch_kernel(conv.weight.detach(), EFFECTIVE_PATCH_SIZE,
                                                         method=self.kernel_resize))  # fmt: skip
                    new.bias.copy_(conv.bias)
            setattr(owner, attr, new)
        self._set_patch_geometry(slots)

    def _slots_for(self, waves: Sequence[float], widths: Sequence[float] | None) -> list[int | None]:
        """Slot sources for a band layout, with the warning about filled slots (once per layout)."""
        names = self.softcon_config.slot_names
        if self.softcon_config.modality == "sar":
            if len(waves) != len(SENTINEL1_SLOTS):
                raise ValueError(
                    f"{self.name}: the SAR model takes exactly 2 bands (VV, VH in file order), got {len(waves)}"
                )
            return [0, 1]
        slots = sentinel2_slots(waves, widths)
        filled = [n for n, s in zip(names, slots) if s is None]
        if all(s is None for s in slots):
            raise ValueError(
                f"{self.name}: none of the input bands (wavelengths {list(waves)} µm) overlaps a Sentinel-2 band; "
                "SoftCon cannot use this input"
            )
        if filled:
            used = ", ".join(f"{n}←band {s}" for n, s in zip(names, slots) if s is not None)
            logger.warning("%s: Sentinel-2 slots %s have no input band within their bandwidth and are filled with "
                           "the pretraining mean (input wavelengths %s µm; used: %s)", self.name, ", ".join(filled),
                           list(waves), used)  # fmt: skip
        return slots

    def _slot_index(self, wavelengths: torch.Tensor | Sequence[float] | None, device: torch.device
                    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """(slot positions, input band indices) as index tensors for this batch's band layout."""
        waves = self.in_wavelengths if wavelengths is None else tuple(as_wavelength_list(wavelengths))
        key = (tuple(round(w, 6) for w in waves), str(device))
        cached = self._slot_cache.get(key)
        if cached is None:
            same = tuple(round(w, 6) for w in waves) == tuple(round(w, 6) for w in self.in_wavelengths)
            slots = self.slots if same else self._slots_for(waves, None)
            pairs = [(s, b) for s, b in enumerate(slots) if b is not None]
            cached = (torch.tensor([p[0] for p in pairs], device=device),
                      torch.tensor([p[1] for p in pairs], device=device))  # fmt: skip
            self._slot_cache[key] = cached
        return cached

    def slot_image(self, image: torch.Tensor, wavelengths: torch.Tensor | Sequence[float] | None = None
                   ) -> torch.Tensor:  # fmt: skip
        """Standardised bands ``[B, C, H, W]`` → SoftCon's windowed 13 (2) slot image ``[B, S, H, W]``."""
        window = ((image + 2.0) / 4.0).clamp(0.0, 1.0)
        slot_pos, band_idx = self._slot_index(wavelengths, image.device)
        slots = window.new_full((image.shape[0], self.softcon_config.in_chans, *image.shape[-2:]), FILL_VALUE)
        slots[:, slot_pos] = window[:, band_idx]
        return slots

    def embed(
        self, image: torch.Tensor, wavelengths: torch.Tensor | Sequence[float] | None = None
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        grid = self._check_input(image, wavelengths)
        return self.model.embeddings(self.slot_image(image.to(self._input_dtype()), wavelengths)), grid


    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write the model as it runs (16×16 kernel, so ``patch_size`` 16) in our folder format."""
        table = self.model.embeddings.position_embeddings.shape[1] - 1
        config = dataclasses.replace(self.softcon_config, patch_size=EFFECTIVE_PATCH_SIZE,
                                     img_size=math.isqrt(table) * EFFECTIVE_PATCH_SIZE)  # fmt: skip
        return save_folder(folder, self.model.state_dict(), config.to_dict(), "softcon")


# --------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------


def convert_softcon_state_dict(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """DINOv2 original keys (released SoftCon files) → transformers ``Dinov2Model`` keys."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if _IGNORED_KEY_PATTERN.match(key):
            continue
        key = _CHUNKED_BLOCK.sub(r"blocks.\1.", key)
        if key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            prefix = f"encoder.layer.{index}."
            if rest.startswith("attn.qkv."):
                kind = rest.rsplit(".", 1)[-1]  # weight / bias
                if value.shape[0] % 3:
                    raise ValueError(f"{source}: {key} has shape {tuple(value.shape)}, not 3 stacked projections")
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[f"{prefix}attention.{name}.{kind}"] = part.clone()
                continue
            for old, new in _BLOCK_RENAMES:
                if rest.startswith(old):
                    rest = new + rest[len(old):]
                    break
            out[prefix + rest] = value
            continue
        for old, new in _RENAMES:
            if key == old or (old.endswith(".") and key.startswith(old)):
                key = new + key[len(old):]
                break
        else:
            raise ValueError(f"{source}: unexpected key {key!r} for a DINOv2 / SoftCon checkpoint")
        out[key] = value
    return out



def _config_for_state_dict(config: SoftConConfig, state: dict[str, torch.Tensor], source: str) -> SoftConConfig:
    """Adopt the file's kernel size and position grid (the sizes are checked by the strict load)."""
    changes: dict[str, Any] = {}
    kernel = state.get("embeddings.patch_embeddings.projection.weight")
    if kernel is not None and kernel.ndim == 4:
        changes["patch_size"] = int(kernel.shape[-1])
        if kernel.shape[1] != config.in_chans:
            raise ValueError(
                f"{source}: its patch kernel has {kernel.shape[1]} channels but a {config.modality} SoftCon has "
                f"{config.in_chans}; choose the matching preset (the -s1 presets are the 2-band SAR models)"
            )
    pos = state.get("embeddings.position_embeddings")
    if pos is not None and pos.ndim == 3:
        side = math.isqrt(pos.shape[1] - 1)
        if side * side != pos.shape[1] - 1:
            raise ValueError(f"{source}: pos_embed {tuple(pos.shape)} is not 1 cls + a square grid")
        changes["img_size"] = side * changes.get("patch_size", config.patch_size)
    return dataclasses.replace(config, **changes)


def build_softcon_backbone(
    name: str | SoftConConfig,
    *,
    in_wavelengths: Sequence[float] | torch.Tensor | None = None,
    in_bandwidths: Sequence[float] | torch.Tensor | None = None,
    pretrained: bool = True,
    weights: str | os.PathLike | None = None,
    out_indices: Sequence[int] | None = None,
    kernel_resize: KernelResize = "bicubic",
    gradient_checkpointing: bool = False,
) -> SoftConBackbone:
    """Build a frozen SoftCon backbone from a preset name (or a ``SoftConConfig``) and load its weights.

    ``weights``: a released ``.pth`` (DINOv2 key names); a folder or hub id in our ``save_pretrained``
    format; or None → the preset's hub file (``SOFTCON_WEIGHTS``). ``pretrained=False`` → random init
    (with a warning); works inside ``with torch.device("meta"):``.
    """
    preset, config = resolve_preset(name, SOFTCON_CONFIGS, SoftConConfig)
    wrap = dict(in_wavelengths=in_wavelengths, in_bandwidths=in_bandwidths, out_indices=out_indices,
                kernel_resize=kernel_resize, gradient_checkpointing=gradient_checkpointing,
                name=preset or "softcon")  # fmt: skip
    if random_weights_requested(pretrained, weights, "SoftCon", preset):
        return SoftConBackbone(Dinov2Model(config.hf_config()), config, **wrap)

    hub = SOFTCON_WEIGHTS.get(preset or "")
    kind, where = locate_weights(weights, family="SoftCon", preset=preset, hub_repo=hub[0] if hub else None,
                                 hub_file=hub[1] if hub else None, model_type="softcon")  # fmt: skip
    source = str(where)
    if kind == "official":
        state = convert_softcon_state_dict(read_state_file(where), source)
    else:
        config, state = read_family_folder(Path(where), "softcon", config, preset,
                                           ("embed_dim", "depth", "num_heads", "modality"))  # fmt: skip
    config = _config_for_state_dict(config, state, source)
    with torch.device("meta"):
        model = Dinov2Model(config.hf_config())
    if "embeddings.mask_token" not in state:  # unused; absent from some re-uploads
        state["embeddings.mask_token"] = torch.zeros(1, config.embed_dim)
    strict_load(model, state, source, "SoftCon")
    model.eval()
    return SoftConBackbone(model, config, **wrap)
