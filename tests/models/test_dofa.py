"""DOFA backbone: any band set, band order, official key names and numerics, weights IO, frozen contract."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spectralmoe.models.backbones.dofa import (
    DOFA_CONFIGS,
    DOFABackbone,
    DOFAConfig,
    build_dofa_backbone,
)

GF2 = [0.83, 0.665, 0.56, 0.49]
OHS32 = [0.466 + 0.015 * i for i in range(32)]
TINY = DOFA_CONFIGS["tiny-dofa"]


def tiny(seed=0, config=TINY, **kwargs):
    torch.manual_seed(seed)
    return DOFABackbone(config, **kwargs)


def image(bands, height=32, width=64, seed=1):
    return torch.randn(2, bands, height, width, generator=torch.Generator().manual_seed(seed))


def official_keys(depth):
    """Key names of the official DOFA state dict (zhu-xlab/DOFA dofa_v1.OFAViT + wave_dynamic_layer), no head."""
    enc = "patch_embed.weight_generator.transformer_encoder.layers.0."
    keys = {"cls_token", "pos_embed", "patch_embed.weight_generator.weight_tokens",
            "patch_embed.weight_generator.bias_token"}
    for lin in ("patch_embed.fclayer.w1", "patch_embed.fclayer.w2", "patch_embed.weight_generator.fc_weight",
                "patch_embed.weight_generator.fc_bias", enc + "self_attn.out_proj", enc + "linear1",
                enc + "linear2", enc + "norm1", enc + "norm2"):
        keys |= {lin + ".weight", lin + ".bias"}
    keys |= {enc + "self_attn.in_proj_weight", enc + "self_attn.in_proj_bias"}
    for i in range(depth):
        for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"blocks.{i}.{part}.weight", f"blocks.{i}.{part}.bias"}
    return keys  # fmt: skip


def reference_forward(state, cfg, img, waves):
    """The official DOFA forward written out with plain ops (fixed kernel layout, image at img_size)."""
    pos = torch.tensor(waves) * 1000
    omega = 1.0 / 10000 ** (torch.arange(cfg.wave_dim // 2).float() / (cfg.wave_dim / 2))
    emb = torch.cat([torch.sin(pos[:, None] * omega), torch.cos(pos[:, None] * omega)], 1)
    lin = lambda x, name: F.linear(x, state[name + ".weight"], state[name + ".bias"])  # noqa: E731
    emb = emb + F.relu(lin(F.relu(lin(emb, "patch_embed.fclayer.w1")), "patch_embed.fclayer.w2"))
    gen = "patch_embed.weight_generator."
    layer = nn.TransformerEncoderLayer(cfg.wave_dim, cfg.generator_heads, cfg.generator_ffn_dim, 0.0, "gelu")
    prefix = gen + "transformer_encoder.layers.0."
    layer.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    layer.eval()
    seq = torch.cat([state[gen + "weight_tokens"], emb, state[gen + "bias_token"]])
    out = layer(seq)
    kernels = lin(out[cfg.num_weight_tokens:-1] + emb, gen + "fc_weight")
    bias = lin(out[-1], gen + "fc_bias") * 0.01
    k, d = cfg.patch_size, cfg.embed_dim
    weight = kernels.view(len(waves), k, k, d).permute(3, 0, 1, 2) * 0.01
    x = F.conv2d(img, weight, bias, stride=16, padding=1).flatten(2).transpose(1, 2)
    x = x + state["pos_embed"][:, 1:]
    x = torch.cat([(state["cls_token"] + state["pos_embed"][:, :1]).expand(len(img), -1, -1), x], 1)
    heads = cfg.num_heads
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        h = F.layer_norm(x, (d,), state[b + "norm1.weight"], state[b + "norm1.bias"], 1e-6)
        q, kk, v = lin(h, b + "attn.qkv").reshape(len(x), -1, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ kk.transpose(-1, -2) / math.sqrt(d // heads), -1)
        x = x + lin((att @ v).transpose(1, 2).reshape(len(x), -1, d), b + "attn.proj")
        h = F.layer_norm(x, (d,), state[b + "norm2.weight"], state[b + "norm2.bias"], 1e-6)
        x = x + lin(F.gelu(lin(h, b + "mlp.fc1")), b + "mlp.fc2")
    return x


def run_all(backbone, img, waves=None):
    tokens, grid = backbone.embed(img, waves)
    for i in range(backbone.num_layers):
        tokens = backbone.run_block(i, tokens, grid)
    return tokens


def test_one_patch_embedding_takes_3_4_32_bands_on_the_h16_w16_grid():
    backbone = tiny()
    assert backbone.num_prefix_tokens == 1 and backbone.patch_size == 16 and backbone.embed_dim == 32
    for waves in ([0.665, 0.56, 0.49], GF2, OHS32):
        tokens, grid = backbone.embed(image(len(waves), 32, 64), waves)
        assert grid == (2, 4)
        assert tokens.shape == (2, 1 + 2 * 4, 32)
        assert torch.isfinite(tokens).all()
    tokens, grid = backbone.embed(image(4, 80, 48), GF2)  # not img_size (64): table resampled to 5x3
    assert grid == (5, 3) and tokens.shape == (2, 16, 32)


def test_band_order_matters_and_joint_permutation_is_equivariant():
    backbone = tiny()
    img, perm = image(4), [2, 0, 3, 1]
    tokens, _ = backbone.embed(img, GF2)
    joint, _ = backbone.embed(img[:, perm], [GF2[i] for i in perm])
    channels_only, _ = backbone.embed(img[:, perm], GF2)
    torch.testing.assert_close(joint, tokens, rtol=1e-5, atol=1e-5)
    assert (channels_only - tokens).abs().max() > 1e-3


def test_legacy_kernel_layout_reshapes_raw_like_the_march_2024_release():
    legacy = tiny(config=DOFAConfig(**{**TINY.to_dict(), "legacy_kernel_layout": True}))
    embedding, waves = legacy.model.patch_embed, torch.tensor(GF2)
    kernels, _ = embedding.weight_generator(embedding.fclayer(embedding.wave_embedding(waves)))
    weight, _ = embedding.generate_kernel(waves)
    torch.testing.assert_close(weight, kernels.reshape(32, 4, 16, 16) * 0.01, rtol=0, atol=0)
    img, perm = image(4), [2, 0, 3, 1]
    tokens = legacy.embed(img, GF2)[0]
    joint = legacy.embed(img[:, perm], [GF2[i] for i in perm])[0]
    assert (joint - tokens).abs().max() > 1e-3  # the bug the fix removed: band order leaks in


def test_state_dict_keys_are_the_official_names():
    assert set(tiny().model.state_dict()) == official_keys(TINY.depth)


def test_forward_matches_the_official_computation():
    backbone = tiny()
    img = image(4, 64, 64)  # at img_size, where the original needs no resampling
    expected = reference_forward(backbone.model.state_dict(), TINY, img, GF2)
    torch.testing.assert_close(run_all(backbone, img, GF2), expected, rtol=1e-4, atol=1e-5)


def official_file(tmp_path, backbone, wrap=True):
    """Write the backbone's weights as an official-style .pth: DDP prefix, head and pretraining extras."""
    state = {"module." + k: v.clone() for k, v in backbone.model.state_dict().items()}
    d = backbone.embed_dim
    extras = {"head.weight": torch.zeros(45, d), "head.bias": torch.zeros(45), "fc_norm.weight": torch.ones(d),
              "fc_norm.bias": torch.zeros(d), "mask_token": torch.zeros(1, 1, d), "norm.weight": torch.ones(d),
              "norm.bias": torch.zeros(d), "projector.weight": torch.zeros(d, d), "projector.bias": torch.zeros(d)}
    state.update({"module." + k: v for k, v in extras.items()})
    path = tmp_path / "DOFA_ViT_tiny_e100.pth"
    torch.save({"model": state} if wrap else state, path)
    return path  # fmt: skip


