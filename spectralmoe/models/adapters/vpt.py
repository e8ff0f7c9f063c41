"""Deep visual prompt tuning (VPT-deep, BASELINES.md "VPT"): learnable tokens at every block's input.

Before block ``l`` the adapter inserts that layer's ``P`` prompts right after the prefix tokens
(cls, registers): ``[prefix, prompts_l, patches]``. After the block the prompt outputs are dropped
(deep VPT replaces them by the next layer's prompts), so the segmentor always sees ``[B, P₀+N, D]``.
Prompts influence the patches only through attention; there is no configuration that reproduces
the frozen backbone.

Init: uniform(−v, v) with VPT's Xavier-style bound ``v = sqrt(6 / (3·16² + D))`` (patch 16), the
same rule as Rein's full tokens.

Backbones: any whose blocks take a token sequence of any length (DINOv2, DINOv3, CLIP, DOFA).
DINOv3 applies RoPE to the *last* ``h·w`` tokens only, so prompts between prefix and patches are
treated like the prefix tokens (no rotation). SAM's blocks work on the 2-D grid with windowed
attention and cannot take extra tokens: :meth:`VPT.attach` refuses them.
"""

from __future__ import annotations

import torch
from torch import nn

from spectralmoe.models.adapters.base import Adapter
from spectralmoe.models.adapters.lora import check_backbone_sizes
from spectralmoe.models.adapters.rein import token_init_bound

__all__ = ["VPT", "VPT_PARAMS_VIT_L"]

#: Trainable parameters of ``VPT(1024, 24)`` (150 prompts per layer) — the paper's 3.69 M.
VPT_PARAMS_VIT_L = 3_686_400


class VPT(Adapter):
    """Deep VPT: ``num_prompts`` learnable tokens per block, inserted after the prefix tokens.

    Args:
        embed_dim: backbone width D.
        num_layers: number of blocks L (one prompt set each).
        num_prefix_tokens: cls/register tokens in front of the patches; prompts go right after them.
        num_prompts: prompts per layer P.
        dropout: dropout on the prompts (VPT's prompt dropout; 0 in the baseline).
    """

    def __init__(
        self,
        embed_dim: int,
        num_layers: int,
        num_prefix_tokens: int = 1,
        num_prompts: int = 150,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if embed_dim < 1 or num_layers < 1 or num_prefix_tokens < 0 or num_prompts < 1:
            raise ValueError(
                f"need embed_dim, num_layers, num_prompts >= 1 and num_prefix_tokens >= 0; got {embed_dim}, "
                f"{num_layers}, {num_prompts}, {num_prefix_tokens}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"prompt dropout must be in [0, 1), got {dropout}")
        self.embed_dim, self.num_layers, self.num_prefix_tokens = embed_dim, num_layers, num_prefix_tokens
        self.num_prompts = num_prompts
        bound = token_init_bound(embed_dim, rank=None)  # sqrt(6 / (3·16² + D))
        self.prompts = nn.Parameter(torch.empty(num_layers, num_prompts, embed_dim).uniform_(-bound, bound))
        self.dropout = nn.Dropout(dropout)

    def attach(self, backbone: nn.Module) -> None:
        """Check that the backbone's blocks can take extra tokens (not SAM) and that the sizes match."""
        if getattr(backbone, "family", None) == "sam" or backbone.num_prefix_tokens == 0:
            raise ValueError(
                f"VPT cannot be used with {getattr(backbone, 'name', type(backbone).__name__)}: its blocks work on the "
                "2-D patch grid (SAM: windowed attention over (B, h, w, C), no prefix tokens), so prompt tokens "
                "have nowhere to go; use LoRA or AdaptFormer for SAM"
            )
        check_backbone_sizes(self, backbone)

    def before_block(self, tokens: torch.Tensor, layer: int) -> torch.Tensor:
        """``[B, P₀+N, D]`` → ``[B, P₀+P+N, D]`` with this layer's prompts after the prefix."""
        self._check(tokens, layer, self.num_prefix_tokens)
        prompts = self.dropout(self.prompts[layer]).to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        p = self.num_prefix_tokens
        return torch.cat([tokens[:, :p], prompts, tokens[:, p:]], dim=1)

    def forward(
        self, tokens: torch.Tensor, layer: int, depth_tokens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Drop the prompt outputs of block ``layer``: ``[B, P₀+P+N, D]`` → ``[B, P₀+N, D]``; aux loss 0."""
        self._check(tokens, layer, self.num_prefix_tokens + self.num_prompts)
        p = self.num_prefix_tokens
        return torch.cat([tokens[:, :p], tokens[:, p + self.num_prompts:]], dim=1), tokens.new_zeros(())

    def _check(self, tokens: torch.Tensor, layer: int, leading: int) -> None:
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"VPT has {self.num_layers} layers, got layer={layer}")
        if tokens.ndim != 3 or tokens.shape[-1] != self.embed_dim or tokens.shape[1] <= leading:
            raise ValueError(
                f"VPT layer {layer}: expected tokens [B, {leading} + N, {self.embed_dim}] with N >= 1, got shape "
                f"{tuple(tokens.shape)}"
            )

    def extra_repr(self) -> str:
        return f"layers={self.num_layers}, prompts={self.num_prompts}, dim={self.embed_dim}"
