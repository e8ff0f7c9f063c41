"""Pieces shared by the Rein family of adapters (Rein, DepthForge, SET, FADA, SpectralMoE).

* ``token_attention``: Rein's refinement of features by a set of learnable tokens
  (METHOD §1.5, "intended" form): softmax over all T tokens, token 0 then dropped as a sink.
* ``QueryLink``: turns the per-layer token matrices into Mask2Former query embeddings
  (METHOD §1.8): transform D→Q, pool over layers (max, mean, last), merge 3Q→Q.
* ``split_prefix`` / ``join_prefix``: prefix tokens (cls, registers) pass through untouched.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def split_prefix(tokens: torch.Tensor, num_prefix_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, P+N, D]`` → prefix ``[B, P, D]`` and patches ``[B, N, D]``."""
    if tokens.ndim != 3:
        raise ValueError(f"adapter tokens must be [B, P+N, D], got shape {tuple(tokens.shape)}")
    if tokens.shape[1] <= num_prefix_tokens:
        raise ValueError(f"{tokens.shape[1]} tokens but {num_prefix_tokens} prefix tokens: no patch tokens left")
    return tokens[:, :num_prefix_tokens], tokens[:, num_prefix_tokens:]


def join_prefix(prefix: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    return torch.cat([prefix, patches], dim=1) if prefix.shape[1] else patches


def token_attention(features: torch.Tensor, tokens: torch.Tensor, token2feat: nn.Module) -> torch.Tensor:
    """Rein token attention: ``softmax(f Sᵀ/√D)[:, 1:] · token2feat(S[1:])``.

    ``features`` ``[..., n, D]``, ``tokens`` ``[T, D]`` → ``[..., n, D]``.
    """
    logits = features @ tokens.transpose(0, 1) / math.sqrt(tokens.shape[-1])
    attention = logits.softmax(dim=-1)
    return attention[..., 1:] @ token2feat(tokens[1:])


class QueryLink(nn.Module):
    """Per-layer token matrices ``[L, T, D]`` → query embeddings ``[T, Q]`` (METHOD §1.8).

    The 3 pooled values of each query channel are interleaved (index q·3 + {max, mean, last}),
    matching the released checkpoints' ``merge`` weight layout.
    """

    def __init__(self, embed_dim: int, query_dim: int) -> None:
        super().__init__()
        self.transform = nn.Linear(embed_dim, query_dim)
        self.merge = nn.Linear(3 * query_dim, query_dim)

    def forward(self, layer_tokens: torch.Tensor) -> torch.Tensor:
        x = self.transform(layer_tokens).permute(1, 2, 0)  # [T, Q, L]
        pooled = torch.stack([x.max(dim=-1).values, x.mean(dim=-1), x[..., -1]], dim=-1)  # [T, Q, 3]
        return self.merge(pooled.flatten(1))
