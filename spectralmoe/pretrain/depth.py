"""Training the small SYNTHETIC-world Depth Anything (preset ``synthetic-depth-anything``).

Architecture: ``DepthAnythingForDepthEstimation`` exactly as transformers builds Depth Anything V2
(DINOv2 encoder + DPT neck and head), at a tiny size (``SYNTHETIC_DEPTH_BACKBONE`` /
``SYNTHETIC_DEPTH_DPT`` in ``spectralmoe.models.depth``), patch 16.

Task: predict the height of what stands on the ground — buildings, trees, crops: the surface model
minus the bare-earth terrain, a *normalised DSM*, metres — from the R, G, B bands of a tile, prepared
exactly as ``DepthEncoder`` gets them inside SpectralMoE (``inputs.depth_rgb``: bands by wavelength,
2–98 % stretch) and ImageNet-normalised. For a nadir view, height plays the role of DA's relative
inverse depth (nearer = larger), which also suits the head's final ReLU.

Why above ground and not the whole surface (``height_kind="surface"``, what the previous model
learnt): a single nadir image shows terrain relief only through shading, and in the world's dry
south region under a high sun the terrain makes ~99 % of a tile's height variance; monocular height
estimation in remote sensing predicts the normalised DSM for that reason. Trained on the whole
surface (``python scripts/pretrain_synthetic.py --height-kind surface``, otherwise the same settings),
the model reached a mean per-tile Pearson r of 0.44 with the whole surface on held-out tiles of every
sensor and region (0.13–0.34 in the demo's south domains). Both correlations are measured and reported
(``probe.height_correlation``).

Initialisation: like Depth Anything V2, whose encoder starts from DINOv2, the encoder starts from
the pretrained ``synthetic-dinov2`` backbone (position table, its first blocks, and its NIR,R,G,B
patch kernel spread over R, G, B by the wavelength rule), whose dense pretraining included per-tile
height (``vision.py``); the DPT neck and head start random.

Loss: ``1 − r`` per tile (Pearson correlation of prediction and height), scale- and shift-invariant
like Depth Anything's affine-invariant loss, because heights of different sensors' tiles (1 m to 10 m
pixels, flat plains and hills) live on very different scales and only their shape within a tile is
learnt; it is also the measured quantity (``probe.height_correlation``). The head's last bias starts
at 1 so that its final ReLU does not kill the output at the start (with bias 0 the output died at 0
in the first steps). Random crops of ``crop`` pixels, then ``full_steps`` steps on whole tiles;
flips and 90° rotations.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import DepthAnythingForDepthEstimation, Dinov2Model

from spectralmoe.bands import RGB_TARGETS_UM
from spectralmoe.models.depth import DEPTH_PRESETS, IMAGENET_MEAN, IMAGENET_STD
from spectralmoe.models.patch_embed import adapt_kernel_to_bands
from spectralmoe.pretrain.common import Logger, draw_batch, flip_rotate, warmup_cosine
from spectralmoe.pretrain.corpus import PretrainCorpus
from spectralmoe.pretrain.inputs import depth_rgb

__all__ = ["DEPTH_PRESET", "build_depth_model", "correlation_loss", "init_encoder_from", "pretrain_depth"]

DEPTH_PRESET = "synthetic-depth-anything"
_MIN_HEIGHT_SPREAD_M = 0.5  # a flat tile (all water) has no shape to learn; its scale is floored


def build_depth_model(seed: int = 0) -> DepthAnythingForDepthEstimation:
    """The ``synthetic-depth-anything`` architecture with seeded random weights."""
    torch.manual_seed(seed)
    preset = DEPTH_PRESETS[DEPTH_PRESET]
    return preset.model_class(preset.make_config())


def init_encoder_from(model: DepthAnythingForDepthEstimation, vision: Dinov2Model) -> int:
    """Copy the vision backbone's embeddings and first blocks into the depth encoder (same widths);
    returns the number of tensors copied. Shapes must match (a clear error names the first that does not)."""
    target = model.backbone.state_dict()
    source = vision.state_dict()
    copied = {}
    channels = getattr(vision.config, "channel_wavelengths_um", None)
    for name, tensor in source.items():
        if name.startswith("embeddings.") or (name.startswith("encoder.layer.") and name in target):
            if name not in target:
                continue
            if name.endswith("patch_embeddings.projection.weight") and channels is not None \
                    and tensor.shape[1] != target[name].shape[1]:  # fmt: skip
                tensor = adapt_kernel_to_bands(tensor, RGB_TARGETS_UM, tuple(channels))
            if target[name].shape != tensor.shape:
                raise ValueError(f"cannot initialise depth encoder tensor {name}: shape {tuple(target[name].shape)} "
                                 f"vs the vision backbone's {tuple(tensor.shape)}")  # fmt: skip
            copied[name] = tensor
    model.backbone.load_state_dict(copied, strict=False)
    return len(copied)


def _imagenet(rgb: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, dtype=rgb.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=rgb.dtype).view(1, 3, 1, 1)
    return (rgb - mean) / std


def correlation_loss(prediction: torch.Tensor, height: torch.Tensor) -> torch.Tensor:
    """``1 − r`` per tile (Pearson r of prediction and height), averaged: invariant to a positive
    scale and any shift, with a smooth gradient from the start."""
    p = prediction.flatten(1)
    t = height.flatten(1)
    p = p - p.mean(1, keepdim=True)
    t = t - t.mean(1, keepdim=True)
    t_norm = t.norm(dim=1).clamp_min(_MIN_HEIGHT_SPREAD_M * t.shape[1] ** 0.5)
    r = (p * t).sum(1) / (p.norm(dim=1).clamp_min(1e-6) * t_norm)
    return (1.0 - r).mean()


def _batch(corpus: PretrainCorpus, index: list[int], crop: int | None, generator: torch.Generator,
           height_kind: str = "above_ground") -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    size = corpus.tile_size
    all_heights = corpus.heights(height_kind)
    side = size if crop is None or crop >= size else crop
    rgbs, heights = [], []
    for i in index:
        top = left = 0
        if side < size:
            top, left = (16 * int(v) for v in torch.randint((size - side) // 16 + 1, (2,), generator=generator))
        raw = corpus.raw[i][None, :, top:top + side, left:left + side]
        rgbs.append(depth_rgb(raw, corpus.sensor[i])[0])
        heights.append(all_heights[i][top:top + side, left:left + side])
    return torch.stack(rgbs), torch.stack(heights)


def pretrain_depth(
    corpus: PretrainCorpus,
    *,
    steps: int = 1600,
    batch_size: int = 16,
    crop: int = 128,
    full_steps: int = 200,
    full_batch_size: int = 4,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    init_from: Dinov2Model | None = None,
    height_kind: str = "above_ground",
    warmup: int | None = None,
    seed: int = 0,
    validation: PretrainCorpus | None = None,
    log: Logger | None = print,
    log_every: int = 100,
) -> tuple[DepthAnythingForDepthEstimation, dict[str, Any]]:
    """Train the whole depth model (encoder, neck, head) on the corpus' height maps; return it (eval
    mode) and a history. Deterministic like ``pretrain_vision``."""
    from spectralmoe.pretrain.probe import height_correlation

    if steps < 1 or batch_size < 1 or full_batch_size < 1 or not 0 <= full_steps <= steps:
        raise ValueError(f"need steps >= 1, batch sizes >= 1 and 0 <= full_steps <= steps; got {steps}, "
                         f"{batch_size}, {full_steps}, {full_batch_size}")  # fmt: skip
    model = build_depth_model(seed)
    initialised = init_encoder_from(model, init_from) if init_from is not None else 0
    with torch.no_grad():
        # The relative head ends in a ReLU; started at bias 0 the tiny model's output died at 0
        # within the first steps (measured: constant prediction, correlation 0). Bias 1 starts it alive.
        model.head.conv3.bias.fill_(1.0)
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 20) if warmup is None else warmup
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, steps, warmup))
    generator = torch.Generator().manual_seed(seed)
    history: dict[str, Any] = {"objective": f"1 - Pearson r per tile between predicted and true {height_kind} heights",
                               "encoder_tensors_from_vision_backbone": initialised, "loss": []}  # fmt: skip
    start, running = time.perf_counter(), 0.0
    model.train()
    for step in range(steps):
        whole = step >= steps - full_steps
        index = draw_batch(len(corpus), full_batch_size if whole else batch_size, generator).tolist()
        rgb, height = _batch(corpus, index, None if whole else crop, generator, height_kind)
        rgb, height = flip_rotate(rgb, height, generator=generator)
        value = correlation_loss(model(_imagenet(rgb)).predicted_depth, height)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        running += float(value.detach())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            done = log_every if (step + 1) % log_every == 0 else (step + 1) % log_every
            history["loss"].append((step + 1, round(running / done, 5)))
            if log is not None:
                log(f"depth step {step + 1}/{steps} ({'whole tiles' if whole else f'{crop}-px crops'}): 1 - r "
                    f"{running / done:.4f} ({time.perf_counter() - start:.0f} s)")  # fmt: skip
            running = 0.0
    model.eval()
    history["seconds"] = round(time.perf_counter() - start, 1)
    if validation is not None:
        history["validation"] = height_correlation(model, validation, kind=height_kind)
    return model, history
