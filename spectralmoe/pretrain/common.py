"""What both pretraining loops share: deterministic CPU set-up, batches, augmentation, schedule."""

from __future__ import annotations

import math
from typing import Callable

import torch

__all__ = ["deterministic_cpu", "draw_batch", "flip_rotate", "warmup_cosine", "Logger"]

Logger = Callable[[str], None]


def deterministic_cpu(threads: int = 1) -> None:
    """One thread and deterministic kernels: the committed weights must be reproducible bit for bit
    (a different thread count may sum in another order and change the last bits)."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def draw_batch(count: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """``batch_size`` distinct tile indices (with replacement across batches)."""
    if batch_size > count:
        return torch.randint(count, (batch_size,), generator=generator)
    return torch.randperm(count, generator=generator)[:batch_size]


def flip_rotate(*tensors: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
    """The same random flip + 90° rotation per sample applied to every tensor (``[B, ..., H, W]``):
    nadir views have no preferred orientation."""
    batch = tensors[0].shape[0]
    turns = torch.randint(4, (batch,), generator=generator).tolist()
    flips = torch.randint(2, (batch,), generator=generator).tolist()
    out = [t.clone() for t in tensors]
    for i, (k, flip) in enumerate(zip(turns, flips)):
        for t in out:
            item = torch.rot90(t[i], k, dims=(-2, -1))
            t[i] = item.flip(-1) if flip else item
    return out


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
