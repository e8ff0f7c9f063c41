"""Pure tensor rules for re-using pretrained patch-embedding kernels on other inputs.

Two problems, one home:

* **Patch size.** Patch-14 models (DINOv2, CLIP, Depth Anything) are run at patch 16 so that every
  model shares the H/16 × W/16 token grid. ``resize_patch_kernel`` resizes the kernel bicubically,
  as the authors' converters do (``method="bicubic"``), or by FlexiViT's pseudo-inverse rule
  (``method="pi"``), which keeps ⟨resize(x), w'⟩ ≈ ⟨x, w⟩ for a patch x seen at the new size.
* **Band count.** RGB-pretrained kernels meet 4-, 5- or 32-band images. ``adapt_kernel_to_bands``
  gives every spectral band the pretrained filter of the colour (R, G or B) nearest to it in
  wavelength and divides each colour filter evenly among the bands that share it, so that the sum
  of the new filters over bands equals the sum of the pretrained ones: a spectrally flat input
  produces the same response as a grey RGB image. A colour with no band near it hands its filter
  to the nearest band. Non-spectral bands (wavelength nan, e.g. elevation) get zero filters.
  This replaces the authors' ``c mod 3`` copy, which maps NIR,R,G,B to R,G,B,R filters.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from spectralmoe.bands import RGB_TARGETS_UM, as_wavelength_list, wavelength_distance


def resize_patch_kernel(
    weight: torch.Tensor,
    new_size: int,
    method: Literal["bicubic", "pi"] = "bicubic",
    *,
    pi_interpolation: Literal["bilinear", "bicubic"] = "bilinear",
    antialias: bool = False,
) -> torch.Tensor:
    """Resize a conv kernel ``[out, in, k, k]`` to ``[out, in, new_size, new_size]``.

    ``pi_interpolation`` / ``antialias`` choose the patch resize whose pseudo-inverse ``"pi"`` uses
    (bilinear here by default; Galileo's FlexiPatchEmbed uses bicubic with antialiasing).
    """
    if weight.ndim != 4 or weight.shape[-1] != weight.shape[-2]:
        raise ValueError(f"expected a square conv kernel [out, in, k, k], got shape {tuple(weight.shape)}")
    old_size = weight.shape[-1]
    if old_size == new_size:
        return weight.clone()
    if method == "bicubic":
        return F.interpolate(weight.float(), size=(new_size, new_size), mode="bicubic", align_corners=False).to(
            weight.dtype
        )
    if method == "pi":
        resize_matrix = _resize_matrix(old_size, new_size, weight.device, pi_interpolation, antialias)  # [new², old²]
        pinv = torch.linalg.pinv(resize_matrix.T)  # [new², old²]
        flat = weight.float().reshape(-1, old_size * old_size)
        return (flat @ pinv.T).reshape(*weight.shape[:2], new_size, new_size).to(weight.dtype)
    raise ValueError(f"unknown kernel resize method {method!r}; use 'bicubic' or 'pi'")


def _resize_matrix(
    old_size: int, new_size: int, device: torch.device, mode: str = "bilinear", antialias: bool = False
) -> torch.Tensor:
    """The linear map of resizing an old×old patch to new×new (``mode``), as a [new², old²] matrix."""
    basis = torch.eye(old_size * old_size, device=device).reshape(-1, 1, old_size, old_size)
    resized = F.interpolate(basis, size=(new_size, new_size), mode=mode, align_corners=False, antialias=antialias)
    return resized.reshape(old_size * old_size, new_size * new_size).T


def band_colour_assignment(
    wavelengths: Sequence[float] | torch.Tensor, colour_wavelengths: Sequence[float] = RGB_TARGETS_UM
) -> list[list[int]]:
    """For each colour (R, G, B order), the input bands that take its filter.

    Each spectral band goes to the colour nearest in wavelength; a colour left without a band goes to
    the band nearest to it. Non-spectral (nan) bands go nowhere.
    """
    waves = as_wavelength_list(wavelengths)
    spectral = [i for i, w in enumerate(waves) if not math.isnan(w)]
    if not spectral:
        raise ValueError(f"cannot adapt an RGB kernel: no band has a wavelength ({waves})")
    groups: list[list[int]] = [[] for _ in colour_wavelengths]
    for i in spectral:
        nearest = min(range(len(colour_wavelengths)),
                      key=lambda c: (wavelength_distance(waves[i], colour_wavelengths[c]), c))  # fmt: skip
        groups[nearest].append(i)
    for c, target in enumerate(colour_wavelengths):
        if not groups[c]:
            groups[c].append(min(spectral, key=lambda i: (wavelength_distance(waves[i], target), i)))
    return groups


def adapt_kernel_to_bands(
    rgb_weight: torch.Tensor,
    wavelengths: Sequence[float] | torch.Tensor,
    colour_wavelengths: Sequence[float] = RGB_TARGETS_UM,
) -> torch.Tensor:
    """Turn an RGB kernel ``[out, 3, k, k]`` (channels R, G, B) into ``[out, C, k, k]`` for C bands."""
    if rgb_weight.ndim != 4 or rgb_weight.shape[1] != len(colour_wavelengths):
        raise ValueError(
            f"expected a pretrained kernel [out, {len(colour_wavelengths)}, k, k], got {tuple(rgb_weight.shape)}"
        )
    waves = as_wavelength_list(wavelengths)
    out = rgb_weight.new_zeros(rgb_weight.shape[0], len(waves), *rgb_weight.shape[2:])
    for colour, bands in enumerate(band_colour_assignment(waves, colour_wavelengths)):
        for band in bands:
            out[:, band] += rgb_weight[:, colour] / len(bands)
    return out
