"""DepthEncoder: per-layer tokens of a frozen depth model on the /16 grid (tiny configs, CPU)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from spectralmoe.models.depth import (
    DEPTH_PRESETS,
    DepthEncoder,
    build_depth_encoder,
    depth_layer_map,
    list_depth_encoders,
)
from spectralmoe.models.patch_embed import resize_patch_kernel

TINY = ["tiny-depth-anything", "tiny-prompt-depth-anything"]
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def tiny_model(name: str, seed: int = 0, **backbone_overrides):
    """A full tiny depth model (backbone + neck + head) with seeded random weights."""
    torch.manual_seed(seed)
    preset = DEPTH_PRESETS[name]
    return preset.model_class(preset.make_config(**backbone_overrides)).eval()


def reference_tokens(backbone, rgb: torch.Tensor) -> list[torch.Tensor]:
    """Patch tokens after every block, the library's own way: hidden_states[1:] without cls."""
    with torch.no_grad():
        states = backbone((rgb - MEAN) / STD, output_hidden_states=True).hidden_states
    return [s[:, 1:] for s in states[1:]]


@pytest.fixture(scope="module")
def patch16_da():
    """A tiny DA model whose native patch is 16 (no kernel resize), 4 blocks, 4x4 position grid."""
    return tiny_model("tiny-depth-anything", patch_size=16, image_size=64)


@pytest.mark.parametrize("name", TINY)
def test_tokens_equal_backbone_hidden_states(name: str) -> None:
    model = tiny_model(name, patch_size=16, image_size=64)
    reference = copy.deepcopy(model.backbone)
    encoder = DepthEncoder(model.backbone, num_visual_layers=4)
    rgb = torch.rand(2, 3, 64, 48)  # non-square: the 4x4 position grid is interpolated to 4x3
    out = encoder(rgb)
    expected = reference_tokens(reference, rgb)
    assert len(out) == 4 == encoder.num_layers == encoder.num_visual_layers
    assert encoder.layer_map == (0, 1, 2, 3)
    assert encoder.embed_dim == 32
    for got, want in zip(out, expected):
        assert got.shape == (2, 12, 32)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # consecutive layers really differ (the comparison above is not trivially satisfied)
    assert not torch.allclose(out[0], out[1])


def test_normalisation_is_applied_inside(patch16_da) -> None:
    encoder = DepthEncoder(copy.deepcopy(patch16_da.backbone), num_visual_layers=4)
    rgb = torch.rand(1, 3, 32, 32)
    unnormalised = reference_tokens(copy.deepcopy(patch16_da.backbone), rgb * STD + MEAN)  # feeds rgb raw
    assert not torch.allclose(encoder(rgb)[-1], unnormalised[-1], atol=1e-3)


