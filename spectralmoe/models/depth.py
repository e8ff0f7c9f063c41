"""Frozen depth foundation model → per-layer patch tokens on the visual backbone's token grid.

SpectralMoE and DepthForge feed every adapter the tokens of a frozen depth model run on the image's
R, G, B bands (METHOD §2): the raw residual stream after each block of the depth model's DINOv2
encoder, without the final LayerNorm and without the cls token. The depth models are Depth Anything
V2 (S/B/L) and Prompt Depth Anything (L) from ``transformers``; only their DINOv2 backbone is kept,
since the DPT neck and head are never used.

Two mismatches with the visual backbone are resolved here rather than in the adapters:

* **Grid.** The depth encoders use 14-px patches, the visual backbones 16-px ones. As in the
  authors' converters, the depth patch kernel is resized 14→16 (bicubic by default) and the learned
  absolute position embedding is interpolated to the H/16 × W/16 grid, so depth token ``n`` and
  visual token ``n`` cover the same image patch.
* **Depth.** Visual layer ``l`` reads depth block ``l`` when both models have the same number of
  blocks; otherwise ``round((l + 1) · L_depth / L_visual) − 1`` (see ``depth_layer_map``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from transformers import (
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    Dinov2Backbone,
    Dinov2Config,
    PreTrainedConfig,
    PreTrainedModel,
    PromptDepthAnythingConfig,
    PromptDepthAnythingForDepthEstimation,
)

from spectralmoe.models.patch_embed import resize_patch_kernel

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEPTH_PATCH_SIZE = 16


@dataclass(frozen=True)
class DepthPreset:
    """A depth model: where its weights live and the config that rebuilds it without them.

    ``backbone`` holds the ``Dinov2Config`` fields and ``head`` the DPT fields of the hub model's
    ``config.json``, so that a random (or meta-device) build has exactly the hub parameter count.
    ``packaged_weights`` names a folder under ``spectralmoe/weights/`` shipped with the package, the
    default weights of a preset without a hub id (the synthetic-world model).
    """

    hub_id: str | None
    model_class: type[PreTrainedModel]
    config_class: type[PreTrainedConfig]
    backbone: dict[str, Any]
    head: dict[str, Any] = field(default_factory=dict)
    packaged_weights: str | None = None

    def default_weights(self) -> str | None:
        """Where ``pretrained=True`` loads from without ``weights=``: the hub id, else the packaged folder."""
        if self.hub_id is not None:
            return self.hub_id
        if self.packaged_weights is not None:
            from spectralmoe.weights import packaged_weights

            return str(packaged_weights(self.packaged_weights))
        return None

    def make_config(self, **backbone_overrides: Any) -> PreTrainedConfig:
        """A fresh config (never shared: transformers models keep a reference to the config they get)."""
        backbone = Dinov2Config(**{**self.backbone, **backbone_overrides})
        return self.config_class(
            backbone_config=backbone,
            patch_size=backbone.patch_size,
            reassemble_hidden_size=backbone.hidden_size,
            **self.head,
        )


def _dinov2(hidden: int, layers: int, heads: int, out_indices: list[int], **extra: Any) -> dict[str, Any]:
    return dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=518,
        patch_size=14,
        out_indices=out_indices,
        reshape_hidden_states=False,
        **extra,
    )


_DPT_S = dict(fusion_hidden_size=64, neck_hidden_sizes=[48, 96, 192, 384])
_DPT_B = dict(fusion_hidden_size=128, neck_hidden_sizes=[96, 192, 384, 768])
_DPT_L = dict(fusion_hidden_size=256, neck_hidden_sizes=[256, 512, 1024, 1024])
_TINY_BACKBONE = dict(
    hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2,
    image_size=56, patch_size=14, out_indices=[1, 2, 3, 4], reshape_hidden_states=False,
)
_TINY_DPT = dict(fusion_hidden_size=16, neck_hidden_sizes=[8, 16, 32, 32], head_hidden_size=8)
# The packaged SYNTHETIC-world depth model (scripts/pretrain_synthetic.py): native patch 16, 8×8 position
# table (128 px), as wide as the synthetic-dinov2 backbone so SpectralMoE needs no depth projection.
SYNTHETIC_DEPTH_BACKBONE: dict[str, Any] = dict(
    hidden_size=96, num_hidden_layers=4, num_attention_heads=4, mlp_ratio=4, layerscale_value=1.0,
    image_size=128, patch_size=16, out_indices=[1, 2, 3, 4], reshape_hidden_states=False,
)
SYNTHETIC_DEPTH_DPT: dict[str, Any] = dict(fusion_hidden_size=32, neck_hidden_sizes=[24, 48, 96, 96],
                                           head_hidden_size=16)

DEPTH_PRESETS: dict[str, DepthPreset] = {
    "depth-anything-v2-small": DepthPreset(
        "depth-anything/Depth-Anything-V2-Small-hf", DepthAnythingForDepthEstimation, DepthAnythingConfig,
        _dinov2(384, 12, 6, [3, 6, 9, 12]), _DPT_S,
    ),
    "depth-anything-v2-base": DepthPreset(
        "depth-anything/Depth-Anything-V2-Base-hf", DepthAnythingForDepthEstimation, DepthAnythingConfig,
        _dinov2(768, 12, 12, [3, 6, 9, 12]), _DPT_B,
    ),
    "depth-anything-v2-large": DepthPreset(
        "depth-anything/Depth-Anything-V2-Large-hf", DepthAnythingForDepthEstimation, DepthAnythingConfig,
        _dinov2(1024, 24, 16, [5, 12, 18, 24]), _DPT_L,
    ),
    # The metric head of PromptDA (depth_estimation_type="metric") has the same parameters as the
    # relative one; it only matters for depth prediction, which we never run.
    "prompt-depth-anything-large": DepthPreset(
        "depth-anything/prompt-depth-anything-vitl-hf", PromptDepthAnythingForDepthEstimation,
        PromptDepthAnythingConfig, _dinov2(1024, 24, 16, [5, 12, 18, 24]),
        {**_DPT_L, "depth_estimation_type": "metric", "max_depth": None},
    ),
    # Test-sized models with the real architecture (patch 14, cls token, LayerScale); no weights.
    "tiny-depth-anything": DepthPreset(None, DepthAnythingForDepthEstimation, DepthAnythingConfig,
                                       _TINY_BACKBONE, _TINY_DPT),
    "tiny-prompt-depth-anything": DepthPreset(None, PromptDepthAnythingForDepthEstimation,
                                              PromptDepthAnythingConfig, _TINY_BACKBONE, _TINY_DPT),
    # Trained on the SYNTHETIC world's height maps, shipped in spectralmoe/weights/ (the demo's depth model).
    "synthetic-depth-anything": DepthPreset(None, DepthAnythingForDepthEstimation, DepthAnythingConfig,
                                            SYNTHETIC_DEPTH_BACKBONE, SYNTHETIC_DEPTH_DPT,
                                            packaged_weights="synthetic-depth-anything"),
}


def list_depth_encoders() -> list[str]:
    """Names accepted by ``build_depth_encoder``."""
    return list(DEPTH_PRESETS)


def depth_layer_map(num_visual_layers: int, num_depth_layers: int) -> tuple[int, ...]:
    """Depth block (0-based) read by each visual layer.

    Identity when the depths match (ViT-L with a ViT-L depth model, as in the paper). Otherwise the
    relative depth is kept: visual layer ``l`` reads depth block ``round((l + 1) · L_d / L_v) − 1``
    (halves rounded up, in exact integer arithmetic, so that e.g. 24 visual layers on 12 depth blocks
    read every block exactly twice; Python's half-to-even ``round`` would not), clamped at 0. The last
    visual layer always reads the last depth block. E.g. 32-layer SAM-H with a 24-block depth model
    reads blocks 0, 1, 1, 2, 3, 4, 4, 5, …, 23; 2 visual layers on 4 depth blocks read 1, 3.
    """
    if num_visual_layers < 1 or num_depth_layers < 1:
        raise ValueError(
            f"layer counts must be >= 1, got {num_visual_layers} visual and {num_depth_layers} depth layers"
        )
    if num_visual_layers == num_depth_layers:
        return tuple(range(num_visual_layers))
    # floor(x + 1/2) with x = (l + 1) · L_d / L_v, computed on integers
    return tuple(
        max(0, (2 * (l + 1) * num_depth_layers + num_visual_layers) // (2 * num_visual_layers) - 1)
        for l in range(num_visual_layers)
    )


class DepthEncoder(nn.Module):
    """Frozen DINOv2 encoder of a depth model, giving one patch-token tensor per adapted visual layer.

    ``forward(rgb [B, 3, H, W] in [0, 1], R, G, B)`` returns ``num_visual_layers`` tensors
    ``[B, (H/16)·(W/16), embed_dim]``: entry ``l`` is the residual stream after depth block
    ``layer_map[l]`` (raw, before the final LayerNorm), cls token dropped. The ImageNet normalisation
    the depth model was trained with is applied here. Blocks after the last one needed are not run.

    The module takes ownership of ``backbone``: its patch kernel is resized to ``patch_size`` in place
    (``resize_patch_kernel``) and its position embedding is then interpolated by transformers to the
    H/``patch_size`` × W/``patch_size`` grid. It is always frozen: no parameter requires grad, it stays
    in eval mode after ``.train()`` and runs under ``torch.no_grad()``.

    Args:
        backbone: a transformers ``Dinov2Backbone`` (``model.backbone`` of a Depth Anything model).
        num_visual_layers: number of adapted layers of the visual backbone.
        patch_size: token stride wanted, the visual backbone's patch (16).
        kernel_resize: rule for resizing the patch kernel, ``"bicubic"`` (the authors') or ``"pi"``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_visual_layers: int,
        patch_size: int = DEPTH_PATCH_SIZE,
        kernel_resize: Literal["bicubic", "pi"] = "bicubic",
    ) -> None:
        super().__init__()
        if not hasattr(backbone, "embeddings") or not hasattr(backbone, "encoder"):
            raise TypeError(f"expected a DINOv2 backbone with .embeddings and .encoder, got {type(backbone).__name__}")
        self.backbone = backbone
        config = backbone.config
        self.embed_dim: int = config.hidden_size
        self.num_layers: int = len(backbone.encoder.layer)
        self.num_visual_layers: int = num_visual_layers
        self.num_prefix_tokens: int = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
        self.patch_size: int = patch_size
        self.layer_map: tuple[int, ...] = depth_layer_map(num_visual_layers, self.num_layers)
        self._set_patch_size(patch_size, kernel_resize)
        dtype = backbone.embeddings.patch_embeddings.projection.weight.dtype
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN, dtype=dtype).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD, dtype=dtype).view(1, 3, 1, 1), persistent=False)
        for param in self.parameters():
            param.requires_grad_(False)
        super().train(False)

    def _set_patch_size(self, patch_size: int, kernel_resize: Literal["bicubic", "pi"]) -> None:
        """Swap the patch conv for a ``patch_size`` one with the resized kernel (no-op if it matches).

        ``Dinov2Embeddings.interpolate_pos_encoding`` sizes the position grid from
        ``patch_embeddings.patch_size``, so updating it makes the position embedding follow.
        """
        patches = self.backbone.embeddings.patch_embeddings
        old = patches.projection
        if tuple(old.kernel_size) == (patch_size, patch_size) and tuple(old.stride) == (patch_size, patch_size):
            return
        new = nn.Conv2d(
            old.in_channels, old.out_channels, kernel_size=patch_size, stride=patch_size,
            bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype,
        )
        if not old.weight.is_meta:  # on the meta device there are no values to resize
            with torch.no_grad():
                new.weight.copy_(resize_patch_kernel(old.weight, patch_size, method=kernel_resize))
                if old.bias is not None:
                    new.bias.copy_(old.bias)
        patches.projection = new
        patches.patch_size = (patch_size, patch_size)
        self.backbone.embeddings.patch_size = patch_size

    @property
    def blocks(self) -> nn.ModuleList:
        """The depth model's transformer blocks."""
        return self.backbone.encoder.layer

    def train(self, mode: bool = True) -> "DepthEncoder":
        """Always eval: the depth model is frozen (no dropout / drop-path)."""
        return super().train(False)

    def _check_input(self, rgb: torch.Tensor) -> None:
        if rgb.ndim != 4 or rgb.shape[1] != 3:
            raise ValueError(f"depth encoder expects an RGB batch [B, 3, H, W], got shape {tuple(rgb.shape)}")
        height, width = rgb.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"depth encoder input height and width must be multiples of {self.patch_size}, "
                f"got shape {tuple(rgb.shape)}"
            )

    @torch.no_grad()
    def forward(self, rgb: torch.Tensor, *, imagenet_normalize: bool = True) -> list[torch.Tensor]:
        """RGB in [0, 1] ``[B, 3, H, W]`` → ``num_visual_layers`` × ``[B, (H/16)(W/16), embed_dim]``.

        ``imagenet_normalize=False`` feeds ``rgb`` to the encoder as it is (the authors' released code
        gives it the dataset-normalised bands directly, METHOD §2).
        """
        self._check_input(rgb)
        pixels = rgb.to(self.pixel_mean.dtype)
        if imagenet_normalize:
            pixels = (pixels - self.pixel_mean) / self.pixel_std
        hidden = self.backbone.embeddings(pixels)
        needed = set(self.layer_map)
        per_block: dict[int, torch.Tensor] = {}
        for index in range(max(self.layer_map) + 1):
            hidden = self.blocks[index](hidden)
            if index in needed:
                per_block[index] = hidden[:, self.num_prefix_tokens:]
        return [per_block[index] for index in self.layer_map]

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_layers={self.num_layers}, "
            f"num_visual_layers={self.num_visual_layers}, patch_size={self.patch_size}"
        )


