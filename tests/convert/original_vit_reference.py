"""Plain re-statements of the ORIGINAL DINOv3 and DINOv2 forwards, taking their original key names.

Written from the code the authors run (SpectralMoE-main ``models/backbones/dino_v3.py`` and
``dinov3_layers/{attention,block,rope_position_encoding,ffn_layers}.py``: patch conv, [cls + 0·mask
token, storage tokens, patches], blocks ``x + ls1·attn(norm1 x)``, ``x + ls2·mlp(norm2 x)``, RoPE on the
patch tokens' q and k with "separate" coordinates in [-1, 1], periods ``base^(2i/(D_head/2))``, sin/cos
tiled, rotate-half; the qkv bias multiplied by ``bias_mask``) and from facebookresearch/dinov2 as
PromptDA / Depth Anything vendor it (``prepare_tokens_with_masks``: patch conv, cls, + pos_embed;
blocks as above without RoPE). They also build random original-format state dicts for tests.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _lin(x: Tensor, sd: Mapping[str, Tensor], name: str) -> Tensor:
    return F.linear(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"))


def _ln(x: Tensor, sd: Mapping[str, Tensor], name: str, eps: float) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps)


def dinov3_rope(height: int, width: int, periods: Tensor) -> tuple[Tensor, Tensor]:
    coords_h = torch.arange(0.5, height, dtype=torch.float32) / height
    coords_w = torch.arange(0.5, width, dtype=torch.float32) / width
    coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1).flatten(0, 1)
    coords = 2.0 * coords - 1.0
    angles = 2 * math.pi * coords[:, :, None] / periods[None, None, :]
    angles = angles.flatten(1, 2).tile(2)
    return torch.sin(angles), torch.cos(angles)


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def _attention(x: Tensor, sd: Mapping[str, Tensor], name: str, heads: int,
               rope: tuple[Tensor, Tensor] | None) -> Tensor:  # fmt: skip
    batch, num, dim = x.shape
    bias = sd.get(f"{name}.qkv.bias")
    if bias is not None and f"{name}.qkv.bias_mask" in sd:
        bias = bias * sd[f"{name}.qkv.bias_mask"]
    qkv = F.linear(x, sd[f"{name}.qkv.weight"], bias).reshape(batch, num, 3, heads, dim // heads)
    q, k, v = (t.transpose(1, 2) for t in torch.unbind(qkv, 2))
    if rope is not None:
        sin, cos = rope
        prefix = num - sin.shape[-2]
        q = torch.cat([q[:, :, :prefix], q[:, :, prefix:] * cos + _rotate_half(q[:, :, prefix:]) * sin], dim=2)
        k = torch.cat([k[:, :, :prefix], k[:, :, prefix:] * cos + _rotate_half(k[:, :, prefix:]) * sin], dim=2)
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, num, dim)
    return _lin(out, sd, f"{name}.proj")


def _block(x: Tensor, sd: Mapping[str, Tensor], i: int, heads: int, eps: float, rope) -> Tensor:
    p = f"blocks.{i}"
    x = x + sd[f"{p}.ls1.gamma"] * _attention(_ln(x, sd, f"{p}.norm1", eps), sd, f"{p}.attn", heads, rope)
    hidden = F.gelu(_lin(_ln(x, sd, f"{p}.norm2", eps), sd, f"{p}.mlp.fc1"))
    return x + sd[f"{p}.ls2.gamma"] * _lin(hidden, sd, f"{p}.mlp.fc2")


def _num_blocks(sd: Mapping[str, Tensor]) -> int:
    return len({k.split(".")[1] for k in sd if k.startswith("blocks.")})


def dinov3_blocks(sd: Mapping[str, Tensor], image: Tensor, heads: int, eps: float = 1e-5) -> list[Tensor]:
    """Token sequence [cls, storage…, patches] after every block (raw residual stream)."""
    patches = F.conv2d(image, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=sd[
        "patch_embed.proj.weight"].shape[-1])  # fmt: skip
    batch, _, h, w = patches.shape
    x = patches.flatten(2).transpose(1, 2)
    cls = sd["cls_token"] + 0 * sd["mask_token"]
    x = torch.cat([cls.expand(batch, -1, -1), sd["storage_tokens"].expand(batch, -1, -1), x], dim=1)
    rope = dinov3_rope(h, w, sd["rope_embed.periods"])
    out = []
    for i in range(_num_blocks(sd)):
        x = _block(x, sd, i, heads, eps, rope)
        out.append(x)
    return out


def dinov2_blocks(sd: Mapping[str, Tensor], image: Tensor, heads: int, eps: float = 1e-6) -> list[Tensor]:
    """[cls, patches] after every block, for an image whose patch grid equals the position table's."""
    kernel = sd["patch_embed.proj.weight"]
    patches = F.conv2d(image, kernel, sd["patch_embed.proj.bias"], stride=kernel.shape[-1])
    batch = patches.shape[0]
    x = patches.flatten(2).transpose(1, 2)
    assert x.shape[1] + 1 == sd["pos_embed"].shape[1], "reference: grid must equal the position table"
    x = torch.cat([sd["cls_token"].expand(batch, -1, -1), x], dim=1) + sd["pos_embed"]
    out = []
    for i in range(_num_blocks(sd)):
        x = _block(x, sd, i, heads, eps, None)
        out.append(x)
    return out