def test_patch14_model_gives_the_16px_grid() -> None:
    model = tiny_model("tiny-depth-anything")  # patch 14, position grid 4x4 (image 56)
    original_kernel = model.backbone.embeddings.patch_embeddings.projection.weight.detach().clone()
    state = copy.deepcopy(model.backbone.state_dict())
    encoder = DepthEncoder(model.backbone, num_visual_layers=4)

    projection = encoder.backbone.embeddings.patch_embeddings.projection
    assert projection.kernel_size == (16, 16) and projection.stride == (16, 16)
    torch.testing.assert_close(projection.weight, resize_patch_kernel(original_kernel, 16, method="bicubic"))

    # 112 px: 7 tokens at /16 but 8 at /14, so a grid still sized by 14 would not fit the tokens
    for height, width in [(32, 48), (64, 64), (112, 32), (48, 112)]:
        out = encoder(torch.rand(1, 3, height, width))
        assert [t.shape for t in out] == [torch.Size([1, (height // 16) * (width // 16), 32])] * 4

    # Same weights in a model built natively with patch 16 (kernel resized by hand) give the same tokens:
    # the patch-14 model's position embedding follows the /16 grid, interpolated like a native one.
    native = tiny_model("tiny-depth-anything", patch_size=16, image_size=64).backbone
    key = "embeddings.patch_embeddings.projection.weight"
    state[key] = resize_patch_kernel(state[key], 16, method="bicubic")
    native.load_state_dict(state)
    rgb = torch.rand(2, 3, 48, 112)
    for got, want in zip(encoder(rgb), reference_tokens(native, rgb)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_kernel_resize_rule_is_passed_through() -> None:
    model = tiny_model("tiny-depth-anything")
    kernel = model.backbone.embeddings.patch_embeddings.projection.weight.detach().clone()
    encoder = DepthEncoder(model.backbone, num_visual_layers=4, kernel_resize="pi")
    resized = encoder.backbone.embeddings.patch_embeddings.projection.weight
    torch.testing.assert_close(resized, resize_patch_kernel(kernel, 16, method="pi"))
    assert not torch.allclose(resized, resize_patch_kernel(kernel, 16, method="bicubic"))


def test_layer_map_rule() -> None:
    assert depth_layer_map(4, 4) == (0, 1, 2, 3)
    assert depth_layer_map(2, 4) == (1, 3)
    assert depth_layer_map(6, 4) == (0, 0, 1, 2, 2, 3)
    sam_h = depth_layer_map(32, 24)  # SAM-H on a ViT-L depth model
    assert len(sam_h) == 32 and sam_h[-1] == 23 and set(sam_h) == set(range(24))
    assert all(b - a in (0, 1) for a, b in zip(sam_h, sam_h[1:]))
    assert sam_h[:8] == (0, 1, 1, 2, 3, 4, 4, 5)  # (l+1)·0.75 = 1.5, 4.5 round up
    assert depth_layer_map(24, 12) == tuple(i // 2 for i in range(24))  # every block read twice
    assert depth_layer_map(1, 24) == (23,) and depth_layer_map(24, 1) == (0,) * 24
    with pytest.raises(ValueError):
        depth_layer_map(0, 24)


@pytest.mark.parametrize("visual, blocks", [(2, (1, 3)), (6, (0, 0, 1, 2, 2, 3))])
def test_layer_mapping_selects_depth_blocks(patch16_da, visual: int, blocks: tuple[int, ...]) -> None:
    encoder = DepthEncoder(copy.deepcopy(patch16_da.backbone), num_visual_layers=visual)
    rgb = torch.rand(1, 3, 32, 32)
    out = encoder(rgb)
    expected = reference_tokens(copy.deepcopy(patch16_da.backbone), rgb)
    assert encoder.layer_map == blocks and encoder.num_visual_layers == visual and encoder.num_layers == 4
    assert len(out) == visual
    for got, block in zip(out, blocks):
        torch.testing.assert_close(got, expected[block], rtol=0, atol=1e-6)


def test_stops_after_the_last_needed_block(patch16_da) -> None:
    encoder = DepthEncoder(copy.deepcopy(patch16_da.backbone), num_visual_layers=4)
    encoder.layer_map = (0, 1)  # e.g. a method that reads only the first two depth blocks
    calls: list[int] = []
    for index, block in enumerate(encoder.blocks):
        block.register_forward_hook(lambda module, args, output, index=index: calls.append(index))
    assert len(encoder(torch.rand(1, 3, 32, 32))) == 2
    assert calls == [0, 1]


def test_always_frozen(patch16_da) -> None:
    encoder = DepthEncoder(copy.deepcopy(patch16_da.backbone), num_visual_layers=4)
    assert all(not p.requires_grad for p in encoder.parameters())
    assert encoder.train() is encoder
    assert not any(m.training for m in encoder.modules())
    rgb = torch.rand(1, 3, 32, 32, requires_grad=True)
    with torch.enable_grad():
        out = encoder(rgb)
    assert all(not t.requires_grad and t.grad_fn is None for t in out)


def test_bf16_autocast(patch16_da) -> None:
    encoder = DepthEncoder(copy.deepcopy(patch16_da.backbone), num_visual_layers=4)
    rgb = torch.rand(1, 3, 32, 48)
    full = encoder(rgb)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = encoder(rgb)
    for a, b in zip(full, half):
        assert b.shape == a.shape and torch.isfinite(b).all()
        torch.testing.assert_close(b.float(), a, rtol=0.1, atol=0.1)


@pytest.mark.parametrize("name", TINY)
def test_weights_from_a_saved_folder(name: str, tmp_path) -> None:
    model = tiny_model(name, seed=1, patch_size=16, image_size=64)
    model.save_pretrained(tmp_path)
    encoder = build_depth_encoder(name, num_visual_layers=4, weights=tmp_path)
    assert not hasattr(encoder, "neck") and not any(n.startswith(("neck", "head")) for n, _ in encoder.named_modules())
    rgb = torch.rand(2, 3, 32, 48)
    for got, want in zip(encoder(rgb), reference_tokens(model.backbone, rgb)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("rule", ["bicubic", "pi"])
def test_patch14_weights_load_then_resize(rule: str, tmp_path) -> None:
    model = tiny_model("tiny-prompt-depth-anything", seed=2)
    model.save_pretrained(tmp_path)
    encoder = build_depth_encoder("tiny-prompt-depth-anything", num_visual_layers=4, weights=tmp_path,
                                  kernel_resize=rule)
    saved = model.backbone.state_dict()
    loaded = encoder.backbone.state_dict()
    key = "embeddings.patch_embeddings.projection.weight"
    torch.testing.assert_close(loaded[key], resize_patch_kernel(saved[key], 16, method=rule))
    assert set(loaded) == set(saved)
    for name in saved:
        if name != key:
            torch.testing.assert_close(loaded[name], saved[name], rtol=0, atol=0)


def test_build_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="no published weights"):
        build_depth_encoder("tiny-depth-anything", num_visual_layers=4)
    with pytest.raises(ValueError, match="unknown depth model"):
        build_depth_encoder("midas", num_visual_layers=4, pretrained=False)
    with pytest.raises(ValueError, match="pretrained=False"):
        build_depth_encoder("tiny-depth-anything", num_visual_layers=4, pretrained=False, weights=tmp_path)


def test_random_init_warns(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="spectralmoe"):
        encoder = build_depth_encoder("tiny-depth-anything", num_visual_layers=2, pretrained=False)
    assert "RANDOM" in caplog.text
    assert encoder.layer_map == (1, 3)


def test_bad_shapes(patch16_da) -> None:
    encoder = DepthEncoder(copy.deepcopy(patch16_da.backbone), num_visual_layers=4)
    with pytest.raises(ValueError, match=r"\(1, 4, 32, 32\)"):
        encoder(torch.rand(1, 4, 32, 32))
    with pytest.raises(ValueError, match=r"\(3, 32, 32\)"):
        encoder(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match=r"\(1, 3, 40, 32\)"):
        encoder(torch.rand(1, 3, 40, 32))
    with pytest.raises(ValueError, match=r"\(1, 3, 32, 56\)"):
        encoder(torch.rand(1, 3, 32, 56))


# Hub models: full-model and DINOv2 backbone parameter counts (HF_NOTES §3; the DA-V2 model card's
# 24.8 M / 97.5 M for S / B). The depth encoder keeps the backbone with a 16x16 instead of 14x14
# patch kernel, i.e. 3 * (16² - 14²) * D more weights.
REAL = {
    "depth-anything-v2-small": (24_785_089, 22_056_576, 384, 12),
    "depth-anything-v2-base": (97_470_785, 86_580_480, 768, 12),
    "depth-anything-v2-large": (335_315_649, 304_368_640, 1024, 24),
    "prompt-depth-anything-large": (340_046_529, 304_368_640, 1024, 24),
}


@pytest.mark.parametrize("name", list(REAL))
def test_meta_build_of_real_presets(name: str) -> None:
    total, backbone, dim, blocks = REAL[name]
    preset = DEPTH_PRESETS[name]
    with torch.device("meta"):
        full = preset.model_class(preset.make_config())
        encoder = build_depth_encoder(name, num_visual_layers=32, pretrained=False)
    assert sum(p.numel() for p in full.parameters()) == total
    assert sum(p.numel() for p in full.backbone.parameters()) == backbone
    assert sum(p.numel() for p in encoder.parameters()) == backbone + 3 * (16**2 - 14**2) * dim
    assert all(p.is_meta for p in encoder.parameters())
    assert (encoder.embed_dim, encoder.num_layers, len(encoder.layer_map)) == (dim, blocks, 32)
    assert encoder.layer_map[-1] == blocks - 1


def test_presets_listed_with_hub_ids() -> None:
    names = list_depth_encoders()
    assert set(names) == {
        "depth-anything-v2-small", "depth-anything-v2-base", "depth-anything-v2-large",
        "prompt-depth-anything-large", "tiny-depth-anything", "tiny-prompt-depth-anything",
        "synthetic-depth-anything",  # packaged, pretrained on the synthetic world (no hub id)
    }
    assert DEPTH_PRESETS["depth-anything-v2-large"].hub_id == "depth-anything/Depth-Anything-V2-Large-hf"
    assert DEPTH_PRESETS["depth-anything-v2-small"].hub_id == "depth-anything/Depth-Anything-V2-Small-hf"
    assert DEPTH_PRESETS["depth-anything-v2-base"].hub_id == "depth-anything/Depth-Anything-V2-Base-hf"
    assert DEPTH_PRESETS["prompt-depth-anything-large"].hub_id == "depth-anything/prompt-depth-anything-vitl-hf"
    assert DEPTH_PRESETS["tiny-depth-anything"].hub_id is None
