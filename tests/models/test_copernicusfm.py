"""Copernicus-FM backbone: the official forward re-stated below from zhu-xlab/Copernicus-FM (``src/model_vit.py``,
``src/dynamic_hypernetwork.py``, ``src/aurora/fourier.py``, flexivit ``resize_abs_pos_embed``) against ours on
stand-in files in both released layouts; metadata; negative controls; counts; contract."""

import dataclasses
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spectralmoe.models.backbones.copernicusfm import (
    COPERNICUSFM_CONFIGS,
    CopernicusFMBackbone,
    CopernicusFMConfig,
    CopernicusFMModel,
    build_copernicusfm_backbone,
    patch_area_km2,
)
from spectralmoe.models.backbones.dofa import DOFA_CONFIGS, DOFABackbone

TINY = COPERNICUSFM_CONFIGS["tiny-copernicusfm"]  # D 32, 4 blocks, table 4×4 (64 px), wave_dim 16, 8 weight tokens
GF2 = [0.83, 0.665, 0.56, 0.49]
GF2_BW = [0.12, 0.06, 0.07, 0.07]


def official_state(cfg=TINY, seed=0):
    """Random tensors under every key of the released file (``CopernicusFMViT(global_pool=False)`` + mask_token),
    with the released shapes, written without our modules."""
    g = torch.Generator().manual_seed(seed)
    d, w, k, ffn = cfg.embed_dim, cfg.wave_dim, cfg.patch_size, cfg.generator_ffn_dim
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.2  # noqa: E731
    state = {"cls_token": r(1, 1, d), "mask_token": r(1, 1, d), "pos_embed": r(1, 1 + cfg.pos_grid**2, d),
             "norm.weight": 1 + r(d), "norm.bias": r(d)}  # fmt: skip
    for name in ("coord", "scale", "time"):
        state.update({f"{name}_fc.weight": r(d, d) / 4, f"{name}_fc.bias": r(d), f"{name}_token": r(1, 1, d)})
    for hyper in ("patch_embed_spectral", "patch_embed_variable"):
        p, gen = hyper + ".", hyper + ".weight_generator."
        enc = gen + "transformer_encoder.layers.0."
        state.update({p + "fclayer.w1.weight": r(w, w), p + "fclayer.w1.bias": r(w), p + "fclayer.w2.weight": r(w, w),
                      p + "fclayer.w2.bias": r(w), gen + "weight_tokens": r(cfg.num_weight_tokens, w),
                      gen + "bias_token": r(1, w), gen + "fc_weight.weight": r(k * k * d, w) / 4,
                      gen + "fc_weight.bias": r(k * k * d), gen + "fc_bias.weight": r(d, w), gen + "fc_bias.bias": r(d),
                      enc + "self_attn.in_proj_weight": r(3 * w, w), enc + "self_attn.in_proj_bias": r(3 * w),
                      enc + "self_attn.out_proj.weight": r(w, w), enc + "self_attn.out_proj.bias": r(w),
                      enc + "linear1.weight": r(ffn, w), enc + "linear1.bias": r(ffn), enc + "linear2.weight": r(w, ffn),
                      enc + "linear2.bias": r(w), enc + "norm1.weight": 1 + r(w), enc + "norm1.bias": r(w),
                      enc + "norm2.weight": 1 + r(w), enc + "norm2.bias": r(w)})  # fmt: skip
    state["patch_embed_variable.language_proj.weight"] = r(w, cfg.language_dim)
    state["patch_embed_variable.language_proj.bias"] = r(w)
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        state.update({b + "norm1.weight": 1 + r(d), b + "norm1.bias": r(d), b + "attn.qkv.weight": r(3 * d, d),
                      b + "attn.qkv.bias": r(3 * d), b + "attn.proj.weight": r(d, d), b + "attn.proj.bias": r(d),
                      b + "norm2.weight": 1 + r(d), b + "norm2.bias": r(d), b + "mlp.fc1.weight": r(4 * d, d),
                      b + "mlp.fc1.bias": r(4 * d), b + "mlp.fc2.weight": r(d, 4 * d), b + "mlp.fc2.bias": r(d)})  # fmt: skip
    return state


