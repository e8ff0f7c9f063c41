"""Helpers shared by several test folders."""

import torch


def perturb_trainable(model: torch.nn.Module, seed: int = 99, scale: float = 0.05) -> None:
    """Move every trainable weight off its initial value by seeded noise: zero-initialised routers and
    up-projections would otherwise make a tiny model route every token to expert 0 and add nothing."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator) * scale)
