"""The Adapter contract (DESIGN §4) shared by SpectralMoE and every baseline method.

The segmentor drives the frozen backbone block by block:

    adapter.set_grid(grid)                               # once per batch, after backbone.embed
    tokens = adapter.before_block(tokens, layer)        # e.g. VPT inserts its prompts
    tokens = backbone.run_block(layer, tokens, grid)    # frozen
    tokens, aux = adapter(tokens, layer=layer, depth_tokens=d)   # refine; prefix untouched

Methods that live inside the blocks (LoRA, AdaptFormer) do their work in ``attach(backbone)``,
which the segmentor calls once, and leave ``forward`` as the identity.
"""

from __future__ import annotations

import torch
from torch import nn


class Adapter(nn.Module):
    """Base class: identity refinement, no queries, no depth."""

    #: True when ``forward`` needs per-layer depth tokens from the depth encoder.
    needs_depth: bool = False

    def attach(self, backbone: nn.Module) -> None:
        """Hook into the frozen backbone once (default: nothing)."""

    def set_grid(self, grid: tuple[int, int] | None) -> None:
        """The patch grid ``(h, w)`` of the coming batch (default: ignored; SET/FADA transform over it)."""

    def before_block(self, tokens: torch.Tensor, layer: int) -> torch.Tensor:
        """Tokens entering block ``layer`` (default: unchanged)."""
        return tokens

    def forward(
        self, tokens: torch.Tensor, layer: int, depth_tokens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Refine block ``layer``'s output tokens ``[B, P+N, D]``; return them and an auxiliary loss."""
        return tokens, tokens.new_zeros(())

    def queries(self) -> torch.Tensor | None:
        """Mask2Former query embeddings ``[num_queries, query_dim]`` derived from the adapter, or None."""
        return None

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
