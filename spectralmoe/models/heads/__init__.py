"""Segmentation heads on the Head contract (DESIGN §4).

``forward(features, queries=None)`` on 4 maps (strides 4, 8, 16, 32) → predictions,
``loss(predictions, mask)`` → dict of weighted terms (sum = training loss, 255 ignored),
``logits(predictions, size)`` → ``[B, K, H, W]`` scores; attributes ``num_classes``, ``uses_queries``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from .light import FPNHead, LinearHead
from .mask2former import Mask2FormerHead, Mask2FormerOutput

HEADS: dict[str, type[nn.Module]] = {"mask2former": Mask2FormerHead, "fpn": FPNHead, "linear": LinearHead}


def build_head(name: str, num_classes: int, in_channels: Sequence[int], **kwargs: Any) -> nn.Module:
    """Build the head called ``name`` (a key of ``HEADS``) for ``num_classes`` classes."""
    try:
        head_class = HEADS[name]
    except KeyError:
        raise ValueError(f"unknown head {name!r}; choose one of {sorted(HEADS)}") from None
    return head_class(num_classes=num_classes, in_channels=tuple(in_channels), **kwargs)


__all__ = ["HEADS", "FPNHead", "LinearHead", "Mask2FormerHead", "Mask2FormerOutput", "build_head"]