def test_official_pth_loads_and_gives_identical_outputs(tmp_path):
    source = tiny(seed=3)
    loaded = build_dofa_backbone("tiny-dofa", weights=official_file(tmp_path, source), in_wavelengths=GF2)
    img = image(4)
    torch.testing.assert_close(run_all(loaded, img), run_all(source, img, GF2), rtol=0, atol=0)
    assert all(not p.requires_grad and p.device.type == "cpu" for p in loaded.parameters())


def test_official_pth_with_missing_or_unexpected_keys_is_an_error(tmp_path):
    source = tiny()
    path = official_file(tmp_path, source, wrap=False)
    state = torch.load(path, weights_only=True)
    del state["module.blocks.1.mlp.fc2.bias"]
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing keys \['blocks.1.mlp.fc2.bias'\]"):
        build_dofa_backbone("tiny-dofa", weights=path)
    state["module.blocks.1.mlp.fc2.bias"] = torch.zeros(32)
    state["module.blocks.0.attn.rel_pos"] = torch.zeros(3)
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"unexpected keys \['blocks.0.attn.rel_pos'\]"):
        build_dofa_backbone("tiny-dofa", weights=path)


def test_checkpoint_with_another_position_grid_is_used_as_is(tmp_path):
    source = tiny(config=DOFAConfig(**{**TINY.to_dict(), "img_size": 32}))  # 2x2 table, like a converted file
    loaded = build_dofa_backbone("tiny-dofa", weights=official_file(tmp_path, source))
    assert loaded.config.img_size == 32
    img = image(4, 32, 32)
    torch.testing.assert_close(run_all(loaded, img, GF2), run_all(source, img, GF2), rtol=0, atol=0)


