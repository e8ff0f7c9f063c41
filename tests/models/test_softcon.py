"""SoftCon backbone: released DINOv2-layout files load strictly into transformers' Dinov2 and give the
numbers of DINOv2's own forward (re-stated below from facebookresearch/dinov2 ``vision_transformer.py`` /
``layers/{block,attention,mlp,layer_scale}.py``); band → slot mapping; normalisation window; counts."""

import logging

import pytest
import torch
import torch.nn.functional as F
from transformers import Dinov2Model

from spectralmoe.bands import get_sensor
from spectralmoe.models.backbones.common import read_state_file
from spectralmoe.models.backbones.softcon import (
    SOFTCON_CONFIGS,
    SoftConConfig,
    build_softcon_backbone,
    convert_softcon_state_dict,
    sentinel2_slots,
)

TINY = SOFTCON_CONFIGS["tiny-softcon"]  # D 32, 4 blocks, 2 heads, patch 14, table 4×4 (56 px)
GF2 = get_sensor("gf2")  # NIR, R, G, B
S2 = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]


def released_state(cfg=TINY, seed=0, chans=13):
    """Random tensors under the released files' keys and shapes (DINOv2 ``vit_*`` with block_chunks=0),
    written without any of our code, so that the conversion is tested against the layout itself."""
    g = torch.Generator().manual_seed(seed)
    d, side, p = cfg.embed_dim, cfg.img_size // cfg.patch_size, cfg.patch_size
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.2  # noqa: E731
    state = {"cls_token": r(1, 1, d), "mask_token": r(1, d), "pos_embed": r(1, 1 + side * side, d),
             "patch_embed.proj.weight": r(d, chans, p, p), "patch_embed.proj.bias": r(d),
             "norm.weight": 1 + r(d), "norm.bias": r(d)}  # fmt: skip
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        state.update({b + "norm1.weight": 1 + r(d), b + "norm1.bias": r(d), b + "attn.qkv.weight": r(3 * d, d),
                      b + "attn.qkv.bias": r(3 * d), b + "attn.proj.weight": r(d, d), b + "attn.proj.bias": r(d),
                      b + "ls1.gamma": 1 + r(d), b + "norm2.weight": 1 + r(d), b + "norm2.bias": r(d),
                      b + "mlp.fc1.weight": r(4 * d, d), b + "mlp.fc1.bias": r(4 * d), b + "mlp.fc2.weight": r(d, 4 * d),
                      b + "mlp.fc2.bias": r(d), b + "ls2.gamma": 1 + r(d)})  # fmt: skip
    return state


