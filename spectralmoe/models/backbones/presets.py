"""Named backbones: the real foundation models of the paper, tiny stand-ins for tests, and the factory.

Each preset's ``config`` holds the values of the hub checkpoint's ``config.json`` that decide the
architecture, so that a model built from it has exactly the parameters of the released weights
(checked in tests on the meta device). ``build_backbone`` is the one entry point used by configs;
the names of the families written here (DOFA, EVA-02, SoftCon, Copernicus-FM; ``WRITTEN_FAMILIES``)
are delegated to their modules, imported only when asked for.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch

from spectralmoe.models.backbones.base import FrozenBackbone, default_out_indices
from spectralmoe.models.backbones.hf_vit import HF_FAMILIES, KernelResize, build_hf_model, wrap_hf_model

logger = logging.getLogger(__name__)

Family = Literal["dinov2", "dinov2-reg", "dinov3", "clip", "sam"]


@dataclass(frozen=True)
class BackbonePreset:
    """One named backbone: transformers family, hub checkpoint (None for test-only presets), config, taps.

    ``out_indices`` are the 0-based blocks whose outputs feed the decoder pyramid. ``packaged_weights``
    names a folder under ``spectralmoe/weights/`` shipped with the package (``save_pretrained``
    output), the default weights of a preset without a hub id (the synthetic-world models).
    """

    name: str
    family: Family
    hub_id: str | None
    config: dict[str, Any] = field(hash=False)
    out_indices: tuple[int, ...]
    packaged_weights: str | None = None

    def default_weights(self) -> str | None:
        """Where ``pretrained=True`` loads from without ``weights=``: the hub id, else the packaged folder."""
        if self.hub_id is not None:
            return self.hub_id
        if self.packaged_weights is not None:
            from spectralmoe.weights import packaged_weights

            return str(packaged_weights(self.packaged_weights))
        return None

    def __post_init__(self) -> None:
        if self.family not in HF_FAMILIES:
            raise ValueError(f"preset {self.name!r}: unknown family {self.family!r}; known: {', '.join(HF_FAMILIES)}")
        layers = self.config["num_hidden_layers"]
        if not self.out_indices or any(not 0 <= i < layers for i in self.out_indices):
            raise ValueError(f"preset {self.name!r}: out_indices {self.out_indices} outside [0, {layers - 1}]")


def _vit(hidden: int, layers: int, heads: int, **extra: Any) -> dict[str, Any]:
    return {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads, **extra}


# DINOv3 ViT-L/16 and ViT-B/16 (LVD-1689M): 4 registers, RoPE base 100, no key bias, LayerScale 1e-5.
_DINOV3 = dict(
    patch_size=16, image_size=224, num_register_tokens=4, rope_theta=100.0, query_bias=True, key_bias=False,
    value_bias=True, proj_bias=True, mlp_bias=True, layerscale_value=1e-5, layer_norm_eps=1e-5, hidden_act="gelu",
    use_gated_mlp=False, pos_embed_rescale=2.0,
)  # fmt: skip
# DINOv2 (with or without registers): patch 14, position table for 518 px (37×37), LayerScale 1.
_DINOV2 = dict(patch_size=14, image_size=518, mlp_ratio=4, layerscale_value=1.0, layer_norm_eps=1e-6, qkv_bias=True,
               hidden_act="gelu", use_swiglu_ffn=False)  # fmt: skip
# CLIP ViT-L/14 vision tower (224 px, quick_gelu).
_CLIP = dict(patch_size=14, image_size=224, hidden_act="quick_gelu", layer_norm_eps=1e-5)
# SAM image encoders: 1024 px, patch 16, 14×14 windows, 4 global-attention blocks, 256-channel neck.
_SAM = dict(patch_size=16, image_size=1024, window_size=14, output_channels=256, qkv_bias=True, use_abs_pos=True,
            use_rel_pos=True, layer_norm_eps=1e-6, mlp_ratio=4.0)  # fmt: skip

_SAM_GLOBAL = {"b": (2, 5, 8, 11), "l": (5, 11, 17, 23), "h": (7, 15, 23, 31)}

#: Architecture of the packaged synthetic-world DINOv2 (also what its pretraining script builds): a
#: NIR,R,G,B model (its channels' wavelengths in the config), as a multispectral foundation model.
SYNTHETIC_DINOV2_CONFIG: dict[str, Any] = _vit(
    96, 6, 4, patch_size=16, image_size=128, mlp_ratio=4, layerscale_value=1.0, layer_norm_eps=1e-6, qkv_bias=True,
    hidden_act="gelu", use_swiglu_ffn=False, num_channels=4, channel_wavelengths_um=[0.83, 0.665, 0.56, 0.49],
)


def _preset(name: str, family: Family, hub_id: str | None, config: dict[str, Any],
            out_indices: Sequence[int] | None = None,
            packaged_weights: str | None = None) -> BackbonePreset:  # fmt: skip
    indices = default_out_indices(config["num_hidden_layers"]) if out_indices is None else tuple(out_indices)
    return BackbonePreset(name, family, hub_id, config, tuple(indices), packaged_weights)


_PRESETS = (
    _preset("dinov3-vitl16", "dinov3", "facebook/dinov3-vitl16-pretrain-lvd1689m",
            _vit(1024, 24, 16, intermediate_size=4096, **_DINOV3)),
    _preset("dinov3-vitb16", "dinov3", "facebook/dinov3-vitb16-pretrain-lvd1689m",
            _vit(768, 12, 12, intermediate_size=3072, **_DINOV3)),
    _preset("dinov2-vitl14", "dinov2", "facebook/dinov2-large", _vit(1024, 24, 16, **_DINOV2)),
    _preset("dinov2-vitb14", "dinov2", "facebook/dinov2-base", _vit(768, 12, 12, **_DINOV2)),
    _preset("dinov2-reg-vitl14", "dinov2-reg", "facebook/dinov2-with-registers-large",
            _vit(1024, 24, 16, num_register_tokens=4, **_DINOV2)),
    _preset("dinov2-reg-vitb14", "dinov2-reg", "facebook/dinov2-with-registers-base",
            _vit(768, 12, 12, num_register_tokens=4, **_DINOV2)),
    _preset("clip-vitl14", "clip", "openai/clip-vit-large-patch14",
            _vit(1024, 24, 16, intermediate_size=4096, projection_dim=768, **_CLIP)),
    _preset("sam-vitb", "sam", "facebook/sam-vit-base",
            _vit(768, 12, 12, mlp_dim=3072, global_attn_indexes=list(_SAM_GLOBAL["b"]), **_SAM), _SAM_GLOBAL["b"]),
    _preset("sam-vitl", "sam", "facebook/sam-vit-large",
            _vit(1024, 24, 16, mlp_dim=4096, global_attn_indexes=list(_SAM_GLOBAL["l"]), **_SAM), _SAM_GLOBAL["l"]),
    _preset("sam-vith", "sam", "facebook/sam-vit-huge",
            _vit(1280, 32, 16, mlp_dim=5120, global_attn_indexes=list(_SAM_GLOBAL["h"]), **_SAM), _SAM_GLOBAL["h"]),
    # Tiny stand-ins (random weights only): same families and quirks (patch 14, registers, RoPE, windows).
    _preset("tiny-dinov2", "dinov2", None,
            _vit(64, 4, 4, patch_size=14, image_size=56, mlp_ratio=2, layerscale_value=1.0, layer_norm_eps=1e-6)),
    _preset("tiny-dinov2-reg", "dinov2-reg", None,
            _vit(64, 4, 4, patch_size=14, image_size=56, mlp_ratio=2, num_register_tokens=4, layer_norm_eps=1e-6)),
    _preset("tiny-dinov3", "dinov3", None,
            _vit(64, 4, 4, intermediate_size=128, patch_size=16, image_size=64, num_register_tokens=4,
                 rope_theta=100.0, key_bias=False, layerscale_value=1e-5, layer_norm_eps=1e-5)),
    _preset("tiny-clip", "clip", None,
            _vit(64, 4, 4, intermediate_size=128, patch_size=14, image_size=56, hidden_act="quick_gelu")),
    # Windows of 2 on a 4×4 grid, global attention in blocks 1 and 3; initializer 0.02 instead of SAM's 1e-10
    # so that random weights are not all ~0. Taps every block: 4 maps, like the real presets.
    _preset("tiny-sam", "sam", None,
            _vit(64, 4, 4, mlp_dim=128, patch_size=16, image_size=64, window_size=2, global_attn_indexes=[1, 3],
                 output_channels=32, initializer_range=0.02), (0, 1, 2, 3)),
    # SYNTHETIC-world pretrained model shipped in spectralmoe/weights/ (scripts/pretrain_synthetic.py): the
    # default backbone of `spectralmoe demo`. Native patch 16 (no kernel resize), position table 8×8 (128 px).
    _preset("synthetic-dinov2", "dinov2", None, SYNTHETIC_DINOV2_CONFIG, packaged_weights="synthetic-dinov2"),
)  # fmt: skip

BACKBONE_PRESETS: dict[str, BackbonePreset] = {p.name: p for p in _PRESETS}


def get_preset(name: str) -> BackbonePreset:
    """A transformers preset by name, with the known names in the error."""
    try:
        return BACKBONE_PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(list_backbones())}") from None


def _dofa_module() -> Any:
    """Import the DOFA module lazily: it is developed separately and may be absent."""
    from spectralmoe.models.backbones import dofa

    return dofa


#: Families written here (not transformers): module under ``models/backbones``, its presets dict, its
#: builder, and which of the optional ``build_backbone`` keywords the builder takes (band metadata,
#: kernel resize). Every builder takes in_wavelengths, pretrained, weights, out_indices, gradient_checkpointing.
WRITTEN_FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "dofa": ("DOFA_CONFIGS", "build_dofa_backbone", ()),
    "eva02": ("EVA02_CONFIGS", "build_eva02_backbone", ("kernel_resize",)),
    "softcon": ("SOFTCON_CONFIGS", "build_softcon_backbone", ("in_bandwidths", "kernel_resize")),
    "copernicusfm": ("COPERNICUSFM_CONFIGS", "build_copernicusfm_backbone", ("in_bandwidths", "gsd_m")),
    # Frozen-only families with several tokens per patch position; they also take family options.
    "galileo": ("GALILEO_CONFIGS", "build_galileo_backbone", ("in_bandwidths", "gsd_m", "options")),
    "senpamae": ("SENPAMAE_CONFIGS", "build_senpamae_backbone", ("in_bandwidths", "gsd_m", "options")),
}


def _family_module(family: str) -> Any:
    if family == "dofa":
        return _dofa_module()
    return importlib.import_module(f"spectralmoe.models.backbones.{family}")


def _written_families() -> tuple[dict[str, tuple[Any, str]], dict[str, str]]:
    """(preset name → (module, family), family → import error) for the families that import."""
    names: dict[str, tuple[Any, str]] = {}
    failed: dict[str, str] = {}
    for family, (configs, _, _) in WRITTEN_FAMILIES.items():
        try:
            module = _family_module(family)
        except ImportError as err:
            failed[family] = str(err)
            continue
        names.update({n: (module, family) for n in getattr(module, configs) if n not in BACKBONE_PRESETS})
    return names, failed


def list_backbones() -> list[str]:
    """Every name ``build_backbone`` accepts (written families' names only when their module imports)."""
    return sorted([*BACKBONE_PRESETS, *_written_families()[0]])


def build_hf_preset_model(preset: BackbonePreset | str, *, weights: str | os.PathLike | None = None):
    """The bare transformers model of a preset (random from its config, or loaded from ``weights``)."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    return build_hf_model(preset.family, dict(preset.config), weights=weights, name=preset.name)


def build_backbone(
    name: str,
    *,
    in_wavelengths: Sequence[float] | torch.Tensor | None = None,
    in_bandwidths: Sequence[float] | torch.Tensor | None = None,
    gsd_m: float | None = None,
    pretrained: bool = True,
    weights: str | os.PathLike | None = None,
    out_indices: Sequence[int] | None = None,
    kernel_resize: KernelResize = "bicubic",
    gradient_checkpointing: bool = False,
    options: dict[str, Any] | None = None,
) -> FrozenBackbone:
    """Build a frozen backbone by name.

    Args:
        name: a preset (see ``list_backbones()``).
        in_wavelengths: centre wavelength (µm) of each input band, nan for non-spectral bands; the patch
            embedding gets one channel per band (default R, G, B).
        in_bandwidths: FWHM (µm) of each input band, for the backbones that use it (Copernicus-FM's
            kernels, SoftCon's slot matching); None → ``spectralmoe.bands.default_bandwidths_um``.
        gsd_m: ground sampling distance (m) of the input, for the backbones that use it (Copernicus-FM's
            patch-area token); None → unknown. Ignored by the others.
        pretrained: load released weights (``weights``, else the preset's hub id or packaged folder); False
            builds random weights from the preset config (a warning is logged). Works under ``torch.device("meta")``.
        weights: hub id or local folder written by ``save_pretrained`` (needed offline).
        out_indices: blocks tapped for the decoder (default: the preset's).
        kernel_resize: how patch-14 kernels become 16×16: "bicubic" (authors' converters) or "pi" (FlexiViT).
        gradient_checkpointing: recompute block activations in backward to save memory.
        options: options of the backbone family (Galileo's ``month``, ``patch_size``, ``normalization``;
            SenPa-MAE's ``response_curves``; see their builders). A family without options refuses them.
    """
    if name not in BACKBONE_PRESETS:
        optional = {"in_bandwidths": in_bandwidths, "gsd_m": gsd_m, "kernel_resize": kernel_resize,
                    "options": dict(options or {})}  # fmt: skip
        return _build_written(name, optional, in_wavelengths=in_wavelengths, pretrained=pretrained, weights=weights,
                              out_indices=out_indices, gradient_checkpointing=gradient_checkpointing)  # fmt: skip
    if options:
        raise ValueError(f"backbone {name!r} takes no backbone options, got {sorted(options)}")
    preset = BACKBONE_PRESETS[name]
    if pretrained:
        source = weights if weights is not None else preset.default_weights()
        if source is None:
            raise ValueError(
                f"backbone {name!r} is a test preset without released weights: pass pretrained=False, or "
                f"weights=<folder written by save_pretrained>"
            )
        model = build_hf_preset_model(preset, weights=source)
        _check_matches_preset(model.config, preset, source)
    else:
        if weights is not None:
            raise ValueError(f"backbone {name!r}: weights={weights!r} was given with pretrained=False; drop one")
        logger.warning("backbone %r: building with RANDOM weights (pretrained=False)", name)
        model = build_hf_preset_model(preset)
    return wrap_hf_model(
        model,
        in_wavelengths=in_wavelengths,
        out_indices=preset.out_indices if out_indices is None else out_indices,
        kernel_resize=kernel_resize,
        gradient_checkpointing=gradient_checkpointing,
        name=name,
    )


def _check_matches_preset(config: Any, preset: BackbonePreset, source: Any) -> None:
    """Refuse weights of another size than the preset: its out_indices and docs would be wrong."""
    for key in ("hidden_size", "num_hidden_layers"):
        got, want = getattr(config, key, None), preset.config[key]
        if got != want:
            raise ValueError(
                f"backbone {preset.name!r}: the weights at {os.fspath(source)!r} have {key}={got}, the preset "
                f"expects {want}; choose the preset that matches the checkpoint"
            )


def _build_written(name: str, optional: dict[str, Any], **kwargs: Any) -> FrozenBackbone:
    """Delegate a written family's name to its module (imported here so this file works without it)."""
    names, failed = _written_families()
    if name not in names:
        why = "".join(f". {family.upper() if family == 'dofa' else family} backbones are unavailable because "
                      f"spectralmoe.models.backbones.{family} failed to import ({err})" for family, err in failed.items())
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(list_backbones())}{why}")  # fmt: skip
    module, family = names[name]
    _, builder, accepted = WRITTEN_FAMILIES[family]
    options = optional.pop("options")
    if options and "options" not in accepted:
        raise ValueError(f"backbone {name!r} takes no backbone options, got {sorted(options)}")
    kwargs.update({key: optional[key] for key in accepted if key != "options"})
    for key in ("in_bandwidths", "gsd_m"):  # given as a family option, they override the sensor's values
        if key in options:
            kwargs[key] = options.pop(key)
    return getattr(module, builder)(name, **kwargs, **options)
