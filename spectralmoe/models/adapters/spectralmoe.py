"""SpectralMoE: a dual-gated mixture of low-rank token experts (METHOD.md §1, DESIGN.md §5).

After every frozen block ``l`` the adapter refines the patch tokens ``f`` ([B, N, D]):

    Δv = MoE_l(f; router_vis)          Δd = MoE_l(d; router_depth)     (experts shared)
    Z  = fuse(Δv, Δd)
    f' = f + scale · mlp_delta_f(Z + f)

Each expert ``e`` of layer ``l`` is a low-rank token matrix ``S = A·B`` ([T, D]) used in a
Rein-style token attention. Routing is a Shazeer-style noisy top-k gate per modality whose
balance loss (cv² of importance and load) is returned per layer.

Two variants share this module (the underlying choices are exposed as switches too):

============  ================  ====================  =============
variant       ``token_attn``    ``combine``           ``fusion``
============  ================  ====================  =============
``paper``     ``dot``           ``gate_weighted``     ``xattn``
``official``  ``rowsum_outer``  ``ungated_logsumexp`` ``code_diag``
============  ================  ====================  =============

``official`` reproduces the authors' released module including its quirks (METHOD §1.5–1.7,
§7 rows 1–4) so that their checkpoints (``load_official_state_dict``) give their numbers.

How the experts are evaluated (``dispatch``; same outputs, gradients and balance loss up to fp32
reordering, tested): ``"sparse"`` (default) sorts the routed tokens by expert, runs each selected
expert once over its rows in the experts' rank-r space and fuses on the R = Σr+1 coordinates of the
expert outputs (``expert_dispatch``); one host read per layer (the per-expert counts). Under
``torch.compile`` it switches to ``"masked"``: the same rank-space work for every expert (no
data-dependent shapes, no host read). ``"dense"`` is the plain evaluation at width D for every expert
(E/k× the token-attention work), kept as the reference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from spectralmoe.errors import InputError, check_int, check_number

from .base import Adapter
from .common import QueryLink, join_prefix, split_prefix
from .expert_dispatch import (
    SAFE_EXP_BOUND,
    LowRankExperts,
    expert_counts,
    masked_pair_coordinates,
    pair_coordinates,
)

__all__ = [
    "SpectralMoE",
    "Routing",
    "coordinate_fusion",
    "cv_squared",
    "diagonal_cross_attention",
    "mixture_of_token_experts",
    "noisy_top_k_routing",
]

VARIANT_DEFAULTS: dict[str, dict[str, str]] = {
    "paper": {"token_attn": "dot", "combine": "gate_weighted", "fusion": "xattn"},
    "official": {"token_attn": "rowsum_outer", "combine": "ungated_logsumexp", "fusion": "code_diag"},
}
GATINGS = ("softmax", "laplace", "gaussian")
TOKEN_ATTNS = ("dot", "rowsum_outer")
COMBINES = ("gate_weighted", "ungated_logsumexp")
FUSIONS = ("xattn", "code_diag", "add", "none")
DISPATCHES = ("sparse", "masked", "dense")

#: Value the released code writes into exact zeros before the log of the combine (float64 eps).
_COMBINE_EPS = float(torch.finfo(torch.float64).eps)
#: Prefix of the adapter's keys inside the authors' full mmseg checkpoints.
OFFICIAL_PREFIX = "backbone.depthmoe."


# ---------------------------------------------------------------------------------------------
# Routing
# ---------------------------------------------------------------------------------------------


@dataclass
class Routing:
    """Result of routing ``M`` tokens to ``E`` experts."""

    gates: torch.Tensor  #: [M, E] dense gate values, zero for unselected experts
    indices: torch.Tensor  #: [M, k] selected experts, best first
    importance: torch.Tensor  #: [E] Σ_i gates_ie
    load: torch.Tensor  #: [E] (smooth estimate in noisy training, else hard counts)


def cv_squared(x: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation with the UNBIASED variance (METHOD §1.4); 0 for one entry."""
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    if x.numel() <= 1:
        return x.new_zeros(())
    return x.var() / (x.mean() ** 2 + 1e-10)


def _at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _clean_logits(x: torch.Tensor, w_gate: torch.Tensor, gating: str) -> torch.Tensor:
    """Router logits H [M, E] (METHOD §1.3): linear, −L2 distance, or −squared L2 distance."""
    if gating == "softmax":
        return x @ w_gate
    distance = torch.cdist(x, w_gate.t())
    return -distance if gating == "laplace" else -distance.pow(2)


