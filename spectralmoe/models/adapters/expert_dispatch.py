"""SpectralMoE's expert work done only for the selected experts, in the experts' rank-r space.

Why this is exact, not an approximation: expert ``e`` of a layer is the low-rank token matrix
``S_e = A_e B_e`` (``A_e`` [T, r], ``B_e`` [r, D], r ≪ D) and its values are
``V_e = token2feat(S_e[1:]) = A_e[1:] C_e + 1 bᵀ`` with ``C_e = B_e Wᵀ`` (``W``, ``b``: the weight
and bias of ``mlp_token2feat``). So for a token ``x`` routed to ``e``:

* token-attention logits: ``dot`` ``x S_eᵀ = (x B_eᵀ) A_eᵀ`` (O(D·r) instead of O(D·T)), and the
  released ``rowsum_outer`` ``(Σ_c x_c)(S_e 1) = (Σ_c x_c) · A_e (B_e 1)`` (O(D));
* output ``a[1:] V_e = (a[1:] A_e[1:]) C_e + (Σ_t a_t) b``: a coordinate vector ``p`` ∈ R^R in the
  basis ``K = [C_1; …; C_E; bᵀ]`` ([R, D], ``R = Σ_e r_e + 1``, 97 for the paper's E=6, r=16).

Any gate-weighted sum of expert outputs keeps its coordinates in that basis, so the fusions run on
``R``-wide coordinates with the Gram matrix ``G = K Kᵀ`` (``Δv Δdᵀ = P_v G P_dᵀ``) and the fused
update returns to width D once, ``Z = P_z K``. What changes against the dense evaluation is only the
order of floating-point operations (tested to fp32 reordering tolerance).

Dispatch (``pair_coordinates``): the (token, slot) pairs are sorted by expert; the per-expert counts
are the one value read back to the host per layer (``SpectralMoE`` reads those of both modalities
together). When the experts share one rank (the paper's setting) every group is padded to the largest
one and ALL experts run in one batched product ([E, n_max, ·] ``bmm``): a fixed, small number of
kernels per layer, whatever E — many small per-expert kernels cost more than their arithmetic on a GPU
(launches) and on a busy CPU (thread fork/join). Mixed ranks run one expert after the other over its
contiguous rows. ``masked_pair_coordinates`` runs every expert on every token instead — no
data-dependent shapes, no host read — which is what runs under ``torch.compile``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LowRankExperts",
    "expert_counts",
    "masked_pair_coordinates",
    "pair_coordinates",
]

#: |values| below which exp() stays a finite, normal fp32 number (exp(±88.7) is the limit): then the
#: released ungated log-sum-exp combine of ONE expert is the identity and its output stays in the basis.
SAFE_EXP_BOUND = 80.0


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    dtype = torch.float32
    for d in dtypes:
        dtype = torch.promote_types(dtype, d)
    return dtype


class LowRankExperts:
    """One layer's experts in factored form: ``A_e``, ``B_e`` and the output basis ``K`` (see module doc).

    Built per forward from the parameters (cheap: one [Σr, D]·[D, D] product), in at least fp32 with
    autocast off, so the small coordinate arithmetic is not rounded to bf16.
    """

    def __init__(self, a_list: Sequence[torch.Tensor], b_list: Sequence[torch.Tensor], token2feat: nn.Linear) -> None:
        weight, bias = token2feat.weight, token2feat.bias
        self.dtype = _compute_dtype(weight.dtype, *(a.dtype for a in a_list))
        self.ranks = [int(a.shape[1]) for a in a_list]
        self.offsets = [sum(self.ranks[:e]) for e in range(len(self.ranks))]
        self.num_experts = len(self.ranks)
        self.embed_dim = int(weight.shape[0])
        with torch.autocast(device_type=weight.device.type, enabled=False):
            self.a = [a.to(self.dtype) for a in a_list]
            self.b = [b.to(self.dtype) for b in b_list]
            c = F.linear(torch.cat(self.b), weight.to(self.dtype))  # [Σr, D]: C_e = B_e Wᵀ, stacked
            b_row = (bias.to(self.dtype) if bias is not None else c.new_zeros(self.embed_dim))[None]
            self.basis = torch.cat([c, b_row])  # K [R, D]
            #: one rank for all experts: stacked factors A [E, T, r], B [E, r, D] for the batched path
            self.uniform = len(set(self.ranks)) == 1
            self.a_stack = torch.stack(self.a) if self.uniform else None
            self.b_stack = torch.stack(self.b) if self.uniform else None
        self.width = int(self.basis.shape[0])  # R

    def c(self, expert: int) -> torch.Tensor:
        start = self.offsets[expert]
        return self.basis[start : start + self.ranks[expert]]

    def max_abs_value(self) -> torch.Tensor:
        """max |V_e[t, c]| over the layer's experts (0-dim, no grad): bounds every expert output."""
        with torch.no_grad(), torch.autocast(device_type=self.basis.device.type, enabled=False):
            bias = self.basis[-1]
            return torch.stack([(a[1:] @ self.c(e) + bias).abs().amax() for e, a in enumerate(self.a)]).amax()

    def gram(self) -> torch.Tensor:
        """G = K Kᵀ [R, R]: inner products of expert outputs from their coordinates."""
        with torch.autocast(device_type=self.basis.device.type, enabled=False):
            return self.basis @ self.basis.t()

    def to_features(self, coords: torch.Tensor) -> torch.Tensor:
        """Coordinates [..., R] → features [..., D] (``coords @ K``; under autocast when it is on)."""
        return coords @ self.basis

    def expert_attention(self, rows: torch.Tensor, expert: int, token_attn: str) -> torch.Tensor:
        """Token attention of ``rows`` [n, D] with expert ``expert``, sink dropped → [n, T−1] (compute dtype)."""
        a = self.a[expert]
        scale = 1.0 / math.sqrt(self.embed_dim)
        if token_attn == "dot":  # x S_eᵀ = (x B_eᵀ) A_eᵀ; the wide product may run under autocast
            projected = rows @ self.b[expert].t().to(rows.dtype)
            with torch.autocast(device_type=rows.device.type, enabled=False):
                logits = (projected.to(self.dtype) @ a.t()) * scale
        elif token_attn == "rowsum_outer":  # released "bc,td->bt": (Σ_c x_c)(Σ_d S_td)
            with torch.autocast(device_type=rows.device.type, enabled=False):
                token_sums = a @ self.b[expert].sum(-1)  # S_e 1 = A_e (B_e 1)  [T]
                logits = rows.to(self.dtype).sum(-1, keepdim=True) * token_sums[None] * scale
        else:
            raise ValueError(f"unknown token_attn {token_attn!r}")
        return logits.softmax(dim=-1)[:, 1:]

    def expert_coordinates(
        self, rows: torch.Tensor, expert: int, token_attn: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(u [n, r_e], c [n, 1]) for ``rows`` [n, D] routed to ``expert``: its output is ``u C_e + c b``."""
        attention = self.expert_attention(rows, expert, token_attn)
        with torch.autocast(device_type=rows.device.type, enabled=False):
            return attention @ self.a[expert][1:], attention.sum(-1, keepdim=True)


    def batched_coordinates(
        self, token_attn: str, projected: torch.Tensor | None = None, sums: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Every expert at once (one rank): coordinates [E, n, R] of expert e's output for its n rows.

        ``dot`` takes ``projected`` = rows·B_eᵀ [E, n, r]; ``rowsum_outer`` takes the rows' channel sums
        ``sums`` [E, n]. Each expert's u lands in its own block of the R columns, c in the last one.
        """
        assert self.a_stack is not None and self.b_stack is not None, "batched path needs one rank"
        device = self.basis.device.type
        scale = 1.0 / math.sqrt(self.embed_dim)
        with torch.autocast(device_type=device, enabled=False):
            if token_attn == "dot":
                assert projected is not None
                logits = torch.bmm(projected.to(self.dtype), self.a_stack.transpose(1, 2)) * scale  # [E, n, T]
            elif token_attn == "rowsum_outer":
                assert sums is not None
                token_sums = torch.bmm(self.a_stack, self.b_stack.sum(-1, keepdim=True))  # S_e 1: [E, T, 1]
                logits = sums.to(self.dtype)[..., None] * token_sums.transpose(1, 2) * scale
            else:
                raise ValueError(f"unknown token_attn {token_attn!r}")
            attention = logits.softmax(dim=-1)[..., 1:]
            u = torch.bmm(attention, self.a_stack[:, 1:])  # [E, n, r]
            num_experts, rows, rank = u.shape
            eye = torch.eye(num_experts, dtype=u.dtype, device=u.device)
            blocks = (u[:, :, None, :] * eye[:, None, :, None]).reshape(num_experts, rows, num_experts * rank)
            return torch.cat([blocks, attention.sum(-1, keepdim=True)], dim=-1)


def expert_counts(indices: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Number of (token, slot) pairs per expert ([E] int64, on the device: reading it syncs)."""
    return torch.bincount(indices.reshape(-1), minlength=num_experts)


class _GatherSlots(torch.autograd.Function):
    """``out = x[rows]`` where each output row serves one (token, slot) pair of M·k (sorted by expert,
    possibly padded: padding rows are never read back). Backward gathers each pair's gradient from its
    row ``pair_row`` and sums a token's k slots: gathers only, instead of autograd's scatter-add into
    zeros (much slower on CPU)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x: torch.Tensor, rows: torch.Tensor, pair_row: torch.Tensor, k: int
    ) -> torch.Tensor:
        ctx.save_for_backward(pair_row)
        ctx.k = k
        return x.index_select(0, rows)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (pair_row,) = ctx.saved_tensors
        pairs = grad.index_select(0, pair_row)
        if ctx.k > 1:
            pairs = pairs.view(-1, ctx.k, *pairs.shape[1:]).sum(1)
        return pairs, None, None, None


class _Permute(torch.autograd.Function):
    """``x[index]`` for a permutation ``index`` (inverse ``inverse``); backward is the inverse gather."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(0, index)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


class _GatherUnique(torch.autograd.Function):
    """``x[index]`` for DISTINCT indices: backward copies the gradient into zeros (no accumulation)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(index)
        ctx.rows = x.shape[0]
        return x.index_select(0, index)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (index,) = ctx.saved_tensors
        return grad.new_zeros(ctx.rows, *grad.shape[1:]).index_copy_(0, index, grad), None


def pair_coordinates(
    x: torch.Tensor, indices: torch.Tensor, experts: LowRankExperts, token_attn: str, counts: Sequence[int]
) -> torch.Tensor:
    """Sparse dispatch: coordinates [M, k, R] of every (token, slot) pair's expert output.

    ``x`` [M, D], ``indices`` [M, k] (selected experts), ``counts`` the host-side per-expert pair
    counts (``expert_counts(indices).tolist()``). Pairs are sorted by expert; with one rank for all
    experts the groups are padded to the largest and run in one batched product, else expert ``e``
    runs once over its ``counts[e]`` contiguous rows.
    """
    num_tokens, k = indices.shape
    if sum(counts) != num_tokens * k or len(counts) != experts.num_experts:
        raise RuntimeError(f"expert counts {list(counts)} do not cover the {num_tokens}×{k} routed pairs")
    if experts.uniform:
        return _padded_pair_coordinates(x, indices, experts, token_attn, counts)
    return _looped_pair_coordinates(x, indices, experts, token_attn, counts)


def _padded_pair_coordinates(
    x: torch.Tensor, indices: torch.Tensor, experts: LowRankExperts, token_attn: str, counts: Sequence[int]
) -> torch.Tensor:
    num_tokens, k = indices.shape
    num_experts, longest = experts.num_experts, max(counts)
    device = indices.device
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)  # sorted slot q → pair p
    sorted_experts = flat.index_select(0, order)
    starts = torch.tensor([sum(counts[:e]) for e in range(num_experts)], device=device)
    within = torch.arange(flat.numel(), device=device) - starts.index_select(0, sorted_experts)
    pair_position = torch.empty_like(order)
    pair_position[order] = sorted_experts * longest + within  # pair p → its row in [E·n_max]
    source = torch.zeros(num_experts * longest, dtype=torch.long, device=device)  # padding rows read row 0
    source[pair_position] = torch.div(torch.arange(flat.numel(), device=device), k, rounding_mode="floor")
    if token_attn == "dot":
        rows = _GatherSlots.apply(x, source, pair_position, k).view(num_experts, longest, -1)
        coords = experts.batched_coordinates(token_attn, projected=torch.bmm(rows, experts.b_stack.transpose(1, 2)
                                                                             .to(rows.dtype)))  # fmt: skip
    else:
        with torch.autocast(device_type=x.device.type, enabled=False):
            sums = x.to(experts.dtype).sum(-1)  # [M]: the rows' channel sums, gathered as scalars
        coords = experts.batched_coordinates(token_attn, sums=sums.index_select(0, source).view(num_experts, longest))
    return _GatherUnique.apply(coords.reshape(num_experts * longest, -1), pair_position).view(num_tokens, k, -1)


