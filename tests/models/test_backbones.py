"""Frozen transformers backbones: stepping equals the library forward, any band count, 16-px grid, frozen."""

from __future__ import annotations

import copy
import logging
import math
import types

import pytest
import torch
import torch.nn.functional as F

from spectralmoe.bands import get_sensor
from spectralmoe.models.backbones import (
    BACKBONE_PRESETS,
    build_backbone,
    build_hf_model,
    build_hf_preset_model,
    count_parameters,
    list_backbones,
    wrap_hf_model,
)
from spectralmoe.models.backbones import presets as presets_module
from spectralmoe.models.patch_embed import adapt_kernel_to_bands, resize_patch_kernel

TINY = ["tiny-dinov2", "tiny-dinov2-reg", "tiny-dinov3", "tiny-clip", "tiny-sam"]
PATCH14 = ["tiny-dinov2", "tiny-dinov2-reg", "tiny-clip"]
PREFIX = {"tiny-dinov2": 1, "tiny-dinov2-reg": 5, "tiny-dinov3": 5, "tiny-clip": 1, "tiny-sam": 0}
GF2 = get_sensor("gf2").wavelengths_um  # NIR, R, G, B
OHS = get_sensor("ohs").wavelengths_um  # 32 bands


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _perturb(model: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Random offsets on every weight: SAM initialises near zero, LayerScale is 1e-5, pos tables are zero."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


def _tiny_model(name: str, **overrides) -> torch.nn.Module:
    preset = BACKBONE_PRESETS[name]
    return _perturb(build_hf_model(preset.family, {**preset.config, **overrides}))


def _run(backbone, image: torch.Tensor, between=None) -> tuple[torch.Tensor, tuple[int, int]]:
    tokens, grid = backbone.embed(image)
    for index in range(backbone.num_layers):
        tokens = backbone.run_block(index, tokens, grid)
        if between is not None:
            tokens = between(index, tokens)
    return tokens, grid


def _reference(model: torch.nn.Module, family: str, image: torch.Tensor) -> torch.Tensor:
    kwargs = {"interpolate_pos_encoding": True} if family == "clip" else {}
    return model(image, **kwargs).last_hidden_state


@pytest.mark.parametrize("name", TINY)
def test_manual_stepping_equals_library_forward(name: str) -> None:
    family = BACKBONE_PRESETS[name].family
    reference = _tiny_model(name, patch_size=16, image_size=64)
    backbone = wrap_hf_model(copy.deepcopy(reference))
    # Non-square input (grid 4×3) except for SAM, whose library forward only takes its configured size.
    image = torch.randn(2, 3, 64, 64 if family == "sam" else 48)
    with torch.no_grad():
        tokens, grid = _run(backbone, image)
        expected = _reference(reference, family, image)
        got = backbone.neck(tokens, grid) if family == "sam" else backbone.final_norm(tokens)
    assert grid == (image.shape[2] // 16, image.shape[3] // 16)
    assert tokens.shape == (2, PREFIX[name] + grid[0] * grid[1], 64)
    assert backbone.num_prefix_tokens == PREFIX[name]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    if family == "clip":
        torch.testing.assert_close(
            backbone.pooled(tokens), reference(image, interpolate_pos_encoding=True).pooler_output
        )


def _per_patch_bilinear(image: torch.Tensor, old: int, new: int) -> torch.Tensor:
    """Resize every old×old patch on its own to new×new (the input FlexiViT's PI-resize is exact for)."""
    b, c, height, width = image.shape
    h, w = height // old, width // old
    patches = image.reshape(b, c, h, old, w, old).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, old, old)
    patches = F.interpolate(patches, size=(new, new), mode="bilinear", align_corners=False)
    return patches.reshape(b, h, w, c, new, new).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h * new, w * new)