def noisy_top_k_routing(
    x: torch.Tensor,
    w_gate: torch.Tensor,
    w_noise: torch.Tensor | None,
    top_k: int,
    gating: str = "laplace",
    noisy: bool = False,
    noise_epsilon: float = 1e-2,
    noise: torch.Tensor | None = None,
) -> Routing:
    """Noisy top-k gate of Shazeer et al. 2017 as in the released code (METHOD §1.3).

    ``x`` [M, D] (tokens of all images pooled), ``w_gate``/``w_noise`` [D, E]. ``noisy`` is
    the caller's "noisy_gating and training". ``noise`` (standard normal, [M, E]) can be
    given to make the noisy path reproducible in tests. Computed in (at least) fp32 with
    autocast off: the routing decision and the normal-CDF load estimate are
    precision-sensitive and cheap.
    """
    dtype = _at_least_fp32(x.dtype)
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.to(dtype)
        clean = _clean_logits(x, w_gate.to(dtype), gating)
        num_experts = clean.shape[1]
        if noisy:
            if w_noise is None:
                raise ValueError("noisy routing needs w_noise")
            sigma = F.softplus(x @ w_noise.to(dtype)) + noise_epsilon
            if noise is None:
                noise = torch.randn_like(clean)
            logits = clean + noise.to(clean) * sigma
        else:
            logits = clean
        top_values, top_indices = logits.topk(min(top_k + 1, num_experts), dim=1)
        indices = top_indices[:, :top_k]
        # softmax over the k selected logits (= exp(l − logsumexp l), METHOD §1.3)
        top_gates = top_values[:, :top_k].softmax(dim=1)
        gates = torch.zeros_like(logits).scatter(1, indices, top_gates)
        if noisy and top_k < num_experts:
            # Smooth load: P(expert e stays in the top k under a fresh draw of its own noise).
            threshold_in = top_values[:, top_k : top_k + 1]  # (k+1)-th largest noisy logit
            threshold_out = top_values[:, top_k - 1 : top_k]  # k-th largest noisy logit
            is_in = logits > threshold_in
            prob_in = torch.special.ndtr((clean - threshold_in) / sigma)
            prob_out = torch.special.ndtr((clean - threshold_out) / sigma)
            load = torch.where(is_in, prob_in, prob_out).sum(0)
        else:
            load = (gates > 0).sum(0).to(gates.dtype)
        importance = gates.sum(0)
    return Routing(gates=gates, indices=indices, importance=importance, load=load)


# ---------------------------------------------------------------------------------------------
# Expert mixture and fusion
# ---------------------------------------------------------------------------------------------


def mixture_of_token_experts(
    x: torch.Tensor,
    routing: Routing,
    expert_tokens: torch.Tensor,
    expert_values: torch.Tensor,
    token_attn: str,
    combine: str,
) -> torch.Tensor:
    """Refinement of ``x`` [M, D] by the routed experts (METHOD §1.5–1.6) → [M, D].

    ``expert_tokens`` S [E, T, D]; ``expert_values`` = token2feat(S[:, 1:]) [E, T−1, D].

    Vectorisation: the token attention of ALL experts is computed densely for every token
    ([M, E, T], two GEMMs of width E·T) and unselected experts are masked by zero weights,
    instead of dispatching token subsets per expert. For E=6, T=100, D=1024 and M=2048 this is
    ~1.2 GFLOP per GEMM (E/k× the sparse work) but needs no ``nonzero``/host sync, no
    per-expert kernel launches, and only O(M·E·T) extra memory (a per-token gather of the
    selected experts' [T, D] matrices would need O(M·T·D), ~800 MB). The value GEMM folds
    the gate weights (or the one-hot selection) in, so no [M, E, D] tensor is formed.
    """
    num_tokens, dim = x.shape
    num_experts, length, _ = expert_tokens.shape
    scale = 1.0 / math.sqrt(dim)
    if token_attn == "dot":  # Rein / intended: x·Sᵀ
        logits = (x @ expert_tokens.reshape(num_experts * length, dim).t()).view(num_tokens, num_experts, length)
        logits = logits * scale
    elif token_attn == "rowsum_outer":  # released "bc,td->bt": (Σ_c x_c)(Σ_d S_td)
        logits = x.sum(-1)[:, None, None] * expert_tokens.sum(-1)[None] * scale
    else:
        raise ValueError(f"unknown token_attn {token_attn!r}")
    attention = logits.softmax(dim=-1)[..., 1:]  # token 0 is a sink (softmax over all T)
    values = expert_values.reshape(num_experts * (length - 1), dim)

    if combine == "gate_weighted":
        weights = attention * routing.gates[..., None].to(attention.dtype)
        return weights.reshape(num_tokens, -1) @ values
    if combine != "ungated_logsumexp":
        raise ValueError(f"unknown combine {combine!r}")
    # Released combine: y = log Σ_{e selected, gate>0} exp(out_e), exact zeros → eps; gates unused.
    total = None
    for slot in range(routing.indices.shape[1]):  # k slots (k ≤ E), not tokens
        expert = routing.indices[:, slot]
        active = routing.gates.gather(1, expert[:, None]) > 0  # the code dispatches only gate > 0
        select = F.one_hot(expert, num_experts).to(attention.dtype) * active
        out = (attention * select[..., None]).reshape(num_tokens, -1) @ values
        term = torch.where(active, out.exp(), torch.zeros((), dtype=out.dtype, device=out.device))
        total = term if total is None else total + term
    total = torch.where(total == 0, torch.full((), _COMBINE_EPS, dtype=total.dtype, device=total.device), total)
    return total.log()