def _looped_pair_coordinates(
    x: torch.Tensor, indices: torch.Tensor, experts: LowRankExperts, token_attn: str, counts: Sequence[int]
) -> torch.Tensor:
    num_tokens, k = indices.shape
    width = experts.width
    order = torch.argsort(indices.reshape(-1), stable=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    rows = _GatherSlots.apply(x, torch.div(order, k, rounding_mode="floor"), inverse, k)  # sorted slot q → its token
    blocks: list[torch.Tensor] = []
    start = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue
        u, c = experts.expert_coordinates(rows[start : start + count], expert, token_attn)
        before = experts.offsets[expert]
        blocks.append(torch.cat([F.pad(u, (before, width - 1 - before - experts.ranks[expert])), c], dim=1))
        start += count
    ordered = torch.cat(blocks) if len(blocks) > 1 else blocks[0]
    return _Permute.apply(ordered, inverse, order).view(num_tokens, k, width)


def masked_pair_coordinates(
    x: torch.Tensor, indices: torch.Tensor, experts: LowRankExperts, token_attn: str
) -> torch.Tensor:
    """Same result as ``pair_coordinates`` without a host read: every expert runs on every token and
    each pair keeps its own expert's block (E/k × the rank-space work; fixed shapes for torch.compile)."""
    num_tokens, k = indices.shape
    num_experts = experts.num_experts
    if experts.uniform:
        if token_attn == "dot":  # x [B_1ᵀ … B_Eᵀ] in one product → [E, M, r]
            wide = x @ experts.b_stack.reshape(-1, x.shape[-1]).t().to(x.dtype)
            coords = experts.batched_coordinates(token_attn, projected=wide.view(num_tokens, num_experts, -1)
                                                 .transpose(0, 1))  # fmt: skip
        else:
            with torch.autocast(device_type=x.device.type, enabled=False):
                sums = x.to(experts.dtype).sum(-1)
            coords = experts.batched_coordinates(token_attn, sums=sums[None].expand(num_experts, -1))
        all_u = coords[..., :-1].sum(0)  # [M, Σr]: expert e's block is non-zero in its own columns only
        all_c = coords[..., -1].t()  # [M, E]
    else:
        us, cs = zip(*(experts.expert_coordinates(x, e, token_attn) for e in range(num_experts)))
        all_u = torch.cat(us, dim=1)  # [M, Σr]: expert e's block at its offset
        all_c = torch.cat(cs, dim=1)  # [M, E]
    ranks = torch.tensor(experts.ranks, device=x.device)
    slots = []
    for slot in range(k):
        chosen = F.one_hot(indices[:, slot], num_experts).to(all_u.dtype)  # [M, E]
        block_mask = chosen.repeat_interleave(ranks, dim=1, output_size=experts.width - 1)
        slots.append(torch.cat([all_u * block_mask, (all_c * chosen).sum(1, keepdim=True)], dim=1))
    return torch.stack(slots, dim=1)
