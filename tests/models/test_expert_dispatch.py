"""SpectralMoE's sparse (sorted, rank-space) and masked expert dispatch against the dense evaluation.

``dispatch="dense"`` evaluates every expert at width D for every token (the plain form, itself tested
against references written from METHOD.md in test_spectralmoe.py). The other two must give the same
outputs, gradients (parameters and inputs) and balance loss up to fp32 reordering, for both variants,
top-1/top-2, the three gatings, noisy and clean routing, the ablation switches, and under bf16
autocast; the sparse path reads the host once per layer and the masked one never.
"""

from __future__ import annotations

import math

import pytest
import torch

from spectralmoe.models.adapters.expert_dispatch import (
    SAFE_EXP_BOUND,
    LowRankExperts,
    expert_counts,
    masked_pair_coordinates,
    pair_coordinates,
)
from spectralmoe.models.adapters.spectralmoe import SpectralMoE

D, L, E, R, T, Q, P, B, N = 32, 2, 4, 4, 8, 16, 5, 2, 16


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4, rel_atol: float = 1e-5, what=""):
    """|a − e| ≤ rel_atol·max|e| + rtol·|e| elementwise (a tolerance scaled to the tensor's magnitude)."""
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    actual, expected = actual.detach(), expected.detach()
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    diff = (actual.double() - expected.double()).abs()
    bad = diff > rel_atol * scale + rtol * expected.double().abs()
    message = f"{what}: {int(bad.sum())} differ, max |Δ| {diff.max():.3g} (scale {scale:.3g})"
    assert not bad.any() and not diff.isnan().any(), message


