"""Rein, DepthForge, SET and FADA adapters (BASELINES.md): contract, counts, equations, transforms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from spectralmoe.models.adapters.base import Adapter
from spectralmoe.models.adapters.depthforge import DEPTHFORGE_PARAMS_VIT_L, DepthForge
from spectralmoe.models.adapters.fada import (
    FADA,
    FADA_PARAMS_VIT_L,
    band_instance_norm,
    haar_dwt2,
    haar_idwt2,
    pad_to_even,
)
from spectralmoe.models.adapters.rein import REIN_PARAMS_VIT_L, Rein
from spectralmoe.models.adapters.set import (
    SET,
    SET_PARAMS_VIT_L,
    fft_compose,
    fft_decompose,
    normalised_token_attention,
)

D, L, T, R, Q, P = 32, 3, 8, 4, 16, 2  # width, layers, tokens, rank, query width, prefix tokens
B, H, W = 2, 4, 4
N = H * W
CLASSES = [Rein, DepthForge, SET, FADA]


def build(cls: type[Adapter], **kwargs: object) -> Adapter:
    torch.manual_seed(0)
    opts: dict[str, object] = dict(rank=R, token_length=T, query_dim=Q, num_prefix_tokens=P)
    opts.update(kwargs)
    return cls(D, L, **opts)


def inputs(cls: type[Adapter], n: int = N, seed: int = 1) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(B, P + n, D, generator=g)
    extra = {"depth_tokens": torch.randn(B, n, D, generator=g)} if cls.needs_depth else {}
    return tokens, extra


# ------------------------------------------------------------------------------------------ contract
@pytest.mark.parametrize("cls", CLASSES)
def test_prefix_untouched_patches_refined(cls: type[Adapter]) -> None:
    adapter = build(cls, scale_init=0.5)
    tokens, extra = inputs(cls)
    out, aux = adapter(tokens, layer=1, **extra)
    assert out.shape == tokens.shape and out.dtype == tokens.dtype
    assert torch.equal(out[:, :P], tokens[:, :P])
    assert (out[:, P:] - tokens[:, P:]).abs().max() > 1e-3  # the patches did change
    assert aux.shape == () and aux.item() == 0.0


@pytest.mark.parametrize("cls", CLASSES)
def test_zero_scale_is_identity(cls: type[Adapter]) -> None:
    adapter = build(cls, scale_init=0.0)
    tokens, extra = inputs(cls)
    out, _ = adapter(tokens, layer=2, **extra)
    assert torch.equal(out, tokens)


@pytest.mark.parametrize("cls", CLASSES)
def test_every_parameter_gets_a_gradient(cls: type[Adapter]) -> None:
    # No exemptions: token 0 is dropped from the values but still sits in the softmax denominator,
    # and the query link is reached through queries(), which the loss includes.
    adapter = build(cls, scale_init=0.5)
    tokens, extra = inputs(cls)
    g = torch.Generator().manual_seed(2)
    loss = sum(
        (adapter(tokens, layer=layer, **extra)[0] * torch.randn(B, P + N, D, generator=g)).sum() for layer in range(L)
    )
    loss = loss + (adapter.queries() * torch.randn(T, Q, generator=g)).sum()
    loss.backward()
    lacking = [n for n, p in adapter.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not lacking


@pytest.mark.parametrize("cls", CLASSES)
def test_queries_shape(cls: type[Adapter]) -> None:
    assert build(cls).queries().shape == (T, Q)


@pytest.mark.parametrize("cls", CLASSES)
def test_bf16_autocast(cls: type[Adapter]) -> None:
    adapter = build(cls, scale_init=0.5)
    tokens, extra = inputs(cls)
    reference, _ = adapter(tokens, layer=0, **extra)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = adapter(tokens, layer=0, **extra)
        out_bf16, _ = adapter(tokens.bfloat16(), layer=0, **{k: v.bfloat16() for k, v in extra.items()})
    assert out.dtype == torch.float32 and out_bf16.dtype == torch.bfloat16
    assert torch.isfinite(out).all() and torch.isfinite(out_bf16.float()).all()
    torch.testing.assert_close(out, reference, atol=0.05, rtol=0.05)


def test_layer_and_width_are_checked() -> None:
    adapter = build(Rein)
    with pytest.raises(IndexError):
        adapter(torch.randn(B, P + N, D), layer=L)
    with pytest.raises(ValueError, match="width"):
        adapter(torch.randn(B, P + N, D + 1), layer=0)


# ------------------------------------------------------------------------------ parameter counts
def vit_l_count(cls: type[Adapter], **kwargs: object) -> int:
    with torch.device("meta"):
        return cls(1024, 24, **kwargs).num_trainable_parameters()


LORA_TOKENS = 24 * 16 * (100 + 1024)  # 431,616
FULL_TOKENS = 24 * 100 * 1024  # 2,457,600
LINEAR = 1024 * 1024 + 1024  # 1,049,600
QUERY_LINK = (1024 * 256 + 256) + (3 * 256 * 256 + 256)  # 459,264


@pytest.mark.parametrize(
    ("cls", "expected", "formula", "constant"),
    [
        (Rein, 2_990_081, LORA_TOKENS + 2 * LINEAR + 1 + QUERY_LINK, REIN_PARAMS_VIT_L),
        (DepthForge, 2_990_081, LORA_TOKENS + 2 * LINEAR + 1 + QUERY_LINK, DEPTHFORGE_PARAMS_VIT_L),
        (SET, 7_546_881, LORA_TOKENS + FULL_TOKENS + 4 * LINEAR + 1 + QUERY_LINK, SET_PARAMS_VIT_L),
        (FADA, 5_520_897, 2 * LORA_TOKENS + 4 * LINEAR + 1 + QUERY_LINK, FADA_PARAMS_VIT_L),
    ],
)
def test_parameter_count_vit_l(cls: type[Adapter], expected: int, formula: int, constant: int) -> None:
    assert vit_l_count(cls) == expected == formula == constant


def test_parameter_count_variants() -> None:
    assert vit_l_count(Rein, low_rank=False) == FULL_TOKENS + 2 * LINEAR + 1 + QUERY_LINK  # 5,016,065
    with torch.device("meta"):
        assert Rein(1280, 32).num_trainable_parameters() == 4_510_721  # SAM-H, BASELINES.md
        assert Rein(1024, 24).queries().shape == (100, 256)
    # A depth model of another width adds exactly one Linear(depth_dim, D).
    assert vit_l_count(DepthForge, depth_dim=768) == 2_990_081 + 768 * 1024 + 1024


# ------------------------------------------------------------------------------------------- Rein
def test_rein_matches_plain_reference() -> None:
    adapter = build(Rein)
    with torch.no_grad():
        adapter.scale.fill_(0.7)
    tokens, _ = inputs(Rein)
    layer = 1
    out, _ = adapter(tokens, layer=layer)

    # BASELINES.md, written out per image.
    S = adapter.tokens.a[layer] @ adapter.tokens.b[layer]
    W1, b1 = adapter.mlp_token2feat.weight, adapter.mlp_token2feat.bias
    W2, b2 = adapter.mlp_delta_f.weight, adapter.mlp_delta_f.bias
    expected = tokens.clone()
    for i in range(B):
        f = tokens[i, P:]
        a = torch.softmax(f @ S.T / math.sqrt(D), dim=-1)
        delta = a[:, 1:] @ (S[1:] @ W1.T + b1)
        expected[i, P:] = f + 0.7 * ((delta + f) @ W2.T + b2)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_rein_init_bounds() -> None:
    adapter = Rein(1024, 2)
    v_lora = math.sqrt(6 / (3 * 16**2 + math.sqrt(1024 * 16)))
    assert abs(v_lora - 0.0818) < 1e-4
    assert adapter.tokens.a.abs().max() <= v_lora and adapter.tokens.a.abs().max() > 0.9 * v_lora
    full = Rein(1024, 2, low_rank=False)
    v_full = math.sqrt(6 / (3 * 16**2 + 1024))
    assert full.tokens.full.abs().max() <= v_full and full.tokens.full.abs().max() > 0.9 * v_full


def official_state_dict(adapter: Rein, prefix: str = "backbone.reins.") -> dict[str, torch.Tensor]:
    """Random tensors under the official key names, plus unrelated backbone/head keys."""
    g = torch.Generator().manual_seed(5)
    shapes = {
        "learnable_tokens_a": (L, T, R),
        "learnable_tokens_b": (L, R, D),
        "scale": (),
        "mlp_token2feat.weight": (D, D),
        "mlp_token2feat.bias": (D,),
        "mlp_delta_f.weight": (D, D),
        "mlp_delta_f.bias": (D,),
        "transform.weight": (Q, D),
        "transform.bias": (Q,),
        "merge.weight": (Q, 3 * Q),
        "merge.bias": (Q,),
    }
    if isinstance(adapter, SET):
        shapes.update({"learnable_tokens2": (L, T, D), "mlp_token2feat2.weight": (D, D), "mlp_token2feat2.bias": (D,)})
        shapes.update({"mlp_delta_f2.weight": (D, D), "mlp_delta_f2.bias": (D,)})
    sd = {prefix + k: torch.randn(s, generator=g) for k, s in shapes.items()}
    sd["backbone.blocks.0.ls1.scale"] = torch.ones(D)
    sd["decode_head.query_embed.weight"] = torch.ones(T, Q)
    return {"meta": {}, "state_dict": sd}


@pytest.mark.parametrize("cls", [Rein, DepthForge, SET])
def test_load_official_state_dict(cls: type[Rein]) -> None:
    adapter = build(cls)
    ckpt = official_state_dict(adapter)
    adapter.load_official_state_dict(ckpt)
    sd = ckpt["state_dict"]
    assert torch.equal(adapter.tokens.a, sd["backbone.reins.learnable_tokens_a"])
    assert torch.equal(adapter.scale, sd["backbone.reins.scale"])
    assert torch.equal(adapter.query_link.merge.weight, sd["backbone.reins.merge.weight"])
    if cls is SET:
        assert torch.equal(adapter.amp_tokens.full, sd["backbone.reins.learnable_tokens2"])
        assert torch.equal(adapter.mlp_delta_f_amp.bias, sd["backbone.reins.mlp_delta_f2.bias"])
    sd["backbone.reins.unknown"] = torch.zeros(1)
    with pytest.raises(KeyError, match="unknown"):
        adapter.load_official_state_dict(sd)
    del sd["backbone.reins.unknown"], sd["backbone.reins.learnable_tokens_b"]
    with pytest.raises(KeyError, match="tokens.b"):
        adapter.load_official_state_dict(sd)


# -------------------------------------------------------------------------------------- DepthForge
def test_depthforge_zero_depth_equals_rein() -> None:
    rein, forge = build(Rein, scale_init=0.5), build(DepthForge)
    with torch.no_grad():
        rein.tokens.a.mul_(10)  # peaked attention, so depth visibly moves it
    forge.load_state_dict(rein.state_dict())
    tokens, extra = inputs(DepthForge)
    expected, _ = rein(tokens, layer=2)
    out, _ = forge(tokens, layer=2, depth_tokens=torch.zeros(B, N, D))
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    with_depth, _ = forge(tokens, layer=2, **extra)
    assert (with_depth - expected).abs().max() > 1e-3


def test_depthforge_sums_logits_before_one_softmax() -> None:
    forge = build(DepthForge)
    tokens, extra = inputs(DepthForge)
    f, d = tokens[:, P:], extra["depth_tokens"]
    S = forge.tokens(0)
    a = torch.softmax(f @ S.T / math.sqrt(D) + d @ S.T / math.sqrt(D), dim=-1)
    expected = forge.mlp_delta_f(a[..., 1:] @ forge.mlp_token2feat(S[1:]) + f)
    torch.testing.assert_close(forge.delta(f, 0, d), expected, atol=1e-5, rtol=1e-5)


def test_depthforge_depth_checks_and_projection() -> None:
    forge = build(DepthForge)
    tokens, _ = inputs(DepthForge)
    with pytest.raises(ValueError, match="needs depth_tokens"):
        forge(tokens, layer=0)
    with pytest.raises(ValueError, match=r"\[B, N, D_depth\]"):
        forge(tokens, layer=0, depth_tokens=torch.randn(B, N + 1, D))
    projected = build(DepthForge, depth_dim=24)
    assert projected.depth_proj is not None and forge.depth_proj is None
    out, _ = projected(tokens, layer=0, depth_tokens=torch.randn(B, N, 24))
    assert out.shape == tokens.shape
    with pytest.raises(ValueError, match="D_depth"):
        projected(tokens, layer=0, depth_tokens=torch.randn(B, N, D))


# --------------------------------------------------------------------------------------------- SET
@pytest.mark.parametrize("grid", [(4, 4), (4, 5), (3, 6)])
def test_set_spatial_fft_round_trip(grid: tuple[int, int]) -> None:
    x = torch.randn(B, *grid, D, generator=torch.Generator().manual_seed(3))
    phase, amplitude = fft_decompose(x, "spatial")
    assert phase.shape == amplitude.shape == (B, grid[0], grid[1] // 2 + 1, D)
    torch.testing.assert_close(fft_compose(phase, amplitude, grid, "spatial"), x, atol=1e-5, rtol=1e-5)


def test_set_fft_axes_spatial_vs_official() -> None:
    """Spatial FFT keeps images independent; the released (batch, channel) FFT mixes the batch."""
    tokens, _ = inputs(SET)
    other = tokens.clone()
    other[1] += 1.0  # change only the second image
    for fft_axes, mixes in (("spatial", False), ("official", True)):
        adapter = build(SET, scale_init=0.5, fft_axes=fft_axes)
        first = adapter(tokens, layer=0)[0][0]
        changed = (adapter(other, layer=0)[0][0] - first).abs().max()
        assert (changed > 1e-5) == mixes, fft_axes


def test_set_official_matches_released_equations() -> None:
    adapter = build(SET, scale_init=0.5, fft_axes="official")
    tokens, _ = inputs(SET)
    out, _ = adapter(tokens, layer=1)

    # BASELINES.md "SET", released code: sequence-first [N, B, C], FFT over the last two axes.
    f = tokens[:, P:].transpose(0, 1)
    spec = torch.fft.fft2(f)
    power = spec.real**2 + spec.imag**2
    amp = torch.sqrt(torch.where(power < 1e-5, torch.full_like(power, 1e-5), power))
    real = torch.where(spec.real.abs() < 1e-5, torch.full_like(power, 1e-5), spec.real)
    phase = torch.atan2(spec.imag, real)
    S1, S2 = adapter.tokens(1), adapter.amp_tokens(1)
    a1 = torch.softmax(phase @ S1.T / math.sqrt(D), -1)
    d1 = adapter.mlp_delta_f(a1[..., 1:] @ adapter.mlp_token2feat(S1[1:]) + phase)
    a2 = torch.softmax(F.instance_norm(amp @ S2.T) / math.sqrt(D), -1)
    d2 = adapter.mlp_delta_f_amp(a2[..., 1:] @ adapter.mlp_token2feat_amp(S2[1:]) + amp)
    z = torch.complex(d2 * torch.cos(d1), d2 * torch.sin(d1)) / math.sqrt(2 * D)
    delta = torch.fft.irfft2(z, s=(B, D), norm="ortho").transpose(0, 1)
    expected = torch.cat([tokens[:, :P], tokens[:, P:] + 0.5 * delta], dim=1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_set_amplitude_attention_ignores_logit_scale() -> None:
    """The instance-normalised logits make the amplitude attention invariant to rescaling |F|'s logits."""
    adapter = build(SET)
    amp = torch.rand(B, N, D)
    S = adapter.amp_tokens(0)
    base = normalised_token_attention(amp, S, adapter.mlp_token2feat_amp)
    scaled = normalised_token_attention(3 * amp, S, adapter.mlp_token2feat_amp)
    torch.testing.assert_close(scaled, base, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cls", [SET, FADA])
def test_grid_resolution(cls: type[Rein]) -> None:
    adapter = build(cls)
    tokens = torch.randn(B, P + 15, D)
    with pytest.raises(ValueError, match="not a square grid"):
        adapter(tokens, layer=0)
    with pytest.raises(ValueError, match="does not match"):
        adapter(tokens, layer=0, grid=(4, 4))
    by_kwarg, _ = adapter(tokens, layer=0, grid=(3, 5))
    adapter.set_grid((3, 5))
    by_default, _ = adapter(tokens, layer=0)
    assert torch.equal(by_kwarg, by_default)
    transposed, _ = adapter(tokens, layer=0, grid=(5, 3))  # the grid matters
    assert not torch.allclose(transposed, by_kwarg)


# -------------------------------------------------------------------------------------------- FADA
@pytest.mark.parametrize("grid", [(4, 6), (5, 7), (1, 3)])
def test_haar_round_trip_exact(grid: tuple[int, int]) -> None:
    x = torch.randn(B, *grid, D, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    padded = pad_to_even(x)
    ll, highs = haar_dwt2(padded)
    assert ll.shape == (B, (grid[0] + 1) // 2, (grid[1] + 1) // 2, D) and highs.shape == (B, 3, *ll.shape[1:])
    rebuilt = haar_idwt2(ll, highs)[:, : grid[0], : grid[1]]
    torch.testing.assert_close(rebuilt, x, atol=1e-13, rtol=0)
    # Orthonormal: energy preserved.
    energy = ll.square().sum() + highs.square().sum()
    torch.testing.assert_close(energy, padded.square().sum())


def test_haar_known_values() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1)
    ll, highs = haar_dwt2(x)
    assert ll.item() == 5.0  # (1+2+3+4)/2
    assert highs.flatten().tolist() == [-1.0, -2.0, 0.0]  # LH (columns), HL (rows), HH
    ll, highs = haar_dwt2(pad_to_even(torch.full((1, 3, 3, 1), 2.0)))
    assert torch.equal(highs, torch.zeros_like(highs)) and torch.equal(ll, torch.full_like(ll, 4.0))


def test_fada_high_band_instance_norm_removes_style() -> None:
    highs = torch.randn(B, 3, 2, 3, D)
    style = torch.rand(B, 3, 1, 1, D) + 0.5, torch.randn(B, 3, 1, 1, D)
    restyled = band_instance_norm(highs * style[0] + style[1])
    torch.testing.assert_close(restyled, band_instance_norm(highs), atol=1e-4, rtol=1e-4)


def test_fada_low_band_only_when_high_branch_silenced() -> None:
    """With a zero high-frequency MLP the update is the IDWT of the low band alone (piecewise constant)."""
    adapter = build(FADA, scale_init=1.0)
    with torch.no_grad():
        adapter.mlp_delta_f_high.weight.zero_()
        adapter.mlp_delta_f_high.bias.zero_()
    patches = torch.randn(B, N, D)
    delta = adapter.delta(patches, 0).reshape(B, H, W, D)
    blocks = delta.reshape(B, H // 2, 2, W // 2, 2, D)
    assert torch.allclose(blocks, blocks[:, :, :1, :, :1].expand_as(blocks), atol=1e-6)
    ll, _ = haar_dwt2(patches.reshape(B, H, W, D))
    S = adapter.tokens(0)
    a = torch.softmax(ll @ S.T / math.sqrt(D), -1)
    d_ll = adapter.mlp_delta_f(a[..., 1:] @ adapter.mlp_token2feat(S[1:]) + ll)
    torch.testing.assert_close(blocks[:, :, 0, :, 0], d_ll / 2, atol=1e-5, rtol=1e-5)
