"""Adapters: SpectralMoE and the baseline methods of the paper, one file each, chosen by name."""

from __future__ import annotations

from spectralmoe.models.adapters.adaptformer import AdaptFormer
from spectralmoe.models.adapters.base import Adapter
from spectralmoe.models.adapters.depthforge import DepthForge
from spectralmoe.models.adapters.fada import FADA
from spectralmoe.models.adapters.lora import LoRA
from spectralmoe.models.adapters.rein import Rein
from spectralmoe.models.adapters.set import SET
from spectralmoe.models.adapters.spectralmoe import SpectralMoE
from spectralmoe.models.adapters.vpt import VPT


class Freeze(Adapter):
    """The "Freeze" baseline: no adapter, frozen backbone + a trained head (0 adapter parameters)."""


ADAPTERS: dict[str, type[Adapter]] = {
    "freeze": Freeze,
    "lora": LoRA,
    "adaptformer": AdaptFormer,
    "vpt": VPT,
    "spectralmoe": SpectralMoE,
    "rein": Rein,
    "depthforge": DepthForge,
    "set": SET,
    "fada": FADA,
}

#: Methods whose forward consumes per-layer depth tokens (when their ``use_depth`` is left on).
DEPTH_ADAPTERS = frozenset({"spectralmoe", "depthforge"})


def adapter_uses_depth(name: str, **kwargs: object) -> bool:
    """Whether method ``name`` with these options needs the depth encoder."""
    return name in DEPTH_ADAPTERS and bool(kwargs.get("use_depth", True))


def build_adapter(
    name: str,
    *,
    embed_dim: int,
    num_layers: int,
    num_prefix_tokens: int,
    depth_dim: int | None = None,
    **kwargs: object,
) -> Adapter:
    """Build adapter ``name`` for a backbone of width ``embed_dim`` and ``num_layers`` blocks."""
    try:
        cls = ADAPTERS[name]
    except KeyError:
        raise KeyError(f"unknown adapter {name!r}; available: {', '.join(sorted(ADAPTERS))}") from None
    if cls is Freeze:
        if kwargs:
            raise TypeError(f"the freeze baseline takes no options, got {sorted(kwargs)}")
        return Freeze()
    if adapter_uses_depth(name, **kwargs) and depth_dim is not None and depth_dim != embed_dim:
        kwargs["depth_dim"] = depth_dim
    return cls(embed_dim=embed_dim, num_layers=num_layers, num_prefix_tokens=num_prefix_tokens, **kwargs)


__all__ = ["ADAPTERS", "Adapter", "Freeze", "build_adapter", "adapter_uses_depth"]
