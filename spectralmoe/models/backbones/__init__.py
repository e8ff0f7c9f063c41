"""Frozen foundation-model backbones on the FrozenBackbone contract (DESIGN §4).

``build_backbone(name, ...)`` is the entry point; ``list_backbones()`` names what it accepts. The
transformers families live in :mod:`.hf_vit`, their named configurations in :mod:`.presets`; the
families written here — DOFA (:mod:`.dofa`), EVA-02 (:mod:`.eva02`), SoftCon (:mod:`.softcon`, on
transformers' DINOv2) and Copernicus-FM (:mod:`.copernicusfm`), sharing :mod:`.common` — are imported
only when one of their names is asked for.
"""

from spectralmoe.models.backbones.base import FrozenBackbone, default_out_indices
from spectralmoe.models.backbones.hf_vit import (
    CLIPVisionBackbone,
    DINOv2Backbone,
    DINOv3Backbone,
    HFViTBackbone,
    SAMVisionBackbone,
    build_hf_model,
    count_parameters,
    wrap_hf_model,
)
from spectralmoe.models.backbones.presets import (
    BACKBONE_PRESETS,
    BackbonePreset,
    build_backbone,
    build_hf_preset_model,
    get_preset,
    list_backbones,
)

__all__ = [
    "BACKBONE_PRESETS",
    "BackbonePreset",
    "CLIPVisionBackbone",
    "DINOv2Backbone",
    "DINOv3Backbone",
    "FrozenBackbone",
    "HFViTBackbone",
    "SAMVisionBackbone",
    "build_backbone",
    "build_hf_model",
    "build_hf_preset_model",
    "count_parameters",
    "default_out_indices",
    "get_preset",
    "list_backbones",
    "wrap_hf_model",
]
