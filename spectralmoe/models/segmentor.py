"""The segmentor: frozen backbone + (frozen depth encoder) + trainable adapter + head.

It owns the one loop of the product (DESIGN §2): embed, then for every frozen block run the block
and let the adapter refine its output; collect the patch tokens at ``out_indices`` into a
stride-4/8/16/32 pyramid; decode. Images enter in raw sensor units; the segmentor normalises them
with the dataset statistics for the backbone and feeds the depth model the R, G, B bands picked by
wavelength, stretched to [0, 1] (or, for the authors' released models, bands 2–4 of the normalised
input as they are: ``depth_input="official"``).
"""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from spectralmoe.bands import as_wavelength_list, rgb_band_indices
from spectralmoe.errors import InputError, check_number
from spectralmoe.models.adapters.base import Adapter
from spectralmoe.models.backbones.base import FrozenBackbone, exact_patch_embedding, refuse_trainable_adapter

PYRAMID_SCALES = (4.0, 2.0, 1.0, 0.5)  # stride 16 tokens → strides 4, 8, 16, 32
DepthInput = Literal["percentile", "scale", "official"]
DEPTH_INPUTS = ("percentile", "scale", "official")
#: Smallest usable per-band std (raw units): below it normalisation multiplies noise by > 1e6.
MIN_PIXEL_STD = 1e-6
#: Token grid stride of every backbone (patch-14 models are loaded at 16).
TOKEN_STRIDE = 16


def check_normalisation(mean: Sequence[float] | None, std: Sequence[float] | None, where: str = "") -> None:
    """Refuse per-band statistics that would silently wreck every prediction: a NaN/inf mean or std,
    or a std at or below ``MIN_PIXEL_STD`` (a constant band, or a unit mix-up); names the band."""
    prefix = f"{where}: " if where else ""
    for name, values in (("pixel_mean", mean), ("pixel_std", std)):
        if values is None:
            continue
        for band, value in enumerate(values):
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
                raise InputError(f"{prefix}{name} of band {band + 1} is {value!r}: normalisation must be finite")
    for band, value in enumerate(std or []):
        if value <= MIN_PIXEL_STD:
            raise InputError(f"{prefix}pixel_std of band {band + 1} is {value!r}: a std of {MIN_PIXEL_STD:g} or "
                             "less makes normalised values explode (constant band or wrong statistics?)")  # fmt: skip


def min_input_size(head: str | nn.Module, batch_size: int = 1) -> int:
    """Smallest tile/crop side (pixels) a model with this head accepts in batches of ``batch_size``.

    The pyramid's coarsest map is half the token grid, so a side needs at least two tokens (32 px);
    Mask2Former's pixel decoder normalises that map with GroupNorm, which needs more than one value
    per group: a 1×1 map is fine in a batch of two or more, but a lone tile needs four tokens (64 px)."""
    name = head if isinstance(head, str) else type(head).__name__.lower()
    tokens = 4 if "mask2former" in name and batch_size < 2 else 2
    return tokens * TOKEN_STRIDE


