"""Parameter accounting: how many weights each part of a Segmentor has and which of them train.

Counts follow the paper's convention (Rein's): the method's trainable parameters exclude the
decoder, which is trained in every row but reported separately. Methods that live inside the
backbone (LoRA, AdaptFormer) are counted by what requires grad there.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from spectralmoe.models.segmentor import Segmentor


#: The paper's Params column (millions) at ViT-L, for ``spectralmoe params --compare``.
PAPER_PARAMS_M_VIT_L: dict[str, float] = {
    "freeze": 0.0, "lora": 0.79, "adaptformer": 3.22, "vpt": 3.69, "set": 6.13, "fada": 11.65,
    "rein": 2.99, "depthforge": 2.99, "spectralmoe": 5.74,
}  # fmt: skip


def count(module: nn.Module | None, trainable: bool | None = None) -> int:
    """Number of parameters of ``module`` (all, only trainable, or only frozen)."""
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)


def method_breakdown(model: Segmentor) -> dict[str, int]:
    """Trainable parameters of the method per top-level part (adapter submodules, in-backbone weights)."""
    parts: dict[str, int] = {}
    for name, param in model.adapter.named_parameters():
        if param.requires_grad:
            key = name.split(".")[0]
            parts[key] = parts.get(key, 0) + param.numel()
    in_backbone = count(model.backbone, trainable=True)
    if in_backbone:
        parts["in_backbone"] = in_backbone
    return parts


def parameter_report(model: Segmentor) -> dict[str, Any]:
    """The numbers ``spectralmoe params`` prints."""
    method = count(model.adapter, trainable=True) + count(model.backbone, trainable=True)
    head = count(model.head, trainable=True)
    return {
        "method_trainable": method,
        "method_breakdown": method_breakdown(model),
        "head_trainable": head,
        "total_trainable": method + head,
        "backbone_frozen": count(model.backbone, trainable=False),
        "depth_frozen": count(model.depth_encoder, trainable=False),
    }


@contextmanager
def quiet_random_init_warnings() -> Iterator[None]:
    """Silence the 'random initialisation' warnings while building on the meta device on purpose."""
    logger = logging.getLogger("spectralmoe")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def build_on_meta(**build_kwargs: Any) -> Segmentor:
    """Build a Segmentor on the meta device: shapes only, no memory, no download."""
    from spectralmoe.models.factory import build_segmentor

    with quiet_random_init_warnings(), torch.device("meta"):
        return build_segmentor(pretrained=False, **build_kwargs)
