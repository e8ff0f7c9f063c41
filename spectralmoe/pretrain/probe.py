"""Measuring the pretrained SYNTHETIC-world models the way the demo uses them.

**Backbone: ridge probes per demo domain.** For the demo's source domain and each of its target
domains (``spectralmoe.demo``: GF-2-, PlanetScope- and Sentinel-2-like NIR,R,G,B products of the
north and south regions), held-out tiles of the *pretraining* world (indices far beyond the corpus',
never a demo tile) are normalised with the source domain's per-band statistics and fed to the frozen
backbone built for the source sensor's bands — what the demo's Freeze baseline sees. Per domain, a
ridge classifier is fitted on the even tiles and scored on the odd ones, predicting each 16 × 16
patch's majority class from

* ``tokens``: the backbone's final (layer-normed) patch tokens, or
* ``pixels``: the same normalised pixels, every band, average-pooled 4 × 4 within the patch
  (``16·C`` numbers per patch) — the "linear model on raw pixels" the features must beat.

``gap`` = tokens − pixels (patch accuracy and class-balanced accuracy). The target of the issue that
asked for these models: a gap of at least ``PROBE_MARGIN`` in patch accuracy in every domain. The
``cross`` rows fit on the source domain and score on each domain: how well a linear read-out learnt
on the source transfers (the demo's question, for a linear head).

The labels read here are the *pretraining* world's; the probe only measures, it trains nothing kept.

**Depth model: Pearson correlation with the true heights** per tile (tiles whose heights vary by at
least 0.5 m), from the depth model as ``DepthEncoder`` runs it (``inputs.depth_rgb``), on held-out
tiles of every sensor and region; target ``HEIGHT_TARGET`` for the mean. Two kinds of heights: above
the ground (buildings, trees, crops: the normalised DSM the model learns, and the target) and the
whole surface (terrain included, what the previous model was measured on: in the south region
terrain makes ~99 % of a tile's height variance and shows only through shading under a high sun).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from spectralmoe.bands import get_sensor
from spectralmoe.pretrain.corpus import PretrainCorpus, build_corpus
from spectralmoe.pretrain.inputs import depth_rgb, domain_statistics

__all__ = [
    "HEIGHT_TARGET",
    "PROBE_FIRST_INDEX",
    "PROBE_MARGIN",
    "backbone_tokens",
    "demo_domains",
    "domain_probe",
    "height_correlation",
    "patch_labels",
    "pixel_features",
    "predict_height",
    "probe_tiles",
    "ridge_probe",
]

#: Tokens must beat the raw-pixel probe by this much patch accuracy in every demo domain.
PROBE_MARGIN = 0.10
#: Mean per-tile Pearson correlation of predicted and true heights the depth model must reach.
HEIGHT_TARGET = 0.6
#: Probe tiles are drawn from indices far beyond the training (0…) and validation (100 000…) tiles.
PROBE_FIRST_INDEX = 200_000
_MIN_HEIGHT_SPREAD_M = 0.5


def demo_domains() -> tuple[tuple[str, str], list[tuple[str, str]]]:
    """(source domain, every demo domain with the source first), from ``spectralmoe.demo``."""
    from spectralmoe.demo import REGIONS, SENSORS, SOURCE

    domains = [SOURCE] + [(s, r) for s in SENSORS for r in REGIONS if (s, r) != SOURCE]
    return SOURCE, domains


def probe_tiles(seed: int = 0, *, tiles_per_domain: int = 16, tile_size: int = 256, workers: int = 1) -> PretrainCorpus:
    """Held-out tiles of every demo domain from the pretraining world of ``seed``."""
    from spectralmoe.demo import REGIONS, SENSORS

    return build_corpus(seed, tiles_per_domain=tiles_per_domain, tile_size=tile_size, sensors=SENSORS,
                        regions=REGIONS, first_index=PROBE_FIRST_INDEX, workers=workers)  # fmt: skip


def patch_labels(label: torch.Tensor, patch: int, num_classes: int) -> torch.Tensor:
    """Majority class of every ``patch``×``patch`` cell, in token order ``[N·tokens]``."""
    onehot = F.one_hot(label.long(), num_classes).permute(0, 3, 1, 2).float()
    return F.avg_pool2d(onehot, patch).argmax(1).flatten()


def pixel_features(images: torch.Tensor, patch: int = 16, pool: int = 4) -> torch.Tensor:
    """``[N·tokens, (patch/pool)²·C]``: each patch's pixels average-pooled ``pool`` × ``pool``, all bands."""
    pooled = F.avg_pool2d(images.float(), pool)
    b, c, h, w = pooled.shape
    side = patch // pool
    cells = pooled.reshape(b, c, h // side, side, w // side, side).permute(0, 2, 4, 3, 5, 1)
    return cells.reshape(-1, side * side * c)


@torch.no_grad()
def backbone_tokens(backbone: Any, images: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Final (layer-normed) patch tokens ``[N·tokens, D]`` of a frozen ``FrozenBackbone`` on normalised images."""
    out = []
    for start in range(0, len(images), batch_size):
        tokens, grid = backbone.embed(images[start:start + batch_size].float())
        for layer in range(backbone.num_layers):
            tokens = backbone.run_block(layer, tokens, grid)
        out.append(backbone.final_norm(tokens)[:, backbone.num_prefix_tokens:])
    return torch.cat(out).reshape(-1, backbone.embed_dim)


def ridge_probe(
    x_fit: torch.Tensor, y_fit: torch.Tensor, x_score: torch.Tensor, y_score: torch.Tensor, *, num_classes: int,
    ridge: float = 1e-2,
) -> dict[str, float]:  # fmt: skip
    """Ridge regression on one-hot targets (closed form, features standardised on the fit set), scored
    by patch accuracy and class-balanced accuracy (mean recall over the classes present in the score set)."""
    x_fit, x_score = x_fit.double(), x_score.double()
    mean, std = x_fit.mean(0), x_fit.std(0).clamp_min(1e-6)
    design = torch.cat([(x_fit - mean) / std, torch.ones(len(x_fit), 1, dtype=torch.float64)], 1)
    gram = design.T @ design + ridge * len(design) * torch.eye(design.shape[1], dtype=torch.float64)
    weights = torch.linalg.solve(gram, design.T @ F.one_hot(y_fit.long(), num_classes).double())
    scores = torch.cat([(x_score - mean) / std, torch.ones(len(x_score), 1, dtype=torch.float64)], 1) @ weights
    predicted = scores.argmax(1)
    recalls = [float((predicted[y_score == k] == k).double().mean()) for k in range(num_classes)
               if (y_score == k).any()]  # fmt: skip
    return {"patch_accuracy": round(float((predicted == y_score).double().mean()), 4),
            "balanced_accuracy": round(sum(recalls) / len(recalls), 4)}  # fmt: skip


def _gap(tokens: dict[str, float], pixels: dict[str, float]) -> dict[str, float]:
    return {key: round(tokens[key] - pixels[key], 4) for key in tokens}


def domain_probe(
    backbone: Any, tiles: PretrainCorpus, *, num_classes: int = 7, margin: float = PROBE_MARGIN,
    source: tuple[str, str] | None = None, domains: Sequence[tuple[str, str]] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Token and raw-pixel ridge probes per domain (see the module doc) of a frozen ``FrozenBackbone``
    built for the source sensor's bands. Returns ``{"domains": {name: {tokens, pixels, gap, cross_tokens,
    cross_pixels}}, "min_gap": …, "margin": …, "passed": …, "protocol": …}``."""
    default_source, default_domains = demo_domains()
    source = source or default_source
    domains = list(domains or default_domains)
    patch = backbone.patch_size
    mean, std = domain_statistics(tiles.raw, list(zip(tiles.sensor, tiles.region)))[source]
    features: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]] = {}
    for domain in domains:
        index = tiles.indices(*domain)
        if len(index) < 2:
            raise ValueError(f"probe needs at least 2 tiles of domain {domain}, got {len(index)}")
        if get_sensor(domain[0]).num_bands != len(mean):
            raise ValueError(f"domain {domain} has other bands than the source {source}")
        raw = torch.stack([tiles.raw[i] for i in index]).float()
        images = (raw - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        labels = patch_labels(tiles.label[index], patch, num_classes)
        per_tile = labels.numel() // len(index)
        features[domain] = (backbone_tokens(backbone, images), pixel_features(images, patch), labels, per_tile)
    tokens_s, pixels_s, labels_s, per_tile_s = features[source]
    rows: dict[str, dict[str, Any]] = {}
    for domain, (tokens, pixels, labels, per_tile) in features.items():
        tiles_n = labels.numel() // per_tile
        fit = torch.cat([torch.arange(i * per_tile, (i + 1) * per_tile) for i in range(0, tiles_n, 2)])
        score = torch.cat([torch.arange(i * per_tile, (i + 1) * per_tile) for i in range(1, tiles_n, 2)])
        tok = ridge_probe(tokens[fit], labels[fit], tokens[score], labels[score], num_classes=num_classes)
        pix = ridge_probe(pixels[fit], labels[fit], pixels[score], labels[score], num_classes=num_classes)
        rows["/".join(domain)] = {
            "tokens": tok, "pixels": pix, "gap": _gap(tok, pix),
            "cross_tokens": ridge_probe(tokens_s, labels_s, tokens, labels, num_classes=num_classes),
            "cross_pixels": ridge_probe(pixels_s, labels_s, pixels, labels, num_classes=num_classes),
            "tiles": tiles_n,
        }  # fmt: skip
    min_gap = min(row["gap"]["patch_accuracy"] for row in rows.values())
    return {
        "protocol": "per domain: ridge (1e-2) on one-hot patch majority classes, fit on even / scored on odd held-out "
        "tiles of the pretraining world; images normalised with the source domain's band statistics; tokens = final "
        "layer-normed patch tokens of the backbone built for the source bands; pixels = the same normalised bands "
        "average-pooled 4x4 in each 16-px patch; cross_* = fit on all source tiles, scored on the domain",
        "source": "/".join(source),
        "domains": rows,
        "min_gap": round(min_gap, 4),
        "margin": margin,
        "passed": bool(min_gap >= margin),
    }


@torch.no_grad()
def predict_height(model: Any, rgb: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Relative height ``[N, H, W]`` of a ``DepthAnythingForDepthEstimation`` from RGB in [0, 1]."""
    from spectralmoe.models.depth import IMAGENET_MEAN, IMAGENET_STD

    model.eval()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return torch.cat([model((rgb[i:i + batch_size] - mean) / std).predicted_depth
                      for i in range(0, len(rgb), batch_size)])  # fmt: skip


def _pearson_per_tile(prediction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    p = prediction.flatten(1).double()
    t = truth.flatten(1).double()
    p, t = p - p.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    return (p * t).sum(1) / (p.norm(dim=1) * t.norm(dim=1)).clamp_min(1e-12)


def height_correlation(model: Any, corpus: PretrainCorpus, *, kind: str = "above_ground",
                       target: float = HEIGHT_TARGET) -> dict[str, Any]:  # fmt: skip
    """Per-tile Pearson r of predicted and true heights of ``kind`` (``"above_ground"``: normalised DSM;
    ``"surface"``: DSM, terrain included): mean and median over tiles whose heights vary by at least
    0.5 m, overall and per (sensor, region) domain; ``passed`` when the overall mean ≥ ``target``."""
    values: list[torch.Tensor] = []
    per_domain: dict[str, float] = {}
    for domain in corpus.domains():
        index = corpus.indices(*domain)
        truth = corpus.heights(kind)[index]
        keep = truth.flatten(1).std(1) > _MIN_HEIGHT_SPREAD_M
        if not keep.any():
            continue
        raw = torch.stack([corpus.raw[i] for i, k in zip(index, keep.tolist()) if k])
        r = _pearson_per_tile(predict_height(model, depth_rgb(raw, domain[0])), truth[keep])
        values.append(r)
        per_domain["/".join(domain)] = round(float(r.mean()), 4)
    r_all = torch.cat(values)
    mean = round(float(r_all.mean()), 4)
    return {"heights": kind, "pearson_mean": mean, "pearson_median": round(float(r_all.median()), 4),
            "tiles": int(r_all.numel()),
            "per_domain": per_domain, "target": target, "passed": bool(mean >= target)}  # fmt: skip