def test_save_pretrained_round_trip(tmp_path):
    source = tiny(seed=5)
    source.save_pretrained(tmp_path / "dofa")
    assert {p.name for p in (tmp_path / "dofa").iterdir()} == {"model.safetensors", "config.json"}
    for weights in (tmp_path / "dofa", tmp_path / "dofa" / "model.safetensors"):
        loaded = build_dofa_backbone("tiny-dofa", weights=weights, out_indices=[0, 1])
        img = image(4)
        torch.testing.assert_close(loaded(img, GF2)[-1], source(img, GF2)[-1], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"embed_dim=32, depth=2, num_heads=2 but preset 'dofa-vitb'"):
        build_dofa_backbone("dofa-vitb", weights=tmp_path / "dofa")


def test_frozen_eval_and_gradients_reach_tokens_between_blocks():
    for checkpointing in (False, True):
        backbone = tiny(gradient_checkpointing=checkpointing)
        backbone.train()
        assert not backbone.training and not any(m.training for m in backbone.modules())
        assert not any(p.requires_grad for p in backbone.parameters())
        tokens, grid = backbone.embed(image(4), GF2)
        delta = torch.zeros_like(tokens, requires_grad=True)
        prompts = torch.randn(2, 3, 32, requires_grad=True)  # VPT-style tokens after the cls prefix
        out = backbone.run_block(0, tokens + delta, grid)
        out = torch.cat([out[:, :1], prompts, out[:, 1:]], dim=1)
        out = backbone.run_block(1, out, grid)
        assert out.shape == (2, 1 + 3 + 8, 32)
        out.square().sum().backward()
        assert delta.grad is not None and delta.grad.abs().sum() > 0
        assert prompts.grad is not None and prompts.grad.abs().sum() > 0
        assert all(p.grad is None for p in backbone.parameters())


def test_runs_under_bf16_autocast():
    backbone = tiny(in_wavelengths=GF2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = backbone(image(4))
    assert [m.shape for m in maps] == [(2, 32, 2, 4)] * len(backbone.out_indices)
    assert all(torch.isfinite(m).all() for m in maps)


def test_dofa_large_on_meta_has_the_official_parameter_count():
    # Official DOFA-L (dofa_v1.vit_large_patch16, img_size 224) without head / fc_norm / MAE extras:
    #   24 timm blocks x 12,596,224 (qkv 1024*3072+3072, proj 1024*1024+1024, fc1 1024*4096+4096,
    #     fc2 4096*1024+1024, 2 LayerNorms 4*1024)                                  = 302,309,376
    #   patch_embed: fclayer 2*(128*128+128) = 33,024; weight_tokens 128*128 = 16,384; bias_token 128;
    #     transformer layer (in_proj 3*128*128+384, out_proj 128*128+128, linear1 128*2048+2048,
    #     linear2 2048*128+128, 2 norms 512) = 593,024; fc_weight 128*262,144+262,144 = 33,816,576;
    #     fc_bias 128*1024+1024 = 132,096                                             =  34,591,232
    #   cls_token 1,024 + pos_embed (1+14*14)*1024 = 201,728 (a non-trainable Parameter) = 202,752
    # total 337,103,360 (x 4 bytes ≈ 1.35 GB, the size of DOFA_ViT_large_e100.pth on the hub)
    with torch.device("meta"):
        backbone = build_dofa_backbone("dofa-vitl", pretrained=False)
    assert sum(p.numel() for p in backbone.parameters()) == 337_103_360
    assert backbone.num_layers == 24 and backbone.embed_dim == 1024
    assert backbone.out_indices == (7, 11, 15, 23)


def test_wavelength_errors_name_the_bands_and_the_shape():
    backbone = tiny(in_wavelengths=GF2)
    with pytest.raises(ValueError, match=r"image has 3 bands \(shape \(2, 3, 32, 64\)\) but 4 wavelengths"):
        backbone.embed(image(3))
    with pytest.raises(ValueError, match=r"band\(s\) \[4\] have none"):
        backbone.embed(image(5), GF2 + [float("nan")])
    with pytest.raises(ValueError, match="divisible by 16"):
        backbone.embed(image(4, 40, 64))
    with pytest.raises(ValueError, match="micrometres"):
        backbone.embed(image(4), [830.0, 665.0, 560.0, 490.0])
    with pytest.raises(ValueError, match="no wavelengths"):
        tiny().embed(image(4))
    tokens, _ = backbone.embed(image(4), torch.tensor([GF2, GF2]))  # [B, C] rows accepted
    assert tokens.shape == (2, 9, 32)


def test_missing_hub_weights_say_to_pass_a_local_file(monkeypatch):
    import huggingface_hub

    asked = []

    def offline(repo_id, filename, **kwargs):
        asked.append((repo_id, filename))
        raise OSError("no internet")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(RuntimeError, match="pass weights=<local .pth file or folder>"):
        build_dofa_backbone("dofa-vitl")
    assert asked == [("earthflow/DOFA", "DOFA_ViT_large_e100.pth")]
    with pytest.raises(ValueError, match="no released weights"):
        build_dofa_backbone("tiny-dofa")
    with pytest.raises(KeyError, match="known: dofa-vitb, dofa-vitl, tiny-dofa"):
        build_dofa_backbone("dofa-huge", pretrained=False)
