"""DepthForge (ICCV 2025): Rein whose token attention also listens to a frozen depth model.

Depth block ``l``'s patch tokens ``d`` add their own attention logits before the one softmax over
tokens (BASELINES.md "DepthForge")::

    a  = softmax_t((f S_lᵀ + d S_lᵀ) / √D)
    f' = f + scale · mlp_delta_f(a[:, 1:] · mlp_token2feat(S_l[1:]) + f)

Depth enters nowhere else. Because the logits are linear in the features, ``f Sᵀ + d Sᵀ`` is computed
as ``(f + d) Sᵀ`` (one matmul instead of two; equal up to float rounding). With no extra
parameters the module has exactly Rein's 2,990,081 at ViT-L.
"""

from __future__ import annotations

import torch
from torch import nn

from spectralmoe.models.adapters.common import token_attention
from spectralmoe.models.adapters.rein import REIN_PARAMS_VIT_L, Rein

#: ``DepthForge(1024, 24)`` (depth width = visual width): identical to Rein.
DEPTHFORGE_PARAMS_VIT_L = REIN_PARAMS_VIT_L


class DepthForge(Rein):
    """Rein + depth-summed attention logits (needs per-layer depth tokens ``[B, N, D_depth]``).

    Args: as :class:`Rein`, plus
        depth_dim: width of the depth tokens when it differs from ``embed_dim``. Then a trainable
            ``Linear(depth_dim, embed_dim)`` shared by all layers maps depth tokens into the token
            space (an addition of ours — the published method pairs same-width ViT-L models — counted
            in the parameters: ``depth_dim·D + D``). None or ``embed_dim`` → no projection.
    """

    needs_depth = True

    def __init__(
        self,
        embed_dim: int,
        num_layers: int,
        rank: int = 16,
        token_length: int = 100,
        query_dim: int = 256,
        num_prefix_tokens: int = 1,
        scale_init: float = 1e-3,
        low_rank: bool = True,
        depth_dim: int | None = None,
    ) -> None:
        super().__init__(embed_dim, num_layers, rank, token_length, query_dim, num_prefix_tokens, scale_init, low_rank)
        self.depth_dim = embed_dim if depth_dim is None else depth_dim
        self.depth_proj = nn.Linear(self.depth_dim, embed_dim) if self.depth_dim != embed_dim else None

    def delta(self, patches: torch.Tensor, layer: int, depth_tokens: torch.Tensor | None = None) -> torch.Tensor:
        depth = self._depth(patches, layer, depth_tokens)
        attended = token_attention(patches + depth, self.tokens(layer), self.mlp_token2feat)
        return self.mlp_delta_f(attended + patches)

    def _depth(self, patches: torch.Tensor, layer: int, depth_tokens: torch.Tensor | None) -> torch.Tensor:
        """Validated depth tokens of ``layer`` in the visual width."""
        if depth_tokens is None:
            raise ValueError(f"DepthForge needs depth_tokens for layer {layer} (the segmentor's depth encoder output)")
        expected = (patches.shape[0], patches.shape[1], self.depth_dim)
        if tuple(depth_tokens.shape) != expected:
            raise ValueError(
                f"DepthForge layer {layer}: depth tokens must be [B, N, D_depth] = {list(expected)} "
                f"(patch tokens only, on the visual grid), got {list(depth_tokens.shape)}"
            )
        return depth_tokens if self.depth_proj is None else self.depth_proj(depth_tokens)

    def _non_official_parameters(self) -> tuple[str, ...]:
        return ("depth_proj.",)
