"""The authors' frozen-model files (original DINOv3 / DINOv2 + Prompt DA layouts) → our backbones.

Each converted model is compared, block by block, with a plain re-statement of the ORIGINAL forward on
the original weights (``original_vit_reference``): that is what proves the key mapping (q/k/v split,
the masked key bias, layer scales, RoPE periods) — a round trip through our own code would not.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spectralmoe.bands import get_sensor
from spectralmoe.convert.frozen import adapt_patch_kernel, convert_frozen_file, dinov2_to_hf, dinov3_to_hf
from spectralmoe.models.backbones.hf_vit import wrap_hf_model
from spectralmoe.models.backbones.presets import BACKBONE_PRESETS
from spectralmoe.models.depth import DepthEncoder
from tests.convert import original_vit_reference as ref

DIM, LAYERS, HEADS, HIDDEN = 64, 4, 4, 128
TINY_DINOV3 = BACKBONE_PRESETS["tiny-dinov3"].config
#: A 64-wide, 4-block DINOv2 depth encoder config (as wide as tiny-dinov3, so no depth projection).
TINY_DEPTH = dict(hidden_size=DIM, num_hidden_layers=LAYERS, num_attention_heads=HEADS, mlp_ratio=2, image_size=56,
                  patch_size=14, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)  # fmt: skip
GF2 = list(get_sensor("gf2").wavelengths_um)


def test_dinov3_file_matches_the_original_forward_block_by_block():
    sd = ref.random_dinov3(DIM, LAYERS, HEADS, HIDDEN, bands=4)
    backbone = wrap_hf_model(dinov3_to_hf(sd, TINY_DINOV3, "t"), in_wavelengths=GF2)
    image = torch.randn(2, 4, 48, 64, generator=torch.Generator().manual_seed(3))  # a 3×4 grid: RoPE per axis
    expected = ref.dinov3_blocks(sd, image, HEADS)
    with torch.no_grad():
        tokens, grid = backbone.embed(image)
        for layer in range(LAYERS):
            tokens = backbone.run_block(layer, tokens, grid)
            torch.testing.assert_close(tokens, expected[layer], atol=2e-5, rtol=1e-5)
    assert grid == (3, 4)


def test_dinov3_negative_controls():
    sd = ref.random_dinov3(DIM, LAYERS, HEADS, HIDDEN, bands=4)
    image = torch.randn(1, 4, 32, 48, generator=torch.Generator().manual_seed(4))
    expected = ref.dinov3_blocks(sd, image, HEADS)[-1]
    swapped = dict(sd)  # q and k rows exchanged on the way in
    for key in [k for k in sd if k.endswith("attn.qkv.weight")]:
        q, k, v = sd[key].chunk(3)
        swapped[key] = torch.cat([k, q, v])
    backbone = wrap_hf_model(dinov3_to_hf(swapped, TINY_DINOV3, "t"), in_wavelengths=GF2)
    with torch.no_grad():
        tokens, grid = backbone.embed(image)
        for layer in range(LAYERS):
            tokens = backbone.run_block(layer, tokens, grid)
    assert (tokens - expected).abs().max() > 1e-2
    unmasked = {**sd, **{k: torch.ones_like(v) for k, v in sd.items() if k.endswith("bias_mask")}}
    with pytest.raises(ValueError, match="non-zero key bias"):
        dinov3_to_hf(unmasked, TINY_DINOV3, "t")
    with pytest.raises(ValueError, match="periods"):
        dinov3_to_hf({**sd, "rope_embed.periods": sd["rope_embed.periods"] * 2}, TINY_DINOV3, "t")
    with pytest.raises(KeyError, match="blocks.0.attn.extra"):
        dinov3_to_hf({**sd, "blocks.0.attn.extra": torch.zeros(1)}, TINY_DINOV3, "t")
    with pytest.raises(ValueError, match="width 64 with 3 blocks"):
        dinov3_to_hf({k: v for k, v in sd.items() if not k.startswith("blocks.3.")}, TINY_DINOV3, "t")


def test_depth_encoder_from_the_converted_file_matches_the_original_forward():
    """The authors feed their depth encoder the normalised bands as they are (no ImageNet step)."""
    sd = ref.random_dinov2(DIM, LAYERS, HIDDEN, grid=3)
    encoder = DepthEncoder(dinov2_to_hf(sd, TINY_DEPTH, "t", backbone=True), num_visual_layers=LAYERS)
    rgb = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(5))
    expected = ref.dinov2_blocks(sd, rgb, HEADS)
    tokens = encoder(rgb, imagenet_normalize=False)
    for layer in range(LAYERS):
        torch.testing.assert_close(tokens[layer], expected[layer][:, 1:], atol=2e-5, rtol=1e-5)
    normalised = encoder(rgb)  # the default ImageNet step changes what the model sees
    assert (normalised[-1] - tokens[-1]).abs().max() > 1e-2


def _authors_converter(sd: dict[str, torch.Tensor], crop: int) -> dict[str, torch.Tensor]:
    """convert_dinov3_depthmoe.py on the depth encoder, restated: bicubic kernel → 16, bicubic table → crop/16."""
    out = dict(sd)
    out["patch_embed.proj.weight"] = F.interpolate(sd["patch_embed.proj.weight"], size=(16, 16), mode="bicubic",
                                                   align_corners=False)  # fmt: skip
    pos = sd["pos_embed"]
    side = int((pos.shape[1] - 1) ** 0.5)
    grid = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(crop // 16, crop // 16), mode="bicubic", align_corners=False)
    out["pos_embed"] = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])], dim=1)
    return out


def test_published_patch14_weights_equal_the_authors_converted_file_at_the_crop_size():
    """Prompt DA as published (patch 14, 4×4 table here) run by our depth encoder at patch 16 gives the same
    tokens as the authors' converted weights at the crop they converted for (48 px here, 512 for real)."""
    original = ref.random_dinov2(DIM, LAYERS, HIDDEN, grid=4, patch=14, seed=7)
    converted = DepthEncoder(dinov2_to_hf(_authors_converter(original, 48), TINY_DEPTH, "t", backbone=True),
                             num_visual_layers=LAYERS)  # fmt: skip
    published = DepthEncoder(dinov2_to_hf(original, TINY_DEPTH, "t", backbone=True), num_visual_layers=LAYERS)
    assert published.backbone.config.patch_size == 14 and converted.backbone.config.patch_size == 16
    rgb = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(6))
    for a, b in zip(converted(rgb, imagenet_normalize=False), published(rgb, imagenet_normalize=False)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_patch_kernel_rules():
    sd = {"patch_embed.proj.weight": torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)}
    with pytest.raises(ValueError, match="--patch-embed cmod3"):
        adapt_patch_kernel(dict(sd), 4, None, "t")
    cmod3 = dict(sd)
    adapt_patch_kernel(cmod3, 4, "cmod3", "t")
    kernel = sd["patch_embed.proj.weight"]
    torch.testing.assert_close(cmod3["patch_embed.proj.weight"], kernel[:, [0, 1, 2, 0]])  # NIR←R, R←G, G←B, B←R
    kept = dict(sd)
    adapt_patch_kernel(kept, 4, "wavelength", "t")  # left to the backbone's wavelength rule
    assert kept["patch_embed.proj.weight"].shape[1] == 3
    four = {"patch_embed.proj.weight": torch.zeros(2, 4, 2, 2)}
    adapt_patch_kernel(four, 4, None, "t")  # what the authors ran: kept as is
    with pytest.raises(ValueError, match="5 input channels"):
        adapt_patch_kernel({"patch_embed.proj.weight": torch.zeros(2, 5, 2, 2)}, 4, None, "t")


