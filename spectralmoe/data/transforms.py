"""N-band-safe training and evaluation transforms on sample dicts.

A sample is the dict produced by the datasets (DESIGN §2): ``image`` float32 ``[C, H, W]`` raw
values in the file's band order (any ``C``), ``mask`` int64 ``[H, W]`` (255 = ignore),
``wavelengths`` float32 ``[C]`` (µm, ``nan`` for non-spectral bands) and metadata. Every
transform returns a NEW dict (a shallow copy with new tensors), so cached samples are never
modified, and keeps image and mask geometrically aligned.

Randomness: every transform is called as ``t(sample, generator)`` and draws all its random
numbers from that ``torch.Generator`` (or from torch's global RNG when it is ``None``). Each
transform draws a FIXED number of values per call, whatever branch it takes, so a transform's
decisions never shift the random stream of the ones after it. The training dataset of
``DGDataModule`` seeds one generator per sample from ``sample_seed(seed, epoch, index)``: the
same (seed, epoch, index) gives the same output in any worker and with any number of workers,
and different samples/epochs get independent streams.

Why not torchvision: it has no CPU build on our machines (DESIGN §6), and its colour ops assume
3-band images. The authors' mmseg/mmcv pipelines are reproduced from their documented behaviour
(METHOD.md §5, DATA.md §0.3); deviations are listed on each class.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from spectralmoe.bands import DEFAULT_RGB_TOLERANCE_UM, rgb_band_indices

if TYPE_CHECKING:  # imported lazily at run time: benchmarks does not need transforms
    from spectralmoe.data.benchmarks import DGTask

__all__ = [
    "Sample",
    "Transform",
    "Compose",
    "RandomChoiceResize",
    "RandomCrop",
    "RandomFlip",
    "PhotoMetricDistortion",
    "PadTo",
    "rgb_to_hsv",
    "hsv_to_rgb",
    "sample_seed",
    "resized_shape",
    "pad_sample",
    "build_train_transforms",
    "build_eval_transforms",
    "PIPELINE_A_SCALES",
    "PIPELINE_B_SCALES",
]

Sample = dict[str, Any]
IGNORE_INDEX = 255

# Shortest-edge choices of the authors' pipelines (METHOD.md §5): A = int(512·x·0.1), x = 6..12;
# B = int(51.2·x), x = 5..20 (same numbers as int(512·x·0.1)).
PIPELINE_A_SCALES: tuple[int, ...] = tuple(int(512 * x * 0.1) for x in range(6, 13))
PIPELINE_B_SCALES: tuple[int, ...] = tuple(int(512 * x * 0.1) for x in range(5, 21))


class Transform(Protocol):
    """What every transform here is: ``(sample, generator=None) -> new sample``."""

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample: ...


def sample_seed(seed: int, epoch: int, index: int, stream: int = 0) -> int:
    """A 63-bit seed for one sample of one epoch, well mixed (numpy ``SeedSequence``) so that
    neighbouring indices/epochs give unrelated random streams; ``stream`` separates other uses
    (e.g. the shuffling order) of the same (seed, epoch)."""
    if min(seed, epoch, index, stream) < 0:
        raise ValueError(f"seed, epoch, index and stream must be >= 0, got {seed}, {epoch}, {index}, {stream}")
    entropy = [int(seed), int(epoch), int(index), int(stream)]
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)
    return int(state[0]) & 0x7FFF_FFFF_FFFF_FFFF


def _uniform(n: int, generator: torch.Generator | None) -> torch.Tensor:
    """``n`` float64 values in [0, 1) from ``generator`` (global RNG when None)."""
    return torch.rand(n, generator=generator, dtype=torch.float64)


def _check_sample(sample: Sample, who: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    image = sample.get("image")
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{who}: sample 'image' must be a [C, H, W] tensor, got {shape} ({sample.get('path')})")
    if not image.is_floating_point():
        image = image.float()
    mask = sample.get("mask")
    if mask is not None and (not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(image.shape[-2:])):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(
            f"{who}: sample 'mask' must be [H, W] = {tuple(image.shape[-2:])} like the image, got {shape} "
            f"({sample.get('path')})"
        )
    return image, mask


def _with(sample: Sample, image: torch.Tensor, mask: torch.Tensor | None) -> Sample:
    out = dict(sample)
    out["image"] = image
    if mask is not None:
        out["mask"] = mask
    return out


def _pad_values(pad_value: float | Sequence[float], channels: int, who: str) -> torch.Tensor:
    """Per-band padding values as a ``[C, 1, 1]`` float32 tensor."""
    if isinstance(pad_value, (int, float)):
        return torch.full((channels, 1, 1), float(pad_value))
    values = [float(v) for v in pad_value]
    if len(values) != channels:
        raise ValueError(f"{who}: pad_value has {len(values)} values but the image has {channels} bands")
    return torch.tensor(values, dtype=torch.float32).view(channels, 1, 1)


def pad_sample(
    sample: Sample,
    height: int,
    width: int,
    pad_value: float | Sequence[float] = 0.0,
    ignore_index: int = IGNORE_INDEX,
) -> Sample:
    """Pad image and mask at the bottom/right up to ``height`` × ``width`` (no-op when already there).

    The image is padded with ``pad_value`` (one value or one per band), the mask with
    ``ignore_index`` so padded pixels never count in the loss or the metrics.
    """
    image, mask = _check_sample(sample, "pad")
    c, h, w = image.shape
    if h > height or w > width:
        raise ValueError(f"pad: image {h}x{w} is larger than the pad size {height}x{width} ({sample.get('path')})")
    if (h, w) == (height, width):
        return _with(sample, image, mask)
    out = _pad_values(pad_value, c, "pad").to(image.dtype).expand(c, height, width).clone()
    out[:, :h, :w] = image
    new_mask = None
    if mask is not None:
        new_mask = torch.full((height, width), ignore_index, dtype=mask.dtype)
        new_mask[:h, :w] = mask
    return _with(sample, out, new_mask)


class Compose:
    """Apply transforms in order, passing the same generator to each.

    Args:
        transforms: the transforms, each ``(sample, generator) -> sample``.
    """

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        for transform in self.transforms:
            sample = transform(sample, generator)
        return sample

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(t) for t in self.transforms)
        return f"Compose([\n  {inner}\n])"


def resized_shape(height: int, width: int, short_edge: int, max_long_edge: int | None) -> tuple[int, int]:
    """Output ``(h, w)`` of a shortest-edge resize capped at ``max_long_edge``.

    Same arithmetic as mmseg's ``ResizeShortestEdge``: scale the short side to ``short_edge``;
    if the long side then exceeds ``max_long_edge``, scale down so it equals it; round half up.
    """
    scale = short_edge / min(height, width)
    new_h, new_w = height * scale, width * scale
    if max_long_edge is not None and max(new_h, new_w) > max_long_edge:
        shrink = max_long_edge / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return max(int(new_h + 0.5), 1), max(int(new_w + 0.5), 1)


class RandomChoiceResize:
    """Resize so the shortest edge is a random choice of ``scales`` (long edge ≤ ``max_long_edge``).

    The image is resampled bilinearly (with antialiasing when it shrinks, which mmcv's cv2 resize
    lacks — a deliberate deviation that avoids aliasing of fine structures), the mask by nearest
    neighbour so class indices stay exact.

    Args:
        scales: candidate shortest-edge lengths in pixels (one is drawn uniformly per sample).
        max_long_edge: cap on the long edge after resizing (``None``: no cap).
    """

    def __init__(self, scales: Sequence[int], max_long_edge: int | None = 1024) -> None:
        if not scales or any(int(s) <= 0 for s in scales):
            raise ValueError(f"RandomChoiceResize: scales must be positive integers, got {list(scales)}")
        self.scales = tuple(int(s) for s in scales)
        self.max_long_edge = max_long_edge

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        image, mask = _check_sample(sample, type(self).__name__)
        u = float(_uniform(1, generator)[0])
        short = self.scales[min(int(u * len(self.scales)), len(self.scales) - 1)]
        h, w = image.shape[-2:]
        new_h, new_w = resized_shape(h, w, short, self.max_long_edge)
        if (new_h, new_w) == (h, w):
            return _with(sample, image, mask)
        shrinking = new_h < h or new_w < w
        image = F.interpolate(
            image[None], size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=shrinking
        )[0]
        if mask is not None:
            mask = F.interpolate(mask[None, None].float(), size=(new_h, new_w), mode="nearest")[0, 0].to(mask.dtype)
        return _with(sample, image, mask)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scales={list(self.scales)}, max_long_edge={self.max_long_edge})"


class RandomCrop:
    """Random crop of ``size``, retried while one class dominates (mmseg ``RandomCrop`` semantics).

    A candidate crop is accepted when it holds at least two classes among its non-ignored pixels
    and the largest class covers less than ``cat_max_ratio`` of them. After ``max_tries``
    rejected candidates, one more random crop is used unchecked (as mmseg does). With
    ``cat_max_ratio >= 1`` the first candidate is used. When the image is smaller than the crop
    along an axis, the whole axis is kept and (with ``pad``) the result is padded at the
    bottom/right: the image with ``pad_value``, the mask with ``ignore_index``. The authors'
    crop does not pad; their data preprocessor pads the batch to 512² after normalisation with 0,
    so ``build_train_transforms`` uses ``pad=False`` and ends with ``PadTo(size, band means)``:
    padded pixels are then 0 after normalisation and untouched by the photometric step.

    Args:
        size: crop height and width (an int for a square).
        cat_max_ratio: largest allowed share of one class among the valid pixels of a crop.
        ignore_index: mask value that is not a class (excluded from the ratio; used for padding).
        max_tries: number of checked candidates before giving up.
        pad_value: image padding value, one number or one per band, in raw units.
        pad: pad crops of small images up to ``size`` (else return them smaller).
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        cat_max_ratio: float = 0.75,
        ignore_index: int = IGNORE_INDEX,
        max_tries: int = 10,
        pad_value: float | Sequence[float] = 0.0,
        pad: bool = True,
    ) -> None:
        self.size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.pad = bool(pad)
        if min(self.size) <= 0:
            raise ValueError(f"RandomCrop: size must be positive, got {size}")
        if max_tries < 0:
            raise ValueError(f"RandomCrop: max_tries must be >= 0, got {max_tries}")
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_index = int(ignore_index)
        self.max_tries = int(max_tries)
        self.pad_value = pad_value if isinstance(pad_value, (int, float)) else tuple(float(v) for v in pad_value)

    def accepts(self, crop: torch.Tensor) -> bool:
        """Whether a mask crop passes the class-balance check (≥ 2 classes among the non-ignored
        pixels, the largest below ``cat_max_ratio`` of them)."""
        valid = crop[crop != self.ignore_index]
        if valid.numel() == 0:
            return False
        counts = torch.bincount(valid.flatten().clamp_min(0))
        counts = counts[counts > 0]
        return counts.numel() > 1 and float(counts.max()) / float(counts.sum()) < self.cat_max_ratio

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        image, mask = _check_sample(sample, type(self).__name__)
        h, w = image.shape[-2:]
        ch, cw = self.size
        # Every candidate offset is drawn up front: a fixed amount of randomness per call.
        u = _uniform(2 * (self.max_tries + 1), generator).view(-1, 2)
        tops = (u[:, 0] * (max(h - ch, 0) + 1)).floor().long().tolist()
        lefts = (u[:, 1] * (max(w - cw, 0) + 1)).floor().long().tolist()
        chosen = 0
        if mask is not None and self.cat_max_ratio < 1.0:
            chosen = self.max_tries  # the unchecked last candidate unless one is accepted
            for k in range(self.max_tries):
                if self.accepts(mask[tops[k] : tops[k] + ch, lefts[k] : lefts[k] + cw]):
                    chosen = k
                    break
        top, left = tops[chosen], lefts[chosen]
        image = image[:, top : top + ch, left : left + cw].contiguous()
        if mask is not None:
            mask = mask[top : top + ch, left : left + cw].contiguous()
        out = _with(sample, image, mask)
        if self.pad and (image.shape[-2] < ch or image.shape[-1] < cw):
            out = pad_sample(out, ch, cw, self.pad_value, self.ignore_index)
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.size}, cat_max_ratio={self.cat_max_ratio}, "
            f"ignore_index={self.ignore_index}, max_tries={self.max_tries}, pad={self.pad})"
        )


