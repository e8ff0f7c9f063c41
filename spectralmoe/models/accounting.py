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
    """The numbers ``spectralmoe params`` prints (a complete model such as DSTC: see ``dstc_report``)."""
    from spectralmoe.models.dstc import DSTC

    if isinstance(model, DSTC):
        return dstc_report(model)
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


def dstc_report(model: Any) -> dict[str, Any]:
    """DSTC's counts: every parameter trains; plus what the authors' 512 px position table would add.

    The authors' ``ViT(image_size=512, patch_size=1)`` allocates 512² + 1 position rows of which only
    the first supertokens + 1 are read; ``authors_total`` is our count with those unused rows added.
    """
    from spectralmoe.models.dstc import AUTHORS_IMAGE_SIZE

    total = count(model, trainable=True)
    table = model.transformer.pos_embedding
    rows, dim = table.shape[1], table.shape[2]
    unused = (AUTHORS_IMAGE_SIZE**2 + 1 - rows) * dim
    return {
        "method_trainable": total,
        "method_breakdown": model.parameter_parts(),
        "head_trainable": 0,
        "total_trainable": total,
        "backbone_frozen": count(model, trainable=False),
        "depth_frozen": 0,
        "position_rows": rows,
        "authors_position_rows": AUTHORS_IMAGE_SIZE**2 + 1,
        "authors_total": total + unused,
    }
