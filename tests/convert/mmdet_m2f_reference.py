"""A plain-PyTorch re-statement of the mmdet/mmseg Mask2Former head forward, for parity tests.

Written from the mmdet 3.x / mmcv 2.x sources (read, not imported: neither installs here) —
``mmdet/models/layers/msdeformattn_pixel_decoder.py`` (``MSDeformAttnPixelDecoder.forward``),
``mmdet/models/layers/transformer/mask2former_layers.py`` (encoder loop; decoder layer: cross-attn →
``norms[0]`` → self-attn → ``norms[1]`` → FFN → ``norms[2]``), ``.../deformable_detr_layers.py`` and
``detr_layers.py`` (encoder layer: deformable self-attn → ``norms[0]`` → FFN → ``norms[1]``),
``mmdet/models/layers/positional_encoding.py`` (``SinePositionalEncoding``, float32 cumsum),
``mmdet/models/task_modules/prior_generators/point_generator.py`` (``MlvlPointGenerator``, offset 0.5),
``mmcv/ops/multi_scale_deform_attn.py`` (``multi_scale_deformable_attn_pytorch`` and the module's
forward: value without positions, offsets normalised by (W, H), softmax over levels·points, identity
added), ``mmcv/cnn/bricks/transformer.py`` (``MultiheadAttention``: query/key positions added, value
bare, identity added; ``FFN``), ``mmdet/models/dense_heads/mask2former_head.py`` (``_forward_head``,
``forward``) and the SpectralMoE/Rein head subclass (adapter queries as ``query_pos``; ``query_feat``
or ``querys2feat(queries)``; rows that are all masked are un-masked; ``predict``: last stage,
upsample, sigmoid, softmax without no-object, einsum).

Every function takes the mmdet-named weights (the ``decode_head.`` prefix removed), so this file also
documents the source layout. Nothing here imports transformers or spectralmoe.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
SD = Mapping[str, Tensor]
GN_GROUPS, EPS = 32, 1e-5


def linear(x: Tensor, sd: SD, name: str) -> Tensor:
    return F.linear(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"))


def layer_norm(x: Tensor, sd: SD, name: str) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], EPS)


def conv_module(x: Tensor, sd: SD, name: str, padding: int = 0, relu: bool = False) -> Tensor:
    """mmcv ConvModule: conv (bias only if stored) → GroupNorm(32) → optional ReLU."""
    y = F.conv2d(x, sd[f"{name}.conv.weight"], sd.get(f"{name}.conv.bias"), padding=padding)
    y = F.group_norm(y, GN_GROUPS, sd[f"{name}.gn.weight"], sd[f"{name}.gn.bias"], EPS)
    return F.relu(y) if relu else y


def ffn(x: Tensor, sd: SD, name: str) -> Tensor:
    """mmcv FFN with add_identity: x + Linear(ReLU(Linear(x)))."""
    return x + linear(F.relu(linear(x, sd, f"{name}.layers.0.0")), sd, f"{name}.layers.1")


def sine_positions(batch: int, height: int, width: int, num_feats: int, dtype: torch.dtype) -> Tensor:
    """mmdet SinePositionalEncoding(num_feats, normalize=True) of an all-valid mask → [B, 2·num_feats, H, W]."""
    not_mask = torch.ones(batch, height, width, dtype=torch.int32)
    y = not_mask.cumsum(1, dtype=dtype)
    x = not_mask.cumsum(2, dtype=dtype)
    y = y / (y[:, -1:, :] + 1e-6) * (2 * math.pi)
    x = x / (x[:, :, -1:] + 1e-6) * (2 * math.pi)
    dim_t = torch.arange(num_feats, dtype=dtype)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos_x, pos_y = x[..., None] / dim_t, y[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).view(batch, height, width, -1)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).view(batch, height, width, -1)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def grid_points(height: int, width: int, stride: int, dtype: torch.dtype) -> Tensor:
    """MlvlPointGenerator.single_level_grid_priors (offset 0.5) divided by (W, H)·stride, as the pixel
    decoder normalises them → [H·W, 2] in (x, y), x fastest."""
    shift_x = (torch.arange(width, dtype=dtype) + 0.5) * stride
    shift_y = (torch.arange(height, dtype=dtype) + 0.5) * stride
    xx = shift_x.repeat(height)
    yy = shift_y.view(-1, 1).repeat(1, width).view(-1)
    points = torch.stack([xx, yy], dim=-1)
    return points / (torch.tensor([width, height], dtype=dtype) * stride)


def deform_attn_core(value: Tensor, shapes: list[tuple[int, int]], locations: Tensor, weights: Tensor) -> Tensor:
    """multi_scale_deformable_attn_pytorch: value [B, N, heads, d], locations [B, Q, heads, L, P, 2] in [0, 1],
    weights [B, Q, heads, L, P] → [B, Q, heads·d]."""
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    per_level = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * locations - 1
    sampled = []
    for level, (h, w) in enumerate(shapes):
        v = per_level[level].flatten(2).transpose(1, 2).reshape(batch * heads, dim, h, w)
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    w = weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * w).sum(-1).view(batch, heads * dim, queries)
    return out.transpose(1, 2)


def deformable_self_attention(x: Tensor, pos: Tensor, sd: SD, name: str, reference: Tensor,
                              shapes: list[tuple[int, int]], heads: int, points: int) -> Tensor:  # fmt: skip
    """mmcv MultiScaleDeformableAttention (batch_first) as the encoder calls it: value = query = x."""
    batch, num, _ = x.shape
    levels = len(shapes)
    query = x + pos
    value = linear(x, sd, f"{name}.value_proj").view(batch, num, heads, -1)
    offsets = linear(query, sd, f"{name}.sampling_offsets").view(batch, num, heads, levels, points, 2)
    weights = linear(query, sd, f"{name}.attention_weights").view(batch, num, heads, levels * points)
    weights = weights.softmax(-1).view(batch, num, heads, levels, points)
    normaliser = torch.tensor([[w, h] for h, w in shapes], dtype=x.dtype)
    locations = reference[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
    out = deform_attn_core(value, shapes, locations, weights)
    return linear(out, sd, f"{name}.output_proj") + x


def multihead_attention(query: Tensor, key: Tensor, value: Tensor, sd: SD, name: str, heads: int,
                        mask: Tensor | None = None) -> Tensor:  # fmt: skip
    """nn.MultiheadAttention (fused in_proj, batch first) as mmcv's wrapper holds it at ``<name>.attn``;
    ``mask`` [B·heads, Q, K] bool, True = may not attend. Returns the attention output (no identity)."""
    w, b = sd[f"{name}.attn.in_proj_weight"], sd[f"{name}.attn.in_proj_bias"]
    dim = w.shape[1]
    q = F.linear(query, w[:dim], b[:dim])
    k = F.linear(key, w[dim:2 * dim], b[dim:2 * dim])
    v = F.linear(value, w[2 * dim:], b[2 * dim:])
    batch, nq, _ = q.shape
    nk = k.shape[1]
    head_dim = dim // heads

    def split(t: Tensor, n: int) -> Tensor:
        return t.view(batch, n, heads, head_dim).transpose(1, 2).reshape(batch * heads, n, head_dim)

    scores = split(q, nq) @ split(k, nk).transpose(1, 2) / math.sqrt(head_dim)
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    out = scores.softmax(-1) @ split(v, nk)
    out = out.view(batch, heads, nq, head_dim).transpose(1, 2).reshape(batch, nq, dim)
    return linear(out, sd, f"{name}.attn.out_proj")


def pixel_decoder(feats: list[Tensor], sd: SD, heads: int, points: int = 4,
                  strides: tuple[int, ...] = (4, 8, 16, 32)) -> tuple[Tensor, list[Tensor]]:  # fmt: skip
    """MSDeformAttnPixelDecoder.forward → (mask_feature, multi-scale features low → high resolution)."""
    p = "pixel_decoder"
    batch = feats[0].shape[0]
    num_inputs, levels = len(feats), 3
    inputs, positions, shapes, references = [], [], [], []
    for i in range(levels):
        level_idx = num_inputs - i - 1
        feat = feats[level_idx]
        h, w = feat.shape[-2:]
        projected = conv_module(feat, sd, f"{p}.input_convs.{i}")
        dim = projected.shape[1]
        pos = sine_positions(batch, h, w, dim // 2, feat.dtype) + sd[f"{p}.level_encoding.weight"][i].view(1, -1, 1, 1)
        inputs.append(projected.flatten(2).permute(0, 2, 1))
        positions.append(pos.flatten(2).permute(0, 2, 1))
        shapes.append((h, w))
        references.append(grid_points(h, w, strides[level_idx], feat.dtype))
    x = torch.cat(inputs, dim=1)
    pos = torch.cat(positions, dim=1)
    reference = torch.cat(references, dim=0)[None, :, None].repeat(batch, 1, levels, 1)
    layers = sorted({int(k.split(".")[3]) for k in sd if k.startswith(f"{p}.encoder.layers.")})
    for layer in layers:
        name = f"{p}.encoder.layers.{layer}"
        x = deformable_self_attention(x, pos, sd, f"{name}.self_attn", reference, shapes, heads, points)
        x = layer_norm(x, sd, f"{name}.norms.0")
        x = layer_norm(ffn(x, sd, f"{name}.ffn"), sd, f"{name}.norms.1")
    memory = x.permute(0, 2, 1)
    outs = [m.reshape(batch, -1, h, w) for m, (h, w) in zip(memory.split([h * w for h, w in shapes], dim=-1), shapes)]
    lateral = conv_module(feats[0], sd, f"{p}.lateral_convs.0")
    y = lateral + F.interpolate(outs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
    outs.append(conv_module(y, sd, f"{p}.output_convs.0", padding=1, relu=True))
    mask_feature = F.conv2d(outs[-1], sd[f"{p}.mask_feature.weight"], sd[f"{p}.mask_feature.bias"])
    return mask_feature, outs[:levels]


def forward_head(query: Tensor, mask_feature: Tensor, size: tuple[int, int], sd: SD, heads: int
                 ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Mask2FormerHead._forward_head: post-norm, class logits, mask logits, the next attention mask."""
    out = layer_norm(query, sd, "transformer_decoder.post_norm")
    cls = linear(out, sd, "cls_embed")
    embed = linear(F.relu(linear(F.relu(linear(out, sd, "mask_embed.0")), sd, "mask_embed.2")), sd, "mask_embed.4")
    mask = torch.einsum("bqc,bchw->bqhw", embed, mask_feature)
    attn = F.interpolate(mask, size, mode="bilinear", align_corners=False)
    attn = attn.flatten(2).unsqueeze(1).repeat(1, heads, 1, 1).flatten(0, 1)
    return cls, mask, (attn.sigmoid() < 0.5).detach()


