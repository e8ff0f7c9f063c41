"""SpectralMoE adapter: equality with plain references written from METHOD.md §1, ablations, counts.

The references below are deliberately naive (per-token loops, per-expert dispatch, the literal
einsums of the released code) and share no code with the module.
"""

from __future__ import annotations

import math

import pytest
import torch

from spectralmoe.models.adapters.common import token_attention
from spectralmoe.models.adapters.spectralmoe import (
    SpectralMoE,
    diagonal_cross_attention,
    mixture_of_token_experts,
    noisy_top_k_routing,
)

D, L, E, R, T, Q, P, B, N = 32, 2, 4, 4, 8, 16, 5, 2, 16
EPS64 = 2.220446049250313e-16
PREFIX = "backbone.depthmoe."


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    """Elementwise |a − e| ≤ atol + rtol·|e| (torch.testing.assert_close would import DTensor: ~5 s)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (actual.shape, expected.shape)
    diff = (actual - expected).abs()
    bad = diff > atol + rtol * expected.abs()
    assert not bad.any() and not diff.isnan().any(), f"{int(bad.sum())} elements differ, max abs diff {diff.max():.3g}"


def small(**kw) -> SpectralMoE:
    args = dict(num_experts=E, rank=R, token_length=T, query_dim=Q, num_prefix_tokens=P)
    args.update(kw)
    return SpectralMoE(D, L, **args)


def random_official_sd(
    ranks, num_experts=E, routers=2, noise=True, seed=0, bias0=None
) -> dict[str, torch.Tensor]:
    """A state dict with the authors' key names and shapes (METHOD §1.1), random non-zero values."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for layer in range(L):
        for e, r in enumerate(ranks):
            sd[f"experts_a.{layer}.{e}"] = (torch.rand(T, r, generator=g) - 0.5) * 0.5  # T×r
            sd[f"experts_b.{layer}.{e}"] = torch.randn(r, D, generator=g) * 0.5  # r×D
        if num_experts > 1:
            for m in range(routers):
                sd[f"w_gate.{layer}.{m}"] = torch.randn(D, num_experts, generator=g)  # D×E
                if noise:
                    sd[f"w_noise.{layer}.{m}"] = torch.randn(D, num_experts, generator=g) * 0.1
    sd["scale"] = torch.tensor(0.7)
    shapes = {"mlp_token2feat": (D, D), "mlp_delta_f": (D, D), "transform": (Q, D), "merge": (Q, 3 * Q)}
    for name, shape in shapes.items():
        sd[f"{name}.weight"] = torch.randn(*shape, generator=g) / math.sqrt(shape[1])
        sd[f"{name}.bias"] = torch.randn(shape[0], generator=g) * 0.1
    if bias0 is not None:  # drive channel 0 of every expert output to exp-underflow (eps path)
        sd["mlp_token2feat.bias"][0] = bias0
    sd["mean"], sd["std"] = torch.zeros(()), torch.ones(())  # buffers of the released module
    return sd


def inputs(seed=1, depth_dim=D):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, P + N, D, generator=g), torch.randn(B, N, depth_dim, generator=g)


# ------------------------------------------------------------------------------------------------
# References (eval mode: clean logits)
# ------------------------------------------------------------------------------------------------


def ref_logits(x, w, gating):
    if gating == "softmax":
        return x @ w
    dist = torch.stack([((x - w[:, e]) ** 2).sum(-1).sqrt() for e in range(w.shape[1])], dim=1)
    return -dist if gating == "laplace" else -(dist**2)


def ref_gates(logits, k):
    """Per-token top-k (Python sort), softmax over the k selected logits, dense [M, E]."""
    gates = torch.zeros_like(logits)
    for i in range(logits.shape[0]):
        row = logits[i].tolist()
        chosen = sorted(range(len(row)), key=lambda e: -row[e])[:k]
        g = torch.softmax(logits[i, chosen], dim=0)
        for j, e in enumerate(chosen):
            gates[i, e] = g[j]
    return gates


def ref_cv2(v):
    v = v.double()
    if v.numel() == 1:
        return 0.0
    mean = v.mean()
    var = ((v - mean) ** 2).sum() / (v.numel() - 1)
    return float(var / (mean**2 + 1e-10))


