"""Build a whole Segmentor from names: backbone preset, adapter method, head, depth model, sensor.

This is the one place that knows how the parts' sizes depend on each other (adapter width = backbone
width, depth width for the depth projection, Mask2Former queries = adapter tokens).
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

from spectralmoe.bands import DEFAULT_GSD_M, RGB_TARGETS_UM, default_bandwidths_um, get_sensor
from spectralmoe.models.adapters import adapter_uses_depth, build_adapter
from spectralmoe.models.backbones import build_backbone
from spectralmoe.models.backbones.base import refuse_trainable_adapter
from spectralmoe.models.depth import build_depth_encoder
from spectralmoe.models.heads import build_head
from spectralmoe.errors import InputError, check_int, check_number
from spectralmoe.models.segmentor import DepthInput, Segmentor, check_normalisation

DEFAULT_DEPTH = "prompt-depth-anything-large"
#: ``"segmentor"``: frozen backbone + adapter + head; ``"dstc"``: the complete DSTC model (``models/dstc.py``).
Architecture = Literal["segmentor", "dstc"]


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


def resolve_band_metadata(
    sensor: str | None,
    wavelengths: Sequence[float],
    bandwidths: Sequence[float | None] | None,
    gsd_m: float | None,
) -> tuple[list[float], float]:
    """Bandwidths (FWHM, µm, one per band) and GSD (m) of the input: the ones given, else the sensor
    record's (``Sensor.bandwidths()`` / ``Sensor.gsd()``), else the documented defaults
    (``default_bandwidths_um`` of the wavelengths, ``DEFAULT_GSD_M``). ``None`` entries (JSON for a
    non-spectral band) become nan."""
    record = get_sensor(sensor) if sensor is not None else None
    if bandwidths is None:
        widths = list(record.bandwidths() if record is not None else default_bandwidths_um(wavelengths))
    else:
        widths = [math.nan if b is None else float(b) for b in bandwidths]
    if len(widths) != len(wavelengths):
        raise ValueError(f"{len(widths)} bandwidths {widths} for {len(wavelengths)} bands (wavelengths {list(wavelengths)})")
    if gsd_m is None:
        gsd_m = record.gsd() if record is not None else DEFAULT_GSD_M
    if not (math.isfinite(float(gsd_m)) and float(gsd_m) > 0):
        raise ValueError(f"gsd_m must be a positive number of metres, got {gsd_m}")
    return widths, float(gsd_m)


def build_segmentor(
    *,
    backbone: str,
    num_classes: int,
    adapter: str = "spectralmoe",
    head: str = "mask2former",
    depth: str | None = DEFAULT_DEPTH,
    sensor: str | None = None,
    wavelengths: Sequence[float] | None = None,
    in_bandwidths: Sequence[float | None] | None = None,
    gsd_m: float | None = None,
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
    backbone_kwargs: dict[str, Any] | None = None,
    architecture: Architecture = "segmentor",
) -> Segmentor:
    """Assemble backbone + (depth encoder) + adapter + head for ``num_classes`` classes.

    ``pretrained=False`` builds every frozen model with random weights (tests, parameter counts on
    the meta device); otherwise weights load with ``from_pretrained(weights or the preset's hub id)``.
    ``in_bandwidths`` (FWHM, µm, per band) and ``gsd_m`` (m) describe the input for the backbones that
    use them (Copernicus-FM, SoftCon, Galileo, SenPa-MAE); None → the sensor's, else the documented
    defaults (:func:`resolve_band_metadata`). ``backbone_kwargs`` are options of the backbone family
    (e.g. Galileo's ``month``). ``architecture="dstc"`` builds the complete DSTC model instead
    (``backbone`` names its preset, ``backbone_kwargs`` its sizes, ``backbone_weights`` the ImageNet
    ResNet-18 file); the adapter, head and depth arguments do not apply to it.
    """
    num_classes = check_int("num_classes", num_classes, minimum=1, where="build_segmentor")
    named = (("backbone", backbone),) if architecture == "dstc" else (("backbone", backbone), ("adapter", adapter),
                                                                       ("head", head))  # fmt: skip
    for name, value in named:
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
    if architecture == "dstc":
        return _build_dstc(backbone, num_classes, band_wavelengths, sensor_scale, pretrained, backbone_weights,
                           backbone_kwargs, pixel_mean, pixel_std, value_scale, adapter_kwargs, head_kwargs,
                           out_indices)  # fmt: skip
    if architecture != "segmentor":
        raise ValueError(f"architecture must be 'segmentor' or 'dstc', got {architecture!r}")
    band_widths, band_gsd = resolve_band_metadata(sensor, band_wavelengths, in_bandwidths, gsd_m)
    adapter_kwargs = dict(adapter_kwargs or {})
    head_kwargs = dict(head_kwargs or {})

    frozen = build_backbone(
        backbone,
        in_wavelengths=band_wavelengths,
        in_bandwidths=band_widths,
        gsd_m=band_gsd,
        pretrained=pretrained,
        weights=backbone_weights,
        out_indices=out_indices,
        kernel_resize=kernel_resize,
        gradient_checkpointing=gradient_checkpointing,
        options=backbone_kwargs,
    )
    refuse_trainable_adapter(frozen, adapter)
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


def _build_dstc(name: str, num_classes: int, wavelengths: list[float], sensor_scale: float, pretrained: bool,
                weights: str | None, options: dict[str, Any] | None, pixel_mean: Sequence[float] | None,
                pixel_std: Sequence[float] | None, value_scale: float | None, adapter_kwargs: dict[str, Any] | None,
                head_kwargs: dict[str, Any] | None, out_indices: Sequence[int] | None) -> Any:  # fmt: skip
    """The complete DSTC model; options of the segmentor parts are refused rather than ignored."""
    from spectralmoe.models.dstc import build_dstc

    given = {"adapter_kwargs": adapter_kwargs, "head_kwargs": head_kwargs, "out_indices": out_indices}
    wrong = sorted(key for key, value in given.items() if value)
    if wrong:
        raise ValueError(f"architecture 'dstc' is a complete model without adapter, head or taps: drop {wrong}")
    return build_dstc(name, num_classes=num_classes, wavelengths=wavelengths, pixel_mean=pixel_mean,
                      pixel_std=pixel_std, value_scale=value_scale if value_scale is not None else sensor_scale,
                      pretrained=pretrained, weights=weights, **dict(options or {}))  # fmt: skip