class _RowLogSumExp(torch.autograd.Function):
    """lse_n = logsumexp_m(q_n·k_m·scale) → [B, N], computed in row chunks in forward AND backward.

    Only q, k and lse are saved, so no [B, N, M] tensor is kept for backward (autograd's own
    logsumexp would save the full logit matrix); each chunk's probabilities are recomputed in
    backward: ∂lse_n/∂q_n = scale·Σ_m A_nm k_m,  ∂lse_n/∂k_m = scale·A_nm q_n.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, q: torch.Tensor, k: torch.Tensor, scale: float, chunk: int
    ) -> torch.Tensor:
        kt = k.transpose(1, 2)
        rows = range(0, q.shape[1], chunk)
        lse = torch.cat([torch.logsumexp((q[:, s : s + chunk] * scale) @ kt, dim=-1) for s in rows], 1)
        ctx.save_for_backward(q, k, lse)
        ctx.scale, ctx.chunk = scale, chunk
        return lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        q, k, lse = ctx.saved_tensors
        scale, chunk = ctx.scale, ctx.chunk
        grad_q, grad_k = torch.empty_like(q), torch.zeros_like(k)
        kt = k.transpose(1, 2)
        with torch.autocast(device_type=q.device.type, enabled=False):
            for s in range(0, q.shape[1], chunk):
                qc = q[:, s : s + chunk]
                # probabilities, then weighted by the incoming gradient, in place: [B, c, M]
                weighted = torch.baddbmm(lse[:, s : s + chunk, None], qc * scale, kt, beta=-1.0).exp_()
                weighted.mul_(grad[:, s : s + chunk, None] * scale)
                grad_q[:, s : s + chunk] = weighted @ k
                grad_k.baddbmm_(weighted.transpose(1, 2), qc)
        return grad_q, grad_k, None, None


def diagonal_cross_attention(
    query: torch.Tensor, value: torch.Tensor, max_elements: int = 1 << 24
) -> torch.Tensor:
    """Released fusion (METHOD §1.7): A = softmax_m(q vᵀ/√D), Z_n = A_nn · v_n.

    ``query`` = Δd, ``value`` = Δv (also the key), both [B, N, D]. Only the diagonal
    A_nn = exp(l_nn − logsumexp_m l_nm) is needed; the row logsumexp is computed in chunks of
    ≤ ``max_elements`` logits (``_RowLogSumExp``), forward and backward, so the N×N matrix is
    never materialised whole nor kept for backward. At least fp32, autocast off.
    """
    out_dtype = torch.promote_types(query.dtype, value.dtype)
    dtype = _at_least_fp32(out_dtype)
    with torch.autocast(device_type=query.device.type, enabled=False):
        q, v = query.to(dtype), value.to(dtype)
        scale = 1.0 / math.sqrt(q.shape[-1])
        diagonal = (q * v).sum(-1) * scale
        chunk = max(1, max_elements // max(1, q.shape[0] * v.shape[1]))
        weight = (diagonal - _RowLogSumExp.apply(q, v, scale, chunk)).exp()
        return (weight[..., None] * v).to(out_dtype)


def _padded_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    extra = (-x.shape[-1]) % multiple
    return F.pad(x, (0, extra)) if extra else x


def coordinate_fusion(
    visual: torch.Tensor,
    depth: torch.Tensor | None,
    gram: torch.Tensor,
    fusion: str,
    embed_dim: int,
    max_elements: int = 1 << 24,
) -> torch.Tensor:
    """``_fuse`` on coordinates: Δv = P_v K, Δd = P_d K ([B, N, R]) with G = K Kᵀ → Z's coordinates.

    Every logit ``Δa·Δb`` is ``P_a G P_bᵀ``, so: ``xattn`` is ``scaled_dot_product_attention`` with
    queries ``P_v G``, keys = values = ``P_d`` and scale 1/√D (the width-D scale; widths zero-padded to
    a multiple of 8 for the fused kernels); ``code_diag`` is the released diagonal form with depth
    queries ``P_d G`` and visual keys ``P_v``. Computed in at least fp32 with autocast off (it is
    R/D of the width-D work).
    """
    if depth is None or fusion == "none":
        return visual
    if fusion == "add":
        return visual + depth
    scale = 1.0 / math.sqrt(embed_dim)
    with torch.autocast(device_type=visual.device.type, enabled=False):
        if fusion == "xattn":  # visual queries, depth keys/values
            query, key = _padded_to(visual @ gram, 8), _padded_to(depth, 8)
            return visual + F.scaled_dot_product_attention(query, key, key, scale=scale)[..., : visual.shape[-1]]
        if fusion == "code_diag":  # depth queries, visual keys/values, diagonal only
            query = depth @ gram
            diagonal = (query * visual).sum(-1) * scale
            chunk = max(1, max_elements // max(1, query.shape[0] * visual.shape[1]))
            weight = (diagonal - _RowLogSumExp.apply(query, visual, scale, chunk)).exp()
            return weight[..., None] * visual
    raise ValueError(f"unknown fusion {fusion!r}")


# ---------------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------------


class SpectralMoE(Adapter):
    """SpectralMoE adapter holding all ``num_layers`` layers (METHOD §1).

    Args (beyond the METHOD notation):
        num_prefix_tokens: prefix tokens (cls + registers) that pass through untouched.
        variant: ``"paper"`` or ``"official"``; picks the defaults of ``token_attn``,
            ``combine`` and ``fusion`` (see module docstring).
        gates: ``"dual"`` (one router per modality and layer, as published) or ``"shared"``
            (one router per layer routes both modalities; w/o-dual-gating ablation; its balance
            loss is still the 4 cv² terms, computed on both inputs with the shared router).
        use_depth: False drops the depth branch (w/o-depth ablation): Z = Δv, no depth router,
            ``depth_tokens`` ignored, ``fusion`` must be ``"none"`` (its default then).
        fusion: ``"xattn"`` Z = Δv + softmax(Δv Δdᵀ/√D) Δd (scaled_dot_product_attention, per
            image), ``"code_diag"`` the released diagonal form, ``"add"`` Z = Δv + Δd,
            ``"none"`` Z = Δv.
        balance_coef: factor of the per-layer balance loss (released code: 1e3).
        depth_dim: width of the depth tokens when it differs from ``embed_dim`` (e.g. SAM-H
            1280 with a 1024-wide depth model): a trainable Linear(depth_dim → embed_dim),
            ``depth_proj``, maps depth tokens first; it is counted in the parameters. Not part
            of the released module (so an official checkpoint cannot fill it).
        rank: int or one int per expert.
        token_attn / combine: see module docstring; ``None`` = variant default.
        noise_epsilon: floor of the router noise std.
        record_routing: store the visual router's top-1 expert per patch token of every
            forward in ``last_routing[layer]`` (LongTensor [B, N], detached).
        dispatch: how the experts are evaluated, ``"sparse"`` (default), ``"masked"`` or ``"dense"``
            (module docstring); a speed choice only — results agree to fp32 reordering.

    Parameters exist only where they are used: with ``num_experts=1`` there are no routers
    (all tokens use the single expert, balance loss exactly 0); without ``noisy_gating``
    there is no ``w_noise``; with ``use_depth=False`` or ``gates="shared"`` one router per
    layer. The default configuration has exactly the released parameter set (METHOD §6).

    ``forward`` returns the PER-LAYER balance loss; averaging it over the adapted layers
    (as the released code does) is the segmentor's job.
    """

    def __init__(
        self,
        embed_dim: int,
        num_layers: int,
        num_experts: int = 6,
        rank: int | Sequence[int] = 16,
        token_length: int = 100,
        top_k: int = 1,
        gating: str = "laplace",
        noisy_gating: bool = True,
        query_dim: int = 256,
        num_prefix_tokens: int = 5,
        variant: str = "paper",
        gates: str = "dual",
        use_depth: bool = True,
        fusion: str | None = None,
        balance_coef: float = 1e3,
        depth_dim: int | None = None,
        scale_init: float = 1e-3,
        *,
        token_attn: str | None = None,
        combine: str | None = None,
        noise_epsilon: float = 1e-2,
        record_routing: bool = False,
        dispatch: str = "sparse",
    ) -> None:
        super().__init__()
        where = "SpectralMoE"
        embed_dim = check_int("embed_dim", embed_dim, minimum=1, where=where)
        num_layers = check_int("num_layers", num_layers, minimum=1, where=where)
        num_experts = check_int("num_experts", num_experts, minimum=1, where=where)
        token_length = check_int("token_length", token_length, minimum=2, where=where)
        top_k = check_int("top_k", top_k, minimum=1, where=where)
        query_dim = check_int("query_dim", query_dim, minimum=1, where=where)
        num_prefix_tokens = check_int("num_prefix_tokens", num_prefix_tokens, minimum=0, where=where)
        if depth_dim is not None:
            depth_dim = check_int("depth_dim", depth_dim, minimum=1, where=where)
        balance_coef = check_number("balance_coef", balance_coef, minimum=0.0, where=where)
        scale_init = check_number("scale_init", scale_init, where=where)
        noise_epsilon = check_number("noise_epsilon", noise_epsilon, positive=True, where=where)
        for name, flag in (("noisy_gating", noisy_gating), ("use_depth", use_depth), ("record_routing", record_routing)):
            if not isinstance(flag, bool):
                raise InputError(f"{where}: {name} must be true or false, got {flag!r}")
        if not isinstance(rank, (int, float)) or isinstance(rank, bool):
            if isinstance(rank, str) or not isinstance(rank, Sequence):
                raise InputError(f"{where}: rank must be a positive int or one positive int per expert, got {rank!r}")
            rank = [check_int("rank", r, minimum=1, where=where) for r in rank]
        else:
            rank = check_int("rank", rank, minimum=1, where=where)
        if variant not in VARIANT_DEFAULTS:
            raise ValueError(f"variant must be one of {sorted(VARIANT_DEFAULTS)}, got {variant!r}")
        defaults = VARIANT_DEFAULTS[variant]
        token_attn = defaults["token_attn"] if token_attn is None else token_attn
        combine = defaults["combine"] if combine is None else combine
        if fusion is None:
            fusion = defaults["fusion"] if use_depth else "none"
        for name, value, allowed in (
            ("gating", gating, GATINGS),
            ("token_attn", token_attn, TOKEN_ATTNS),
            ("combine", combine, COMBINES),
            ("fusion", fusion, FUSIONS),
            ("gates", gates, ("dual", "shared")),
            ("dispatch", dispatch, DISPATCHES),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if not use_depth and fusion != "none":
            raise ValueError(f"fusion={fusion!r} needs the depth branch; use fusion='none' with use_depth=False")
        if num_experts < 1 or not 1 <= top_k <= num_experts:
            raise ValueError(f"need num_experts ≥ 1 and 1 ≤ top_k ≤ num_experts, got E={num_experts}, k={top_k}")
        if token_length < 2:
            raise ValueError("token_length must be ≥ 2 (token 0 is the attention sink)")
        ranks = [int(rank)] * num_experts if isinstance(rank, int) else [int(r) for r in rank]
        if len(ranks) != num_experts or min(ranks) < 1:
            raise ValueError(f"rank must be a positive int or {num_experts} positive ints, got {rank!r}")

        self.embed_dim, self.num_layers, self.num_experts = embed_dim, num_layers, num_experts
        self.ranks, self.token_length, self.top_k = ranks, token_length, top_k
        self.gating, self.noisy_gating, self.noise_epsilon = gating, noisy_gating, noise_epsilon
        self.query_dim, self.num_prefix_tokens, self.variant = query_dim, num_prefix_tokens, variant
        self.gates, self.use_depth, self.fusion = gates, use_depth, fusion
        self.token_attn, self.combine = token_attn, combine
        self.balance_coef = float(balance_coef)
        self.depth_dim = embed_dim if depth_dim is None else depth_dim
        self.record_routing = record_routing
        self.dispatch = dispatch
        self.last_routing: dict[int, torch.Tensor] = {}

        # Experts: A [T, r_e] Kaiming-uniform(a=√5), B [r_e, D] zeros → S = A·B = 0 at init.
        self.experts_a = nn.ModuleList(
            nn.ParameterList(nn.Parameter(torch.empty(token_length, r)) for r in ranks) for _ in range(num_layers)
        )
        self.experts_b = nn.ModuleList(
            nn.ParameterList(nn.Parameter(torch.zeros(r, embed_dim)) for r in ranks) for _ in range(num_layers)
        )
        for layer_a in self.experts_a:
            for a in layer_a:
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        # Routers (zeros): index 0 = visual, 1 = depth (dual gates with depth only).
        self.num_routers = 2 if (use_depth and gates == "dual") else 1
        if num_experts > 1:
            self.w_gate = nn.ModuleList(self._router_params() for _ in range(num_layers))
            self.w_noise = nn.ModuleList(self._router_params() for _ in range(num_layers)) if noisy_gating else None
        else:
            self.w_gate = self.w_noise = None
        self.scale = nn.Parameter(torch.tensor(float(scale_init)))
        self.mlp_token2feat = nn.Linear(embed_dim, embed_dim)
        self.mlp_delta_f = nn.Linear(embed_dim, embed_dim)
        self.depth_proj = nn.Linear(self.depth_dim, embed_dim) if (use_depth and self.depth_dim != embed_dim) else None
        self.query_link = QueryLink(embed_dim, query_dim)

    def _router_params(self) -> nn.ParameterList:
        return nn.ParameterList(
            nn.Parameter(torch.zeros(self.embed_dim, self.num_experts)) for _ in range(self.num_routers)
        )

    @property
    def needs_depth(self) -> bool:  # type: ignore[override]
        return self.use_depth

    # -- pieces ------------------------------------------------------------------------------

    def expert_tokens(self, layer: int) -> torch.Tensor:
        """Token matrices S = A·B of the layer's experts → [E, T, D]."""
        a_list, b_list = self.experts_a[layer], self.experts_b[layer]
        if len(set(self.ranks)) == 1:
            return torch.bmm(torch.stack(list(a_list)), torch.stack(list(b_list)))
        return torch.stack([a @ b for a, b in zip(a_list, b_list)])

    def _route(self, x: torch.Tensor, layer: int, router: int) -> Routing:
        if self.w_gate is None:  # single expert: no routing, nothing to balance
            ones = x.new_ones(x.shape[0], 1, dtype=torch.float32)
            zeros_idx = torch.zeros(x.shape[0], 1, dtype=torch.long, device=x.device)
            count = ones.sum(0)
            return Routing(gates=ones, indices=zeros_idx, importance=count, load=count)
        noisy = self.noisy_gating and self.training
        w_noise = self.w_noise[layer][router] if self.w_noise is not None else None
        return noisy_top_k_routing(
            x, self.w_gate[layer][router], w_noise, self.top_k, self.gating, noisy, self.noise_epsilon
        )

    def _branch(
        self, x: torch.Tensor, layer: int, router: int, tokens: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, Routing]:
        batch, num, dim = x.shape
        flat = x.reshape(batch * num, dim)
        routing = self._route(flat, layer, router)
        delta = mixture_of_token_experts(flat, routing, tokens, values, self.token_attn, self.combine)
        return delta.view(batch, num, dim), routing

    def _fuse(self, dv: torch.Tensor, dd: torch.Tensor | None) -> torch.Tensor:
        if dd is None or self.fusion == "none":
            return dv
        if self.fusion == "add":
            return dv + dd
        if self.fusion == "xattn":  # visual queries, depth keys/values, no projections, per image
            return dv + F.scaled_dot_product_attention(dv, dd, dd)
        return diagonal_cross_attention(dd, dv)  # code_diag: depth queries, visual keys/values

    def _check_depth(self, depth_tokens: torch.Tensor | None, patches: torch.Tensor) -> torch.Tensor:
        if depth_tokens is None:
            raise ValueError("SpectralMoE(use_depth=True) needs depth_tokens [B, N, D_depth]")
        if depth_tokens.ndim != 3:
            raise ValueError(f"depth_tokens must be [B, N, D_depth], got shape {tuple(depth_tokens.shape)}")
        batch, num, _ = patches.shape
        if depth_tokens.shape[0] != batch or depth_tokens.shape[1] != num:
            raise ValueError(
                f"depth tokens {tuple(depth_tokens.shape)} do not match the {batch}×{num} visual patch tokens "
                "(pass patch tokens only, resampled to the visual grid)"
            )
        if depth_tokens.shape[2] != self.depth_dim:
            raise ValueError(f"depth tokens have width {depth_tokens.shape[2]}, expected depth_dim={self.depth_dim}")
        return depth_tokens

    # -- Adapter contract ----------------------------------------------------------------------

    def forward(
        self, tokens: torch.Tensor, layer: int, depth_tokens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Refine ``tokens`` [B, P+N, D] after block ``layer``; return them and the layer's balance loss."""
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer {layer} out of range for {self.num_layers} adapted layers")
        prefix, f = split_prefix(tokens, self.num_prefix_tokens)
        if f.shape[-1] != self.embed_dim:
            raise ValueError(f"tokens have width {f.shape[-1]}, expected embed_dim={self.embed_dim}")
        depth = self._check_depth(depth_tokens, f) if self.use_depth else None
        if depth is not None and self.depth_proj is not None:
            depth = self.depth_proj(depth)

        dispatch = self.dispatch
        if dispatch == "sparse" and torch.compiler.is_compiling():
            dispatch = "masked"  # no host read, no data-dependent shapes inside a compiled graph
        if dispatch == "dense":
            z, terms = self._dense_update(f, depth, layer)
        else:
            z, terms = self._low_rank_update(f, depth, layer, sparse=dispatch == "sparse")
        refined = f + self.scale * self.mlp_delta_f(z + f)
        aux = self.balance_coef * torch.stack(terms).sum()
        return join_prefix(prefix, refined.to(tokens.dtype)), aux

    def _record(self, layer: int, routing: Routing, patches: torch.Tensor) -> None:
        if self.record_routing:
            self.last_routing[layer] = routing.indices[:, 0].detach().view(patches.shape[0], patches.shape[1])

    def _dense_update(
        self, f: torch.Tensor, depth: torch.Tensor | None, layer: int
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Z and the balance terms, every expert evaluated at width D for every token (``dispatch="dense"``)."""
        expert_tokens = self.expert_tokens(layer)
        expert_values = self.mlp_token2feat(expert_tokens[:, 1:])  # shared by both modalities
        dv, routing_v = self._branch(f, layer, 0, expert_tokens, expert_values)
        terms = [cv_squared(routing_v.importance), cv_squared(routing_v.load)]
        self._record(layer, routing_v, f)
        dd = None
        if depth is not None:
            dd, routing_d = self._branch(depth, layer, self.num_routers - 1, expert_tokens, expert_values)
            terms += [cv_squared(routing_d.importance), cv_squared(routing_d.load)]
        return self._fuse(dv, dd), terms

    def _low_rank_update(
        self, f: torch.Tensor, depth: torch.Tensor | None, layer: int, sparse: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Z and the balance terms with the selected experts only, in their rank space (``expert_dispatch``)."""
        batch, num, dim = f.shape
        experts = LowRankExperts(self.experts_a[layer], self.experts_b[layer], self.mlp_token2feat)
        inputs = [f.reshape(batch * num, dim)]
        routers = [0]
        if depth is not None:
            inputs.append(depth.reshape(batch * num, dim))
            routers.append(self.num_routers - 1)
        routings = [self._route(x, layer, router) for x, router in zip(inputs, routers)]
        self._record(layer, routings[0], f)
        terms = [term for r in routings for term in (cv_squared(r.importance), cv_squared(r.load))]

        # The released ungated log-sum-exp of ONE expert is log(exp(y)) = y while exp() can neither
        # overflow nor underflow, which |y| ≤ max|V| < SAFE_EXP_BOUND guarantees: the output stays a
        # combination of the basis. Otherwise (k > 1, or huge values) it is evaluated at width D.
        identity_combine = self.combine == "ungated_logsumexp" and self.top_k == 1
        in_span = self.combine == "gate_weighted"
        if sparse:
            reads = [expert_counts(r.indices, self.num_experts) for r in routings]
            if identity_combine:
                reads.append((experts.max_abs_value() < SAFE_EXP_BOUND).long().view(1))
            host = torch.cat(reads).tolist()  # the layer's one host read
            counts = [host[i * self.num_experts : (i + 1) * self.num_experts] for i in range(len(routings))]
            in_span = in_span or (identity_combine and bool(host[-1]))
            coords = [
                pair_coordinates(x, r.indices, experts, self.token_attn, c) for x, r, c in zip(inputs, routings, counts)
            ]
        else:
            coords = [masked_pair_coordinates(x, r.indices, experts, self.token_attn) for x, r in zip(inputs, routings)]

        outputs = [self._combine_pairs(c, r, experts, in_span) for c, r in zip(coords, routings)]
        if in_span:  # fuse on coordinates, back to width D once
            visual = outputs[0].view(batch, num, -1)
            depth_coords = outputs[1].view(batch, num, -1) if len(outputs) > 1 else None
            fused = coordinate_fusion(visual, depth_coords, experts.gram(), self.fusion, dim)
            return experts.to_features(fused), terms
        dv = outputs[0].view(batch, num, dim)
        dd = outputs[1].view(batch, num, dim) if len(outputs) > 1 else None
        return self._fuse(dv, dd), terms

    def _combine_pairs(
        self, coords: torch.Tensor, routing: Routing, experts: LowRankExperts, in_span: bool
    ) -> torch.Tensor:
        """Per-pair coordinates [M, k, R] → the token's coordinates [M, R] (``in_span``) or features [M, D]."""
        selected_gates = routing.gates.gather(1, routing.indices)  # [M, k]
        if self.combine == "gate_weighted":
            return (coords * selected_gates[..., None].to(coords.dtype)).sum(1)
        if in_span:  # ungated, k = 1, no over/underflow: log(exp(y)) = y
            return coords[:, 0]
        # Released combine at width D: log Σ_{selected, gate > 0} exp(out), exact zeros → eps.
        out = experts.to_features(coords)
        zero = torch.zeros((), dtype=out.dtype, device=out.device)
        total = torch.where(selected_gates[..., None] > 0, out.exp(), zero).sum(1)
        total = torch.where(total == 0, torch.full((), _COMBINE_EPS, dtype=total.dtype, device=total.device), total)
        return total.log()

    def queries(self) -> torch.Tensor:
        """Query embeddings [T, Q] from the per-layer mean expert token matrices (METHOD §1.8)."""
        mean_tokens = torch.stack([self.expert_tokens(layer).mean(0) for layer in range(self.num_layers)])
        return self.query_link(mean_tokens)

    # -- authors' checkpoints ------------------------------------------------------------------

    @staticmethod
    def _official_name(name: str) -> str:
        for sub in ("transform.", "merge."):
            if name.startswith("query_link." + sub):
                return name[len("query_link.") :]
        return name

    def load_official_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load the released ``DepthMoE`` module's weights (METHOD §1.1 key names and shapes).

        Keys may carry the ``backbone.depthmoe.`` prefix of a full checkpoint (extract the
        adapter's entries first; other checkpoint keys count as unexpected). The ``mean``/``std``
        buffers are ignored. Any missing, unexpected or shape-mismatched key → ValueError.
        """
        incoming: dict[str, torch.Tensor] = {}
        for key, value in state_dict.items():
            name = key[len(OFFICIAL_PREFIX) :] if key.startswith(OFFICIAL_PREFIX) else key
            if name in ("mean", "std"):
                continue
            if name in incoming:
                raise ValueError(f"duplicate key {name!r} (with and without the {OFFICIAL_PREFIX!r} prefix)")
            incoming[name] = value
        expected = {self._official_name(name): param for name, param in self.named_parameters()}
        missing = sorted(set(expected) - set(incoming))
        unexpected = sorted(set(incoming) - set(expected))
        mismatched = []
        for name in sorted(set(expected) & set(incoming)):
            target, value = expected[name], incoming[name]
            same = tuple(value.shape) == tuple(target.shape) or (target.numel() == 1 and value.numel() == 1)
            if not same:
                mismatched.append(f"{name}: checkpoint {tuple(value.shape)} vs module {tuple(target.shape)}")
        if missing or unexpected or mismatched:
            raise ValueError(
                "official state dict does not match this SpectralMoE:"
                f"\n  missing: {missing}\n  unexpected: {unexpected}\n  shape mismatch: {mismatched}"
            )
        with torch.no_grad():
            for name, target in expected.items():
                target.copy_(incoming[name].reshape(target.shape))

    def extra_repr(self) -> str:
        return (
            f"D={self.embed_dim}, L={self.num_layers}, E={self.num_experts}, r={self.ranks}, T={self.token_length}, "
            f"k={self.top_k}, gating={self.gating}, noisy={self.noisy_gating}, variant={self.variant}, "
            f"token_attn={self.token_attn}, combine={self.combine}, fusion={self.fusion}, gates={self.gates}, "
            f"use_depth={self.use_depth}, dispatch={self.dispatch}"
        )