def dinov2_forward(state, cfg, x, *, qkv_order=(0, 1, 2), layer_scale=True):
    """``DinoVisionTransformer.forward_features(x)["x_norm"]`` at the native grid (no pos interpolation):
    patch conv, cls, + pos_embed; blocks ``x + ls1(attn(norm1 x))``, ``x + ls2(mlp(norm2 x))``; final norm."""
    d, heads = cfg.embed_dim, cfg.num_heads
    x = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=cfg.patch_size)
    x = torch.cat([state["cls_token"].expand(len(x), -1, -1), x.flatten(2).transpose(1, 2)], 1) + state["pos_embed"]
    ln = lambda t, name: F.layer_norm(t, (d,), state[name + ".weight"], state[name + ".bias"], 1e-6)  # noqa: E731
    lin = lambda t, name: F.linear(t, state[name + ".weight"], state[name + ".bias"])  # noqa: E731
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        qkv = lin(ln(x, b + "norm1"), b + "attn.qkv").reshape(len(x), -1, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        q, k, v = (qkv[j] for j in qkv_order)
        attn = (q * (d // heads) ** -0.5 @ k.transpose(-2, -1)).softmax(-1)
        out = lin((attn @ v).transpose(1, 2).reshape(len(x), -1, d), b + "attn.proj")
        x = x + (state[b + "ls1.gamma"] * out if layer_scale else out)
        out = lin(F.gelu(lin(ln(x, b + "norm2"), b + "mlp.fc1")), b + "mlp.fc2")
        x = x + (state[b + "ls2.gamma"] * out if layer_scale else out)
    return ln(x, "norm")


def write_released(tmp_path, state, name="B13_tiny_softcon.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def per_patch_bilinear(image, old, new):
    b, c, height, width = image.shape
    h, w = height // old, width // old
    patches = image.reshape(b, c, h, old, w, old).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, old, old)
    patches = F.interpolate(patches, size=(new, new), mode="bilinear", align_corners=False)
    return patches.reshape(b, h, w, c, new, new).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h * new, w * new)


def run_all(backbone, img):
    tokens, grid = backbone.embed(img)
    for i in range(backbone.num_layers):
        tokens = backbone.run_block(i, tokens, grid)
    return tokens


# ------------------------------------------------------------------------------------------ key conversion
def test_released_layout_converts_to_transformers_dinov2_with_identical_numbers():
    state = released_state()
    model = Dinov2Model(TINY.hf_config()).eval()
    model.load_state_dict(convert_softcon_state_dict(state, "stand-in"), strict=True)
    x13 = torch.rand(2, 13, 56, 56)
    with torch.no_grad():
        got = model(x13).last_hidden_state
        torch.testing.assert_close(got, dinov2_forward(state, TINY, x13), rtol=1e-5, atol=1e-5)
        # Negative controls: q/k swapped in the qkv split, LayerScale left out.
        assert (got - dinov2_forward(state, TINY, x13, qkv_order=(1, 0, 2))).abs().max() > 1e-3
        assert (got - dinov2_forward(state, TINY, x13, layer_scale=False)).abs().max() > 1e-3


def test_released_file_loads_strictly_and_the_backbone_equals_dinov2_on_the_slot_image(tmp_path):
    state = released_state(seed=1)
    path = write_released(tmp_path, state)
    backbone = build_softcon_backbone("tiny-softcon", weights=path, in_wavelengths=GF2.wavelengths_um,
                                      in_bandwidths=GF2.bandwidths(), kernel_resize="pi")  # fmt: skip
    assert all(not p.requires_grad for p in backbone.parameters()) and backbone.num_prefix_tokens == 1
    # Standardised GF-2 bands inside (-2, 2): the window is then affine, so it commutes with the per-patch
    # 14→16 upsampling under which the pseudo-inverse kernel resize is exact.
    z14 = torch.rand(1, 4, 56, 56, generator=torch.Generator().manual_seed(2)) * 3.8 - 1.9
    x13 = torch.full((1, 13, 56, 56), 0.5)
    for slot, band in {"B2": 3, "B3": 2, "B4": 1, "B7": 0, "B8": 0, "B8A": 0}.items():
        x13[:, S2.index(slot)] = (z14[:, band] + 2) / 4
    with torch.no_grad():
        got = backbone.final_norm(run_all(backbone, per_patch_bilinear(z14, 14, 16)))
        expected = dinov2_forward(state, TINY, x13)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_missing_or_unexpected_released_keys_are_errors(tmp_path):
    state = released_state()
    del state["blocks.3.ls2.gamma"]
    with pytest.raises(ValueError, match=r"missing keys \['encoder.layer.3.layer_scale2.lambda1'\]"):
        build_softcon_backbone("tiny-softcon", weights=write_released(tmp_path, state))
    state = released_state()
    state["blocks.0.attn.rel_pos"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"unexpected keys \['encoder.layer.0.attn.rel_pos'\]"):
        build_softcon_backbone("tiny-softcon", weights=write_released(tmp_path, state))
    state = released_state()
    state["register_tokens"] = torch.zeros(1, 4, 32)
    with pytest.raises(ValueError, match="unexpected key 'register_tokens'"):
        build_softcon_backbone("tiny-softcon", weights=write_released(tmp_path, state))
    # The classification head is ignored; a chunked file (block_chunks=2) is flattened; no mask_token is fine.
    state = released_state()
    chunked = {("blocks.%d.%s" % (int(k.split(".")[1]) // 2, k.split(".", 1)[1]) if k.startswith("blocks.") else k): v
               for k, v in state.items() if k != "mask_token"}  # fmt: skip
    chunked.update({"head.weight": torch.zeros(5, 32), "head.bias": torch.zeros(5)})
    loaded = build_softcon_backbone("tiny-softcon", weights=write_released(tmp_path, {"model": chunked}),
                                    in_wavelengths=[0.49, 0.56, 0.665])  # fmt: skip
    assert torch.equal(loaded.blocks[3].mlp.fc1.weight, state["blocks.3.mlp.fc1.weight"])
    with pytest.raises(ValueError, match="the -s1 presets are the 2-band SAR models"):
        build_softcon_backbone("tiny-softcon", weights=write_released(tmp_path, released_state(chans=2)))


# ---------------------------------------------------------------------------------------------- bands
def test_slot_mapping_for_gf2_ohs_and_rgb():
    gf2 = sentinel2_slots(GF2.wavelengths_um, GF2.bandwidths())  # NIR, R, G, B
    assert dict(zip(S2, gf2)) == {"B1": None, "B2": 3, "B3": 2, "B4": 1, "B5": None, "B6": None, "B7": 0, "B8": 0,
                                  "B8A": 0, "B9": None, "B10": None, "B11": None, "B12": None}  # fmt: skip
    ohs = get_sensor("ohs")  # 32 bands 0.466–0.940 µm, bandwidths = the band spacing (default rule)
    slots = dict(zip(S2, sentinel2_slots(ohs.wavelengths_um, ohs.bandwidths())))
    picked = {k: (None if v is None else ohs.wavelengths_um[v]) for k, v in slots.items()}
    assert picked == {"B1": None, "B2": 0.5, "B3": 0.566, "B4": 0.67, "B5": 0.7, "B6": 0.746, "B7": 0.776,
                      "B8": 0.836, "B8A": 0.866, "B9": 0.94, "B10": None, "B11": None, "B12": None}  # fmt: skip
    rgb = get_sensor("rgb")
    assert dict(zip(S2, sentinel2_slots(rgb.wavelengths_um, rgb.bandwidths()))) == {
        **{b: None for b in S2}, "B2": 2, "B3": 1, "B4": 0}
    # A non-spectral band (elevation) never fills a slot; the full S2 sensor fills all 13 in order.
    assert 4 not in sentinel2_slots(get_sensor("flair-elevation").wavelengths_um)
    s2 = get_sensor("sentinel2-l1c")
    assert sentinel2_slots(s2.wavelengths_um, s2.bandwidths()) == list(range(13))


def test_filled_slots_get_the_mean_and_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        backbone = build_softcon_backbone("tiny-softcon", pretrained=False, in_wavelengths=GF2.wavelengths_um,
                                          in_bandwidths=GF2.bandwidths())  # fmt: skip
    warned = [r.getMessage() for r in caplog.records if "filled with the pretraining mean" in r.getMessage()]
    assert len(warned) == 1 and "B1, B5, B6, B9, B10, B11, B12" in warned[0]
    z = torch.tensor([3.0, -3.0, 0.0, 1.0]).view(1, 4, 1, 1).expand(1, 4, 16, 16)
    slots = backbone.slot_image(z)[0, :, 0, 0]
    expected = dict(zip(S2, [0.5, 0.75, 0.5, 0.0, 0.5, 0.5, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5]))
    assert dict(zip(S2, slots.tolist())) == expected  # window clip((z + 2) / 4, 0, 1), NIR → B7/B8/B8A
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        backbone.embed(torch.randn(1, 4, 32, 32))
        backbone.embed(torch.randn(1, 4, 32, 32))
    assert not caplog.records  # once, at construction
    with pytest.raises(ValueError, match="overlaps a Sentinel-2 band"):
        build_softcon_backbone("tiny-softcon", pretrained=False, in_wavelengths=[5.0, 6.0])


def test_sar_model_takes_two_bands_in_order(tmp_path):
    backbone = build_softcon_backbone("tiny-softcon-s1", pretrained=False, in_wavelengths=[float("nan")] * 2)
    z = torch.tensor([1.0, -1.0]).view(1, 2, 1, 1).expand(1, 2, 16, 16)
    assert backbone.slot_image(z)[0, :, 0, 0].tolist() == [0.75, 0.25]
    tokens, grid = backbone.embed(torch.randn(2, 2, 32, 48))
    assert grid == (2, 3) and tokens.shape == (2, 7, 32)
    with pytest.raises(ValueError, match="exactly 2 bands"):
        build_softcon_backbone("tiny-softcon-s1", pretrained=False)


# -------------------------------------------------------------------------------------------- contract
def test_stepping_equals_the_library_forward_and_save_round_trip(tmp_path):
    path = write_released(tmp_path, released_state(seed=4))
    backbone = build_softcon_backbone("tiny-softcon", weights=path, in_wavelengths=GF2.wavelengths_um,
                                      out_indices=[1, 3])  # fmt: skip
    z = torch.randn(2, 4, 48, 64)
    with torch.no_grad():
        stepped = run_all(backbone, z)
        library = backbone.model(backbone.slot_image(z)).last_hidden_state
        assert torch.equal(backbone.final_norm(stepped), library)
    backbone.save_pretrained(tmp_path / "softcon")
    loaded = build_softcon_backbone("tiny-softcon", weights=tmp_path / "softcon", in_wavelengths=GF2.wavelengths_um,
                                    out_indices=[1, 3])  # fmt: skip
    assert loaded.softcon_config.patch_size == 16 and loaded.softcon_config.img_size == 64
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(loaded(z), backbone(z)))
    with pytest.raises(ValueError, match="modality=multispectral but preset 'tiny-softcon-s1' has modality=sar"):
        build_softcon_backbone("tiny-softcon-s1", weights=tmp_path / "softcon", in_wavelengths=[0.0, 0.0])
    with pytest.raises(ValueError, match="unknown SoftCon config keys"):
        SoftConConfig.from_dict({"embed_dim": 32, "modalty": "sar"})
    state = read_state_file(path)
    assert "mask_token" in state and "pos_embed" in state  # the stand-in really has the released names


# Parameter counts (RSFM.md §1, computed from the released architecture, mask_token and norm included):
# ViT-B/14 13 bands 87,230,976; ViT-S/14 22,381,824. Run at patch 16 the kernel grows by D·13·(256 − 196).
def test_real_preset_parameter_counts_on_meta():
    counts = {}
    for name in ("softcon-vitb14", "softcon-vits14"):
        with torch.device("meta"):
            counts[name] = sum(p.numel() for p in Dinov2Model(SOFTCON_CONFIGS[name].hf_config()).parameters())
    assert counts == {"softcon-vitb14": 87_230_976, "softcon-vits14": 22_381_824}
    with torch.device("meta"):
        backbone = build_softcon_backbone("softcon-vitb14", pretrained=False)
    assert sum(p.numel() for p in backbone.parameters()) == 87_230_976 + 768 * 13 * (256 - 196)
    assert backbone.out_indices == (3, 5, 7, 11) and backbone.embed_dim == 768