@pytest.mark.parametrize("name", PATCH14)
def test_patch14_model_runs_on_16_grid(name: str) -> None:
    family = BACKBONE_PRESETS[name].family
    native = _tiny_model(name)  # patch 14, position table 4×4 (image 56)
    original_kernel = (native.embeddings.patch_embeddings.projection.weight if family != "clip"
                       else native.embeddings.patch_embedding.weight).detach().clone()  # fmt: skip

    backbone = wrap_hf_model(copy.deepcopy(native))  # default bicubic
    assert backbone.patch_size == 16 and backbone.native_patch_size == 14
    torch.testing.assert_close(backbone.patch_conv.weight, resize_patch_kernel(original_kernel, 16, "bicubic"))
    with torch.no_grad():
        tokens, grid = _run(backbone, torch.randn(1, 3, 64, 128))  # 14-grid would be 4×9: a mismatch would fail
    assert grid == (4, 8) and tokens.shape == (1, PREFIX[name] + 32, 64)
    assert torch.isfinite(tokens).all()

    # With the pseudo-inverse kernel, a per-patch 14→16 upsampled image gives the native model's output.
    backbone_pi = wrap_hf_model(copy.deepcopy(native), kernel_resize="pi")
    image14 = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        tokens, _ = _run(backbone_pi, _per_patch_bilinear(image14, 14, 16))
        expected = native(image14).last_hidden_state
    torch.testing.assert_close(backbone_pi.final_norm(tokens), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("wavelengths", [GF2, OHS], ids=["4-band", "32-band"])
def test_band_counts(name: str, wavelengths: tuple[float, ...]) -> None:
    native = _tiny_model(name)
    rgb_kernel = wrap_hf_model(copy.deepcopy(native)).patch_conv.weight.detach()  # the RGB kernel at 16 px
    backbone = wrap_hf_model(native, in_wavelengths=wavelengths)
    assert backbone.patch_conv.in_channels == len(wavelengths)
    torch.testing.assert_close(backbone.patch_conv.weight, adapt_kernel_to_bands(rgb_kernel, wavelengths))
    image = torch.randn(1, len(wavelengths), 64, 128)
    with torch.no_grad():
        tokens, grid = _run(backbone, image)
    assert grid == (4, 8)
    assert tokens.shape == (1, PREFIX[name] + 32, 64)
    assert torch.isfinite(tokens).all()


@pytest.mark.parametrize("name", ["tiny-dinov3", "tiny-sam"])
def test_rgb_default_keeps_pretrained_kernel(name: str) -> None:
    native = _tiny_model(name)
    conv = wrap_hf_model(copy.deepcopy(native)).patch_conv
    original = copy.deepcopy(native)
    backbone = wrap_hf_model(native)
    reference_conv = (original.embeddings.patch_embeddings if name == "tiny-dinov3"
                      else original.vision_encoder.patch_embed.projection)  # fmt: skip
    assert torch.equal(conv.weight, reference_conv.weight)
    assert torch.equal(backbone.patch_conv.bias, reference_conv.bias)
    # Another band order permutes the filters instead (B, G, R).
    bgr = wrap_hf_model(copy.deepcopy(original), in_wavelengths=(0.490, 0.560, 0.665))
    assert torch.equal(bgr.patch_conv.weight, reference_conv.weight.flip(1))


@pytest.mark.parametrize("name", TINY)
def test_frozen_but_gradients_reach_between_block_tensors(name: str) -> None:
    backbone = build_backbone(name, pretrained=False, in_wavelengths=GF2)
    assert all(not p.requires_grad for p in backbone.parameters())
    backbone.train(True)
    assert not any(m.training for m in backbone.modules())
    offset = torch.zeros(backbone.embed_dim, requires_grad=True)

    def add_offset(index: int, tokens: torch.Tensor) -> torch.Tensor:
        return tokens + offset if index == 0 else tokens

    tokens, _ = _run(backbone, torch.randn(2, 4, 32, 48), between=add_offset)
    tokens.square().sum().backward()
    assert offset.grad is not None and offset.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.parameters())


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(1)
        backbone = build_backbone("tiny-dinov3", pretrained=False, gradient_checkpointing=checkpointing)
        offset = torch.zeros(backbone.embed_dim, requires_grad=True)
        tokens, _ = _run(backbone, torch.randn(1, 3, 32, 32), between=lambda i, t: t + offset)
        tokens.square().sum().backward()
        grads.append(offset.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])


