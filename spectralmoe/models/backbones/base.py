"""The FrozenBackbone contract (DESIGN §4) shared by every foundation-model wrapper.

A backbone embeds an image of any band count into ``[B, P+N, D]`` tokens (P prefix tokens: cls and
registers, then N patch tokens on the H/16 × W/16 grid) and runs its blocks one at a time, so that
the segmentor can call an adapter between blocks. Its weights never train and it stays in eval
mode, but gradients flow through it to adapters of earlier layers.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def default_out_indices(num_layers: int) -> tuple[int, ...]:
    """[7, 11, 15, 23] for 24 layers, scaled proportionally for other depths (0-based)."""
    return tuple(max(0, round((i + 1) * num_layers / 24) - 1) for i in (7, 11, 15, 23))


def exact_patch_embedding(image: torch.Tensor) -> contextlib.AbstractContextManager:
    """Run a patch embedding in fp32 under CPU autocast.

    torch 2.13's CPU bfloat16 convolution returns wrong values (relative error ≈ 1, not rounding) for
    some patchify shapes — e.g. 4 input bands with a 16×16 stride-16 kernel, or 8 bands at 8 or 16 —
    which silently changed half of a 4-band map. The patch embedding is a small share of the work, so
    it runs in fp32 on CPU; the blocks keep autocast. GPUs are not affected and keep bf16.
    """
    if image.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        return torch.autocast("cpu", enabled=False)
    return contextlib.nullcontext()


class FrozenBackbone(nn.Module, ABC):
    """A frozen pretrained ViT stepped block by block.

    Subclasses set ``embed_dim``, ``num_layers``, ``num_prefix_tokens``, ``patch_size`` (the
    effective patch, 16) and ``out_indices``, keep their library modules in ``self.model`` and the
    block modules in ``self.blocks`` (used by methods such as LoRA that wrap block internals).
    """

    embed_dim: int
    num_layers: int
    num_prefix_tokens: int
    patch_size: int
    out_indices: tuple[int, ...]
    blocks: nn.ModuleList
    #: Why no trainable adapter can run on this backbone (None: every adapter can).
    adapter_refusal: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self.gradient_checkpointing = False

    def freeze(self) -> None:
        """Stop gradients into every parameter and put the module in eval mode."""
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenBackbone":
        """Always eval: frozen models must not switch dropout / RoPE jitter on (HF_NOTES)."""
        return super().train(False)

    @abstractmethod
    def embed(self, image: torch.Tensor, wavelengths: torch.Tensor | Sequence[float] | None = None
              ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Image ``[B, C, H, W]`` → tokens ``[B, P+N, D]`` and the patch grid ``(h, w)``."""

    @abstractmethod
    def _block_forward(self, index: int, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Run block ``index`` on ``[B, P'+N, D]`` tokens (P' ≥ P when a method inserts prompts)."""

    def run_block(self, index: int, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Run one frozen block, with activation checkpointing when enabled and gradients are needed."""
        if self.gradient_checkpointing and torch.is_grad_enabled() and tokens.requires_grad:
            return checkpoint(self._block_forward, index, tokens, grid, use_reentrant=False)
        return self._block_forward(index, tokens, grid)

    def forward(
        self, image: torch.Tensor, wavelengths: torch.Tensor | Sequence[float] | None = None, **embed_kwargs: Any
    ) -> list[torch.Tensor]:
        """Feature maps ``[B, D, H/16, W/16]`` after the blocks in ``out_indices`` (no adapter): one per
        entry, repeats included. ``embed_kwargs`` go to ``embed`` (Copernicus-FM's ``metadata``)."""
        with exact_patch_embedding(image):
            tokens, grid = self.embed(image, wavelengths, **embed_kwargs)
        maps: dict[int, torch.Tensor] = {}
        for index in range(max(self.out_indices) + 1):
            tokens = self.run_block(index, tokens, grid)
            if index in self.out_indices:
                maps[index] = self.tokens_to_map(tokens, grid)
        return [maps[index] for index in self.out_indices]

    def tokens_to_map(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Patch tokens of ``[B, P+N, D]`` → feature map ``[B, D, h, w]``."""
        h, w = grid
        patches = tokens[:, tokens.shape[1] - h * w:]
        return patches.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


def refuse_trainable_adapter(backbone: nn.Module, adapter: object) -> None:
    """Raise when ``backbone`` only runs frozen and ``adapter`` (a name or an Adapter) is not the Freeze baseline."""
    reason = getattr(backbone, "adapter_refusal", None)
    if reason is None:
        return
    name = adapter if isinstance(adapter, str) else type(adapter).__name__.lower()
    if name not in ("freeze", "adapter"):  # ``Adapter()`` itself is the Freeze baseline too
        raise ValueError(f"adapter {name!r} cannot run on {type(backbone).__name__}: {reason}. Use adapter='freeze'.")
