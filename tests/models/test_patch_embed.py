import math

import pytest
import torch
import torch.nn.functional as F

from spectralmoe.models.patch_embed import adapt_kernel_to_bands, band_colour_assignment, resize_patch_kernel


def test_pi_resize_keeps_responses_of_resized_patches():
    torch.manual_seed(0)
    weight = torch.randn(6, 3, 14, 14)
    patches = torch.randn(4, 3, 14, 14)
    upsampled = F.interpolate(patches, size=(16, 16), mode="bilinear", align_corners=False)
    old = torch.einsum("bchw,ochw->bo", patches, weight)
    new = torch.einsum("bchw,ochw->bo", upsampled, resize_patch_kernel(weight, 16, "pi"))
    assert torch.allclose(old, new, atol=1e-3)


def test_bicubic_resize_shape_and_identity_at_same_size():
    weight = torch.randn(2, 3, 14, 14)
    assert resize_patch_kernel(weight, 16).shape == (2, 3, 16, 16)
    assert torch.equal(resize_patch_kernel(weight, 14), weight)
    with pytest.raises(ValueError, match="unknown kernel resize"):
        resize_patch_kernel(weight, 16, "nearest")
    with pytest.raises(ValueError, match="square conv kernel"):
        resize_patch_kernel(torch.randn(2, 3, 14), 16)


def test_rgb_order_keeps_the_pretrained_kernel():
    weight = torch.randn(5, 3, 4, 4)
    assert torch.equal(adapt_kernel_to_bands(weight, [0.665, 0.56, 0.49]), weight)
    # B,G,R order takes the filters in reverse
    assert torch.equal(adapt_kernel_to_bands(weight, [0.49, 0.56, 0.665]), weight.flip(1))


def test_multiband_kernel_preserves_total_response():
    weight = torch.randn(5, 3, 4, 4)
    ohs = [0.466 + 0.015 * i for i in range(32)]
    adapted = adapt_kernel_to_bands(weight, ohs)
    assert adapted.shape == (5, 32, 4, 4)
    assert torch.allclose(adapted.sum(1), weight.sum(1), atol=1e-5)
    # NIR,R,G,B: NIR shares the red filter with R, half each
    nirrgb = adapt_kernel_to_bands(weight, [0.83, 0.665, 0.56, 0.49])
    assert torch.allclose(nirrgb[:, 0], weight[:, 0] / 2) and torch.allclose(nirrgb[:, 3], weight[:, 2])


def test_non_spectral_band_gets_zero_filter_and_missing_colour_is_handed_over():
    weight = torch.randn(5, 3, 4, 4)
    adapted = adapt_kernel_to_bands(weight, [0.665, 0.56, 0.49, 0.83, math.nan])
    assert adapted[:, 4].abs().max() == 0
    assert band_colour_assignment([0.83, 0.665, 0.56]) == [[0, 1], [2], [2]]
    vaihingen = adapt_kernel_to_bands(weight, [0.83, 0.665, 0.56])
    assert torch.allclose(vaihingen.sum(1), weight.sum(1), atol=1e-5)
    with pytest.raises(ValueError, match="no band has a wavelength"):
        adapt_kernel_to_bands(weight, [math.nan])