def test_dinov3_rope_on_last_tokens_and_never_jittered() -> None:
    backbone = wrap_hf_model(_tiny_model("tiny-dinov3"))
    backbone.train(True)  # RoPE coordinate jitter would act here if training mode got through
    assert not backbone.model.rope_embeddings.training
    image = torch.randn(1, 3, 48, 32)
    with torch.no_grad():
        tokens, grid = backbone.embed(image)
        first = backbone.run_block(0, tokens, grid)
        assert torch.equal(first, backbone.run_block(0, tokens, grid))
        # Prompts inserted after the prefix: RoPE must act on the last h*w tokens only, so the
        # non-patch tokens carry no position and their order does not change the patch outputs.
        prompts = torch.randn(1, 3, backbone.embed_dim)
        prefix, patches = tokens[:, :5], tokens[:, 5:]
        out_a = backbone.run_block(0, torch.cat([prefix, prompts, patches], 1), grid)
        out_b = backbone.run_block(0, torch.cat([prompts, prefix, patches], 1), grid)
    assert out_a.shape == (1, 8 + grid[0] * grid[1], backbone.embed_dim)
    torch.testing.assert_close(out_a[:, 8:], out_b[:, 8:], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out_a[:, :5], out_b[:, 3:8], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(out_a[:, 8:], first[:, 5:], atol=1e-4)  # the prompts are attended to


def test_sam_position_table_resized_and_extra_tokens_refused() -> None:
    native = _tiny_model("tiny-sam")  # image 64: tables for a 4×4 grid
    backbone = wrap_hf_model(copy.deepcopy(native))
    image = torch.randn(1, 3, 96, 96)  # 6×6 grid
    # The same weights in a model configured for 96 px, its tables resized as the rule says.
    config = {**BACKBONE_PRESETS["tiny-sam"].config, "image_size": 96}
    rebuilt = build_hf_model("sam", config).eval()
    state = native.state_dict()
    pos = state["vision_encoder.pos_embed"].permute(0, 3, 1, 2)
    state["vision_encoder.pos_embed"] = F.interpolate(pos, size=(6, 6), mode="bicubic").permute(0, 2, 3, 1)
    for key, value in state.items():
        if key.endswith(("rel_pos_h", "rel_pos_w")) and value.shape[0] != rebuilt.state_dict()[key].shape[0]:
            state[key] = F.interpolate(value.T[None], size=11, mode="linear")[0].T
    rebuilt.load_state_dict(state)
    with torch.no_grad():
        tokens, grid = _run(backbone, image)
        torch.testing.assert_close(backbone.neck(tokens, grid), rebuilt(image).last_hidden_state, atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="prompt"):
            backbone.run_block(0, torch.cat([tokens[:, :2], tokens], 1), grid)


@pytest.mark.parametrize("name", TINY)
def test_save_pretrained_then_load_by_weights(name: str, tmp_path) -> None:
    model = _perturb(build_hf_preset_model(name))
    model.save_pretrained(tmp_path)
    loaded = build_backbone(name, weights=tmp_path, in_wavelengths=GF2)
    in_memory = wrap_hf_model(model, in_wavelengths=GF2)
    image = torch.randn(1, 4, 32, 48)
    with torch.no_grad():
        expected, _ = _run(in_memory, image)
        got, _ = _run(loaded, image)
    assert torch.equal(got, expected)
    assert all(not p.requires_grad for p in loaded.parameters())


def test_full_clip_and_sam_checkpoints_load_their_vision_part(tmp_path) -> None:
    from transformers import CLIPConfig, CLIPModel, SamConfig, SamModel

    clip_vision = BACKBONE_PRESETS["tiny-clip"].config
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
                max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1)  # fmt: skip
    clip = _perturb(CLIPModel(CLIPConfig(vision_config=clip_vision, text_config=text, projection_dim=16)))
    clip.save_pretrained(tmp_path / "clip")
    backbone = build_backbone("tiny-clip", weights=tmp_path / "clip")
    fc1 = clip.vision_model.encoder.layers[1].mlp.fc1.weight
    assert torch.equal(backbone.model.encoder.layers[1].mlp.fc1.weight, fc1)

    sam = _perturb(SamModel(SamConfig(
        vision_config=BACKBONE_PRESETS["tiny-sam"].config,
        prompt_encoder_config=dict(hidden_size=32, image_size=64, image_embedding_size=4),
        mask_decoder_config=dict(hidden_size=32, num_hidden_layers=1, mlp_dim=32, iou_head_hidden_dim=16),
    )))  # fmt: skip
    sam.save_pretrained(tmp_path / "sam")
    backbone = build_backbone("tiny-sam", weights=tmp_path / "sam")
    assert torch.equal(backbone.model.vision_encoder.pos_embed, sam.vision_encoder.pos_embed)
    assert torch.equal(backbone.blocks[3].attn.qkv.weight, sam.vision_encoder.layers[3].attn.qkv.weight)