def build_depth_encoder(
    name: str,
    *,
    num_visual_layers: int,
    pretrained: bool = True,
    weights: str | os.PathLike[str] | None = None,
    kernel_resize: Literal["bicubic", "pi"] = "bicubic",
) -> DepthEncoder:
    """A frozen ``DepthEncoder`` from a preset name.

    ``pretrained=True`` loads the full depth model with ``from_pretrained(weights or hub id)`` (a hub
    id or a local folder written by ``save_pretrained``; presets without a hub id use their packaged
    folder under ``spectralmoe/weights/``), so hub checkpoints load as published, and
    keeps only its backbone. ``pretrained=False`` builds random weights from the preset's config
    (tests; parameter counts under ``torch.device("meta")``) and says so in a warning.

    ``weights`` may also be a folder holding only the DINOv2 encoder (a ``Dinov2Backbone`` saved with
    ``save_pretrained``, as ``spectralmoe import-checkpoint`` writes from the authors' converted depth
    weights); its width and depth must be the preset's.
    """
    if name not in DEPTH_PRESETS:
        raise ValueError(f"unknown depth model {name!r}; choose one of {list_depth_encoders()}")
    preset = DEPTH_PRESETS[name]
    if pretrained:
        source = weights if weights is not None else preset.default_weights()
        if source is None:
            raise ValueError(
                f"depth model {name!r} has no published weights: pass weights=<folder> or pretrained=False"
            )
        encoder = _encoder_only(source, preset, name)
        if encoder is not None:
            return DepthEncoder(encoder, num_visual_layers=num_visual_layers, kernel_resize=kernel_resize)
        model = preset.model_class.from_pretrained(os.fspath(source))
    else:
        if weights is not None:
            raise ValueError(f"weights={os.fspath(weights)!r} given with pretrained=False; drop one of them")
        logger.warning(
            "depth model %r built with RANDOM weights (pretrained=False): its tokens carry no depth cues", name
        )
        model = preset.model_class(preset.make_config())
    return DepthEncoder(model.backbone, num_visual_layers=num_visual_layers, kernel_resize=kernel_resize)


def _encoder_only(source: str | os.PathLike[str], preset: DepthPreset, name: str) -> Dinov2Backbone | None:
    """The DINOv2 encoder of a local folder that holds only that (``model_type`` "dinov2"), else None."""
    config_path = os.path.join(os.fspath(source), "config.json")
    if not os.path.isfile(config_path):
        return None
    with open(config_path) as handle:
        if json.load(handle).get("model_type") != "dinov2":
            return None
    encoder = Dinov2Backbone.from_pretrained(os.fspath(source))
    expected = {k: preset.backbone[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads")}
    found = {k: getattr(encoder.config, k) for k in expected}
    if found != expected:
        raise ValueError(f"{source}: the DINOv2 encoder there has {found}, but depth model {name!r} needs {expected}")
    return encoder


__all__ = [
    "DEPTH_PRESETS",
    "DepthEncoder",
    "DepthPreset",
    "build_depth_encoder",
    "depth_layer_map",
    "list_depth_encoders",
]
