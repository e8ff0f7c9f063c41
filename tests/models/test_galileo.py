"""Galileo backbone: numbers against a plain re-statement of nasaharvest/galileo ``single_file_galileo.py``
(``Encoder.forward`` with masks, ``GalileoWrapper``-style averaging), band slots and group masking,
released ``encoder.pt`` layout (strict), sizes on the meta device, frozen-only.

Set ``SPECTRALMOE_GALILEO_NANO`` to the released nano ``encoder.pt`` (data/models/nano in the repository)
to also check the real file: strict load, its stored tables, and the forward against the reference.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spectralmoe.bands import get_sensor
from spectralmoe.models.accounting import build_on_meta
from spectralmoe.models.adapters import build_adapter
from spectralmoe.models.backbones import build_backbone
from spectralmoe.models.backbones.galileo import (
    GALILEO_CONFIGS,
    GalileoBackbone,
    build_galileo_backbone,
    galileo_band_slots,
    visible_groups,
)
from spectralmoe.models.factory import build_segmentor
from spectralmoe.models.heads import build_head
from spectralmoe.models.segmentor import Segmentor

GF2 = list(get_sensor("gf2").wavelengths_um)  # NIR, R, G, B
OHS = list(get_sensor("ohs").wavelengths_um)
TINY = GALILEO_CONFIGS["tiny-galileo"]
# The 13 space-time channels and 7 groups of single_file_galileo.py
SPACE_TIME_BANDS = ["VV", "VH", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12", "NDVI"]
GROUPS = {"S1": ["VV", "VH"], "S2_RGB": ["B2", "B3", "B4"], "S2_Red_Edge": ["B5", "B6", "B7"], "S2_NIR_10m": ["B8"],
          "S2_NIR_20m": ["B8A"], "S2_SWIR": ["B11", "B12"], "NDVI": ["NDVI"]}  # fmt: skip
SPACE_CHANNELS, TIME_CHANNELS, STATIC_CHANNELS = (2, 9, 5), (2, 3, 1), (1, 3, 9, 5)


# ------------------------------------------------------------------------------ the reference
def ref_1d(embed_dim, pos):
    omega = torch.arange(embed_dim // 2) / embed_dim / 2.0
    omega = 1.0 / 10000**omega
    out = torch.einsum("m,d->md", pos.reshape(-1).float(), omega)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def ref_2d_with_resolution(embed_dim, grid_size, res, sincos=ref_1d):
    grid_h, grid_w = torch.arange(grid_size), torch.arange(grid_size)
    grid = torch.stack(torch.meshgrid(grid_w, grid_h, indexing="xy"), dim=0)
    grid = torch.einsum("chw,n->cnhw", grid.float(), res)
    _, n, h, w = grid.shape
    emb = torch.cat([sincos(embed_dim // 2, grid[0]), sincos(embed_dim // 2, grid[1])], dim=1)
    return emb.reshape(n, h * w, embed_dim)


def ref_month_table(embed_dim):
    angles = torch.arange(0, 13) / (12 / (2 * np.pi))
    sin_table = torch.sin(torch.stack([angles for _ in range(embed_dim // 2)], axis=-1))
    cos_table = torch.cos(torch.stack([angles for _ in range(embed_dim // 2)], axis=-1))
    return torch.cat([sin_table[:-1], cos_table[:-1]], axis=-1)


def ref_resize_kernel(weight, new):
    """FlexiPatchEmbed.resize_patch_embed: pseudo-inverse of the bicubic (antialiased) resize of basis patches."""
    old = weight.shape[-1]
    if old == new:
        return weight
    mat = []
    for i in range(old * old):
        basis = torch.zeros(old, old)
        basis[np.unravel_index(i, (old, old))] = 1.0
        mat.append(F.interpolate(basis[None, None], (new, new), mode="bicubic", antialias=True)[0, 0].reshape(-1))
    pinv = torch.linalg.pinv(torch.stack(mat))
    return torch.einsum("nk,oik->oin", pinv, weight.reshape(*weight.shape[:2], -1)).reshape(*weight.shape[:2], new, new)


def ref_encoder(s, cfg, s_t_x, s_t_m, months, patch, input_res, sincos_2d=None):
    """Encoder.forward (exit_after None, no token exit, layernorm on exit) on space-time input [B, H, W, 1, 13]
    with mask [B, H, W, 1, 7] (space, time and static inputs all masked), then the per-patch average of
    apply_mask_and_average_tokens_per_patch. Returns (tokens after the blocks, un-normed, visible only, in
    the original's (h w t c_g) order) and the averaged normed map [B, h·w, D]."""
    b, hh, ww, t, _ = s_t_x.shape
    d, q = cfg.embed_dim, cfg.embed_dim // 4
    h, w = hh // patch, ww // patch
    tokens, masks = [], []
    for idx, (group, bands) in enumerate(GROUPS.items()):
        m = s_t_m[:, 0::patch, 0::patch, :, idx]
        masks.append(m)
        if m.min() == 0:
            x = s_t_x[..., [SPACE_TIME_BANDS.index(bd) for bd in bands]]
            x = x.permute(0, 3, 4, 1, 2).reshape(b * t, len(bands), hh, ww)
            weight = ref_resize_kernel(s[f"space_time_embed.{group}.proj.weight"], patch)
            y = F.conv2d(x, weight, s[f"space_time_embed.{group}.proj.bias"], stride=patch)
            tokens.append(y.reshape(b, t, d, h, w).permute(0, 3, 4, 1, 2))
        else:
            tokens.append(torch.zeros(b, h, w, t, d))
    s_t = torch.stack(tokens, -2)  # b h w t c_g d
    s_t_mask = torch.stack(masks, -1)
    # encodings (apply_encodings): channel | time position | month | spatial (GSD-scaled)
    channel = s["s_t_channel_embed"][None, None, None, None].expand(b, h, w, t, -1, -1)
    pos = s["pos_embed"][:t][None, None, None, :, None].expand(b, h, w, t, 7, -1)
    month = s["month_embed.weight"][months][:, None, None, :, None].expand(b, h, w, t, 7, -1)
    gsd_ratio = input_res * patch / 10
    spatial = (sincos_2d or ref_2d_with_resolution)(q, h, torch.ones(b) * gsd_ratio)
    spatial = spatial.reshape(b, h, w, q)[:, :, :, None, None].expand(b, h, w, t, 7, q)
    s_t = s_t + torch.cat([channel, pos, month, spatial], -1)
    x = s_t.reshape(b, -1, d)
    n_sp, n_t, n_st = h * w * len(SPACE_CHANNELS), t * len(TIME_CHANNELS), len(STATIC_CHANNELS)
    x = torch.cat([x, torch.zeros(b, n_sp + n_t + n_st, d)], 1)  # masked space/time/static tokens
    m = torch.cat([s_t_mask.reshape(b, -1), torch.ones(b, n_sp + n_t + n_st)], 1).bool()
    sorted_mask, indices = torch.sort((~m).int(), dim=1, descending=True, stable=True)
    x = x.gather(1, indices[:, :, None].expand_as(x))[:, : sorted_mask.sum(-1).max()]
    heads = cfg.num_heads
    for i in range(cfg.depth):
        p = f"blocks.{i}."
        y = F.layer_norm(x, (d,), s[p + "norm1.weight"], s[p + "norm1.bias"], 1e-5)
        qq, kk, vv = (F.linear(y, s[p + f"attn.{n}.weight"], s[p + f"attn.{n}.bias"]) for n in "qkv")
        qq, kk, vv = (z.reshape(b, -1, heads, d // heads).transpose(1, 2) for z in (qq, kk, vv))
        att = (qq @ kk.transpose(-1, -2) * (d // heads) ** -0.5).softmax(-1)
        out = (att @ vv).transpose(1, 2).reshape(b, -1, d)
        x = x + F.linear(out, s[p + "attn.proj.weight"], s[p + "attn.proj.bias"])
        y = F.layer_norm(x, (d,), s[p + "norm2.weight"], s[p + "norm2.bias"], 1e-5)
        x = x + F.linear(F.gelu(F.linear(y, s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"])), s[p + "mlp.fc2.weight"],
                         s[p + "mlp.fc2.bias"])  # fmt: skip
    blocks_out = x
    normed = F.layer_norm(x, (d,), s["norm.weight"], s["norm.bias"], 1e-5)
    full = torch.zeros(b, m.shape[1], d).scatter(1, indices[:, : normed.shape[1], None].expand(-1, -1, d), normed)
    s_t_out = full[:, : h * w * t * 7].reshape(b, h * w, t * 7, d)
    keep = (1 - s_t_mask.reshape(b, h * w, t * 7).float())[..., None]
    return blocks_out, (s_t_out * keep).sum(2) / keep.sum(2)


def galileo_input(image, wavelengths, slots_override=None):
    """Our image (segmentor-normalised z) as Galileo's [B, H, W, 1, 13] input (z/4 + 1/2 in the slots) and
    its group mask, built from the band → slot assignment (or an explicit override)."""
    slots = slots_override or galileo_band_slots(wavelengths)
    b, _, hh, ww = image.shape
    x = torch.zeros(b, hh, ww, 1, 13)
    for slot, band in slots.items():
        x[..., 0, SPACE_TIME_BANDS.index(slot)] = image[:, band] / 4 + 0.5
    groups = [g for g, bands in GROUPS.items() if all(bd in slots for bd in bands)]
    mask = torch.ones(b, hh, ww, 1, 7)
    for g in groups:
        mask[..., list(GROUPS).index(g)] = 0
    return x, mask, groups


def tiny(seed=0, waves=GF2, **kwargs):
    torch.manual_seed(seed)
    backbone = build_galileo_backbone("tiny-galileo", pretrained=False, in_wavelengths=waves, **kwargs)
    with torch.no_grad():  # the original initialises channel embeddings and biases at zero: move them off it
        for name, p in backbone.model.named_parameters():
            if "channel_embed" in name or name.endswith("bias"):
                p.add_(torch.randn(p.shape) * 0.2)
    return backbone


def run_blocks(backbone, image, waves=None):
    tokens, grid = backbone.embed(image, waves)
    for i in range(backbone.num_layers):
        tokens = backbone.run_block(i, tokens, grid)
    return tokens, grid


def ours_in_reference_order(tokens, groups, n):
    """Our group-major [B, G·N, D] in the original's (h w c_g) order."""
    return tokens.view(tokens.shape[0], groups, n, -1).transpose(1, 2).reshape(tokens.shape[0], groups * n, -1)


# ---------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize(("waves", "size", "patch"), [(GF2, 32, 8), (OHS, 16, 4), (GF2, 32, 16)],
                         ids=["gf2-patch8", "ohs-patch4", "gf2-patch16"])  # fmt: skip
def test_forward_matches_the_official_encoder(waves, size, patch):
    backbone = tiny(waves=waves, gsd_m=4.0, month=3, patch_size=patch)
    image = torch.randn(2, len(waves), size, size, generator=torch.Generator().manual_seed(1))
    x, mask, groups = galileo_input(image, waves)
    state = backbone.model.state_dict()
    ref_tokens, ref_map = ref_encoder(state, TINY, x, mask, torch.tensor([[3], [3]]), patch, 4.0)
    tokens, grid = run_blocks(backbone, image)
    n = grid[0] * grid[1]
    assert tokens.shape == (2, len(groups) * n, TINY.embed_dim)
    torch.testing.assert_close(ours_in_reference_order(tokens, len(groups), n), ref_tokens, rtol=1e-4, atol=1e-4)
    maps = backbone.tokens_to_map(tokens, grid)
    expected = ref_map.transpose(1, 2).reshape(2, -1, *grid)
    if patch < 16:  # pooled to the H/16 grid
        expected = F.avg_pool2d(expected, 16 // patch)
    assert maps.shape == (2, TINY.embed_dim, size // 16, size // 16)
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-4)


def test_negative_controls_the_reference_comparison_can_fail():
    """The comparison sees a wrong group set (GF-2's NIR also in B8A), MAE's sin-cos rule (temperature 10000
    instead of Galileo's), another GSD and another month."""
    backbone = tiny(gsd_m=4.0)
    image = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    tokens, grid = run_blocks(backbone, image)
    ours = backbone.tokens_to_map(tokens, grid)
    state, months = backbone.model.state_dict(), torch.tensor([[6], [6]])

    def reference_map(x, mask, res=4.0, month=months, sincos_2d=None):
        _, ref = ref_encoder(state, TINY, x, mask, month, 8, res, sincos_2d)
        return F.avg_pool2d(ref.transpose(1, 2).reshape(2, -1, *grid), 2)

    x, mask, _ = galileo_input(image, GF2)
    torch.testing.assert_close(ours, reference_map(x, mask), rtol=1e-4, atol=1e-4)
    slots = {**galileo_band_slots(GF2), "B8A": 0}
    x20, mask20, groups20 = galileo_input(image, GF2, slots_override=slots)
    assert groups20 == ["S2_RGB", "S2_NIR_10m", "S2_NIR_20m"]
    def mae(dim, pos):  # MAE's rule: 10000^(-i/(dim/2))
        angles = pos.reshape(-1, 1) * 10000 ** (-torch.arange(dim // 2) / (dim / 2))
        return torch.cat([torch.sin(angles), torch.cos(angles)], 1)

    for wrong in (reference_map(x20, mask20), reference_map(x, mask, res=10.0),
                  reference_map(x, mask, month=torch.tensor([[2], [2]])),
                  reference_map(x, mask, sincos_2d=lambda q, g, r: ref_2d_with_resolution(q, g, r, mae))):
        assert (ours - wrong).abs().max() > 1e-3


def test_gf2_uses_exactly_the_rgb_and_10m_nir_groups_whatever_the_band_order():
    assert galileo_band_slots(GF2) == {"B2": 3, "B3": 2, "B4": 1, "B8": 0}
    assert visible_groups(galileo_band_slots(GF2)) == ["S2_RGB", "S2_NIR_10m"]
    assert visible_groups(galileo_band_slots(OHS)) == ["S2_RGB", "S2_Red_Edge", "S2_NIR_10m", "S2_NIR_20m"]
    s2 = list(get_sensor("sentinel2-l1c").wavelengths_um)
    assert visible_groups(galileo_band_slots(s2)) == ["S2_RGB", "S2_Red_Edge", "S2_NIR_10m", "S2_NIR_20m", "S2_SWIR"]
    assert visible_groups(galileo_band_slots([0.665, 0.56, 0.49])) == ["S2_RGB"]
    backbone = tiny()
    image = torch.randn(2, 4, 32, 48)
    tokens, grid = backbone.embed(image)
    assert grid == (4, 6) and tokens.shape == (2, 2 * 24, TINY.embed_dim)  # 2 groups × 4 × 6 patches
    bgrn, _ = backbone.embed(image[:, [3, 2, 1, 0]], GF2[::-1])  # same bands, other file order
    torch.testing.assert_close(bgrn, tokens, rtol=0, atol=0)
    assert [m.shape for m in backbone(image)] == [(2, TINY.embed_dim, 2, 3)] * 4  # non-square grid: H/16 × W/16
    with pytest.raises(ValueError, match="no Galileo channel group can be formed from bands at \\[0.6\\]"):
        tiny(waves=[0.6])
    with pytest.raises(ValueError, match="divisible by 16"):
        backbone.embed(torch.randn(1, 4, 24, 32))
    with pytest.raises(ValueError, match="month must be an integer 0-11"):
        tiny(month=12)
    with pytest.raises(ValueError, match="patch_size must divide 16"):
        tiny(patch_size=6)


def test_sentinel2_normalization_applies_galileos_statistics_per_slot():
    backbone = tiny(normalization="sentinel2")
    reflectance = torch.full((1, 4, 16, 16), 0.1395340873)  # Galileo's B2 mean (DN 1395.34) as reflectance
    values = backbone._galileo_values(reflectance, galileo_band_slots(GF2))
    assert abs(float(values[0, 3, 0, 0]) - 0.5) < 1e-6  # B2 slot: (μ − (μ − 2σ)) / 4σ
    assert abs(float(values[0, 0, 0, 0]) - (1395.340873 - (2410.3377187373408 - 2 * 1098.979177731649))
               / (4 * 1098.979177731649)) < 1e-5  # the NIR band sits in B8: B8's statistics  # fmt: skip


def official_file(tmp_path: Path, backbone: GalileoBackbone, folder_config: dict | None = None) -> Path:
    """The encoder's state dict as Galileo writes encoder.pt, some keys with the stray ``.backbone``."""
    state = {k.replace("blocks.", "blocks.backbone.", 1) if k.startswith("blocks.0") else k: v.clone()
             for k, v in backbone.model.state_dict().items()}  # fmt: skip
    (tmp_path / "galileo").mkdir(exist_ok=True)
    torch.save(state, tmp_path / "galileo" / "encoder.pt")
    if folder_config is not None:
        (tmp_path / "galileo" / "config.json").write_text(__import__("json").dumps(folder_config))
    return tmp_path / "galileo"


def test_encoder_pt_loads_strictly_and_gives_identical_outputs(tmp_path):
    source = tiny(seed=4, gsd_m=4.0)
    folder = official_file(tmp_path, source, {"model": {"encoder": {"embedding_size": 32, "depth": 4, "num_heads": 2}}})
    assert any(".backbone" in k for k in torch.load(folder / "encoder.pt", weights_only=True))
    for weights in (folder, folder / "encoder.pt"):
        loaded = build_galileo_backbone("tiny-galileo", weights=weights, in_wavelengths=GF2, gsd_m=4.0)
        image = torch.randn(2, 4, 32, 32)
        for a, b in zip(loaded(image), source(image)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert not any(p.requires_grad for p in loaded.parameters())
    official_file(tmp_path, source, {"model": {"encoder": {"embedding_size": 128, "depth": 4, "num_heads": 8}}})
    with pytest.raises(ValueError, match=r"\(128, 4, 8\), but preset 'tiny-galileo'"):
        build_galileo_backbone("tiny-galileo", weights=folder)
    state = torch.load(folder / "encoder.pt", weights_only=True)
    del state["static_embed.WC_static.bias"]
    torch.save(state, folder / "encoder.pt")
    with pytest.raises(ValueError, match=r"missing keys \['static_embed.WC_static.bias'\]"):
        build_galileo_backbone("tiny-galileo", weights=folder / "encoder.pt")


def test_released_sizes_have_the_released_parameter_counts():
    """nano 1,037,856 (the sum over the real encoder.pt), tiny 5,705,520, base 86,523,072 (RSFM.md §2)."""
    for name, count in (("galileo-nano", 1_037_856), ("galileo-tiny", 5_705_520), ("galileo-base", 86_523_072)):
        with torch.device("meta"):
            backbone = build_galileo_backbone(name, pretrained=False, in_wavelengths=GF2)
        assert sum(p.numel() for p in backbone.parameters()) == count, name
    model = build_on_meta(backbone="galileo-base", adapter="freeze", head="mask2former", sensor="ohs", num_classes=7)
    assert sum(p.numel() for p in model.backbone.parameters()) == 86_523_072
    assert model.backbone.out_indices == (3, 5, 7, 11)


def test_frozen_only_any_trainable_adapter_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="adapter 'rein' cannot run on GalileoBackbone: Galileo makes one token per "
                                         "channel group"):  # fmt: skip
        build_segmentor(backbone="tiny-galileo", adapter="rein", head="fpn", sensor="gf2", num_classes=3,
                        pretrained=False, adapter_kwargs={"token_length": 4})  # fmt: skip
    backbone = tiny()
    lora = build_adapter("lora", embed_dim=32, num_layers=4, num_prefix_tokens=0, rank=2)
    with pytest.raises(ValueError, match="adapter 'lora' cannot run on GalileoBackbone"):
        Segmentor(backbone, lora, build_head("fpn", num_classes=3, in_channels=(32,) * 4), wavelengths=GF2)
    model = build_segmentor(backbone="tiny-galileo", adapter="freeze", head="fpn", sensor="gf2", num_classes=3,
                            pretrained=False)  # fmt: skip
    assert model.backbone.gsd_m == 4.0  # the GF-2 record's GSD
    logits = model.eval().predict_logits(torch.rand(1, 4, 40, 40) * 255)  # padded to 48, cropped back
    assert logits.shape == (1, 3, 40, 40) and torch.isfinite(logits).all()
    # A family option overrides the sensor's value (the task always passes the source sensor's GSD).
    assert build_backbone("tiny-galileo", pretrained=False, in_wavelengths=GF2, gsd_m=4.0,
                          options={"gsd_m": 3.0}).gsd_m == 3.0  # fmt: skip
    assert build_backbone("tiny-galileo", pretrained=False, in_wavelengths=GF2, options={"gsd_m": 3.0}).gsd_m == 3.0
    with pytest.raises(ValueError, match="takes no backbone options"):
        build_backbone("tiny-dinov3", pretrained=False, options={"month": 3})


def test_missing_weights_say_where_to_get_them(monkeypatch):
    import huggingface_hub

    def offline(**kwargs):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(RuntimeError, match="models/base/encoder.pt from the hub repo 'nasaharvest/galileo'"):
        build_galileo_backbone("galileo-base", in_wavelengths=GF2)
    with pytest.raises(ValueError, match="has no released weights"):
        build_galileo_backbone("tiny-galileo", in_wavelengths=GF2)


REAL_NANO = os.environ.get("SPECTRALMOE_GALILEO_NANO")


@pytest.mark.skipif(not REAL_NANO, reason="set SPECTRALMOE_GALILEO_NANO to the released nano encoder.pt")
def test_released_nano_encoder_loads_and_matches_the_reference():
    """The real file: strict load; its stored time and month tables equal ours (temperature-10 sin-cos; MAE's
    rule would be far off); the forward on a GF-2 image equals the re-stated original."""
    path = Path(REAL_NANO)
    state = {k: v.float() for k, v in torch.load(path, map_location="cpu", weights_only=True).items()}
    backbone = build_galileo_backbone("galileo-nano", weights=path, in_wavelengths=GF2, gsd_m=4.0)
    ours = GALILEO_CONFIGS["galileo-nano"]
    fresh = build_galileo_backbone("galileo-nano", pretrained=False, in_wavelengths=GF2).model
    torch.testing.assert_close(fresh.pos_embed, state["pos_embed"], rtol=0, atol=1e-6)
    torch.testing.assert_close(fresh.month_embed.weight, ref_month_table(32), rtol=0, atol=1e-6)
    torch.testing.assert_close(state["month_embed.weight"], ref_month_table(32), rtol=0, atol=1e-6)
    assert (ref_1d(32, torch.arange(24)) - state["pos_embed"]).abs().max() < 1e-6
    mae = torch.cat([torch.sin(torch.arange(24.)[:, None] * 10000 ** (-torch.arange(16) / 16)),
                     torch.cos(torch.arange(24.)[:, None] * 10000 ** (-torch.arange(16) / 16))], 1)  # fmt: skip
    assert (mae - state["pos_embed"]).abs().max() > 1.0
    image = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    x, mask, groups = galileo_input(image, GF2)
    ref_tokens, _ = ref_encoder(state, ours, x, mask, torch.tensor([[6], [6]]), 8, 4.0)
    tokens, grid = run_blocks(backbone, image)
    torch.testing.assert_close(ours_in_reference_order(tokens, len(groups), 16), ref_tokens, rtol=1e-4, atol=1e-4)
    assert math.isfinite(float(tokens.abs().max()))