def test_loading_refuses_missing_weights_and_wrong_sizes(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    build_hf_preset_model("tiny-dinov3").save_pretrained(tmp_path / "dinov3")
    with pytest.raises(ValueError, match="'dinov3_vit' checkpoint"):
        build_backbone("tiny-dinov2", weights=tmp_path / "dinov3")
    build_hf_preset_model("tiny-dinov2").save_pretrained(tmp_path / "partial")
    file = tmp_path / "partial" / "model.safetensors"
    tensors = load_file(file)
    del tensors["layernorm.weight"]
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"1 weights .* missing .*layernorm\.weight"):
        build_backbone("tiny-dinov2", weights=tmp_path / "partial")
    build_hf_model("dinov2", {**BACKBONE_PRESETS["tiny-dinov2"].config, "num_hidden_layers": 2}).save_pretrained(
        tmp_path / "short"
    )
    with pytest.raises(ValueError, match="num_hidden_layers=2"):
        build_backbone("tiny-dinov2", weights=tmp_path / "short")
    with pytest.raises(FileNotFoundError, match="absent"):
        build_backbone("dinov2-vitl14", weights=tmp_path / "absent")


# Parameter counts of the released vision models (HF_NOTES §2), in millions, to 0.01 M.
REAL_COUNTS = {"dinov3-vitl16": 303.13, "dinov2-vitl14": 304.37, "dinov2-reg-vitl14": 304.37, "clip-vitl14": 303.18,
               "sam-vith": 637.03, "sam-vitl": 308.28}  # fmt: skip


@pytest.mark.parametrize("name", sorted(REAL_COUNTS))
def test_real_preset_parameter_counts_on_meta(name: str) -> None:
    with torch.device("meta"):
        model = build_hf_preset_model(name)
    assert round(count_parameters(model) / 1e6, 2) == REAL_COUNTS[name]


def test_real_preset_builds_on_meta_with_any_band_count(caplog) -> None:
    with caplog.at_level(logging.WARNING), torch.device("meta"):
        backbone = build_backbone("dinov2-vitl14", pretrained=False, in_wavelengths=OHS)
    assert "RANDOM" in caplog.text
    assert backbone.patch_conv.weight.is_meta
    assert tuple(backbone.patch_conv.weight.shape) == (1024, 32, 16, 16)
    assert backbone.out_indices == (7, 11, 15, 23) and backbone.num_prefix_tokens == 1
    with torch.device("meta"):
        sam = build_backbone("sam-vith", pretrained=False)
    assert sam.out_indices == (7, 15, 23, 31) and sam.num_layers == 32 and sam.embed_dim == 1280


def test_input_errors_name_bands_and_shape() -> None:
    backbone = build_backbone("tiny-dinov3", pretrained=False)
    with pytest.raises(ValueError, match=r"3 bands.*4 bands.*\(1, 4, 32, 32\)"):
        backbone.embed(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="4 wavelengths"):
        backbone.embed(torch.randn(1, 3, 32, 32), wavelengths=GF2)
    with pytest.raises(ValueError, match=r"multiples of 16.*\(1, 3, 32, 40\)"):
        backbone.embed(torch.randn(1, 3, 32, 40))
    tokens, grid = backbone.embed(torch.randn(1, 3, 32, 32), wavelengths=torch.tensor([[0.66, 0.55, 0.48]]))
    assert grid == (2, 2)


