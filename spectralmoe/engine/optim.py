"""Optimiser parameter groups and the learning-rate schedule of the released configs (METHOD §5).

Weight-decay rule
-----------------
The released SpectralMoE configs use mmengine's ``paramwise_cfg`` with ``custom_keys`` (substring
match on the full parameter name) and ``norm_decay_mult=0``; every custom key has ``lr_mult=1``, so
all groups share one learning rate and only the decay differs. Mapped onto OUR module names, a
trainable parameter gets **no weight decay** when (first match wins, the reason is recorded):

=========================================  ===================================================
our parameter                              why (the authors' key / setting)
=========================================  ===================================================
any weight/bias of a normalisation layer   ``norm_decay_mult=0`` (LayerNorm, GroupNorm — e.g.
(LayerNorm, GroupNorm, BatchNorm, …)       the pixel decoder's GN, named ``…adapter_1.1`` here)
name contains ``norm``                     custom key ``"norm"``
``head.…queries_embedder.weight``          ``query_embed`` (Mask2Former's positional queries)
``head.transformer_module.level_embed``    ``level_embed`` (the transformer decoder's one)
``adapter.experts_a.*``, ``experts_b.*``   ``experts_a`` / ``experts_b`` (SpectralMoE)
``adapter.w_gate.*``, ``adapter.w_noise.*``  ``w_gate`` / ``w_noise`` (SpectralMoE routers)
``adapter.scale``                          ``depthmoe.scale`` / Rein's ``reins.scale``
``adapter.tokens.*``, ``high_tokens.*``,   Rein's ``learnable_tokens`` (Rein, DepthForge, SET,
``amp_tokens.*``                           FADA keep Rein's configs, BASELINES.md)
``adapter.prompts``                        VPT prompts: token embeddings like Rein's (our choice,
                                           UNVERIFIED: VPT has no released config for this task)
=========================================  ===================================================

Everything else that trains gets ``weight_decay`` (0.05): SpectralMoE's ``mlp_token2feat``,
``mlp_delta_f``, ``depth_proj``, the query link (``transform``, ``merge``), LoRA's ``lora_A`` /
``lora_B`` (they live inside the backbone), AdaptFormer's ``down``/``up``, the whole head
otherwise, **biases included** (the configs set no ``bias_decay_mult``).

Two names differ from a naive reading of the keys, on purpose, to match what the authors' run did:
Mask2Former's content queries ``queries_features`` are mmseg's ``query_feat``, which the key
``query_embed`` does not match, so they ARE decayed; the pixel decoder's ``level_embed`` is
mmdet's ``level_encoding``, which ``level_embed`` does not match, so it IS decayed too.

Schedule
--------
mmengine ``PolyLR(power=0.9, eta_min=min_lr, end=T)`` evaluated per optimiser step ``t``::

    lr(t) = min_lr + (lr - min_lr) · (1 - min(t, T-1) / (T-1)) ** power

(mmengine's horizon is ``end - begin - 1``, so the last of the ``T`` iterations runs at
``min_lr``). An optional linear warm-up multiplies it by ``ratio + (1 - ratio) · t / W`` for
``t < W`` (mmcv's poly-with-warm-up rule); no released config uses one.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import torch
from torch import nn

__all__ = [
    "FUSED_ADAMW_DEVICES",
    "NO_DECAY_RULES",
    "NORM_LAYERS",
    "PolyWarmupLambda",
    "build_adamw",
    "build_param_groups",
    "build_poly_scheduler",
    "decay_table",
    "no_decay_reason",
    "poly_factor",
]

#: Module types whose parameters never decay (mmengine ``norm_decay_mult=0``).
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())

#: (regular expression searched in the parameter's full name, reason) — the table above.
NO_DECAY_RULES: tuple[tuple[str, str], ...] = (
    (r"norm", "name contains 'norm'"),
    (r"(^|\.)queries_embedder\.", "Mask2Former positional queries (mmseg query_embed)"),
    (r"(^|\.)transformer_module\.level_embed\.", "Mask2Former decoder level_embed"),
    (r"(^|\.)experts_[ab]\.", "SpectralMoE experts"),
    (r"(^|\.)w_(gate|noise)\.", "SpectralMoE gate/noise routers"),
    (r"(^|\.)adapter\.scale$", "adapter scale"),
    (r"(^|\.)adapter\.(tokens|high_tokens|amp_tokens)\.", "Rein-family learnable tokens"),
    (r"(^|\.)adapter\.prompts$", "VPT prompts"),
)
_COMPILED = tuple((re.compile(pattern), reason) for pattern, reason in NO_DECAY_RULES)


def _norm_parameter_names(model: nn.Module) -> set[str]:
    names: set[str] = set()
    for module_name, module in model.named_modules():
        if isinstance(module, NORM_LAYERS):
            prefix = f"{module_name}." if module_name else ""
            names.update(prefix + n for n, _ in module.named_parameters(recurse=False))
    return names


def no_decay_reason(name: str, is_norm_layer: bool = False) -> str | None:
    """Why parameter ``name`` gets no weight decay, or ``None`` when it decays."""
    if is_norm_layer:
        return "normalisation layer"
    for pattern, reason in _COMPILED:
        if pattern.search(name):
            return reason
    return None


def decay_table(model: nn.Module) -> dict[str, str | None]:
    """Every trainable parameter name → the reason it is exempt from decay (``None`` = decayed)."""
    norms = _norm_parameter_names(model)
    return {
        name: no_decay_reason(name, name in norms) for name, p in model.named_parameters() if p.requires_grad
    }


def build_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups ``decay`` / ``no_decay`` over the trainable parameters of ``model`` only.

    Frozen weights (the backbone, the depth model) never enter the optimiser; trainable weights
    living inside the backbone (LoRA) do. Empty groups are left out. Each group carries its
    ``name`` (shown by Lightning's ``LearningRateMonitor``) and the ``param_names`` it holds.
    """
    table = decay_table(model)
    params = dict(model.named_parameters())
    if not table:
        raise ValueError(f"{type(model).__name__} has no trainable parameters to optimise")
    groups: list[dict[str, Any]] = []
    for group_name, decays, wd in (("decay", True, weight_decay), ("no_decay", False, 0.0)):
        names = [n for n, reason in table.items() if (reason is None) == decays]
        if names:
            groups.append(
                {"name": group_name, "params": [params[n] for n in names], "param_names": names, "weight_decay": wd}
            )
    return groups