class Segmentor(nn.Module):
    """Backbone, adapter, head (and depth encoder when the adapter needs depth).

    Args:
        backbone: frozen foundation model (FrozenBackbone contract).
        adapter: the trainable method; ``Adapter()`` itself is the "Freeze" baseline.
        head: decoder with ``forward(features, queries)``, ``loss``, ``logits``.
        wavelengths: centre wavelengths (µm) of the input bands, in file order.
        depth_encoder: frozen depth model, required when ``adapter.needs_depth``.
        pixel_mean, pixel_std: per-band statistics in raw units (default 0 / 1).
        value_scale: raw value of full brightness (255 for 8-bit), used by ``depth_input="scale"``.
        depth_input: what the depth model sees. ``"percentile"`` stretches each image's R, G, B bands
            (chosen by wavelength) between their 2nd and 98th percentiles (robust across sensors and
            bit depths); ``"scale"`` divides them by ``value_scale`` — both then get the depth model's
            ImageNet normalisation. ``"official"`` feeds what the authors' released code feeds
            (METHOD §2): bands 2–4 of the dataset-normalised input, ``x[:, 1:]``, with no ImageNet
            normalisation — R, G, B for NIR,R,G,B data; needed for their checkpoints to see the depth
            tokens they were trained with, and only defined for 4-band inputs.
    """

    def __init__(
        self,
        backbone: FrozenBackbone,
        adapter: Adapter,
        head: nn.Module,
        wavelengths: Sequence[float],
        depth_encoder: nn.Module | None = None,
        pixel_mean: Sequence[float] | None = None,
        pixel_std: Sequence[float] | None = None,
        value_scale: float = 255.0,
        depth_input: DepthInput = "percentile",
    ) -> None:
        super().__init__()
        waves = as_wavelength_list(wavelengths)
        num_bands = len(waves)
        mean = [0.0] * num_bands if pixel_mean is None else [float(v) for v in pixel_mean]
        std = [1.0] * num_bands if pixel_std is None else [float(v) for v in pixel_std]
        if len(mean) != num_bands or len(std) != num_bands:
            raise InputError(f"{num_bands} bands but {len(mean)} means and {len(std)} stds")
        check_normalisation(mean, std)
        check_number("value_scale", value_scale, positive=True)
        refuse_trainable_adapter(backbone, adapter)
        if adapter.needs_depth and depth_encoder is None:
            raise ValueError(f"{type(adapter).__name__} needs depth tokens but no depth_encoder was given")
        if depth_input not in DEPTH_INPUTS:
            raise ValueError(f"depth_input must be one of {DEPTH_INPUTS}, got {depth_input!r}")
        if depth_input == "official" and adapter.needs_depth and num_bands != 4:
            raise ValueError(
                f"depth_input='official' feeds bands 2-4 of the normalised input (the authors' x[:, 1:], written for "
                f"NIR,R,G,B data) but the model has {num_bands} bands {waves}; use 'percentile' or 'scale'"
            )
        self.backbone = backbone
        self.adapter = adapter
        self.head = head
        self.depth_encoder = depth_encoder if adapter.needs_depth else None
        self.value_scale = float(value_scale)
        self.depth_input = depth_input
        self.register_buffer("wavelengths", torch.tensor(waves, dtype=torch.float32), persistent=False)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        needs_rgb = self.depth_encoder is not None and depth_input != "official"
        self.rgb_indices = rgb_band_indices(waves) if needs_rgb else None
        adapter.attach(backbone)

    @property
    def num_bands(self) -> int:
        return int(self.wavelengths.numel())

    # ------------------------------------------------------------------ inputs
    def _check_image(self, image: torch.Tensor, wavelengths: torch.Tensor | Sequence[float] | None) -> None:
        if image.ndim != 4:
            raise ValueError(f"image must be [B, C, H, W], got shape {tuple(image.shape)}")
        expected = self.num_bands if wavelengths is None else len(as_wavelength_list(wavelengths))
        if image.shape[1] != expected:
            raise ValueError(
                f"image has {image.shape[1]} bands (shape {tuple(image.shape)}) but the model expects {expected}"
            )

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """Raw sensor values → backbone input (dataset mean / std per band)."""
        return (image - self.pixel_mean) / self.pixel_std

    def depth_rgb(self, image: torch.Tensor, wavelengths: torch.Tensor | Sequence[float] | None = None) -> torch.Tensor:
        """The depth model's input from a raw image: R, G, B chosen by wavelength in [0, 1], or with
        ``depth_input="official"`` bands 2–4 of the normalised image (already in the depth model's units)."""
        if self.depth_input == "official":
            if wavelengths is not None:
                given = torch.as_tensor(as_wavelength_list(wavelengths), dtype=torch.float32)
                own = self.wavelengths.cpu()
                if given.shape != own.shape or not torch.allclose(given, own, atol=1e-5):
                    raise ValueError(
                        "depth_input='official' reads bands 2-4 of the model's own band order; feed images in that "
                        f"order ({self.wavelengths.tolist()} µm), not {as_wavelength_list(wavelengths)}"
                    )
            return self.normalize(image.float())[:, 1:]
        indices = self.rgb_indices if wavelengths is None else rgb_band_indices(wavelengths)
        rgb = image[:, list(indices)].float()
        if self.depth_input == "scale":
            return (rgb / self.value_scale).clamp(0.0, 1.0)
        sample = rgb[:, :, ::4, ::4].flatten(2)  # a strided sample keeps quantile cheap on big tiles
        low = torch.quantile(sample, 0.02, dim=-1)[..., None, None]
        high = torch.quantile(sample, 0.98, dim=-1)[..., None, None]
        return ((rgb - low) / (high - low).clamp_min(1e-6)).clamp(0.0, 1.0)

    # ---------------------------------------------------------------- features
    def _trains_before_head(self) -> bool:
        """True when the adapter (or a method living inside the backbone, like LoRA) has trainable weights."""
        return any(p.requires_grad for p in self.adapter.parameters()) or any(
            p.requires_grad for p in self.backbone.parameters()
        )

    def extract_features(
        self, image: torch.Tensor, wavelengths: torch.Tensor | Sequence[float] | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Raw image → 4 feature maps (strides 4, 8, 16, 32) and the adapter's mean auxiliary loss."""
        self._check_image(image, wavelengths)
        depth_tokens = None
        if self.depth_encoder is not None:
            depth_tokens = self.depth_encoder(
                self.depth_rgb(image, wavelengths), imagenet_normalize=self.depth_input != "official"
            )
        # With nothing trainable before the head (the Freeze baseline) no graph is needed at all.
        grad_context = contextlib.nullcontext() if self._trains_before_head() else torch.no_grad()
        out_indices = set(self.backbone.out_indices)
        maps_by_layer: dict[int, torch.Tensor] = {}
        aux_losses: list[torch.Tensor] = []
        with grad_context:
            with exact_patch_embedding(image):
                tokens, grid = self.backbone.embed(self.normalize(image), wavelengths)
            self.adapter.set_grid(grid)
            for layer in range(self.backbone.num_layers):
                tokens = self.adapter.before_block(tokens, layer)
                tokens = self.backbone.run_block(layer, tokens, grid)
                layer_depth = depth_tokens[layer] if depth_tokens is not None else None
                tokens, aux = self.adapter(tokens, layer=layer, depth_tokens=layer_depth)
                aux_losses.append(aux)
                if layer in out_indices:
                    maps_by_layer[layer] = self.backbone.tokens_to_map(tokens, grid)
        # One map per entry of out_indices, repeats included (shallow tiny models tap a block twice).
        maps = [maps_by_layer[layer] for layer in self.backbone.out_indices]
        features = [
            F.interpolate(m, scale_factor=s, mode="bilinear", align_corners=False) if s != 1.0 else m
            for m, s in zip(maps, PYRAMID_SCALES)
        ]
        return features, torch.stack(aux_losses).mean()

    def forward(
        self, image: torch.Tensor, wavelengths: torch.Tensor | Sequence[float] | None = None
    ) -> tuple[object, torch.Tensor]:
        """Head predictions and the adapter's auxiliary loss (mean over adapted layers)."""
        features, aux_loss = self.extract_features(image, wavelengths)
        queries = self.adapter.queries() if getattr(self.head, "uses_queries", False) else None
        return self.head(features, queries=queries), aux_loss

    def loss(
        self, image: torch.Tensor, mask: torch.Tensor, wavelengths: torch.Tensor | Sequence[float] | None = None
    ) -> dict[str, torch.Tensor]:
        """Training losses: the head's terms plus ``loss_aux`` (adapter balance loss); their sum is the objective."""
        if mask.shape[-2:] != image.shape[-2:]:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match image shape {tuple(image.shape)}")
        predictions, aux_loss = self(image, wavelengths)
        losses = dict(self.head.loss(predictions, mask))
        losses["loss_aux"] = aux_loss
        return losses

    # --------------------------------------------------------------- inference
    @torch.no_grad()
    def predict_logits(
        self,
        image: torch.Tensor,
        wavelengths: torch.Tensor | Sequence[float] | None = None,
        mode: Literal["whole", "slide"] = "whole",
        crop: int = 512,
        stride: int | None = None,
        batch_size: int = 4,
        pad: bool = True,
    ) -> torch.Tensor:
        """Per-class scores ``[B, K, H, W]`` for a raw image of any size.

        ``whole`` pads the image to a multiple of the patch size and runs it at once; ``slide`` runs
        ``crop``-sized windows every ``stride`` pixels (default 2/3 of the crop) and averages the
        scores where windows overlap. ``pad=False`` is the authors' mmseg test (``mode='whole'`` with no
        test-time padding): the image (each window) must already be a multiple of the patch size —
        their backbones cannot run on anything else — and a size that is not is an error, never padded.
        """
        self._check_image(image, wavelengths)
        if mode == "whole":
            return self._whole_logits(image, wavelengths, pad)
        if mode != "slide":
            raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
        return sliding_window_logits(image, lambda crops: self._whole_logits(crops, wavelengths, pad), crop=crop,
                                     stride=stride, batch_size=batch_size)  # fmt: skip

    def _whole_logits(
        self, image: torch.Tensor, wavelengths: torch.Tensor | Sequence[float] | None, pad: bool = True
    ) -> torch.Tensor:
        height, width = image.shape[-2:]
        patch = self.backbone.patch_size
        pad_h, pad_w = (-height) % patch, (-width) % patch
        if (pad_h or pad_w) and not pad:
            raise ValueError(
                f"image of shape {tuple(image.shape)}: {height}x{width} is not a multiple of the patch size {patch}, "
                "and padding is off (pad=False, the authors' whole-image test); crop or pad the input, or allow padding"
            )
        if pad_h or pad_w:
            # Pad with the band means so padding is zero after normalisation.
            padded = self.pixel_mean.expand(image.shape[0], -1, height + pad_h, width + pad_w).clone()
            padded[..., :height, :width] = image
            image = padded
        predictions, _ = self(image, wavelengths)
        logits = self.head.logits(predictions, (height + pad_h, width + pad_w))
        return logits[..., :height, :width]


def sliding_window_logits(
    image: torch.Tensor, whole_logits: Callable[[torch.Tensor], torch.Tensor], *, crop: int, stride: int | None,
    batch_size: int,
) -> torch.Tensor:
    """Scores ``[B, K, H, W]`` averaged over ``crop``-sized windows every ``stride`` pixels (default 2/3
    of the crop; the last window flush with the edge); ``whole_logits`` scores a batch of windows.
    Windows of one image run ``batch_size`` at a time."""
    stride = stride or max(1, (2 * crop) // 3)
    if not 0 < stride <= crop:
        raise ValueError(f"stride must be in (0, crop={crop}], got {stride}")
    height, width = image.shape[-2:]
    windows = [(t, l) for t in _window_starts(height, crop, stride) for l in _window_starts(width, crop, stride)]
    scores: torch.Tensor | None = None
    counts = image.new_zeros(1, 1, height, width, dtype=torch.float32)
    for b in range(image.shape[0]):
        for start in range(0, len(windows), batch_size):
            chunk = windows[start:start + batch_size]
            logits = whole_logits(torch.cat([image[b:b + 1, :, t:t + crop, l:l + crop] for t, l in chunk]))
            if scores is None:
                scores = image.new_zeros(image.shape[0], logits.shape[1], height, width, dtype=torch.float32)
            for (t, l), window_logits in zip(chunk, logits):
                h, w = window_logits.shape[-2:]
                scores[b, :, t:t + h, l:l + w] += window_logits.float()
                if b == 0:
                    counts[0, 0, t:t + h, l:l + w] += 1
    assert scores is not None
    return scores / counts


def _window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Window offsets covering ``length`` with the last window flush to the end."""
    if length <= crop:
        return [0]
    count = math.ceil((length - crop) / stride) + 1
    return sorted({min(i * stride, length - crop) for i in range(count)})