def test_factory_errors() -> None:
    with pytest.raises(ValueError, match="pretrained=False"):
        build_backbone("tiny-dinov2")
    with pytest.raises(KeyError, match="unknown backbone"):
        build_backbone("no-such-model", pretrained=False)
    with pytest.raises(ValueError, match="kernel_resize"):
        build_backbone("tiny-clip", pretrained=False, kernel_resize="nearest")
    with pytest.raises(ValueError, match="out_indices"):
        build_backbone("tiny-clip", pretrained=False, out_indices=[1, 4])
    nan_band = build_backbone("tiny-clip", pretrained=False, in_wavelengths=(0.665, 0.56, 0.49, math.nan))
    assert torch.count_nonzero(nan_band.patch_conv.weight[:, 3]) == 0


def test_dofa_names_are_delegated_lazily(monkeypatch) -> None:
    calls = {}

    def fake_build(name, **kwargs):
        calls[name] = kwargs
        return "dofa-backbone"

    fake = types.SimpleNamespace(DOFA_CONFIGS={"tiny-dofa": None}, build_dofa_backbone=fake_build)
    monkeypatch.setattr(presets_module, "_dofa_module", lambda: fake)
    assert "tiny-dofa" in list_backbones() and "dinov3-vitl16" in list_backbones()
    assert build_backbone("tiny-dofa", pretrained=False, in_wavelengths=GF2, out_indices=[0]) == "dofa-backbone"
    assert calls["tiny-dofa"] == dict(in_wavelengths=GF2, pretrained=False, weights=None, out_indices=[0],
                                      gradient_checkpointing=False)  # fmt: skip

    def missing():
        raise ImportError("no module named dofa")

    monkeypatch.setattr(presets_module, "_dofa_module", missing)
    assert not any(n.startswith(("dofa", "tiny-dofa")) for n in list_backbones())
    with pytest.raises(KeyError, match="failed to import"):
        build_backbone("dofa-vitl", pretrained=False)


@pytest.mark.parametrize("family", sorted(presets_module.WRITTEN_FAMILIES))
def test_written_family_builders_share_preset_and_random_weight_rules(family: str, caplog, tmp_path) -> None:
    """Every written family resolves presets, refuses unknown names and contradicting weight arguments
    the same way (``common.resolve_preset`` / ``random_weights_requested``)."""
    configs_name, builder_name, _ = presets_module.WRITTEN_FAMILIES[family]
    module = presets_module._family_module(family)
    builder, configs = getattr(module, builder_name), getattr(module, configs_name)
    label = next(iter(configs.values())).family_label
    with pytest.raises(KeyError, match=rf"unknown {label} preset 'no-such-model'; known: "):
        builder("no-such-model", pretrained=False)
    with pytest.raises(ValueError, match="weights= was given with pretrained=False"):
        builder(next(iter(configs)), pretrained=False, weights=tmp_path / "model.pth")
    tiny = [name for name in configs if name.startswith("tiny-")][0]
    with caplog.at_level(logging.WARNING), torch.device("meta"):
        backbone = builder(configs[tiny], pretrained=False, in_wavelengths=[0.665, 0.56, 0.49])  # a config, as is
    assert f"{label} config built with RANDOM weights" in caplog.text
    assert backbone.embed_dim == configs[tiny].embed_dim


def test_every_foreign_weight_reader_refuses_objects_other_than_tensors(tmp_path) -> None:
    """A pickle that names a class (here a Namespace of training arguments) is refused before any of its
    code could run, by every reader of foreign weight files (``common.load_tensors_only`` behind them)."""
    import argparse

    from spectralmoe.models import dstc
    from spectralmoe.models.backbones import common, galileo, senpamae

    path = tmp_path / "checkpoint.pth"
    torch.save({"model_state_dict": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=1.0)}, path)
    readers = [common.read_state_file, galileo.load_galileo_state_dict, senpamae._load_checkpoint, dstc._read_state]
    for read in readers:
        with pytest.raises(ValueError, match=r"checkpoint.pth: holds objects other than tensors; "):
            read(path)
    torch.save({"model_state_dict": {"w": torch.zeros(1)}}, path)  # positive control: tensors only
    assert torch.equal(common.read_state_file(path)["w"], torch.zeros(1))
