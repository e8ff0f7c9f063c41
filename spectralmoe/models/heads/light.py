"""Light segmentation heads for cheap runs: a semantic-FPN head and a linear probe.

Both follow the Head contract (DESIGN §4): ``forward(features, queries=None)`` returns per-class
logits at the feature resolution, ``loss`` is pixel-wise cross-entropy with 255 ignored, and
``logits`` upsamples bilinearly. They take no Mask2Former queries (``uses_queries = False``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: Label value that no head is trained on (padding, unlabelled pixels).
IGNORE_INDEX = 255

#: Strides of the four feature maps every head receives, high → low resolution.
FEATURE_STRIDES = (4, 8, 16, 32)


def check_features(features: Sequence[torch.Tensor], in_channels: Sequence[int], head: str) -> None:
    """Fail early with the offending level when the pyramid does not match what the head was built for."""
    if len(features) != len(in_channels):
        raise ValueError(f"{head} expects {len(in_channels)} feature maps (strides 4, 8, 16, 32), got {len(features)}")
    for level, (feature, channels) in enumerate(zip(features, in_channels)):
        if feature.dim() != 4 or feature.shape[1] != channels:
            raise ValueError(
                f"{head}: feature map {level} (stride {FEATURE_STRIDES[level]}) should be [B, {channels}, H, W], "
                f"got {tuple(feature.shape)}"
            )


def check_mask(mask: torch.Tensor, num_classes: int) -> None:
    """Reject masks of the wrong rank/dtype or with labels outside ``[0, num_classes) ∪ {255}``."""
    if mask.dim() != 3 or mask.dtype.is_floating_point or mask.dtype == torch.bool:
        raise ValueError(f"mask must be an integer tensor [B, H, W], got {mask.dtype} {tuple(mask.shape)}")
    bad = (mask != IGNORE_INDEX) & ((mask < 0) | (mask >= num_classes))
    if bool(bad.any()):
        values = torch.unique(mask[bad]).tolist()[:10]
        raise ValueError(f"mask has labels {values} outside [0, {num_classes}) (ignore = {IGNORE_INDEX})")


def pixel_cross_entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean CE over valid pixels; 0 (still in the graph) when no pixel is valid instead of NaN."""
    logits = F.interpolate(logits.float(), size=mask.shape[-2:], mode="bilinear", align_corners=False)
    total = F.cross_entropy(logits, mask.long(), ignore_index=IGNORE_INDEX, reduction="sum")
    valid = (mask != IGNORE_INDEX).sum().clamp(min=1)
    return total / valid


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups: batch-size independent (batches are 2-4 per GPU), any width."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


class _DenseHead(nn.Module):
    """Shared loss/logits of heads whose predictions are dense per-class logits."""

    uses_queries = False
    num_classes: int
    in_channels: tuple[int, ...]

    def loss(self, predictions: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pixel cross-entropy at mask resolution, 255 ignored."""
        check_mask(mask, self.num_classes)
        return {"loss_ce": pixel_cross_entropy(predictions, mask)}

    def logits(self, predictions: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Per-class scores [B, K, *size] (float32, so window averaging is exact under autocast)."""
        return F.interpolate(predictions.float(), size=tuple(size), mode="bilinear", align_corners=False)


class FPNHead(_DenseHead):
    """Semantic-FPN head: lateral 1×1 convs, top-down sum, 3×3 conv + GN + ReLU per level, fused at stride 4.

    A cheap stand-in for Mask2Former (no matching, no deformable attention) for smoke runs and
    ablations where the decoder is not the subject.
    """

    def __init__(self, num_classes: int, in_channels: Sequence[int] = (1024,) * 4, channels: int = 256) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = tuple(in_channels)
        self.laterals = nn.ModuleList(nn.Conv2d(c, channels, kernel_size=1) for c in self.in_channels)
        self.smooth = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
                _group_norm(channels),
                nn.ReLU(inplace=True),
            )
            for _ in self.in_channels
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
            _group_norm(channels),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, features: Sequence[torch.Tensor], queries: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, K, H/4, W/4]; ``queries`` is accepted for the contract and ignored."""
        check_features(features, self.in_channels, type(self).__name__)
        laterals = [conv(f) for conv, f in zip(self.laterals, features)]
        # Top-down pathway: each level receives the upsampled coarser level.
        for level in range(len(laterals) - 2, -1, -1):
            laterals[level] = laterals[level] + F.interpolate(
                laterals[level + 1], size=laterals[level].shape[-2:], mode="bilinear", align_corners=False
            )
        size = laterals[0].shape[-2:]
        fused = sum(
            F.interpolate(smooth(x), size=size, mode="bilinear", align_corners=False) if level else smooth(x)
            for level, (smooth, x) in enumerate(zip(self.smooth, laterals))
        )
        return self.classifier(self.fuse(fused))


class LinearHead(_DenseHead):
    """Linear probe: one 1×1 conv on the stride-16 map — the cheapest head, measures feature quality."""

    def __init__(self, num_classes: int, in_channels: Sequence[int] = (1024,) * 4) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = tuple(in_channels)
        self.classifier = nn.Conv2d(self.in_channels[2], num_classes, kernel_size=1)

    def forward(self, features: Sequence[torch.Tensor], queries: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, K, H/16, W/16]; ``queries`` is ignored."""
        check_features(features, self.in_channels, type(self).__name__)
        return self.classifier(features[2])