def ref_tokens(sd, layer, ranks):
    return [sd[f"experts_a.{layer}.{e}"] @ sd[f"experts_b.{layer}.{e}"] for e in range(len(ranks))]


def linear(sd, name, x):
    return x @ sd[f"{name}.weight"].t() + sd[f"{name}.bias"]


def ref_official_moe(x, gates, tokens, sd):
    """SparseDispatcher semantics: dispatch gate>0, 'bc,td->bt', exp, index_add, eps, log."""
    combined = x.new_zeros(x.shape[0], x.shape[1])
    for e, s in enumerate(tokens):
        idx = torch.nonzero(gates[:, e] > 0).flatten()
        if idx.numel() == 0:
            continue
        xe = x[idx]
        logits = torch.einsum("bc,td->bt", xe, s) / math.sqrt(x.shape[1])
        out = logits.softmax(-1)[:, 1:] @ linear(sd, "mlp_token2feat", s[1:])
        combined = combined.index_add(0, idx, out.exp())
    combined[combined == 0] = EPS64
    return combined.log()


def ref_official(sd, tokens_in, depth, layer, gating, k, ranks):
    f = tokens_in[:, P:]
    s = ref_tokens(sd, layer, ranks)
    deltas, loss = [], 0.0
    for m, x in enumerate((f, depth)):
        flat = x.reshape(B * N, D)
        gates = ref_gates(ref_logits(flat, sd[f"w_gate.{layer}.{m}"], gating), k)
        loss += ref_cv2(gates.sum(0)) + ref_cv2((gates > 0).sum(0).float())
        deltas.append(ref_official_moe(flat, gates, s, sd).view(B, N, D))
    dv, dd = deltas
    attn = torch.softmax(torch.einsum("bnc,bmc->bnm", dd, dv) / math.sqrt(D), dim=-1)  # query depth
    z = torch.einsum("bnn,bnc->bnc", attn, dv)  # diagonal
    out = f + sd["scale"] * linear(sd, "mlp_delta_f", z + f)
    return torch.cat([tokens_in[:, :P], out], 1), 1e3 * loss


def ref_paper_moe(x, gates, tokens, sd):
    """Intended Rein attention per expert, gate-weighted sum over the selected experts."""
    out = torch.zeros_like(x)
    for i in range(x.shape[0]):
        for e, s in enumerate(tokens):
            if gates[i, e] > 0:
                a = torch.softmax(x[i] @ s.t() / math.sqrt(x.shape[1]), dim=0)
                out[i] += gates[i, e] * (a[1:] @ linear(sd, "mlp_token2feat", s[1:]))
    return out


def ref_paper(sd, tokens_in, depth, layer, gating, k, ranks, fusion="xattn", depth_router=1):
    f = tokens_in[:, P:]
    s = ref_tokens(sd, layer, ranks)
    deltas, loss = [], 0.0
    for m, x in ((0, f), (depth_router, depth)):
        flat = x.reshape(B * N, D)
        gates = ref_gates(ref_logits(flat, sd[f"w_gate.{layer}.{m}"], gating), k)
        loss += ref_cv2(gates.sum(0)) + ref_cv2((gates > 0).sum(0).float())
        deltas.append(ref_paper_moe(flat, gates, s, sd).view(B, N, D))
    dv, dd = deltas
    if fusion == "xattn":
        attn = torch.softmax(dv @ dd.transpose(1, 2) / math.sqrt(D), dim=-1)  # visual queries
        z = dv + attn @ dd
    elif fusion == "add":
        z = dv + dd
    else:
        z = dv
    out = f + sd["scale"] * linear(sd, "mlp_delta_f", z + f)
    return torch.cat([tokens_in[:, :P], out], 1), 1e3 * loss