def randomize(model: SpectralMoE, seed: int = 0, value_scale: float = 1.0) -> SpectralMoE:
    """Non-zero experts, routers and MLPs (at init the experts are 0 and every router ties)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("experts_b"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 * value_scale)
            elif name.startswith(("w_gate", "w_noise")):
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 if "gate" in name else 0.1))
            elif name == "scale":
                p.fill_(0.7)
            elif p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            elif p.ndim == 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def twins(dispatches=("dense", "sparse", "masked"), seed=0, **kw) -> dict[str, SpectralMoE]:
    args = dict(num_experts=E, rank=R, token_length=T, query_dim=Q, num_prefix_tokens=P)
    args.update(kw)
    base = randomize(SpectralMoE(D, L, dispatch="dense", **args), seed)
    models = {}
    for dispatch in dispatches:
        model = SpectralMoE(D, L, dispatch=dispatch, **args)
        model.load_state_dict(base.state_dict())
        models[dispatch] = model
    return models


def run(model: SpectralMoE, layer: int, training: bool, seed: int = 3, depth_dim: int = D, dtype=torch.float32,
        autocast: bool = False):  # fmt: skip
    """Output, balance loss and gradients (parameters, tokens, depth) of one forward + backward."""
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(B, P + N, D, generator=g, dtype=dtype).requires_grad_()
    depth = torch.randn(B, N, depth_dim, generator=g, dtype=dtype).requires_grad_()
    weight = torch.randn(B, P + N, D, generator=g, dtype=dtype)
    model.train(training).to(dtype)
    torch.manual_seed(seed)  # same noise draws in every dispatch
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out, aux = model(tokens, layer=layer, depth_tokens=depth if model.use_depth else None)
    ((out.float() * weight.float()).sum() + aux).backward()
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}
    for key, tensor in (("<tokens>", tokens), ("<depth>", depth)):  # None where unused (fusion="none")
        grads[key] = tensor.grad if tensor.grad is not None else torch.zeros_like(tensor)
    return out.detach(), aux.detach(), grads


def assert_same_results(models: dict[str, SpectralMoE], layer=1, training=True, depth_dim=D, dtype=torch.float32):
    ref_out, ref_aux, ref_grads = run(models["dense"], layer, training, depth_dim=depth_dim, dtype=dtype)
    for name, model in models.items():
        if name == "dense":
            continue
        out, aux, grads = run(model, layer, training, depth_dim=depth_dim, dtype=dtype)
        assert_close(out, ref_out, rtol=1e-5, rel_atol=1e-6, what=f"{name} output")
        assert aux.item() == pytest.approx(ref_aux.item(), rel=1e-6, abs=1e-6), name
        for key, expected in ref_grads.items():
            assert_close(grads[key], expected, what=f"{name} grad {key}")


@pytest.mark.parametrize("variant", ["paper", "official"])
@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("gating", ["softmax", "laplace", "gaussian"])
@pytest.mark.parametrize("training", [True, False], ids=["noisy", "clean"])
def test_sparse_and_masked_match_dense(variant, top_k, gating, training):
    models = twins(variant=variant, top_k=top_k, gating=gating)
    assert_same_results(models, training=training)


@pytest.mark.parametrize(
    "options",
    [
        dict(rank=[2, 3, 4, 5]),
        dict(num_experts=1, fusion="none"),
        dict(num_experts=1),
        dict(use_depth=False),
        dict(gates="shared"),
        dict(fusion="add"),
        dict(fusion="none", variant="official"),
        dict(fusion="add", variant="official", top_k=2),
        dict(top_k=E, variant="official"),  # every expert selected: no load estimate, k = E
        dict(top_k=3, noisy_gating=False, token_attn="rowsum_outer"),
        dict(variant="official", combine="gate_weighted", top_k=2),
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_ablation_switches_match_dense(options):
    assert_same_results(twins(**options), training=True)


def test_depth_projection_matches_dense():
    assert_same_results(twins(depth_dim=24), depth_dim=24)


def test_official_fallback_when_exp_could_underflow_matches_dense():
    # Expert values ~ −900: exp() underflows, so log-sum-exp is NOT the identity (zeros → eps → −36.04);
    # the sparse path must notice (max |V| ≥ bound) and combine at width D. float64 keeps the fusion's
    # huge logits comparable.
    models = twins(variant="official")
    for model in models.values():
        with torch.no_grad():
            model.mlp_token2feat.bias[0] = -900.0
    sparse = models["sparse"]
    experts = LowRankExperts(sparse.experts_a[1], sparse.experts_b[1], sparse.mlp_token2feat)
    assert experts.max_abs_value() >= SAFE_EXP_BOUND
    assert_same_results({k: m.double() for k, m in models.items()}, training=False, dtype=torch.float64)
    out, _, _ = run(models["sparse"], 1, False, dtype=torch.float64)
    assert torch.isfinite(out).all()


def test_negative_control_a_changed_expert_is_detected():
    models = twins(dispatches=("dense", "sparse"))
    with torch.no_grad():
        models["sparse"].experts_b[1][2].mul_(1.5)
    with pytest.raises(AssertionError):
        assert_same_results(models, training=False)


@pytest.mark.parametrize("variant", ["paper", "official"])
@pytest.mark.parametrize("top_k", [1, 2])
def test_bf16_autocast_close_to_fp32(variant, top_k):
    models = twins(variant=variant, top_k=top_k)
    ref_out, _, _ = run(models["dense"], 1, False)  # fp32
    g = torch.Generator().manual_seed(1)  # the tokens run() draws first
    tokens = torch.randn(B, P + N, D, generator=g)
    size = (ref_out - tokens).abs().max()  # size of the update scale·δ
    for name in ("dense", "sparse", "masked"):
        out, aux, grads = run(models[name], 1, False, autocast=True)
        assert out.dtype == torch.float32
        assert (out - ref_out).abs().max() < 0.03 * size, name
        assert all(torch.isfinite(v).all() for v in grads.values()), name


def _count_host_reads(monkeypatch) -> list[str]:
    calls: list[str] = []
    for method in ("tolist", "item", "__bool__", "nonzero", "cpu"):
        original = getattr(torch.Tensor, method)

        def wrapper(self, *a, __original=original, __name=method, **kw):
            calls.append(__name)
            return __original(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, method, wrapper)
    return calls


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_one_host_read_per_layer_sparse_none_masked(monkeypatch, variant):
    models = twins(dispatches=("sparse", "masked"), variant=variant)
    tokens, depth = torch.randn(B, P + N, D), torch.randn(B, N, D)
    calls = _count_host_reads(monkeypatch)
    for layer in range(L):
        models["sparse"].train()(tokens, layer=layer, depth_tokens=depth)
    assert calls == ["tolist"] * L
    calls.clear()
    models["masked"].train()(tokens, layer=0, depth_tokens=depth)
    assert calls == []


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_torch_compile_captures_one_graph_and_matches(variant):
    model = twins(dispatches=("sparse",), variant=variant)["sparse"].train()
    tokens, depth = torch.randn(B, P + N, D), torch.randn(B, N, D)
    torch.manual_seed(0)
    eager, eager_aux = model(tokens, layer=0, depth_tokens=depth)
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # fullgraph: a graph break would raise
    torch.manual_seed(0)
    out, aux = compiled(tokens, layer=0, depth_tokens=depth)
    assert_close(out, eager, rtol=1e-5, rel_atol=1e-6, what="compiled")
    assert aux.item() == pytest.approx(eager_aux.item(), rel=1e-6)


@pytest.mark.parametrize("token_attn", ["dot", "rowsum_outer"])
@pytest.mark.parametrize("rank", [[2, 3, 4, 5], 3], ids=["mixed-ranks-looped", "one-rank-batched"])
def test_pair_coordinates_sparse_equals_masked_with_an_idle_expert(token_attn, rank):
    model = randomize(SpectralMoE(D, 1, num_experts=E, rank=rank, token_length=T, query_dim=Q))
    experts = LowRankExperts(model.experts_a[0], model.experts_b[0], model.mlp_token2feat)
    assert experts.uniform == isinstance(rank, int)
    x = torch.randn(12, D, requires_grad=True)
    indices = torch.tensor([[0, 3], [3, 0], [1, 3]] * 4)  # expert 2 gets nothing; groups of 8, 4, 0, 12
    counts = expert_counts(indices, E).tolist()
    assert counts == [8, 4, 0, 12]
    sparse = pair_coordinates(x, indices, experts, token_attn, counts)
    masked = masked_pair_coordinates(x, indices, experts, token_attn)
    assert sparse.shape == (12, 2, experts.width) == masked.shape and experts.width == sum(experts.ranks) + 1
    assert_close(sparse, masked, rtol=1e-6, rel_atol=1e-7)
    # each pair's coordinates live in its own expert's block (+ the bias column)
    for token, slot, expert in ((0, 0, 0), (0, 1, 3), (2, 0, 1)):
        lo, hi = experts.offsets[expert], experts.offsets[expert] + experts.ranks[expert]
        row = sparse[token, slot]
        assert row[lo:hi].abs().sum() > 0 and row[-1] > 0
        assert row[:lo].abs().sum() == 0 and row[hi:-1].abs().sum() == 0
    grad = torch.randn_like(sparse)
    g_sparse = torch.autograd.grad((sparse * grad).sum(), x)[0]
    g_masked = torch.autograd.grad((masked * grad).sum(), x)[0]
    assert_close(g_sparse, g_masked, rtol=1e-5, rel_atol=1e-6)
    with pytest.raises(RuntimeError, match="do not cover"):
        pair_coordinates(x, indices, experts, token_attn, [8, 4, 0, 11])