# ------------------------------------------------------------------------- random original weights
def _vit_blocks(g: torch.Generator, dim: int, layers: int, hidden: int) -> dict[str, Tensor]:
    def rand(*shape: int, scale: float = 0.1) -> Tensor:
        return torch.randn(*shape, generator=g) * scale

    sd: dict[str, Tensor] = {}
    for i in range(layers):
        p = f"blocks.{i}"
        for n in ("norm1", "norm2"):
            sd[f"{p}.{n}.weight"], sd[f"{p}.{n}.bias"] = 1 + rand(dim), rand(dim)
        sd[f"{p}.attn.qkv.weight"], sd[f"{p}.attn.qkv.bias"] = rand(3 * dim, dim), rand(3 * dim)
        sd[f"{p}.attn.proj.weight"], sd[f"{p}.attn.proj.bias"] = rand(dim, dim), rand(dim)
        sd[f"{p}.ls1.gamma"], sd[f"{p}.ls2.gamma"] = 0.5 + rand(dim), 0.5 + rand(dim)
        sd[f"{p}.mlp.fc1.weight"], sd[f"{p}.mlp.fc1.bias"] = rand(hidden, dim), rand(hidden)
        sd[f"{p}.mlp.fc2.weight"], sd[f"{p}.mlp.fc2.bias"] = rand(dim, hidden), rand(dim)
    sd["norm.weight"], sd["norm.bias"] = 1 + rand(dim), rand(dim)
    return sd


def random_dinov3(dim: int, layers: int, heads: int, hidden: int, bands: int = 3, registers: int = 4,
                  rope_base: float = 100.0, seed: int = 0) -> dict[str, Tensor]:  # fmt: skip
    """An original-format DINOv3 state dict (``mask_k_bias``: the key third of the qkv bias is masked)."""
    g = torch.Generator().manual_seed(seed)
    sd = _vit_blocks(g, dim, layers, hidden)
    for i in range(layers):
        mask = torch.ones(3 * dim)
        mask[dim:2 * dim] = 0
        sd[f"blocks.{i}.attn.qkv.bias_mask"] = mask
    head_dim = dim // heads
    sd.update({
        "cls_token": torch.randn(1, 1, dim, generator=g), "mask_token": torch.zeros(1, dim),
        "storage_tokens": torch.randn(1, registers, dim, generator=g),
        "patch_embed.proj.weight": torch.randn(dim, bands, 16, 16, generator=g) * 0.02,
        "patch_embed.proj.bias": torch.randn(dim, generator=g) * 0.1,
        "rope_embed.periods": rope_base ** (2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2)),
    })  # fmt: skip
    return sd


def random_dinov2(dim: int, layers: int, hidden: int, grid: int, patch: int = 16, seed: int = 1) -> dict[str, Tensor]:
    """An original-format DINOv2 state dict with a ``grid × grid`` position table."""
    g = torch.Generator().manual_seed(seed)
    sd = _vit_blocks(g, dim, layers, hidden)
    sd.update({
        "cls_token": torch.randn(1, 1, dim, generator=g), "mask_token": torch.zeros(1, dim),
        "pos_embed": torch.randn(1, 1 + grid * grid, dim, generator=g) * 0.5,
        "patch_embed.proj.weight": torch.randn(dim, 3, patch, patch, generator=g) * 0.02,
        "patch_embed.proj.bias": torch.randn(dim, generator=g) * 0.1,
    })  # fmt: skip
    return sd