def test_converted_file_is_split_into_backbone_and_depth_encoder():
    visual = ref.random_dinov3(DIM, LAYERS, HEADS, HIDDEN, bands=4)
    depth = ref.random_dinov2(DIM, LAYERS, HIDDEN, grid=3)
    file = {**visual, **{f"depth_anything.pretrained.{k}": v for k, v in depth.items()},
            "depth_anything.depth_head.scratch.w": torch.zeros(2), "depth_anything._mean": torch.zeros(3),
            "depth_anything._std": torch.ones(3)}  # fmt: skip
    frozen = convert_frozen_file(file, "f", backbone_config=TINY_DINOV3, backbone_family="dinov3",
                                 depth_config=TINY_DEPTH, num_bands=4)  # fmt: skip
    assert frozen.family == "dinov3" and frozen.depth is not None
    assert frozen.unused == ["depth_anything._mean", "depth_anything._std", "depth_anything.depth_head.scratch.w"]
    with pytest.raises(ValueError, match="dinov3 backbone but the model's backbone preset is dinov2"):
        convert_frozen_file(file, "f", backbone_config=TINY_DINOV3, backbone_family="dinov2", depth_config=TINY_DEPTH,
                            num_bands=4)  # fmt: skip
    with pytest.raises(ValueError, match="uses no depth model"):
        convert_frozen_file(file, "f", backbone_config=TINY_DINOV3, backbone_family="dinov3", depth_config=None,
                            num_bands=4)  # fmt: skip
    with pytest.raises(KeyError, match=r"depth_anything\.pretrained\.\*.*blocks\.0\.attn\.bogus"):
        convert_frozen_file({**file, "depth_anything.pretrained.blocks.0.attn.bogus": torch.zeros(1)}, "f",
                            backbone_config=TINY_DINOV3, backbone_family="dinov3", depth_config=TINY_DEPTH,
                            num_bands=4)  # fmt: skip
