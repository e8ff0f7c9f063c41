"""A plain re-statement of the authors' released SpectralMoE layer, for speed comparisons only.

Written from METHOD.md §1.3–1.7 (not from their source): the way the released ``DepthMoE`` layer
computes, step by step, so that timing it shows what our implementation is compared with:

* per modality, noisy top-k gating (``cdist`` logits, softplus noise, Normal-CDF load), the four
  cv² balance terms × 1e3;
* a SparseDispatcher: ``nonzero`` of the dense gates, sorted by expert, one input batch per expert
  (``split`` by host-side sizes), and for EVERY expert with tokens: its token matrix ``A·B``, the
  ``"bc,td->bt"`` logits, softmax, ``token2feat`` of its tokens 1…T−1 (recomputed per expert and per
  modality), the value product; combine = ``exp`` → ``index_add`` → exact zeros to float64 eps → ``log``;
* fusion: the full N×N ``"bnc,bmc->bnm"`` attention (depth queries, visual keys), softmax, the
  diagonal ``"bnn,bnc->bnc"`` times the visual update; residual ``f + scale · mlp_delta_f(Z + f)``.

It reads the parameters of a ``SpectralMoE(variant="official")`` (shared, not copied), so its output
must equal that module's — ``check_parity`` asserts it before any timing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS64 = float(torch.finfo(torch.float64).eps)


class AuthorsLayer:
    """Callable like the adapter: ``(tokens [B, P+N, D], layer, depth [B, N, D]) -> (tokens, loss)``."""

    def __init__(self, module: torch.nn.Module) -> None:
        if getattr(module, "variant", None) != "official" or module.w_gate is None or module.depth_proj is not None:
            raise ValueError("AuthorsLayer needs a SpectralMoE(variant='official') with routers and no depth_proj")
        self.m = module

    # -- gating (METHOD §1.3) -----------------------------------------------------------------------
    def _gates(self, x: torch.Tensor, layer: int, modality: int) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.m
        w_gate = m.w_gate[layer][modality]
        if m.gating == "softmax":
            clean = x @ w_gate
        elif m.gating == "laplace":
            clean = -torch.cdist(x, w_gate.t())
        else:
            clean = -torch.cdist(x, w_gate.t()).pow(2)
        noisy = m.noisy_gating and m.training
        if noisy:
            std = F.softplus(x @ m.w_noise[layer][modality]) + m.noise_epsilon
            logits = clean + torch.randn_like(clean) * std
        else:
            logits = clean
        num_experts, k = clean.shape[1], m.top_k
        top, top_idx = logits.topk(min(k + 1, num_experts), dim=1)
        chosen = top[:, :k]
        if m.gating == "softmax":
            top_gates = chosen.softmax(dim=1)
        else:
            top_gates = torch.exp(chosen - torch.logsumexp(chosen, dim=1, keepdim=True))
        gates = torch.zeros_like(logits).scatter(1, top_idx[:, :k], top_gates)
        if noisy and k < num_experts:
            normal = torch.distributions.Normal(torch.zeros((), device=x.device), torch.ones((), device=x.device))
            thr_in, thr_out = top[:, k : k + 1], top[:, k - 1 : k]
            p_in = normal.cdf((clean - thr_in) / std)
            p_out = normal.cdf((clean - thr_out) / std)
            load = torch.where(logits > thr_in, p_in, p_out).sum(0)
        else:
            load = (gates > 0).sum(0)
        return gates, load

    @staticmethod
    def _cv2(v: torch.Tensor) -> torch.Tensor:
        v = v.float()
        return v.var() / (v.mean() ** 2 + 1e-10) if v.shape[0] > 1 else v.new_zeros(())

    # -- experts + SparseDispatcher (METHOD §1.5–1.6) -----------------------------------------------
    def _moe(self, x: torch.Tensor, gates: torch.Tensor, layer: int) -> torch.Tensor:
        m = self.m
        dim = x.shape[1]
        pairs = torch.nonzero(gates)  # [P, 2] (token, expert)
        _, order = pairs.sort(0)  # each column sorted; column 1's order groups rows by expert
        token_of_row = pairs[order[:, 1], 0]
        sizes = (gates > 0).sum(0).tolist()  # host read
        inputs = torch.split(x[token_of_row], sizes, dim=0)
        outputs = []
        for expert, rows in enumerate(inputs):
            if rows.shape[0] == 0:
                outputs.append(x.new_empty(0, dim))
                continue
            tokens = m.experts_a[layer][expert] @ m.experts_b[layer][expert]  # [T, D]
            attn = torch.einsum("bc,td->bt", rows, tokens) * dim**-0.5
            attn = attn.softmax(dim=-1)
            outputs.append(torch.einsum("bt,td->bd", attn[:, 1:], m.mlp_token2feat(tokens[1:])))
        stitched = torch.cat(outputs, 0).exp()
        combined = torch.zeros(gates.shape[0], dim, device=x.device).index_add(0, token_of_row, stitched.float())
        combined = torch.where(combined == 0, torch.full_like(combined, EPS64), combined)
        return combined.log()

    # -- the layer (METHOD §1.7) --------------------------------------------------------------------
    def __call__(self, tokens: torch.Tensor, layer: int, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.m
        prefix_count = m.num_prefix_tokens
        prefix, f = tokens[:, :prefix_count], tokens[:, prefix_count:]
        batch, num, dim = f.shape
        msi, dep = f.reshape(-1, dim), depth.reshape(-1, dim)
        msi_gates, msi_load = self._gates(msi, layer, 0)
        dep_gates, dep_load = self._gates(dep, layer, 1)
        loss = (self._cv2(msi_gates.sum(0)) + self._cv2(msi_load) + self._cv2(dep_gates.sum(0)) + self._cv2(dep_load))
        loss = loss * m.balance_coef
        dv = self._moe(msi, msi_gates, layer).reshape(batch, num, dim)
        dd = self._moe(dep, dep_gates, layer).reshape(batch, num, dim)
        attn = torch.einsum("bnc,bmc->bnm", dd, dv) * dim**-0.5
        attn = attn.softmax(dim=-1)
        z = torch.einsum("bnn,bnc->bnc", attn, dv)
        out = f + m.scale * m.mlp_delta_f(z + f)
        return torch.cat([prefix, out.to(tokens.dtype)], dim=1), loss


def check_parity(module: torch.nn.Module, tokens: torch.Tensor, depth: torch.Tensor, seed: int = 0,
                 rtol: float = 1e-4, atol: float = 1e-4) -> float:
    """Max abs difference between ``module`` and ``AuthorsLayer(module)`` on layer 0 (same noise draws,
    no autocast, full fp32 matmul precision), with the residual scale set to 1 meanwhile so that the update is compared at full size
    (at the init scale 1e-3 it would hide below fp32 resolution); raises AssertionError beyond
    ``atol + rtol·|ref|``."""
    reference = AuthorsLayer(module)
    scale = module.scale.detach().clone()
    precision = torch.get_float32_matmul_precision()  # TF32 ("high") would exceed the tolerance on GPUs
    with torch.no_grad():
        module.scale.fill_(1.0)
        torch.set_float32_matmul_precision("highest")
        try:
            torch.manual_seed(seed)
            ours, our_loss = module(tokens, 0, depth)
            torch.manual_seed(seed)
            ref, ref_loss = reference(tokens, 0, depth)
        finally:
            module.scale.copy_(scale)
            torch.set_float32_matmul_precision(precision)
    diff = (ours - ref).abs()
    bad = diff > atol + rtol * ref.abs()
    if bad.any() or not math.isclose(float(our_loss), float(ref_loss), rel_tol=rtol, abs_tol=atol):
        raise AssertionError(
            f"SpectralMoE(official) differs from the authors'-style layer: max |Δ| {float(diff.max()):.3g}, "
            f"loss {float(our_loss):.6g} vs {float(ref_loss):.6g}"
        )
    return float(diff.max())