# ------------------------------------------------------------------------------------------------
# Equality with the references
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "gating,k,prefixed,ranks",
    [
        ("softmax", 1, False, [R] * E),
        ("laplace", 1, True, [R] * E),
        ("gaussian", 1, False, [R] * E),
        ("softmax", 2, True, [R] * E),
        ("laplace", 2, False, [2, 3, 4, 5]),
        ("gaussian", 2, True, [R] * E),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_official_variant_matches_reference(gating, k, prefixed, ranks, dtype):
    # float64 run: channel 0 of every expert output is driven below exp-underflow (≈ −787), so the
    # released "exact zeros → eps → log" path (−36.04) is part of the comparison. (In fp32 such a
    # −36 channel makes the fusion logits ~230, whose fp32 rounding alone exceeds 1e-5.)
    sd = random_official_sd(ranks, bias0=-900.0 if dtype == torch.float64 else None)
    sd = {n: v.to(dtype) for n, v in sd.items()}
    model = small(variant="official", gating=gating, top_k=k, rank=ranks).to(dtype).eval()
    model.load_official_state_dict({(PREFIX + n if prefixed else n): v for n, v in sd.items()})
    tokens, depth = (t.to(dtype) for t in inputs())
    for layer in range(L):
        out, aux = model(tokens, layer=layer, depth_tokens=depth)
        ref_out, ref_aux = ref_official(sd, tokens, depth, layer, gating, k, ranks)
        assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
        assert aux.item() == pytest.approx(ref_aux, rel=1e-5, abs=1e-5)


def test_official_combine_eps_path_is_exercised():
    sd = random_official_sd([R] * E, bias0=-150.0)
    model = small(variant="official").eval()
    model.load_official_state_dict(sd)
    tokens, _ = inputs()
    flat = tokens[:, P:].reshape(-1, D)
    s = model.expert_tokens(0)
    values = model.mlp_token2feat(s[:, 1:])
    routing = noisy_top_k_routing(flat, model.w_gate[0][0], None, 1, "laplace")
    dv = mixture_of_token_experts(flat, routing, s, values, "rowsum_outer", "ungated_logsumexp")
    # k = 1: log(exp(y)) = y (the selected expert's own output), except where exp underflows to 0
    plain = mixture_of_token_experts(flat, routing, s, values, "rowsum_outer", "gate_weighted")
    underflow = plain.exp() == 0
    assert underflow.any() and not underflow.all()
    expected = torch.where(underflow, torch.full_like(plain, math.log(EPS64)), plain)
    assert_close(dv, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gating,k", [("laplace", 1), ("softmax", 2), ("gaussian", 3)])
def test_paper_variant_matches_reference(gating, k):
    sd = random_official_sd([R] * E, seed=3)
    model = small(variant="paper", gating=gating, top_k=k).eval()
    model.load_official_state_dict(sd)
    tokens, depth = inputs(seed=4)
    out, aux = model(tokens, layer=1, depth_tokens=depth)
    ref_out, ref_aux = ref_paper(sd, tokens, depth, 1, gating, k, [R] * E)
    assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    assert aux.item() == pytest.approx(ref_aux, rel=1e-5, abs=1e-5)


def test_single_expert_is_rein_token_attention():
    model = small(num_experts=1, fusion="none").eval()
    with torch.no_grad():
        model.experts_b[0][0].normal_()
    tokens, depth = inputs()
    out, aux = model(tokens, layer=0, depth_tokens=depth)
    f = tokens[:, P:]
    dv = token_attention(f, model.expert_tokens(0)[0], model.mlp_token2feat)
    expected = f + model.scale * model.mlp_delta_f(dv + f)
    assert_close(out[:, P:], expected, rtol=1e-5, atol=1e-5)
    assert aux.item() == 0.0 and model.w_gate is None and model.w_noise is None


@pytest.mark.parametrize("k", [1, 2])
def test_noisy_routing_matches_shazeer_reference(k):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(24, D, generator=g)
    w_gate = torch.randn(D, E, generator=g, requires_grad=True)
    w_noise = (torch.randn(D, E, generator=g) * 0.3).requires_grad_()
    noise = torch.randn(24, E, generator=g)
    routing = noisy_top_k_routing(x, w_gate, w_noise, k, "laplace", noisy=True, noise=noise)

    clean = ref_logits(x, w_gate, "laplace")
    sigma = torch.nn.functional.softplus(x @ w_noise) + 1e-2
    noisy = clean + noise * sigma
    gates = ref_gates(noisy, k)
    normal = torch.distributions.Normal(0.0, 1.0)
    load = torch.zeros(E)
    for i in range(24):
        ordered = sorted(noisy[i].tolist(), reverse=True)
        thr_in, thr_out = ordered[k], ordered[k - 1]
        for e in range(E):
            thr = thr_in if noisy[i, e] > thr_in else thr_out
            load[e] += normal.cdf((clean[i, e] - thr) / sigma[i, e])
    assert_close(routing.gates, gates, rtol=1e-5, atol=1e-6)
    assert_close(routing.load, load, rtol=1e-5, atol=1e-5)
    assert_close(routing.importance, gates.sum(0), rtol=1e-5, atol=1e-5)
    (routing.load.var() / routing.load.mean() ** 2).backward()
    assert w_gate.grad.abs().sum() > 0 and w_noise.grad.abs().sum() > 0


def test_diagonal_cross_attention_chunked_matches_einsum_values_and_grads():
    g = torch.Generator().manual_seed(6)
    q = torch.randn(B, N, D, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, N, D, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(B, N, D, generator=g, dtype=torch.float64)
    attn = torch.softmax(torch.einsum("bnc,bmc->bnm", q, v) / math.sqrt(D), dim=-1)
    ref = torch.einsum("bnn,bnc->bnc", attn, v)
    ref_grads = torch.autograd.grad((ref * weight).sum(), (q, v))
    out = diagonal_cross_attention(q, v, max_elements=3 * B * N)  # 3-row chunks, checkpointed
    grads = torch.autograd.grad((out * weight).sum(), (q, v))
    assert_close(out, ref)
    for a, b in zip(grads, ref_grads):
        assert_close(a, b)


def test_queries_follow_method_1_8():
    sd = random_official_sd([R] * E, seed=7)
    model = small()
    model.load_official_state_dict(sd)
    mean_tokens = torch.stack([torch.stack(ref_tokens(sd, layer, [R] * E)).mean(0) for layer in range(L)])
    x = linear(sd, "transform", mean_tokens)  # [L, T, Q]
    pooled = torch.zeros(T, 3 * Q)
    for t in range(T):
        for q in range(Q):
            column = x[:, t, q]
            pooled[t, 3 * q : 3 * q + 3] = torch.stack([column.max(), column.mean(), column[-1]])
    assert_close(model.queries(), linear(sd, "merge", pooled), rtol=1e-5, atol=1e-5)
    fresh = small().queries()  # S = 0 at init → all queries identical
    assert fresh.shape == (T, Q) and torch.allclose(fresh, fresh[:1].expand_as(fresh))


# ------------------------------------------------------------------------------------------------
# Behaviour
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_prefix_untouched_and_scale_zero_is_identity(variant):
    model = small(variant=variant, scale_init=0.0)
    model.load_official_state_dict({**random_official_sd([R] * E), "scale": torch.tensor(0.0)})
    tokens, depth = inputs()
    out, aux = model(tokens, layer=0, depth_tokens=depth)
    assert torch.equal(out, tokens) and torch.isfinite(aux)
    model.load_official_state_dict(random_official_sd([R] * E))
    out, _ = model(tokens, layer=0, depth_tokens=depth)
    assert torch.equal(out[:, :P], tokens[:, :P]) and not torch.allclose(out[:, P:], tokens[:, P:])
    no_prefix = small(variant=variant, num_prefix_tokens=0)
    assert no_prefix(tokens[:, P:], layer=1, depth_tokens=depth)[0].shape == (B, N, D)


@pytest.mark.parametrize("combine", ["gate_weighted", "ungated_logsumexp"])
def test_experts_at_init_output_sink_scaled_bias(combine):
    model = small()
    x = torch.randn(B * N, D)
    s = model.expert_tokens(0)
    assert torch.equal(s, torch.zeros_like(s))
    routing = noisy_top_k_routing(x, torch.randn(D, E), None, 1, "laplace")
    out = mixture_of_token_experts(x, routing, s, model.mlp_token2feat(s[:, 1:]), "dot", combine)
    expected = (T - 1) / T * model.mlp_token2feat.bias
    assert_close(out, expected.expand_as(out), rtol=1e-5, atol=1e-6)


def test_balance_loss_unbalanced_and_single_expert():
    model = small(gating="softmax").eval()
    with torch.no_grad():
        for layer in range(L):
            for m in range(2):
                model.w_gate[layer][m][:, 0] = 1.0  # positive tokens → all to expert 0
    tokens = torch.rand(B, P + N, D)
    depth = torch.rand(B, N, D)
    _, aux = model(tokens, layer=0, depth_tokens=depth)
    # counts [M,0,0,0]: cv² = E (unbiased variance) for importance and load, both modalities
    assert torch.isfinite(aux) and aux.item() == pytest.approx(1e3 * 4 * E)
    single = small(num_experts=1)
    _, aux1 = single.train()(tokens, layer=0, depth_tokens=depth)
    assert aux1.item() == 0.0


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_gradients_reach_all_trainable_parts(variant):
    model = small(variant=variant).train()
    model.load_official_state_dict(random_official_sd([R] * E, seed=8))
    tokens, depth = inputs()
    out, aux = model(tokens, layer=1, depth_tokens=depth)
    (out[:, P:].square().mean() + aux).backward()
    parts = {
        "experts_a": model.experts_a[1][0],
        "experts_b": model.experts_b[1][0],
        "w_gate_vis": model.w_gate[1][0],
        "w_gate_depth": model.w_gate[1][1],
        "w_noise_vis": model.w_noise[1][0],
        "w_noise_depth": model.w_noise[1][1],
        "scale": model.scale,
        "mlp_token2feat": model.mlp_token2feat.weight,
        "mlp_delta_f": model.mlp_delta_f.weight,
    }
    for name, p in parts.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.experts_a[0][0].grad is None  # other layers untouched


def test_eval_deterministic_train_noisy():
    model = small()
    model.load_official_state_dict(random_official_sd([R] * E, seed=9))
    tokens, depth = inputs()
    model.eval()
    a, la = model(tokens, layer=0, depth_tokens=depth)
    b, lb = model(tokens, layer=0, depth_tokens=depth)
    assert torch.equal(a, b) and torch.equal(la, lb)
    model.train()
    c, lc = model(tokens, layer=0, depth_tokens=depth)
    d, ld = model(tokens, layer=0, depth_tokens=depth)
    assert not torch.equal(c, d) and not torch.equal(lc, ld)
    quiet = small(noisy_gating=False).train()
    assert quiet.w_noise is None
    quiet.load_official_state_dict({n: v for n, v in random_official_sd([R] * E, seed=9).items() if "w_noise" not in n})
    assert torch.equal(quiet(tokens, layer=0, depth_tokens=depth)[0], quiet(tokens, layer=0, depth_tokens=depth)[0])


def test_record_routing_maps():
    model = small(record_routing=False).eval()
    sd = random_official_sd([R] * E, seed=10)
    model.load_official_state_dict(sd)
    tokens, depth = inputs()
    model(tokens, layer=1, depth_tokens=depth)
    assert model.last_routing == {}
    model.record_routing = True
    model(tokens, layer=1, depth_tokens=depth)
    routing = model.last_routing[1]
    expected = ref_logits(tokens[:, P:].reshape(-1, D), sd["w_gate.1.0"], "laplace").argmax(1).view(B, N)
    assert routing.dtype == torch.long and routing.shape == (B, N) and not routing.requires_grad
    assert torch.equal(routing, expected)


def test_depth_checks_and_no_depth_ablation():
    model = small()
    tokens, depth = inputs()
    assert model.needs_depth
    with pytest.raises(ValueError, match="depth_tokens"):
        model(tokens, layer=0)
    with pytest.raises(ValueError, match="do not match"):
        model(tokens, layer=0, depth_tokens=depth[:, 1:])
    with pytest.raises(ValueError, match="depth_dim"):
        model(tokens, layer=0, depth_tokens=torch.randn(B, N, D + 1))
    no_depth = small(use_depth=False).eval()
    assert not no_depth.needs_depth and no_depth.fusion == "none" and len(no_depth.w_gate[0]) == 1
    no_depth.load_official_state_dict(random_official_sd([R] * E, routers=1, seed=11))
    out, aux = no_depth(tokens, layer=0)
    assert torch.equal(out, no_depth(tokens, layer=0, depth_tokens=depth)[0]) and torch.isfinite(aux)
    with pytest.raises(ValueError, match="fusion"):
        small(use_depth=False, fusion="xattn")


@pytest.mark.parametrize("fusion", ["add", "none"])
def test_fusion_ablations_match_reference(fusion):
    sd = random_official_sd([R] * E, seed=12)
    model = small(fusion=fusion).eval()
    model.load_official_state_dict(sd)
    tokens, depth = inputs()
    out, aux = model(tokens, layer=0, depth_tokens=depth)
    ref_out, ref_aux = ref_paper(sd, tokens, depth, 0, "laplace", 1, [R] * E, fusion=fusion)
    assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    assert aux.item() == pytest.approx(ref_aux, rel=1e-5)
    other = model(tokens, layer=0, depth_tokens=depth + 1.0)[0]
    assert torch.equal(other, out) == (fusion == "none")


def test_shared_gates_route_depth_with_the_visual_router():
    sd = random_official_sd([R] * E, routers=1, seed=13)
    model = small(gates="shared").eval()
    assert len(model.w_gate[0]) == 1
    model.load_official_state_dict(sd)
    tokens, depth = inputs()
    out, aux = model(tokens, layer=1, depth_tokens=depth)
    ref_out, ref_aux = ref_paper(sd, tokens, depth, 1, "laplace", 1, [R] * E, depth_router=0)
    assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    assert aux.item() == pytest.approx(ref_aux, rel=1e-5)


def test_depth_projection_for_narrower_depth_model():
    model = small(depth_dim=24).train()
    assert model.depth_proj is not None and model.depth_proj.weight.shape == (D, 24)
    tokens, depth = inputs(depth_dim=24)
    with torch.no_grad():
        model.experts_b[0][0].normal_()
    out, aux = model(tokens, layer=0, depth_tokens=depth)
    (out.square().mean() + aux).backward()
    assert model.depth_proj.weight.grad is not None
    with pytest.raises(ValueError, match="depth_proj"):
        model.load_official_state_dict(random_official_sd([R] * E))


def test_load_official_state_dict_reports_bad_keys():
    model = small()
    sd = random_official_sd([R] * E)
    bad = dict(sd)
    del bad["experts_b.1.2"]
    with pytest.raises(ValueError, match=r"missing: \['experts_b.1.2'\]"):
        model.load_official_state_dict(bad)
    with pytest.raises(ValueError, match="unexpected: .*decode_head.x"):
        model.load_official_state_dict({**sd, "decode_head.x": torch.zeros(1)})
    bad = {**sd, "w_gate.0.1": torch.zeros(E, D)}  # transposed
    with pytest.raises(ValueError, match=r"w_gate.0.1: checkpoint \(4, 32\)"):
        model.load_official_state_dict(bad)
    with pytest.raises(ValueError):
        small(top_k=E + 1)
    with pytest.raises(ValueError):
        small(variant="nope")


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_bf16_autocast_runs_finite(variant):
    model = small(variant=variant, top_k=2).train()
    model.load_official_state_dict(random_official_sd([R] * E, seed=14))
    tokens, depth = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, aux = model(tokens.bfloat16(), layer=0, depth_tokens=depth.bfloat16())
        loss = out.float().square().mean() + aux
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all() and torch.isfinite(aux)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ------------------------------------------------------------------------------------------------
# Parameter counts (METHOD §6)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        (dict(embed_dim=1024, num_layers=24), 5_737_985),
        (dict(embed_dim=1024, num_layers=24, num_experts=3), 4_148_225),
        (dict(embed_dim=1280, num_layers=32), 9_026_561),
        (dict(embed_dim=1280, num_layers=32, depth_dim=1024), 9_026_561 + 1024 * 1280 + 1280),
        (dict(embed_dim=1280, num_layers=32, token_length=512), 10_292_225),
        (dict(embed_dim=1024, num_layers=24, gates="shared"), 5_737_985 - 2 * 24 * 6 * 1024),
        (dict(embed_dim=1024, num_layers=24, use_depth=False), 5_737_985 - 2 * 24 * 6 * 1024),
        (dict(embed_dim=1024, num_layers=24, num_experts=1), 24 * 16 * (100 + 1024) + 2_099_200 + 1 + 459_264),
        (dict(embed_dim=1024, num_layers=24, rank=[8, 16, 16, 16, 16, 32]), 5_737_985 + 24 * 8 * 1124),
    ],
)
def test_parameter_counts(kwargs, expected):
    with torch.device("meta"):
        model = SpectralMoE(**kwargs)
    assert model.num_trainable_parameters() == expected