#: Device types on which torch (≥ 2.4) has a fused (single-kernel) AdamW step.
FUSED_ADAMW_DEVICES = frozenset({"cuda", "cpu", "xpu", "mps"})


def _fused_supported(groups: list[dict[str, Any]]) -> bool:
    params = [p for group in groups for p in group["params"]]
    return bool(params) and all(p.is_floating_point() and p.device.type in FUSED_ADAMW_DEVICES for p in params)


def build_adamw(
    groups: list[dict[str, Any]],
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over ``groups`` (``build_param_groups``), with torch's fused kernel where it exists.

    ``fused=None`` (default) uses the fused step when every parameter is a floating-point tensor on a
    device of ``FUSED_ADAMW_DEVICES`` — one kernel per step instead of a dozen multi-tensor ones, the
    same update up to rounding — and torch's default (multi-tensor) implementation otherwise;
    ``True`` demands it (ValueError when a parameter cannot use it), ``False`` never uses it. Build the
    optimiser after the model is on its device (Lightning calls ``configure_optimizers`` after moving it).
    """
    supported = _fused_supported(groups)
    if fused and not supported:
        devices = sorted({f"{p.device.type}/{p.dtype}" for g in groups for p in g["params"]})
        raise ValueError(f"fused AdamW needs floating-point parameters on {sorted(FUSED_ADAMW_DEVICES)}, got {devices}")
    use_fused = supported if fused is None else bool(fused)
    return torch.optim.AdamW(
        groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, fused=True if use_fused else None
    )


def poly_factor(
    step: int,
    total_steps: int,
    *,
    power: float = 0.9,
    min_ratio: float = 0.0,
    warmup_steps: int = 0,
    warmup_ratio: float = 1e-6,
) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based), see module doc."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    horizon = max(total_steps - 1, 1)
    progress = min(max(step, 0), horizon) / horizon
    factor = min_ratio + (1.0 - min_ratio) * (1.0 - progress) ** power
    if warmup_steps > 0 and step < warmup_steps:
        factor *= warmup_ratio + (1.0 - warmup_ratio) * step / warmup_steps
    return factor


class PolyWarmupLambda:
    """Picklable ``LambdaLR`` multiplier: poly decay to ``min_lr`` with optional linear warm-up.

    ``min_lr`` is absolute, so the ratio is taken against the group's own base learning rate.
    """

    def __init__(
        self,
        total_steps: int,
        base_lr: float,
        *,
        power: float = 0.9,
        min_lr: float = 0.0,
        warmup_steps: int = 0,
        warmup_ratio: float = 1e-6,
    ) -> None:
        if base_lr <= 0:
            raise ValueError(f"learning rate must be > 0, got {base_lr}")
        if not 0.0 <= min_lr <= base_lr:
            raise ValueError(f"min_lr must be in [0, lr={base_lr}], got {min_lr}")
        if warmup_steps < 0 or not 0.0 <= warmup_ratio <= 1.0:
            raise ValueError(f"warm-up needs steps >= 0 and ratio in [0, 1], got {warmup_steps}, {warmup_ratio}")
        self.total_steps = int(total_steps)
        self.power = float(power)
        self.min_ratio = float(min_lr) / float(base_lr)
        self.warmup_steps = int(warmup_steps)
        self.warmup_ratio = float(warmup_ratio)

    def __call__(self, step: int) -> float:
        return poly_factor(
            step,
            self.total_steps,
            power=self.power,
            min_ratio=self.min_ratio,
            warmup_steps=self.warmup_steps,
            warmup_ratio=self.warmup_ratio,
        )


def build_poly_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    *,
    power: float = 0.9,
    min_lr: float = 0.0,
    warmup_steps: int = 0,
    warmup_ratio: float = 1e-6,
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` over every group of ``optimizer`` (each relative to its own initial lr)."""
    lambdas: Iterable[PolyWarmupLambda] = [
        PolyWarmupLambda(
            total_steps, group["lr"], power=power, min_lr=min_lr, warmup_steps=warmup_steps, warmup_ratio=warmup_ratio
        )
        for group in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=list(lambdas))

