"""AdaptFormer baseline (BASELINES.md "AdaptFormer"): a parallel bottleneck next to every block's MLP.

Inside block ``l`` (pre-norm ViT), with ``x_attn`` the residual stream after the attention branch::

    x_out = x_attn + γ₂·MLP(LN₂(x_attn)) + s · Up(ReLU(Down(LN_a(x_attn))))

``Down`` is Kaiming-uniform with zero bias, ``Up`` is all zeros, so the model starts as the frozen
backbone; ``s = 0.1`` is fixed; ``LN_a`` is the adapter's own LayerNorm (AdaptFormer's "in" option).
γ₂ is the block's LayerScale (DINOv2/DINOv3; absent elsewhere): the branch is added *after* it, as
in AdaptFormer, otherwise DINOv3's γ₂ = 1e-5 would silence it. All tokens, cls and registers
included, go through the branch, as in the original.

The branch is attached with PyTorch hooks on the host's modules, no library class is edited:

* a forward pre-hook on the block's second norm stores its input ``x_attn``;
* a forward hook on the module whose output joins the residual adds ``s·branch(x_attn)`` to it.

=================  ==============  ====================
family             pre-hook on     output hook on
=================  ==============  ====================
DINOv2, DINOv3     ``norm2``       ``layer_scale2``
CLIP, SAM          ``layer_norm2`` ``mlp``
DOFA, Copernicus   ``norm2``       ``mlp``
EVA-02             ``norm2``       ``mlp``
=================  ==============  ====================

The stored input is consumed by the output hook of the same call, so activation checkpointing
(which runs the block again in backward, hooks included) recomputes the branch from the recomputed
input. The branch works on any leading shape (SAM's blocks hold ``(B, h, w, C)`` maps).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from spectralmoe.models.adapters.base import Adapter
from spectralmoe.models.adapters.lora import block_layout, check_backbone_sizes

__all__ = ["ADAPTFORMER_PARAMS_VIT_L", "ADAPTFORMER_SITES", "AdaptFormer", "Bottleneck"]

#: Trainable parameters of ``AdaptFormer(1024, 24)`` (d = 64, with LN_a) — the paper's 3.22 M.
ADAPTFORMER_PARAMS_VIT_L = 3_220_992

#: family → where the branch reads its input (``input``: pre-hook) and adds its output (``output``).
#: Order matters for backbones without a ``family`` attribute (DOFA): first layout that fits block 0.
ADAPTFORMER_SITES: dict[str, dict[str, str]] = {
    "dinov3": {"input": "norm2", "output": "layer_scale2"},
    "dinov2": {"input": "norm2", "output": "layer_scale2"},
    "clip": {"input": "layer_norm2", "output": "mlp"},
    "sam": {"input": "layer_norm2", "output": "mlp"},
    "dofa": {"input": "norm2", "output": "mlp"},
    "eva02": {"input": "norm2", "output": "mlp"},
}


class Bottleneck(nn.Module):
    """``Up(ReLU(Down(LN_a(x))))`` over the last axis (AdaptFormer's "AdaptMLP", unscaled)."""

    def __init__(self, embed_dim: int, bottleneck: int, layer_norm: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim) if layer_norm else nn.Identity()
        self.down = nn.Linear(embed_dim, bottleneck)
        self.up = nn.Linear(bottleneck, embed_dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """AdaptFormer's init: Down Kaiming-uniform(a=√5), Up and both biases zero (branch starts at 0)."""
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(torch.relu(self.down(self.norm(x))))


class AdaptFormer(Adapter):
    """AdaptFormer: one parallel bottleneck per block, hooked next to the frozen MLP.

    Args:
        embed_dim: backbone width D.
        num_layers: number of blocks L (one bottleneck each).
        num_prefix_tokens: cls/register tokens; unused (the adapter's ``forward`` is the identity).
        bottleneck: hidden width d of the bottleneck.
        scale: fixed factor s of the branch.
        layer_norm: give the branch its own input LayerNorm (3.22 M at ViT-L; False: 3.17 M, the
            figure printed in the Rein paper).
    """

    def __init__(
        self,
        embed_dim: int,
        num_layers: int,
        num_prefix_tokens: int = 1,
        bottleneck: int = 64,
        scale: float = 0.1,
        layer_norm: bool = True,
    ) -> None:
        super().__init__()
        if embed_dim < 1 or num_layers < 1 or num_prefix_tokens < 0 or bottleneck < 1:
            raise ValueError(
                f"need embed_dim, num_layers, bottleneck >= 1 and num_prefix_tokens >= 0; got {embed_dim}, "
                f"{num_layers}, {bottleneck}, {num_prefix_tokens}"
            )
        self.embed_dim, self.num_layers, self.num_prefix_tokens = embed_dim, num_layers, num_prefix_tokens
        self.scale = float(scale)
        self.branches = nn.ModuleList(Bottleneck(embed_dim, bottleneck, layer_norm) for _ in range(num_layers))
        self._handles: list[RemovableHandle] = []
        # Input of each block's MLP branch between the pre-hook and the output hook of the same call.
        self._inputs: dict[int, torch.Tensor] = {}

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self, backbone: nn.Module) -> None:
        """Register the two hooks on every block of ``backbone`` (once)."""
        if self.attached:
            raise RuntimeError("this AdaptFormer is already attached to a backbone; build a new one or detach()")
        check_backbone_sizes(self, backbone)
        _, sites = block_layout(backbone, ADAPTFORMER_SITES)
        handles = []
        for layer, block in enumerate(backbone.blocks):
            # functools.partial of bound methods (not closures) so that deepcopy/pickle follow the adapter.
            source, sink = block.get_submodule(sites["input"]), block.get_submodule(sites["output"])
            handles.append(source.register_forward_pre_hook(functools.partial(self._store_input, layer)))
            handles.append(sink.register_forward_hook(functools.partial(self._add_branch, layer)))
        self._handles = handles

    def detach(self) -> None:
        """Remove the hooks: the backbone computes its frozen function again."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._inputs.clear()

    def set_grid(self, grid: tuple[int, int] | None) -> None:
        """Start of a batch: drop inputs left by an interrupted call (e.g. checkpoint recomputation)."""
        self._inputs.clear()

    def _store_input(self, layer: int, module: nn.Module, args: tuple) -> None:
        self._inputs[layer] = args[0]

    def _add_branch(self, layer: int, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x_attn = self._inputs.pop(layer, None)
        if x_attn is None:
            raise RuntimeError(f"AdaptFormer block {layer}: the MLP output came without its input (hook order?)")
        branch = self.branches[layer]
        delta = branch(x_attn.to(branch.down.weight.dtype))  # autocast still picks the matmul dtype
        return output + (self.scale * delta).to(output.dtype)

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}, attached={self.attached}"
