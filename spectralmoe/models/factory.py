"""Build a whole Segmentor from names: backbone preset, adapter method, head, depth model, sensor.

This is the one place that knows how the parts' sizes depend on each other (adapter width = backbone
width, depth width for the depth projection, Mask2Former queries = adapter tokens).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from spectralmoe.bands import RGB_TARGETS_UM, get_sensor
from spectralmoe.models.adapters import adapter_uses_depth, build_adapter
from spectralmoe.models.backbones import build_backbone
from spectralmoe.models.depth import build_depth_encoder
from spectralmoe.models.heads import build_head
from spectralmoe.errors import InputError, check_int, check_number
from spectralmoe.models.segmentor import DepthInput, Segmentor, check_normalisation

DEFAULT_DEPTH = "prompt-depth-anything-large"


def resolve_wavelengths(sensor: str | None, wavelengths: Sequence[float] | None) -> tuple[list[float], float]:
    """Input band wavelengths and value scale from a sensor name or explicit wavelengths (RGB default)."""
    if sensor is not None and wavelengths is not None:
        raise ValueError("give either sensor or wavelengths, not both")
    if sensor is not None:
        record = get_sensor(sensor)
        return list(record.wavelengths_um), record.value_scale
    if wavelengths is not None:
        try:
            if isinstance(wavelengths, (str, bytes)):
                raise TypeError
            values = [float(w) for w in wavelengths]
            if not values:
                raise ValueError
        except (TypeError, ValueError):
            raise InputError(f"wavelengths must be numbers (µm; nan for a non-spectral band), got {wavelengths!r}") \
                from None
        if any(math.isinf(w) or (not math.isnan(w) and w <= 0) for w in values):
            raise InputError(f"wavelengths must be positive µm values (nan for a non-spectral band), got {values}")
        return values, 255.0
    return list(RGB_TARGETS_UM), 255.0


def build_segmentor(
    *,
    backbone: str,
    num_classes: int,
    adapter: str = "spectralmoe",
    head: str = "mask2former",
    depth: str | None = DEFAULT_DEPTH,
    sensor: str | None = None,
    wavelengths: Sequence[float] | None = None,
    pretrained: bool = True,
    backbone_weights: str | None = None,
    depth_weights: str | None = None,
    adapter_kwargs: dict[str, Any] | None = None,
    head_kwargs: dict[str, Any] | None = None,
    pixel_mean: Sequence[float] | None = None,
    pixel_std: Sequence[float] | None = None,
    value_scale: float | None = None,
    depth_input: DepthInput = "percentile",
    out_indices: Sequence[int] | None = None,
    kernel_resize: str = "bicubic",
    gradient_checkpointing: bool = False,
) -> Segmentor:
    """Assemble backbone + (depth encoder) + adapter + head for ``num_classes`` classes.

    ``pretrained=False`` builds every frozen model with random weights (tests, parameter counts on
    the meta device); otherwise weights load with ``from_pretrained(weights or the preset's hub id)``.
    """
    num_classes = check_int("num_classes", num_classes, minimum=1, where="build_segmentor")
    for name, value in (("backbone", backbone), ("adapter", adapter), ("head", head)):
        if not isinstance(value, str) or not value:
            raise InputError(f"build_segmentor: {name} must be a preset name, got {value!r}")
    if depth is not None and not isinstance(depth, str):
        raise InputError(f"build_segmentor: depth must be a preset name or None, got {depth!r}")
    for name, options in (("adapter_kwargs", adapter_kwargs), ("head_kwargs", head_kwargs)):
        if options is not None and not isinstance(options, dict):
            raise InputError(f"build_segmentor: {name} must be a dict of options, got {options!r}")
    if out_indices is not None:
        out_indices = [check_int("out_indices entry", i, minimum=0, where="build_segmentor") for i in out_indices]
    if value_scale is not None:
        value_scale = check_number("value_scale", value_scale, positive=True, where="build_segmentor")
    check_normalisation(pixel_mean, pixel_std, where="build_segmentor")
    band_wavelengths, sensor_scale = resolve_wavelengths(sensor, wavelengths)
    adapter_kwargs = dict(adapter_kwargs or {})
    head_kwargs = dict(head_kwargs or {})

    frozen = build_backbone(
        backbone,
        in_wavelengths=band_wavelengths,
        pretrained=pretrained,
        weights=backbone_weights,
        out_indices=out_indices,
        kernel_resize=kernel_resize,
        gradient_checkpointing=gradient_checkpointing,
    )
    depth_encoder = None
    if adapter_uses_depth(adapter, **adapter_kwargs):
        if depth is None:
            raise ValueError(f"adapter {adapter!r} needs a depth model; pass depth=<preset> or use_depth=False")
        depth_encoder = build_depth_encoder(
            depth,
            num_visual_layers=frozen.num_layers,
            pretrained=pretrained,
            weights=depth_weights,
            kernel_resize=kernel_resize,
        )
    method = build_adapter(
        adapter,
        embed_dim=frozen.embed_dim,
        num_layers=frozen.num_layers,
        num_prefix_tokens=frozen.num_prefix_tokens,
        depth_dim=depth_encoder.embed_dim if depth_encoder is not None else None,
        **adapter_kwargs,
    )
    if head == "mask2former":
        queries = method.queries()
        if queries is not None:  # Mask2Former's query positions come from the adapter's tokens
            head_kwargs.setdefault("num_queries", queries.shape[0])
            head_kwargs.setdefault("hidden_dim", queries.shape[1])
    decoder = build_head(head, num_classes=num_classes, in_channels=(frozen.embed_dim,) * 4, **head_kwargs)
    return Segmentor(
        frozen,
        method,
        decoder,
        wavelengths=band_wavelengths,
        depth_encoder=depth_encoder,
        pixel_mean=pixel_mean,
        pixel_std=pixel_std,
        value_scale=value_scale if value_scale is not None else sensor_scale,
        depth_input=depth_input,
    )