# ------------------------------------------------------------------------ the official code, re-stated
def fourier(x, lower, upper, d):
    """aurora ``FourierExpansion(lower, upper)(x, d)`` (inputs here respect the asserted range)."""
    x = x.double()
    wavelengths = torch.logspace(math.log10(lower), math.log10(upper), d // 2, base=10, dtype=x.dtype)
    prod = torch.einsum("...i,j->...ij", x, 2 * np.pi / wavelengths)
    return torch.cat((torch.sin(prod), torch.cos(prod)), dim=-1).float()


def official_forward(state, cfg, img, wvs_nm, bws_nm, meta, *, antialias=True, with_bandwidth=True, raw_layout=False):
    """``CopernicusFMViT.forward_features`` up to the blocks' output (input_mode 'spectral', kernel_size 16)."""
    d, w, k = cfg.embed_dim, cfg.wave_dim, cfg.patch_size
    lin = lambda t, name: F.linear(t, state[name + ".weight"], state[name + ".bias"])  # noqa: E731
    # Dynamic_MLP_OFA_spectral
    waves = fourier(torch.tensor(wvs_nm), 100, 1e9, w)
    if with_bandwidth:
        waves = waves + fourier(torch.tensor(bws_nm), 1, 1e9, w)
    p = "patch_embed_spectral."
    waves = waves + F.relu(lin(F.relu(lin(waves, p + "fclayer.w1")), p + "fclayer.w2"))
    layer = nn.TransformerEncoderLayer(w, cfg.generator_heads, cfg.generator_ffn_dim, 0.0, "gelu")
    prefix = p + "weight_generator.transformer_encoder.layers.0."
    layer.load_state_dict({key[len(prefix):]: v for key, v in state.items() if key.startswith(prefix)})
    layer.eval()
    gen = p + "weight_generator."
    out = layer(torch.cat([state[gen + "weight_tokens"], waves, state[gen + "bias_token"]]))
    weight = lin(out[cfg.num_weight_tokens:-1] + waves, gen + "fc_weight")
    bias = lin(out[-1], gen + "fc_bias") * 0.01
    if raw_layout:
        dynamic = weight.reshape(d, len(wvs_nm), k, k)
    else:
        dynamic = weight.view(len(wvs_nm), k, k, d).permute(3, 0, 1, 2)
    x = F.conv2d(img, dynamic * 0.01, bias, stride=k, padding=1).flatten(2).transpose(1, 2)
    # resize_abs_pos_embed(pos_embed, sqrt(N), (g, g), num_prefix_tokens=1): bicubic, antialias
    side, old = int(math.sqrt(x.shape[1])), cfg.pos_grid
    pos = state["pos_embed"]
    if side != old:
        grid = pos[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(side, side), mode="bicubic", antialias=antialias)
        pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, side * side, -1)], dim=1)
    lons, lats, times, areas = meta[:, 0], meta[:, 1], meta[:, 2], meta[:, 3]
    if torch.isnan(lons).any() or torch.isnan(lats).any():
        coord = state["coord_token"]
    else:
        coord = torch.cat([fourier(lons + 180, 0.0001, 720, d // 2), fourier(lats + 90, 0.0001, 720, d // 2)], -1)[:, None]
    area = state["scale_token"] if torch.isnan(areas).any() else fourier(areas, 0.001, 5.1e8, d)[:, None]
    time = state["time_token"] if torch.isnan(times).any() else fourier(times, 1, 365.25, d)[:, None]
    pos = pos + lin(coord, "coord_fc") + lin(area, "scale_fc") + lin(time, "time_fc")
    x = x + pos[:, 1:]
    x = torch.cat([(state["cls_token"] + pos[:, :1]).expand(x.shape[0], -1, -1), x], dim=1)
    heads = cfg.num_heads
    for i in range(cfg.depth):  # timm Block(qkv_bias=True), LayerNorm eps 1e-6
        b = f"blocks.{i}."
        h = F.layer_norm(x, (d,), state[b + "norm1.weight"], state[b + "norm1.bias"], 1e-6)
        q, kk, v = lin(h, b + "attn.qkv").reshape(len(x), -1, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ kk.transpose(-1, -2) / math.sqrt(d // heads), -1)
        x = x + lin((att @ v).transpose(1, 2).reshape(len(x), -1, d), b + "attn.proj")
        h = F.layer_norm(x, (d,), state[b + "norm2.weight"], state[b + "norm2.bias"], 1e-6)
        x = x + lin(F.gelu(lin(h, b + "mlp.fc1")), b + "mlp.fc2")
    return x


def write(tmp_path, state, name="CopernicusFM_tiny.pth"):
    torch.save({"model": state}, tmp_path / name)
    return tmp_path / name


def run_all(backbone, img, metadata=None):
    tokens, grid = backbone.embed(img, metadata=metadata)
    for i in range(backbone.num_layers):
        tokens = backbone.run_block(i, tokens, grid)
    return tokens


def image(bands=4, size=96, batch=2, seed=1):
    return torch.randn(batch, bands, size, size, generator=torch.Generator().manual_seed(seed))


NAN = float("nan")


# ------------------------------------------------------------------------------------------- parity
def test_forward_matches_the_official_computation_with_and_without_metadata(tmp_path):
    state = official_state()
    backbone = build_copernicusfm_backbone("tiny-copernicusfm", weights=write(tmp_path, state), in_wavelengths=GF2,
                                           in_bandwidths=GF2_BW, gsd_m=4.0)  # fmt: skip
    img = image()  # 96 px: grid 6×6, the 4×4 table is resampled
    wvs, bws = [w * 1000 for w in GF2], [b * 1000 for b in GF2_BW]
    area = patch_area_km2(4.0)
    assert area == pytest.approx(0.004096)  # (16 px · 4 m)²
    cases = {
        "area from the GSD": (None, torch.tensor([[NAN, NAN, NAN, area]] * 2)),
        "no metadata": (torch.full((2, 4), NAN), torch.full((2, 4), NAN)),
        "all metadata": (torch.tensor([[114.3, 30.6, 18000.0, area]] * 2),) * 2,
    }
    outputs = {}
    with torch.no_grad():
        for name, (ours, theirs) in cases.items():
            outputs[name] = run_all(backbone, img, ours)
            expected = official_forward(state, TINY, img, wvs, bws, theirs)
            torch.testing.assert_close(outputs[name], expected, rtol=1e-4, atol=1e-4, msg=name)
        assert (outputs["area from the GSD"] - outputs["no metadata"]).abs().max() > 1e-3
        assert (outputs["all metadata"] - outputs["area from the GSD"]).abs().max() > 1e-3
        # Negative controls.
        got = outputs["area from the GSD"]
        meta = cases["area from the GSD"][1]
        for name, kwargs in {"pos table without antialias": dict(antialias=False),
                             "bandwidth ignored": dict(with_bandwidth=False),
                             "raw kernel reshape": dict(raw_layout=True)}.items():  # fmt: skip
            wrong = official_forward(state, TINY, img, wvs, bws, meta, **kwargs)
            assert (got - wrong).abs().max() > 1e-3, name


def test_metadata_is_decided_per_sample():
    """The original takes the learned token for the whole batch when any sample lacks a value; here per sample,
    which equals the original run sample by sample."""
    torch.manual_seed(0)
    backbone = CopernicusFMBackbone(CopernicusFMModel(TINY), in_wavelengths=GF2)
    meta = torch.tensor([[10.0, 50.0, 365.0, 0.02], [NAN, NAN, NAN, NAN]])
    img = image()
    with torch.no_grad():
        both = run_all(backbone, img, meta)
        for i in range(2):
            torch.testing.assert_close(both[i:i + 1], run_all(backbone, img[i:i + 1], meta[i:i + 1]))


def test_released_and_torchgeo_files_load_strictly_with_identical_outputs(tmp_path):
    state = official_state(seed=2)
    torchgeo = {k: v for k, v in state.items() if k not in ("norm.weight", "norm.bias", "mask_token")}
    a = build_copernicusfm_backbone("tiny-copernicusfm", weights=write(tmp_path, state), in_wavelengths=GF2)
    b = build_copernicusfm_backbone("tiny-copernicusfm", weights=write(tmp_path, torchgeo, "tg.pth"), in_wavelengths=GF2)
    img = image()
    with torch.no_grad():
        assert all(torch.equal(x, y) for x, y in zip(a(img), b(img)))
    assert not hasattr(a.model, "patch_embed_variable")
    full = CopernicusFMConfig(**{**TINY.to_dict(), "variable_path": True})
    c = build_copernicusfm_backbone(full, weights=write(tmp_path, state), in_wavelengths=GF2)
    assert torch.equal(c.model.patch_embed_variable.language_proj.weight,
                       state["patch_embed_variable.language_proj.weight"])  # fmt: skip
    broken = dict(state)
    del broken["time_token"]
    with pytest.raises(ValueError, match=r"missing keys \['time_token'\]"):
        build_copernicusfm_backbone("tiny-copernicusfm", weights=write(tmp_path, broken, "x.pth"))
    broken = {**state, "blocks.0.ls1.gamma": torch.ones(32)}
    with pytest.raises(ValueError, match=r"unexpected keys \['blocks.0.ls1.gamma'\]"):
        build_copernicusfm_backbone("tiny-copernicusfm", weights=write(tmp_path, broken, "y.pth"))


def test_shares_dofas_hypernetwork_code():
    """One piece of code: with DOFA's band descriptors, Copernicus-FM's embedding is DOFA's embedding."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, wave_dim=16)
    dofa = DOFABackbone(dataclasses.replace(DOFA_CONFIGS["tiny-dofa"], embed_dim=32, num_heads=2, wave_dim=16,
                                            num_weight_tokens=8, generator_heads=2, generator_ffn_dim=32))  # fmt: skip
    ours = CopernicusFMModel(cfg).patch_embed_spectral
    ours.load_state_dict({k[len("patch_embed."):]: v for k, v in dofa.model.state_dict().items()
                          if k.startswith("patch_embed.")})  # fmt: skip
    tokens = dofa.model.patch_embed.wave_embedding(torch.tensor(GF2))
    img = image()
    with torch.no_grad():
        expected, _ = dofa.model.patch_embed(img, torch.tensor(GF2))
        got, _ = ours.convolve(img, *ours.kernel_from_tokens(tokens))
    assert torch.equal(got, expected)
    assert type(ours).__mro__[1] is type(dofa.model.patch_embed).__mro__[1]


# ------------------------------------------------------------------------------------------ contract
def test_gsd_bandwidths_and_band_layouts(caplog):
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING):
        fine = CopernicusFMBackbone(CopernicusFMModel(TINY), in_wavelengths=GF2, gsd_m=0.2)  # FLAIR: 3.2 m patches
    assert fine.area_km2 is None and "outside Copernicus-FM's encoded range" in caplog.text
    coarse = CopernicusFMBackbone(CopernicusFMModel(TINY), in_wavelengths=GF2, gsd_m=10.0)
    assert coarse.area_km2 == pytest.approx(0.0256) and coarse.in_bandwidths == [0.06] * 4  # default rule
    assert coarse.default_metadata(2, torch.device("cpu"))[:, 3].tolist() == [0.0256] * 2
    caplog.clear()
    with caplog.at_level(logging.WARNING), torch.no_grad():
        permuted = coarse.embed(image()[:, [3, 2, 1, 0]], wavelengths=GF2[::-1])[0]
        assert not caplog.records  # the built bands, reordered: their own bandwidths
        other = [0.45, 0.55, 0.65, 0.85]
        coarse.embed(image(), wavelengths=other)
        coarse.embed(image(), wavelengths=other)
    assert len(caplog.records) == 1 and "default rule" in caplog.text
    with torch.no_grad():
        torch.testing.assert_close(permuted, coarse.embed(image())[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"band\(s\) \[4\] have none"):
        coarse.embed(image(5), wavelengths=GF2 + [NAN])
    with pytest.raises(ValueError, match="micrometres"):
        CopernicusFMBackbone(CopernicusFMModel(TINY), in_wavelengths=[830.0, 665.0])
    with pytest.raises(ValueError, match="FWHM in micrometres"):
        CopernicusFMBackbone(CopernicusFMModel(TINY), in_wavelengths=GF2, in_bandwidths=[0.0] * 4)
    with pytest.raises(ValueError, match="patch area"):
        coarse.embed(image(), metadata=torch.tensor([[NAN, NAN, NAN, 1e-6]] * 2))
    with pytest.raises(ValueError, match="no wavelengths"):
        CopernicusFMBackbone(CopernicusFMModel(TINY)).embed(image())


def test_stepping_equals_the_model_forward_frozen_and_round_trip(tmp_path):
    backbone = build_copernicusfm_backbone("tiny-copernicusfm", pretrained=False, in_wavelengths=GF2, gsd_m=4.0,
                                           gradient_checkpointing=True, out_indices=[1, 3])  # fmt: skip
    img = image()
    with torch.no_grad():
        stepped = run_all(backbone, img)
        meta = backbone.default_metadata(2, img.device)
        assert torch.equal(stepped, backbone.model(img, torch.tensor(GF2), torch.tensor(backbone.in_bandwidths), meta))
    backbone.train()
    assert not any(m.training for m in backbone.modules()) and not any(p.requires_grad for p in backbone.parameters())
    tokens, grid = backbone.embed(img)
    delta = torch.zeros_like(tokens, requires_grad=True)
    backbone.run_block(1, backbone.run_block(0, tokens + delta, grid), grid).square().sum().backward()
    assert delta.grad.abs().sum() > 0 and all(p.grad is None for p in backbone.parameters())
    backbone.save_pretrained(tmp_path / "cfm")
    loaded = build_copernicusfm_backbone("tiny-copernicusfm", weights=tmp_path / "cfm", in_wavelengths=GF2,
                                         gsd_m=4.0, out_indices=[1, 3])  # fmt: skip
    with torch.no_grad():
        assert all(torch.equal(x, y) for x, y in zip(loaded(img), backbone(img)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert all(torch.isfinite(m).all() for m in loaded(img))
    with pytest.raises(ValueError, match="unknown Copernicus-FM config keys"):
        CopernicusFMConfig.from_dict({"embed_dim": 32, "wave_dims": 16})


# Parameter counts: the released ViT-B/16 (RSFM.md §4): 139,452,544 with its final norm, + 768 for mask_token
# = 139,453,312 tensors in CopernicusFM_ViT_base_varlang_e100.pth (557,940,490 bytes at fp32 with the pickle).
# Spectral hypernetwork 26,104,064, variable one 26,366,336.
def test_real_preset_parameter_counts_on_meta():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    with torch.device("meta"):
        released = CopernicusFMModel(dataclasses.replace(COPERNICUSFM_CONFIGS["copernicusfm-vitb16"], variable_path=True))
        backbone = build_copernicusfm_backbone("copernicusfm-vitb16", pretrained=False)
    final_norm, mask_token = 2 * 768, 768
    assert count(released) + final_norm == 139_452_544
    assert count(released) + final_norm + mask_token == 139_453_312
    assert count(released.patch_embed_spectral) == 26_104_064 and count(released.patch_embed_variable) == 26_366_336
    assert count(backbone) == 139_452_544 - final_norm - 26_366_336  # what runs: no variable path, no final norm
    assert backbone.out_indices == (3, 5, 7, 11) and backbone.num_prefix_tokens == 1
