"""EVA-02 backbone: parity with the official forward (re-stated below from baaivision/EVA ``EVA-02/asuka``
``modeling_finetune.py`` / ``rope.py``) and timm's RoPE layout, both released key layouts, counts, contract."""

import math

import pytest
import torch
import torch.nn.functional as F

from spectralmoe.models.backbones.eva02 import (
    EVA02_CONFIGS,
    EVA02Backbone,
    EVA02Config,
    EVA02Model,
    build_eva02_backbone,
    eva02_rope,
)
from spectralmoe.models.patch_embed import adapt_kernel_to_bands, resize_patch_kernel

TINY = EVA02_CONFIGS["tiny-eva02"]  # D 32, 4 blocks, 2 heads (head_dim 16), table 4×4, RoPE pretrained at 4
GF2 = [0.83, 0.665, 0.56, 0.49]


def tiny_model(seed=0, config=TINY):
    """A tiny model with every weight random (biases and norms too, so that a wrong key or op shows)."""
    torch.manual_seed(seed)
    model = EVA02Model(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def image(bands=3, size=64, seed=1, batch=2):
    return torch.randn(batch, bands, size, size, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- the official code, re-stated
def official_rope_buffers(head_dim, pt, ft=None):
    """``VisionRotaryEmbeddingFast(dim=head_dim // 2, pt_seq_len=pt, ft_seq_len=ft)``: its two buffers."""
    dim = head_dim // 2
    freqs = 1.0 / (10000 ** (torch.arange(0, dim, 2)[: (dim // 2)].float() / dim))
    ft = pt if ft is None else ft
    t = torch.arange(ft) / ft * pt
    freqs = torch.einsum("..., f -> ... f", t, freqs)
    freqs = freqs.repeat_interleave(2, dim=-1)  # repeat('... n -> ... (n r)', r=2)
    freqs = torch.cat([freqs[:, None, :].expand(ft, ft, -1), freqs[None, :, :].expand(ft, ft, -1)], dim=-1)
    return freqs.cos().view(-1, freqs.shape[-1]), freqs.sin().view(-1, freqs.shape[-1])


def official_rotate_half(x):
    pairs = x.reshape(*x.shape[:-1], -1, 2)  # rearrange('... (d r) -> ... d r', r=2)
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).reshape(x.shape)


def halves_rotate(x):  # negative control: the GPT-NeoX "rotate half" layout instead of interleaved pairs
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def timm_rope(feat, ref, head_dim):
    """timm ``build_rotary_pos_embed(in_pixels=False, ref_feat_shape=ref)`` → (sin, cos) ``[h·w, head_dim]``."""
    num_bands = head_dim // 4
    bands = 1.0 / (10000.0 ** (torch.arange(0, num_bands, 1).float() / num_bands))
    t = [torch.arange(s).float() / s * r for s, r in zip(feat, ref)]
    grid = torch.stack(torch.meshgrid(t, indexing="ij"), dim=-1).unsqueeze(-1)
    pos = grid * bands
    sin = pos.sin().reshape(feat[0] * feat[1], -1).repeat_interleave(2, -1)
    cos = pos.cos().reshape(feat[0] * feat[1], -1).repeat_interleave(2, -1)
    return sin, cos


def timm_rot(x):
    return torch.stack([-x[..., 1::2], x[..., ::2]], -1).reshape(x.shape)


def official_forward(state, cfg, img, *, rope_interp=True, rotate=official_rotate_half, k_bias=None):
    """``VisionTransformer.forward_features`` of modeling_finetune (subln, naiveswiglu, rope, intp_freq), without
    the final norm (Rein's ``EVA2`` taps raw block outputs), on a square image; position table resized the way
    Rein's ``convert_eva2_512x512.py`` does when the grid differs."""
    p, dim, heads = cfg.patch_size, cfg.embed_dim, cfg.num_heads
    x = F.conv2d(img, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=p)
    side = x.shape[-1]
    x = x.flatten(2).transpose(1, 2)
    pos = state["pos_embed"]
    old = math.isqrt(pos.shape[1] - 1)
    if old != side:
        tokens = pos[:, 1:].reshape(1, old, old, dim).permute(0, 3, 1, 2)
        tokens = F.interpolate(tokens, size=(side, side), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:, :1], tokens.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)
    x = torch.cat([state["cls_token"].expand(len(img), -1, -1), x], dim=1) + pos
    if rope_interp:
        cos, sin = official_rope_buffers(dim // heads, cfg.rope_pt_grid, side)
    else:  # positions 0, 1, 2 … of the actual grid, not rescaled to the pretraining grid
        cos, sin = official_rope_buffers(dim // heads, side, side)
    lin = lambda t, name, bias=None: F.linear(t, state[name + ".weight"], bias)  # noqa: E731
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        h = F.layer_norm(x, (dim,), state[b + "norm1.weight"], state[b + "norm1.bias"], 1e-6)
        q = lin(h, b + "attn.q_proj", state[b + "attn.q_bias"])
        k = lin(h, b + "attn.k_proj", k_bias)
        v = lin(h, b + "attn.v_proj", state[b + "attn.v_bias"])
        q, k, v = (t.reshape(len(x), -1, heads, dim // heads).permute(0, 2, 1, 3) for t in (q, k, v))
        q = torch.cat([q[:, :, :1], q[:, :, 1:] * cos + rotate(q[:, :, 1:]) * sin], dim=2)
        k = torch.cat([k[:, :, :1], k[:, :, 1:] * cos + rotate(k[:, :, 1:]) * sin], dim=2)
        attn = (q * (dim // heads) ** -0.5 @ k.transpose(-2, -1)).softmax(-1)
        x = x + F.linear((attn @ v).transpose(1, 2).reshape(len(x), -1, dim), state[b + "attn.proj.weight"],
                         state[b + "attn.proj.bias"])  # fmt: skip
        h = F.layer_norm(x, (dim,), state[b + "norm2.weight"], state[b + "norm2.bias"], 1e-6)
        hidden = F.silu(lin(h, b + "mlp.w1", state[b + "mlp.w1.bias"])) * lin(h, b + "mlp.w2", state[b + "mlp.w2.bias"])
        hidden = F.layer_norm(hidden, hidden.shape[-1:], state[b + "mlp.ffn_ln.weight"], state[b + "mlp.ffn_ln.bias"],
                              1e-6)  # fmt: skip
        x = x + lin(hidden, b + "mlp.w3", state[b + "mlp.w3.bias"])
    return x


def run_all(backbone, img):
    tokens, grid = backbone.embed(img)
    for i in range(backbone.num_layers):
        tokens = backbone.run_block(i, tokens, grid)
    return tokens


# ------------------------------------------------------------------------------------------------ RoPE
def test_rope_at_the_pretraining_grid_equals_the_official_buffers():
    for head_dim in (16, 64):  # tiny, and EVA02-L / B (1024/16, 768/12)
        cos, sin = eva02_rope((16, 16), head_dim, pt_grid=16)
        ref_cos, ref_sin = official_rope_buffers(head_dim, 16)
        assert cos.shape == (256, head_dim)
        assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)
    # Rein's EVA2 at 512 px: ft_seq_len 32 with pt 16 (intp_freq) → positions 0, 0.5, … 15.5
    cos, sin = eva02_rope((32, 32), 64, pt_grid=16)
    ref_cos, ref_sin = official_rope_buffers(64, 16, 32)
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)
    assert not torch.allclose(cos, official_rope_buffers(64, 32, 32)[0])  # not interpolated: differs


def test_rope_equals_timms_layout_and_rotation_on_non_square_grids():
    x = torch.randn(2, 3, 6 * 9, 64)
    cos, sin = eva02_rope((6, 9), 64, pt_grid=16)
    timm_sin, timm_cos = timm_rope((6, 9), (16, 16), 64)
    torch.testing.assert_close(cos, timm_cos, rtol=0, atol=1e-6)
    torch.testing.assert_close(sin, timm_sin, rtol=0, atol=1e-6)
    from spectralmoe.models.backbones.eva02 import apply_rope

    torch.testing.assert_close(apply_rope(x, cos, sin), x * timm_cos + timm_rot(x) * timm_sin)
    assert not torch.allclose(apply_rope(x, cos, sin), x * cos + halves_rotate(x) * sin, atol=1e-3)


# --------------------------------------------------------------------------------------------- forward
def our_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_forward_matches_the_official_computation_at_and_beyond_the_pretraining_grid():
    model = tiny_model()
    backbone = EVA02Backbone(model)
    state = our_state(model)
    for size in (64, 128):  # grid 4 (= pretraining: no resampling, plain RoPE) and 8 (table resampled, RoPE interpolated)
        img = image(size=size)
        with torch.no_grad():
            got = run_all(backbone, img)
            expected = official_forward(state, TINY, img)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # Negative controls: each deviation from the official computation must show.
    img = image(size=128)
    with torch.no_grad():
        got = run_all(backbone, img)
        controls = {
            "rope not interpolated": official_forward(state, TINY, img, rope_interp=False),
            "half rotation": official_forward(state, TINY, img, rotate=halves_rotate),
            "k bias": official_forward(state, TINY, img, k_bias=torch.randn(TINY.embed_dim)),
        }
    for name, wrong in controls.items():
        assert (got - wrong).abs().max() > 1e-3, name


def test_manual_stepping_with_zero_adapter_equals_the_model_forward():
    model = tiny_model()
    backbone = EVA02Backbone(model)
    img = image(size=96)
    with torch.no_grad():
        tokens, grid = backbone.embed(img)
        for i in range(backbone.num_layers):
            tokens = backbone.run_block(i, tokens, grid)
            tokens = tokens + torch.zeros_like(tokens)  # a zero adapter
        assert torch.equal(tokens, model(img))
    assert grid == (6, 6) and tokens.shape == (2, 37, 32)


def test_prompts_after_cls_carry_no_position():
    backbone = EVA02Backbone(tiny_model())
    with torch.no_grad():
        tokens, grid = backbone.embed(image(size=64))
        prompts = torch.randn(2, 3, 32)
        out_a = backbone.run_block(0, torch.cat([tokens[:, :1], prompts, tokens[:, 1:]], 1), grid)
        out_b = backbone.run_block(0, torch.cat([prompts, tokens[:, :1], tokens[:, 1:]], 1), grid)
        plain = backbone.run_block(0, tokens, grid)
    torch.testing.assert_close(out_a[:, 4:], out_b[:, 4:], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out_a[:, 4:], plain[:, 1:], atol=1e-4)  # the prompts are attended to
    with pytest.raises(ValueError, match="cannot hold"):
        backbone.run_block(0, tokens[:, 1:], grid)


# ----------------------------------------------------------------------------------------------- files
def original_file(tmp_path, model, name="eva02_tiny_pt_p14to16.pt"):
    """The model's weights as the official MIM checkpoint: under 'model', with mask_token, lm_head, the
    shared and per-block RoPE buffers as the official module stores them, and the final norm."""
    state = our_state(model)
    d = model.config.embed_dim
    cos, sin = official_rope_buffers(model.config.head_dim, model.config.rope_pt_grid)
    state.update({"mask_token": torch.randn(1, 1, d), "lm_head.weight": torch.randn(d, d),
                  "lm_head.bias": torch.randn(d), "rope.freqs_cos": cos, "rope.freqs_sin": sin})  # fmt: skip
    for i in range(model.config.depth):
        state[f"blocks.{i}.attn.rope.freqs_cos"], state[f"blocks.{i}.attn.rope.freqs_sin"] = cos, sin
    path = tmp_path / name
    torch.save({"model": state}, path)
    return path


def to_timm_layout(state):
    """timm/models/eva.py ``checkpoint_filter_fn`` applied to an original MIM state dict."""
    out = {}
    for k, v in state.items():
        if "rope" in k or k in ("mask_token", "lm_head.weight", "lm_head.bias"):
            continue
        k = k.replace("mlp.ffn_ln", "mlp.norm").replace("mlp.w1", "mlp.fc1_g").replace("mlp.w2", "mlp.fc1_x")
        k = k.replace("mlp.w3", "mlp.fc2").replace("q_bias", "q_proj.bias").replace("v_bias", "v_proj.bias")
        if k in ("norm.weight", "norm.bias"):
            k = "fc_" + k
        out[k] = v
    return out


def timm_file(tmp_path, model, name="model.safetensors", kernel=None):
    from safetensors.torch import save_file

    state = to_timm_layout(torch.load(original_file(tmp_path, model), weights_only=True)["model"])
    if kernel is not None:
        state["patch_embed.proj.weight"] = kernel
    folder = tmp_path / "timm-eva02"
    folder.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / name))
    (folder / "config.json").write_text('{"architecture": "eva02_tiny", "num_classes": 0}')
    return folder


def test_both_released_layouts_load_strictly_and_give_identical_outputs(tmp_path):
    model = tiny_model(seed=3)
    original = build_eva02_backbone("tiny-eva02", weights=original_file(tmp_path, model))
    timm = build_eva02_backbone("tiny-eva02", weights=timm_file(tmp_path, model))
    timm_by_file = build_eva02_backbone("tiny-eva02", weights=timm_file(tmp_path, model) / "model.safetensors")
    img = image(size=80)
    with torch.no_grad():
        expected = EVA02Backbone(model)(img)
        for loaded in (original, timm, timm_by_file):
            assert all(torch.equal(a, b) for a, b in zip(loaded(img), expected))
            assert all(not p.requires_grad for p in loaded.parameters())
    assert torch.equal(timm.final_norm(torch.ones(1, 2, 32)), model.norm(torch.ones(1, 2, 32)))


def test_timm_patch14_kernel_is_resized_and_reins_table_adopted(tmp_path):
    model = tiny_model(seed=4)
    kernel14 = torch.randn(32, 3, 14, 14)
    loaded = build_eva02_backbone("tiny-eva02", weights=timm_file(tmp_path, model, kernel=kernel14))
    # Rein's convert_eva2_512x512.py: F.interpolate(kernel, (16, 16), mode="bicubic", align_corners=False)
    rein = F.interpolate(kernel14, size=(16, 16), mode="bicubic", align_corners=False)
    torch.testing.assert_close(loaded.model.patch_embed.proj.weight, rein, rtol=0, atol=0)
    pi = build_eva02_backbone("tiny-eva02", weights=timm_file(tmp_path, model, kernel=kernel14), kernel_resize="pi")
    torch.testing.assert_close(pi.model.patch_embed.proj.weight, resize_patch_kernel(kernel14, 16, "pi"))
    # A converted file whose table is already 6×6 (Rein's 32×32 at real size) is used as is.
    big = tiny_model(seed=5, config=EVA02Config(**{**TINY.to_dict(), "img_size": 96}))
    loaded = build_eva02_backbone("tiny-eva02", weights=original_file(tmp_path, big, "rein.pt"))
    assert loaded.config.img_size == 96
    with torch.no_grad():
        torch.testing.assert_close(run_all(loaded, image(size=96)), big(image(size=96)), rtol=0, atol=0)


def test_loading_refuses_k_bias_missing_keys_and_foreign_rope(tmp_path):
    model = tiny_model()
    folder = timm_file(tmp_path, model)
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    save_file({**state, "blocks.1.attn.k_proj.bias": torch.zeros(32)}, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"unexpected keys \['blocks.1.attn.k_proj.bias'\]"):
        build_eva02_backbone("tiny-eva02", weights=folder)
    path = original_file(tmp_path, model)
    raw = torch.load(path, weights_only=True)
    del raw["model"]["blocks.2.mlp.ffn_ln.bias"]
    torch.save(raw, path)
    with pytest.raises(ValueError, match=r"missing keys \['blocks.2.mlp.ffn_ln.bias'\]"):
        build_eva02_backbone("tiny-eva02", weights=path)
    # RoPE buffers made with another pretraining grid (pt 8 instead of 4): refused, not silently regenerated.
    path = original_file(tmp_path, model)
    raw = torch.load(path, weights_only=True)
    raw["model"]["rope.freqs_cos"], raw["model"]["rope.freqs_sin"] = official_rope_buffers(16, 8, 4)
    torch.save(raw, path)
    with pytest.raises(ValueError, match="rope.freqs_cos differs"):
        build_eva02_backbone("tiny-eva02", weights=path)


def test_save_pretrained_round_trip_and_band_adaptation(tmp_path):
    model = tiny_model(seed=6)
    rgb_kernel = model.patch_embed.proj.weight.detach().clone()
    backbone = EVA02Backbone(model, in_wavelengths=GF2, out_indices=[1, 3])
    torch.testing.assert_close(backbone.model.patch_embed.proj.weight, adapt_kernel_to_bands(rgb_kernel, GF2))
    backbone.save_pretrained(tmp_path / "eva")
    loaded = build_eva02_backbone("tiny-eva02", weights=tmp_path / "eva", in_wavelengths=GF2, out_indices=[1, 3])
    img = image(bands=4, size=48)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(loaded(img), backbone(img)))
    with pytest.raises(ValueError, match="4 input channels"):
        build_eva02_backbone("tiny-eva02", weights=tmp_path / "eva")  # saved for 4 bands, asked for RGB
    with pytest.raises(ValueError, match="embed_dim=32, depth=4, num_heads=2 but preset 'eva02-vitb16'"):
        build_eva02_backbone("eva02-vitb16", weights=tmp_path / "eva")
    with pytest.raises(ValueError, match="unknown EVA02 config keys"):
        EVA02Config.from_dict({"embed_dim": 32, "depht": 4})


# ------------------------------------------------------------------------------------------- contract
def test_frozen_eval_gradients_reach_between_blocks_and_bf16_runs():
    for checkpointing in (False, True):
        torch.manual_seed(0)
        backbone = build_eva02_backbone("tiny-eva02", pretrained=False, gradient_checkpointing=checkpointing)
        backbone.train()
        assert not any(m.training for m in backbone.modules())
        tokens, grid = backbone.embed(image())
        delta = torch.zeros_like(tokens, requires_grad=True)
        out = backbone.run_block(1, backbone.run_block(0, tokens + delta, grid), grid)
        out.square().sum().backward()
        assert delta.grad is not None and delta.grad.abs().sum() > 0
        assert all(p.grad is None for p in backbone.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = backbone(image())
    assert all(m.shape == (2, 32, 4, 4) and torch.isfinite(m).all() for m in maps)


def test_input_errors_name_bands_and_shape():
    backbone = build_eva02_backbone("tiny-eva02", pretrained=False)
    with pytest.raises(ValueError, match=r"3 bands.*4 bands.*\(2, 4, 64, 64\)"):
        backbone.embed(image(bands=4))
    with pytest.raises(ValueError, match=r"multiples of 16.*\(2, 3, 40, 40\)"):
        backbone.embed(image(size=40))
    with pytest.raises(ValueError, match="out_indices"):
        build_eva02_backbone("tiny-eva02", pretrained=False, out_indices=[4])


# Parameter counts (RSFM.md §6, timm's eva02_large_patch14_224 with its final norm: 303,268,800):
#   per block 12,599,976 = norm1 2,048 + q/k/v 3·1,048,576 + q/v bias 2,048 + proj 1,049,600 + norm2 2,048
#     + w1/w2 2·(1024·2730 + 2730) + ffn_ln 5,460 + w3 (2730·1024 + 1024);   24 blocks = 302,399,424
#   patch 14: 1024·3·196 + 1024 = 603,136; cls 1,024; pos (1 + 16²)·1024 = 263,168; norm 2,048 → 303,268,800
# The p14to16 file (16×16 kernel: +3·1024·60 = 184,320) has 303,453,120; Rein's 512/p16 backbone (table
# 1 + 32² and no final norm) has 304,237,504.
def test_real_preset_parameter_counts_on_meta():
    with torch.device("meta"):
        backbone = build_eva02_backbone("eva02-vitl16", pretrained=False)
        timm_224_p14 = EVA02Model(EVA02Config(patch_size=14, img_size=224))
        rein_512 = EVA02Model(EVA02Config(img_size=512))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(timm_224_p14) == 303_268_800
    assert count(backbone) == 303_453_120
    assert count(rein_512) - count(rein_512.norm) == 304_237_504
    assert backbone.num_layers == 24 and backbone.out_indices == (7, 11, 15, 23) and backbone.family == "eva02"
    assert backbone.model.config.hidden_dim == 2730 and EVA02_CONFIGS["eva02-vitb16"].hidden_dim == 2048