class RandomFlip:
    """Horizontal flip of image and mask with probability ``prob``.

    Args:
        prob: flip probability.
    """

    def __init__(self, prob: float = 0.5) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"RandomFlip: prob must be in [0, 1], got {prob}")
        self.prob = float(prob)

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        image, mask = _check_sample(sample, type(self).__name__)
        if float(_uniform(1, generator)[0]) >= self.prob:
            return _with(sample, image, mask)
        return _with(sample, image.flip(-1), mask.flip(-1) if mask is not None else None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prob={self.prob})"


# ------------------------------------------------------------------------------------ colour space
def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """``[3, ...]`` R,G,B (any non-negative scale) → ``[3, ...]`` H in [0, 1), S in [0, 1], V (same
    scale as the input). Vectorised over all pixels; grey pixels get H = 0."""
    r, g, b = rgb.unbind(0)
    maxc = rgb.amax(0)
    minc = rgb.amin(0)
    delta = maxc - minc
    chromatic = delta > 0
    safe = torch.where(chromatic, delta, torch.ones_like(delta))
    hue = torch.where(
        maxc == r, (g - b) / safe, torch.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe)
    )
    hue = torch.where(chromatic, torch.remainder(hue / 6.0, 1.0), torch.zeros_like(hue))
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack((hue, sat, maxc))


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of ``rgb_to_hsv``: ``[3, ...]`` H in [0, 1), S, V → R,G,B (scale of V).

    Uses the closed form c_n = V − V·S·clamp(min(k, 4 − k), 0, 1), k = (n + 6H) mod 6 with
    n = 5, 3, 1 for R, G, B — no per-sector branching.
    """
    hue, sat, val = hsv.unbind(0)
    n = torch.tensor([5.0, 3.0, 1.0], dtype=hsv.dtype, device=hsv.device).view(3, *([1] * hue.ndim))
    k = torch.remainder(n + hue.unsqueeze(0) * 6.0, 6.0)
    weight = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return val.unsqueeze(0) - (val * sat).unsqueeze(0) * weight


class PhotoMetricDistortion:
    """Brightness, contrast, saturation and hue jitter on the R, G, B bands chosen by wavelength.

    Generalises the authors' ``MSIPhotoMetricDistortion`` (which assumes 4 bands with NIR fixed at
    band 0) and mmseg's ``PhotoMetricDistortion`` (3-band BGR) to any band count and order:
    the R, G, B bands are picked from the sample's ``wavelengths`` (``rgb_band_indices``), every
    other band (NIR, elevation, non-RGB hyperspectral bands) is returned bit-for-bit unchanged.
    Steps, each with probability 0.5, as in mmseg: brightness (add δ ~ U(−32, 32)·s), contrast
    (multiply by α ~ U(0.5, 1.5); before or after the colour steps at random), saturation (S·α,
    α ~ U(0.5, 1.5)) and hue (shift by an integer in [−18, 17] OpenCV units of 2°, as numpy's
    ``randint(-18, 18)`` draws) in HSV of the R,G,B triplet; values clipped to
    [0, ``value_scale``] after every step. ``s = value_scale / 255`` scales the 8-bit brightness
    range to other bit depths.

    Deviations, on purpose: (1) bands are chosen by wavelength — for FLAIR's R,G,B,NIR the authors'
    code distorts G,B,NIR and leaves R (METHOD §5), here R,G,B are distorted and NIR is left;
    (2) the authors' uint8 casts are emulated only when ``quantize`` (floor after brightness and
    contrast, round after the colour steps); (3) their float32 path (when brightness is skipped the
    array stays float and OpenCV's HSV uses degrees / unit saturation, wrapping hue mod 180°) is a
    bug and is not reproduced.

    Images with no band near one of R, G, B (e.g. Vaihingen NIR,R,G): ``no_rgb="spectral"`` applies
    brightness and contrast to every spectral band (finite wavelength) and skips saturation/hue;
    ``"skip"`` returns the sample unchanged; ``"error"`` raises.

    Args:
        brightness_delta: maximum brightness shift in 8-bit units.
        contrast_range: (low, high) of the contrast factor.
        saturation_range: (low, high) of the saturation factor.
        hue_delta: maximum hue shift in OpenCV hue units (2°).
        value_scale: raw value of full brightness (255 for 8-bit); the clipping range.
        rgb_bands: fixed (R, G, B) band indices instead of choosing them by wavelength.
        tolerance_um: how far (µm) a band may lie from the R/G/B target wavelength.
        no_rgb: what to do when the image lacks an R, G or B band.
        quantize: emulate the authors' uint8 rounding after each step.
    """

    def __init__(
        self,
        brightness_delta: float = 32.0,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
        value_scale: float = 255.0,
        rgb_bands: tuple[int, int, int] | None = None,
        tolerance_um: float = DEFAULT_RGB_TOLERANCE_UM,
        no_rgb: Literal["spectral", "skip", "error"] = "spectral",
        quantize: bool = False,
    ) -> None:
        if value_scale <= 0:
            raise ValueError(f"PhotoMetricDistortion: value_scale must be > 0, got {value_scale}")
        if no_rgb not in ("spectral", "skip", "error"):
            raise ValueError(f"PhotoMetricDistortion: no_rgb must be 'spectral', 'skip' or 'error', got {no_rgb!r}")
        self.brightness_delta = float(brightness_delta)
        self.contrast_range = (float(contrast_range[0]), float(contrast_range[1]))
        self.saturation_range = (float(saturation_range[0]), float(saturation_range[1]))
        self.hue_delta = int(hue_delta)
        self.value_scale = float(value_scale)
        self.rgb_bands = None if rgb_bands is None else tuple(int(i) for i in rgb_bands)
        self.tolerance_um = float(tolerance_um)
        self.no_rgb = no_rgb
        self.quantize = bool(quantize)

    def _bands(self, sample: Sample, channels: int) -> tuple[list[int], bool]:
        """Band indices to distort and whether they are an R,G,B triplet (colour steps allowed)."""
        if self.rgb_bands is not None:
            if max(self.rgb_bands) >= channels or min(self.rgb_bands) < -channels:
                raise ValueError(f"PhotoMetricDistortion: rgb_bands {self.rgb_bands} out of range for {channels} bands")
            return [i % channels for i in self.rgb_bands], True
        wavelengths = sample.get("wavelengths")
        if wavelengths is None:
            raise ValueError(
                f"PhotoMetricDistortion: the sample has no 'wavelengths', so the R,G,B bands cannot be chosen "
                f"({sample.get('path')}); pass rgb_bands=(r, g, b)"
            )
        wavelengths = torch.as_tensor(wavelengths, dtype=torch.float32).flatten()
        if wavelengths.numel() != channels:
            raise ValueError(
                f"PhotoMetricDistortion: {wavelengths.numel()} wavelengths for an image of {channels} bands "
                f"({sample.get('path')})"
            )
        try:
            picked = rgb_band_indices(wavelengths, tolerance_um=self.tolerance_um, sensor_name=sample.get("sensor"))
            return list(picked), True
        except ValueError:
            if self.no_rgb == "error":
                raise
            if self.no_rgb == "skip":
                return [], False
            return [i for i, w in enumerate(wavelengths.tolist()) if not math.isnan(w)], False

    def _clip(self, x: torch.Tensor, rounding: str | None) -> torch.Tensor:
        x = x.clamp(0.0, self.value_scale)
        if self.quantize and rounding == "floor":
            x = x.floor()
        elif self.quantize and rounding == "round":
            x = x.round()
        return x

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        image, mask = _check_sample(sample, type(self).__name__)
        u = _uniform(9, generator).tolist()  # fixed consumption, whatever is applied
        bands, colour = self._bands(sample, image.shape[0])
        if not bands:
            return _with(sample, image, mask)
        x = image[bands].to(torch.float32)

        if u[0] < 0.5:  # brightness
            delta = (2.0 * u[1] - 1.0) * self.brightness_delta * self.value_scale / 255.0
            x = self._clip(x + delta, "floor")
        contrast_first = u[2] < 0.5
        contrast_alpha = self.contrast_range[0] + u[4] * (self.contrast_range[1] - self.contrast_range[0])
        if contrast_first and u[3] < 0.5:
            x = self._clip(x * contrast_alpha, "floor")
        if colour and (u[5] < 0.5 or u[7] < 0.5):
            hsv = rgb_to_hsv(x)
            if u[5] < 0.5:  # saturation
                alpha = self.saturation_range[0] + u[6] * (self.saturation_range[1] - self.saturation_range[0])
                hsv[1] = (hsv[1] * alpha).clamp(0.0, 1.0)
            if u[7] < 0.5:  # hue, in OpenCV units of 2 degrees
                shift = math.floor(u[8] * 2 * self.hue_delta) - self.hue_delta
                hsv[0] = torch.remainder(hsv[0] + shift / 180.0, 1.0)
            x = self._clip(hsv_to_rgb(hsv), "round")
        if not contrast_first and u[3] < 0.5:
            x = self._clip(x * contrast_alpha, "floor")

        out = image.clone()
        out[bands] = x.to(image.dtype)
        return _with(sample, out, mask)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(brightness_delta={self.brightness_delta}, contrast_range={self.contrast_range}, "
            f"saturation_range={self.saturation_range}, hue_delta={self.hue_delta}, value_scale={self.value_scale}, "
            f"rgb_bands={self.rgb_bands}, no_rgb={self.no_rgb!r}, quantize={self.quantize})"
        )


class PadTo:
    """Pad image (``pad_value``) and mask (``ignore_index``) at the bottom/right, either to a
    multiple of ``size_divisor`` or to a fixed ``size`` — for batching whole tiles of slightly
    different sizes or meeting a patch-size constraint. Deterministic (ignores the generator).

    Args:
        size_divisor: pad height and width up to a multiple of this.
        size: pad to exactly this (height, width) (an int for a square); the image must fit.
        pad_value: image padding value, one number or one per band, in raw units.
        ignore_index: mask padding value.
    """

    def __init__(
        self,
        size_divisor: int | None = None,
        size: int | tuple[int, int] | None = None,
        pad_value: float | Sequence[float] = 0.0,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        if (size_divisor is None) == (size is None):
            raise ValueError("PadTo: give exactly one of size_divisor or size")
        if size_divisor is not None and size_divisor <= 0:
            raise ValueError(f"PadTo: size_divisor must be positive, got {size_divisor}")
        self.size_divisor = size_divisor
        self.size = None if size is None else ((int(size), int(size)) if isinstance(size, int) else tuple(size))
        self.pad_value = pad_value if isinstance(pad_value, (int, float)) else tuple(float(v) for v in pad_value)
        self.ignore_index = int(ignore_index)

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        image, _ = _check_sample(sample, type(self).__name__)
        h, w = image.shape[-2:]
        if self.size is not None:
            height, width = self.size
        else:
            d = int(self.size_divisor)  # type: ignore[arg-type]
            height, width = -(-h // d) * d, -(-w // d) * d
        return pad_sample(sample, height, width, self.pad_value, self.ignore_index)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size_divisor={self.size_divisor}, size={self.size})"


# ---------------------------------------------------------------------------------- the pipelines
def build_train_transforms(
    task: "DGTask | str",
    pad_value: float | Sequence[float] | None = None,
) -> Compose:
    """The authors' training pipeline of a DG task (METHOD.md §5, DATA.md §0.3).

    * ``"A"`` (FBP, FLAIR): shortest edge ∈ {307..614}, long edge ≤ 1024 → crop ``crop_size``
      (cat_max_ratio 0.75) → flip 0.5 → photometric distortion on the R,G,B bands → pad to
      ``crop_size``.
    * ``"B"`` (LoveDA, Potsdam, OpenEarthMap): the same with shortest edge ∈ {256..1024}.
    * The task's ``resize_scales``, when set, replace either scale set (e.g. for tiles far from
      512 px, whose zoom the authors' sets would make 2–5×; ``spectralmoe prepare folder`` writes
      scales proportional to the tile size).
    * ``"flip"`` (WHU-OHS): flip 0.5 only. ``"none"``: identity.

    The final pad stands for the authors' batch padding to 512² (after normalisation, with 0):
    ``pad_value`` (default: the task's band means) makes padded pixels 0 after normalisation,
    and padding last keeps them out of the photometric step, as in the authors' pipeline.
    Photometric values are clipped to the task's ``value_scale`` and quantised like the authors'
    uint8 arrays when that scale is 255.
    """
    from spectralmoe.data.benchmarks import load_task

    task = load_task(task) if isinstance(task, str) else task
    pad = task.mean if pad_value is None else pad_value
    if task.train_pipeline in ("A", "B"):
        scales = task.resize_scales or (PIPELINE_A_SCALES if task.train_pipeline == "A" else PIPELINE_B_SCALES)
        return Compose(
            [
                RandomChoiceResize(scales, max_long_edge=1024),
                RandomCrop(task.crop_size, cat_max_ratio=0.75, ignore_index=IGNORE_INDEX, pad=False),
                RandomFlip(0.5),
                PhotoMetricDistortion(value_scale=task.value_scale, quantize=task.value_scale == 255.0),
                PadTo(size=task.crop_size, pad_value=pad, ignore_index=IGNORE_INDEX),
            ]
        )
    if task.train_pipeline == "flip":
        return Compose([RandomFlip(0.5)])
    if task.train_pipeline == "none":
        return Compose([])
    raise ValueError(f"task {task.name!r}: unknown train_pipeline {task.train_pipeline!r}")


def build_eval_transforms(
    size_divisor: int | None = None, pad_value: float | Sequence[float] = 0.0
) -> Compose | None:
    """Evaluation transforms: none (whole tiles, as the authors) or ``PadTo(size_divisor)``."""
    if size_divisor is None:
        return None
    return Compose([PadTo(size_divisor=size_divisor, pad_value=pad_value)])