def head_forward(feats: list[Tensor], queries: Tensor, sd: SD, heads: int) -> tuple[list[Tensor], list[Tensor]]:
    """The Rein/SpectralMoE Mask2Former head forward → per-stage class and mask logits."""
    batch = feats[0].shape[0]
    mask_feature, memories = pixel_decoder(feats, sd, heads)
    keys, key_positions = [], []
    for i, memory in enumerate(memories):
        h, w = memory.shape[-2:]
        keys.append(memory.flatten(2).permute(0, 2, 1) + sd["level_embed.weight"][i].view(1, 1, -1))
        positions = sine_positions(batch, h, w, memory.shape[1] // 2, memory.dtype)
        key_positions.append(positions.flatten(2).permute(0, 2, 1))
    query_pos = queries.expand(batch, -1, -1)
    if "querys2feat.weight" in sd:
        query = linear(query_pos, sd, "querys2feat")
    else:
        query = sd["query_feat.weight"].unsqueeze(0).repeat(batch, 1, 1)
    classes, masks = [], []
    cls, mask, attn = forward_head(query, mask_feature, memories[0].shape[-2:], sd, heads)
    classes.append(cls)
    masks.append(mask)
    layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("transformer_decoder.layers.")})
    for i in layers:
        level = i % len(memories)
        attn = attn.clone()
        attn[torch.where(attn.sum(-1) == attn.shape[-1])] = False  # all masked → attend everywhere
        name = f"transformer_decoder.layers.{i}"
        key = keys[level]
        query = query + multihead_attention(query + query_pos, key + key_positions[level], key, sd,
                                            f"{name}.cross_attn", heads, attn)  # fmt: skip
        query = layer_norm(query, sd, f"{name}.norms.0")
        query = query + multihead_attention(query + query_pos, query + query_pos, query, sd, f"{name}.self_attn", heads)
        query = layer_norm(query, sd, f"{name}.norms.1")
        query = layer_norm(ffn(query, sd, f"{name}.ffn"), sd, f"{name}.norms.2")
        cls, mask, attn = forward_head(query, mask_feature, memories[(i + 1) % len(memories)].shape[-2:], sd, heads)
        classes.append(cls)
        masks.append(mask)
    return classes, masks


def semantic_logits(cls: Tensor, mask: Tensor, size: tuple[int, int]) -> Tensor:
    """The head's ``predict`` on the last stage: [B, K, *size]."""
    mask = F.interpolate(mask, size=size, mode="bilinear", align_corners=False)
    return torch.einsum("bqc,bqhw->bchw", F.softmax(cls, dim=-1)[..., :-1], mask.sigmoid())
