"""SenPa-MAE backbone: numbers against a plain re-statement of JonathanPrexl/SenPa-MAE ``src/model.py``
(``Encoder.forward`` without masking) on a stand-in of the authors' training checkpoint (``train.py``'s
``{'model_state_dict': …}`` with ``_orig_mod.`` keys), for 3, 4 and 32 bands; response curves, GSD,
position resampling, sizes on the meta device, frozen-only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spectralmoe.bands import default_bandwidths_um, get_sensor
from spectralmoe.models.factory import build_segmentor
from spectralmoe.models.backbones.senpamae import SENPAMAE_CONFIGS, build_senpamae_backbone

RGB = [0.665, 0.56, 0.49]
GF2 = list(get_sensor("gf2").wavelengths_um)
OHS = list(get_sensor("ohs").wavelengths_um)
TINY = SENPAMAE_CONFIGS["tiny-senpamae"]  # D 32, 4 blocks, 2 heads, 48 px = 3 × 3 patches of 16


def authors_checkpoint(cfg, bands: int, seed: int = 0) -> dict:
    """What ``SenPaMAE_Trainer._save_checkpoint`` writes for a torch.compile-d model: encoder and decoder
    keys (src/model.py names) under ``_orig_mod.``, plus optimiser state and counters."""
    g = torch.Generator().manual_seed(seed)
    d, n = cfg.embed_dim, cfg.pos_grid**2
    shapes = {"encoder.linEmmbedingLayer.weight": (d, 256), "encoder.linEmmbedingLayer.bias": (d,),
              "encoder.pos_embedding": (1, 1, n, d), "encoder.layer_norm.weight": (d,), "encoder.layer_norm.bias": (d,)}
    for i, (a, b) in enumerate(zip((2301, 2 * d, d, d, d), (2 * d, d, d, d, d))):
        shapes[f"encoder.linEmmbedingLayerResponsefunction.network.{2 * i}.weight"] = (b, a)
        shapes[f"encoder.linEmmbedingLayerResponsefunction.network.{2 * i}.bias"] = (b,)
    for i, (a, b) in enumerate(zip((1, d // 2, d, 2 * d, d), (d // 2, d, 2 * d, d, d))):
        shapes[f"encoder.linEmmbedingLayerGSD.network.0.{2 * i}.weight"] = (b, a)
        shapes[f"encoder.linEmmbedingLayerGSD.network.0.{2 * i}.bias"] = (b,)
    for i in range(cfg.depth):
        t = f"encoder.transformer.{i}."
        shapes.update({t + "norm1.weight": (d,), t + "norm1.bias": (d,), t + "attn.qkv.weight": (3 * d, d),
                       t + "attn.proj.weight": (d, d), t + "attn.proj.bias": (d,), t + "norm2.weight": (d,),
                       t + "norm2.bias": (d,), t + "mlp.fc1.weight": (4 * d, d), t + "mlp.fc1.bias": (4 * d,),
                       t + "mlp.fc2.weight": (d, 4 * d), t + "mlp.fc2.bias": (d,)})  # fmt: skip
    shapes.update({"decoder.mask_token": (1, 1, d), "decoder.pos_embedding": (1, bands * n, d),
                   "decoder.head.weight": (256, d), "decoder.head.bias": (256,),
                   "decoder.transformer.0.attn.qkv.weight": (3 * d, d)})  # fmt: skip
    state = {}
    for key, shape in shapes.items():
        if key.endswith(("norm1.weight", "norm2.weight", "layer_norm.weight")):
            state[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 2:
            state[key] = torch.randn(shape, generator=g) / math.sqrt(shape[1])
        else:
            state[key] = 0.1 * torch.randn(shape, generator=g)
    return {"model_state_dict": {"_orig_mod." + k: v for k, v in state.items()}, "epoch": 3, "globalstep": 1200,
            "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}}  # fmt: skip


def gaussian_curves(waves_um, widths_um):
    """Peak-1 Gaussians with FWHM = bandwidth on 300..2600 nm, [C, 2301] (re-derived here, not imported)."""
    grid = np.arange(300, 2601, dtype=np.float64)
    sigma = np.array(widths_um) * 1000 / (2 * math.sqrt(2 * math.log(2)))
    return torch.tensor(np.exp(-0.5 * ((grid[None] - np.array(waves_um)[:, None] * 1000) / sigma[:, None]) ** 2),
                        dtype=torch.float32)  # fmt: skip


def ref_encoder(s, cfg, img, rf, gsd):
    """Encoder.forward (channels_seperate_tokens, sensor parameter embedding on, no masking) → [B, C·N, D]."""
    p = "encoder."
    b, c, hh, ww = img.shape
    h1, w1 = hh // 16, ww // 16
    patches = img.reshape(b, c, h1, 16, w1, 16).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h1 * w1, 256)
    x = F.linear(patches, s[p + "linEmmbedingLayer.weight"], s[p + "linEmmbedingLayer.bias"])
    x = x + s[p + "pos_embedding"]
    r = rf
    for i in range(5):  # Linear, ReLU after every one
        n = f"{p}linEmmbedingLayerResponsefunction.network.{2 * i}"
        r = F.relu(F.linear(r, s[n + ".weight"], s[n + ".bias"]))
    q = gsd[:, :, None]
    for i in range(5):  # Linear, ReLU between
        n = f"{p}linEmmbedingLayerGSD.network.0.{2 * i}"
        q = F.linear(q, s[n + ".weight"], s[n + ".bias"])
        q = F.relu(q) if i < 4 else q
    x = (x + r[:, :, None, :] + q[:, :, None, :]).reshape(b, -1, cfg.embed_dim)
    d, heads = cfg.embed_dim, cfg.num_heads
    for i in range(cfg.depth):
        t = f"{p}transformer.{i}."
        y = F.layer_norm(x, (d,), s[t + "norm1.weight"], s[t + "norm1.bias"], 1e-5)
        qq, kk, vv = F.linear(y, s[t + "attn.qkv.weight"]).reshape(b, -1, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        att = (qq @ kk.transpose(-1, -2) * (d // heads) ** -0.5).softmax(-1)
        out = (att @ vv).transpose(1, 2).reshape(b, -1, d)
        x = x + F.linear(out, s[t + "attn.proj.weight"], s[t + "attn.proj.bias"])
        y = F.layer_norm(x, (d,), s[t + "norm2.weight"], s[t + "norm2.bias"], 1e-5)
        x = x + F.linear(F.gelu(F.linear(y, s[t + "mlp.fc1.weight"], s[t + "mlp.fc1.bias"])), s[t + "mlp.fc2.weight"],
                         s[t + "mlp.fc2.bias"])  # fmt: skip
    return F.layer_norm(x, (d,), s[p + "layer_norm.weight"], s[p + "layer_norm.bias"], 1e-5)


def load(tmp_path, waves, seed=0, **kwargs):
    raw = authors_checkpoint(TINY, len(waves), seed)
    path = tmp_path / f"checkpoint_{seed}_{len(waves)}.pt"
    torch.save(raw, path)
    state = {k.removeprefix("_orig_mod."): v for k, v in raw["model_state_dict"].items()}
    return build_senpamae_backbone("tiny-senpamae", weights=path, in_wavelengths=waves, **kwargs), state


def final_tokens(backbone, image, waves=None):
    tokens, grid = backbone.embed(image, waves)
    for i in range(backbone.num_layers):
        tokens = backbone.run_block(i, tokens, grid)
    return tokens, grid


@pytest.mark.parametrize("waves", [RGB, GF2, OHS], ids=["3-bands", "4-bands", "32-bands"])
def test_training_checkpoint_loads_and_matches_the_official_encoder(tmp_path, waves):
    backbone, state = load(tmp_path, waves, gsd_m=4.0)
    image = torch.randn(2, len(waves), 48, 48, generator=torch.Generator().manual_seed(1)) * 0.1 + 0.15
    rf = gaussian_curves(waves, default_bandwidths_um(waves))[None].expand(2, -1, -1)
    expected = ref_encoder(state, TINY, image, rf, torch.full((2, len(waves)), 4.0))
    tokens, grid = final_tokens(backbone, image)
    assert grid == (3, 3) and tokens.shape == (2, len(waves) * 9, 32)
    normed = backbone.model.norm(tokens)
    torch.testing.assert_close(normed, expected, rtol=1e-4, atol=1e-4)
    maps = backbone.tokens_to_map(tokens, grid)
    torch.testing.assert_close(maps, expected.view(2, len(waves), 3, 3, 32).mean(1).permute(0, 3, 1, 2),
                               rtol=1e-4, atol=1e-4)  # fmt: skip
    # negative controls: another GSD, the bands' curves swapped
    other_gsd = ref_encoder(state, TINY, image, rf, torch.full((2, len(waves)), 10.0))
    swapped = ref_encoder(state, TINY, image, rf.flip(1), torch.full((2, len(waves)), 4.0))
    for wrong in (other_gsd, swapped):
        assert (wrong - expected).abs().max() > 1e-3


def test_band_order_is_irrelevant_when_wavelengths_follow_and_curves_matter(tmp_path):
    backbone, _ = load(tmp_path, GF2, gsd_m=4.0)
    image = torch.rand(1, 4, 48, 48) * 0.3
    maps = backbone(image)
    reordered = backbone(image[:, [3, 2, 1, 0]], GF2[::-1])  # the bands' token sets carry their own curves
    for a, b in zip(maps, reordered):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    wrong = backbone(image[:, [3, 2, 1, 0]])  # reordered pixels, unchanged wavelengths
    assert (wrong[-1] - maps[-1]).abs().max() > 1e-3


def test_position_table_is_resampled_to_the_grid_and_measured_curves_are_used(tmp_path):
    backbone, state = load(tmp_path, GF2, gsd_m=4.0)
    tokens, grid = backbone.embed(torch.zeros(1, 4, 64, 80))  # 4 × 5 grid from the 3 × 3 table
    assert grid == (4, 5) and tokens.shape == (1, 4 * 20, 32)
    table = state["encoder.pos_embedding"][0, 0].T.reshape(1, 32, 3, 3)
    resampled = F.interpolate(table, size=(4, 5), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    zero_tokens, _ = backbone.embed(torch.zeros(1, 4, 64, 80))
    sensor = zero_tokens.view(4, 20, 32)[:, 0] - resampled[0, 0] - state["encoder.linEmmbedingLayer.bias"]
    torch.testing.assert_close(zero_tokens.view(4, 20, 32) - sensor[:, None], (resampled + state[
        "encoder.linEmmbedingLayer.bias"]).expand(4, -1, -1), rtol=1e-5, atol=1e-5)  # fmt: skip
    curves = np.zeros((2301, 4), dtype=np.float32)  # the authors' file layout: [2301, bands]
    for band, centre in enumerate((830, 665, 560, 490)):
        curves[centre - 320:centre - 280, band] = 1.0
    np.save(tmp_path / "rfs_gf2.npy", curves)
    measured, _ = load(tmp_path, GF2, gsd_m=4.0, response_curves=tmp_path / "rfs_gf2.npy")
    torch.testing.assert_close(measured.response_curves(), torch.from_numpy(curves.T))
    assert (measured(torch.rand(1, 4, 48, 48))[-1] - backbone(torch.rand(1, 4, 48, 48))[-1]).abs().max() > 1e-3
    np.save(tmp_path / "bad.npy", curves[:, :3])
    with pytest.raises(ValueError, match=r"must be \[4 bands, 2301 samples"):
        load(tmp_path, GF2, response_curves=tmp_path / "bad.npy")


def test_gaussian_curves_have_their_peak_at_the_centre_and_half_maximum_at_the_band_edges():
    backbone = build_senpamae_backbone("tiny-senpamae", pretrained=False, in_wavelengths=[0.665], in_bandwidths=[0.06])
    curve = backbone.response_curves()[0]
    assert curve.shape == (2301,) and float(curve.max()) == 1.0 and int(curve.argmax()) == 665 - 300
    assert abs(float(curve[635 - 300]) - 0.5) < 1e-6 and abs(float(curve[695 - 300]) - 0.5) < 1e-6


def test_checkpoint_errors_and_missing_public_weights(tmp_path):
    raw = authors_checkpoint(TINY, 4)
    raw["model_state_dict"]["_orig_mod.encoder.cls_token"] = torch.zeros(1, 1, 32)
    torch.save(raw, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=r"not SenPa-MAE encoder/decoder keys \['encoder.cls_token'\]"):
        build_senpamae_backbone("tiny-senpamae", weights=tmp_path / "extra.pt", in_wavelengths=GF2)
    raw = authors_checkpoint(TINY, 4)
    del raw["model_state_dict"]["_orig_mod.encoder.transformer.3.mlp.fc2.bias"]
    torch.save(raw, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"missing keys \['blocks.3.fc2.bias'\]"):
        build_senpamae_backbone("tiny-senpamae", weights=tmp_path / "missing.pt", in_wavelengths=GF2)
    with pytest.raises(ValueError, match="weights are not public"):
        build_senpamae_backbone("senpamae-vitb16", in_wavelengths=GF2)
    with pytest.raises(ValueError, match="non-spectral bands cannot enter"):
        build_senpamae_backbone("tiny-senpamae", pretrained=False, in_wavelengths=GF2 + [float("nan")])


def test_vit_b_encoder_has_the_computed_parameter_count_and_refuses_adapters():
    """95,024,640 (RSFM.md §3: blocks 85.03 M, response MLP 6.49 M, GSD MLP 3.25 M, patch and position)."""
    with torch.device("meta"):
        backbone = build_senpamae_backbone("senpamae-vitb16", pretrained=False, in_wavelengths=OHS)
    assert sum(p.numel() for p in backbone.parameters()) == 95_024_640
    parts = {name: sum(p.numel() for p in module.parameters()) for name, module in backbone.model.named_children()}
    linear = lambda a, b: a * b + b  # noqa: E731
    assert parts["response_mlp"] == linear(2301, 1536) + linear(1536, 768) + 3 * linear(768, 768) == 6_488_064
    assert parts["gsd_mlp"] == linear(1, 384) + linear(384, 768) + linear(768, 1536) + linear(1536, 768) + linear(
        768, 768) == 3_248_640  # fmt: skip
    with pytest.raises(ValueError, match="adapter 'vpt' cannot run on SenPaMAEBackbone: SenPa-MAE makes one token "
                                         "per band"):  # fmt: skip
        build_segmentor(backbone="tiny-senpamae", adapter="vpt", head="fpn", sensor="ohs", num_classes=3,
                        pretrained=False, adapter_kwargs={"num_prompts": 2})  # fmt: skip
    model = build_segmentor(backbone="tiny-senpamae", adapter="freeze", head="fpn", sensor="ohs", num_classes=3,
                            pretrained=False)  # fmt: skip
    assert model.backbone.gsd_m == 10.0  # the OHS record
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model.eval().predict_logits(torch.rand(1, 32, 32, 32) * 3000)
    assert logits.shape == (1, 3, 32, 32) and torch.isfinite(logits).all()
