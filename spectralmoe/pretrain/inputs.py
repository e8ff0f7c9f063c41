"""What the pretrained models see: exactly what they will be fed inside a ``Segmentor``.

**Vision backbone.** ``synthetic-dinov2`` is a NIR,R,G,B model: its patch kernel has one channel
per entry of ``MODEL_CHANNELS_UM`` (recorded in its config as ``channel_wavelengths_um``). The
segmentor normalises a product's bands with the training domain's per-band mean and standard
deviation (``pixel_mean`` / ``pixel_std``) and the backbone spreads its kernel over the product's
bands by wavelength (``adapt_kernel_to_bands``: each band takes the filter of the nearest model
channel, divided by the number of bands sharing it; a channel without a band near it hands its
filter to the nearest band). A convolution is linear, so a product x meets the adapted kernel exactly
as the 4-channel image ``P·x`` meets the model's kernel, where ``P`` [4, C] averages the bands of each
channel (``colour_projection``): identity for the NIR,R,G,B sensors, the averaged bands of each range
for the 32-band OHS, R copied into the NIR channel for the RGB camera. Pretraining therefore feeds
``P·normalise(x)`` for every sensor of the world: the backbone learns from every band layout through
the same rule that will feed it in use.

**Cross-domain normalisation.** A model trained on one domain normalises another domain's images
with the training domain's statistics: a dry-season region or another sensor's gains then arrive
shifted by up to 3 standard deviations per band. Pretraining normalises each tile with the statistics
of a domain drawn at random among the domains of the same band layout (its own, another region,
another sensor), so the frozen features stay meaningful under the shifts an adapter will meet. The
statistics come from the corpus' own imagery (no labels).

**Depth model.** ``depth_rgb`` is ``Segmentor.depth_rgb`` (``depth_input="percentile"``): the R, G, B
bands by wavelength, each stretched between its 2nd and 98th percentile on a 4-pixel strided sample
(tested equal).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from spectralmoe.bands import get_sensor
from spectralmoe.data.synthetic.sensors import band_compatible
from spectralmoe.models.backbones.presets import SYNTHETIC_DINOV2_CONFIG
from spectralmoe.models.patch_embed import band_colour_assignment

__all__ = ["MODEL_CHANNELS_UM", "DomainStats", "colour_projection", "depth_rgb", "domain_statistics",
           "normalisation_pool", "vision_input"]  # fmt: skip

#: Centre wavelengths (µm) of the synthetic backbone's input channels: NIR, R, G, B.
MODEL_CHANNELS_UM: tuple[float, ...] = tuple(SYNTHETIC_DINOV2_CONFIG["channel_wavelengths_um"])

Domain = tuple[str, str]
DomainStats = Mapping[Domain, tuple[torch.Tensor, torch.Tensor]]


def colour_projection(wavelengths: Sequence[float], channels: Sequence[float] = MODEL_CHANNELS_UM) -> torch.Tensor:
    """``[K, C]``: one row per model channel, averaging the bands that ``adapt_kernel_to_bands`` gives it."""
    groups = band_colour_assignment(list(wavelengths), tuple(channels))
    projection = torch.zeros(len(channels), len(wavelengths))
    for colour, bands in enumerate(groups):
        for band in bands:
            projection[colour, band] += 1.0 / len(bands)
    return projection


def domain_statistics(raw: Sequence[torch.Tensor], domains: Sequence[Domain]) -> dict[Domain, tuple[torch.Tensor,
                                                                                                    torch.Tensor]]:
    """Per-band mean and standard deviation (raw units) of each domain's tiles, as a training set's
    statistics are computed (over every pixel of every tile; std floored at 1e-3 of the value scale)."""
    stats: dict[Domain, tuple[torch.Tensor, torch.Tensor]] = {}
    for domain in dict.fromkeys(domains):
        tiles = torch.stack([raw[i].double() for i, d in enumerate(domains) if d == domain])
        scale = get_sensor(domain[0]).value_scale
        mean = tiles.mean(dim=(0, 2, 3))
        std = tiles.std(dim=(0, 2, 3)).clamp_min(1e-3 * scale)
        stats[domain] = (mean.float(), std.float())
    return stats


def normalisation_pool(domains: Sequence[Domain]) -> dict[Domain, list[Domain]]:
    """For every domain, the domains whose statistics may normalise it: those of a band-compatible
    sensor (same band count, order and scale), itself included."""
    unique = list(dict.fromkeys(domains))
    return {d: [e for e in unique if band_compatible(get_sensor(d[0]), get_sensor(e[0]))] for d in unique}


def vision_input(raw: torch.Tensor, sensor: str, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``[4, H, W]`` (or ``[B, 4, H, W]``) backbone input of a raw product normalised with ``mean`` / ``std``."""
    record = get_sensor(sensor)
    shape = (-1, 1, 1)
    normalised = (raw.float() - mean.view(shape)) / std.view(shape)
    return torch.einsum("cb,...bhw->...chw", colour_projection(record.wavelengths_um), normalised)


def depth_rgb(raw: torch.Tensor, sensor: str) -> torch.Tensor:
    """The depth model's input of raw products ``[B, C, H, W]``: ``Segmentor.depth_rgb`` (percentile mode)."""
    rgb = raw[:, list(get_sensor(sensor).rgb_indices())].float()
    sample = rgb[:, :, ::4, ::4].flatten(2)
    low = torch.quantile(sample, 0.02, dim=-1)[..., None, None]
    high = torch.quantile(sample, 0.98, dim=-1)[..., None, None]
    return ((rgb - low) / (high - low).clamp_min(1e-6)).clamp(0.0, 1.0)
