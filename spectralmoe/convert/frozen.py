"""The frozen models of the authors' (and Rein's) runs, from their original-format weight files.

The authors' ``tools/test.py`` adds the frozen models to the adapter checkpoint from a separate
``--backbone`` file written by ``tools/convert_models/convert_dinov3_depthmoe.py``: the original DINOv3
checkpoint keys (``cls_token``, ``storage_tokens``, ``blocks.{i}.attn.qkv`` …, patch kernel possibly
re-made for 4 bands) plus the Prompt Depth Anything checkpoint under ``depth_anything.`` (its DINOv2
encoder as ``depth_anything.pretrained.*`` with the patch kernel resized 14→16 and the position table
resized to 32×32, and its DPT head ``depth_anything.depth_head.*``, which the adapter never uses).
Rein's converted file is the original DINOv2 layout at the top level. This module turns those layouts
into the transformers models our presets wrap, so they can be saved inside an export and loaded by
``build_backbone`` / ``build_depth_encoder`` like any local folder.

Architecture sizes come from our presets and are checked against the tensors; what only the tensors
know (patch size, position grid, input bands of the patch kernel) is read from them. Every key is
either converted or listed as deliberately unused; anything else is an error naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from transformers import DINOv3ViTConfig, DINOv3ViTModel, Dinov2Backbone, Dinov2Config, Dinov2Model

__all__ = [
    "FrozenModels",
    "PatchEmbedRule",
    "adapt_patch_kernel",
    "convert_frozen_file",
    "detect_visual_family",
    "dinov2_to_hf",
    "dinov3_to_hf",
    "find_depth_encoder",
]

PatchEmbedRule = Literal["cmod3", "wavelength"]
#: Prefixes under which a DINOv2 depth encoder appears: the authors' converted file, PromptDA's own
#: Lightning checkpoint, a bare PromptDA state dict.
DEPTH_ENCODER_PREFIXES = ("depth_anything.pretrained.", "pipeline.pretrained.", "pretrained.")
#: Parts of the depth checkpoints that the adapter never uses (DPT head, PromptDA's ImageNet buffers).
_DEPTH_UNUSED = re.compile(r"^(depth_anything\.|pipeline\.)?(depth_head\.|_mean$|_std$)")


@dataclass
class FrozenModels:
    """transformers models rebuilt from an original-format file, ready for ``save_pretrained``."""

    backbone: DINOv3ViTModel | Dinov2Model | None = None
    family: str | None = None  # "dinov3" | "dinov2"
    depth: Dinov2Backbone | None = None
    unused: list[str] = field(default_factory=list)  # keys deliberately not converted


class _Mapper:
    """Applies (regex → handler) rules to a state dict; every key must match one rule exactly once."""

    def __init__(self, source: Mapping[str, torch.Tensor], where: str) -> None:
        self.source, self.where = source, where
        self.out: dict[str, torch.Tensor] = {}
        self.used: set[str] = set()

    def put(self, key: str, value: torch.Tensor) -> None:
        if key in self.out:
            raise ValueError(f"{self.where}: {key} filled twice")
        self.out[key] = value.detach().clone().contiguous()

    def run(
        self, rules: Sequence[tuple[str, Callable[[re.Match[str], torch.Tensor], None]]]
    ) -> dict[str, torch.Tensor]:
        compiled = [(re.compile(pattern + "$"), handler) for pattern, handler in rules]
        unknown = []
        for key, value in self.source.items():
            if key in self.used:
                continue
            for pattern, handler in compiled:
                match = pattern.match(key)
                if match:
                    handler(match, value)
                    self.used.add(key)
                    break
            else:
                unknown.append(key)
        if unknown:
            raise KeyError(f"{self.where}: {len(unknown)} keys have no counterpart: {sorted(unknown)[:12]}")
        return self.out


def _rename(mapper: _Mapper, template: str) -> Callable[[re.Match[str], torch.Tensor], None]:
    return lambda m, t: mapper.put(m.expand(template), t)


def _split_qkv(mapper: _Mapper, prefix: str, bias_mask: Mapping[str, torch.Tensor], key_bias: bool):
    """Fused ``qkv`` rows [q; k; v] → ``q_proj``/``k_proj``/``v_proj``. A DINOv3 ``bias_mask`` (1 = kept,
    0 = masked) is applied first; a key bias that is masked (all zero) is dropped when the model has none."""

    def split(m: re.Match[str], t: torch.Tensor) -> None:
        layer, kind = m.group(1), m.group(2)
        if t.shape[0] % 3:
            raise ValueError(f"{mapper.where}: {m.group(0)} has {t.shape[0]} rows, not q, k, v")
        if kind == "bias":
            mask = bias_mask.get(layer)
            if mask is not None:
                if not torch.isfinite(mask).all():
                    raise ValueError(f"{mapper.where}: blocks.{layer}.attn.qkv.bias_mask is not set (NaN)")
                t = t * mask.to(t.dtype)
        q, k, v = t.chunk(3, dim=0)
        target = m.expand(prefix)
        mapper.put(f"{target}.q_proj.{kind}", q)
        mapper.put(f"{target}.v_proj.{kind}", v)
        if kind == "weight" or key_bias:
            mapper.put(f"{target}.k_proj.{kind}", k)
        elif k.abs().max() > 0:
            raise ValueError(
                f"{mapper.where}: blocks.{layer} has a non-zero key bias, but this model has none (key_bias=False)"
            )

    return split


# ------------------------------------------------------------------------------------------ DINOv3
def dinov3_to_hf(sd: Mapping[str, torch.Tensor], config: Mapping[str, Any], where: str) -> DINOv3ViTModel:
    """Original DINOv3 keys (facebookresearch/dinov3, as the authors' converter keeps them) → transformers.

    ``config`` is the preset's ``DINOv3ViTConfig`` fields; ``num_channels`` is taken from the patch kernel.
    The stored RoPE periods must equal what transformers computes from ``rope_theta``.
    """
    kernel = _need(sd, "patch_embed.proj.weight", where)
    cfg = DINOv3ViTConfig(**{**config, "num_channels": int(kernel.shape[1])})
    _check_sizes(where, kernel, _need(sd, "cls_token", where), sd, r"blocks\.(\d+)\.", cfg)
    if int(kernel.shape[-1]) != cfg.patch_size:
        raise ValueError(f"{where}: patch kernel {tuple(kernel.shape)}, the preset's DINOv3 has patch {cfg.patch_size}")
    for key in ("cls_norm.weight", "local_cls_norm.weight"):
        if key in sd:
            raise ValueError(f"{where}: {key} (untied cls norms) is not part of the DINOv3 ViT-L/B presets")
    masks = {m.group(1): v for k, v in sd.items() if (m := re.match(r"blocks\.(\d+)\.attn\.qkv\.bias_mask$", k))}
    mapper = _Mapper(sd, where)
    mapper.used.update(f"blocks.{layer}.attn.qkv.bias_mask" for layer in masks)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    expected_periods = cfg.rope_theta ** torch.arange(0, 1, 4 / head_dim, dtype=torch.float32)

    def periods(m: re.Match[str], t: torch.Tensor) -> None:
        if t.shape != expected_periods.shape or not torch.allclose(t.float(), expected_periods, rtol=1e-4):
            raise ValueError(f"{where}: rope_embed.periods differ from RoPE base {cfg.rope_theta} of the preset")

    L = r"blocks\.(\d+)\."
    out = mapper.run([
        (r"cls_token", _rename(mapper, "embeddings.cls_token")),
        (r"storage_tokens", _rename(mapper, "embeddings.register_tokens")),
        (r"mask_token", lambda m, t: mapper.put("embeddings.mask_token", t.reshape(1, 1, -1))),
        (r"patch_embed\.proj\.(weight|bias)", _rename(mapper, "embeddings.patch_embeddings.\\1")),
        (r"rope_embed\.periods", periods),
        (L + r"norm([12])\.(weight|bias)", _rename(mapper, "model.layer.\\1.norm\\2.\\3")),
        (L + r"attn\.qkv\.(weight|bias)", _split_qkv(mapper, "model.layer.\\1.attention", masks, cfg.key_bias)),
        (L + r"attn\.proj\.(weight|bias)", _rename(mapper, "model.layer.\\1.attention.o_proj.\\2")),
        (L + r"ls([12])\.gamma", _rename(mapper, "model.layer.\\1.layer_scale\\2.lambda1")),
        (L + r"mlp\.fc1\.(weight|bias)", _rename(mapper, "model.layer.\\1.mlp.up_proj.\\2")),
        (L + r"mlp\.fc2\.(weight|bias)", _rename(mapper, "model.layer.\\1.mlp.down_proj.\\2")),
        (r"norm\.(weight|bias)", _rename(mapper, "norm.\\1")),
    ])  # fmt: skip
    model = DINOv3ViTModel(cfg)
    _load_strict(model, out, where)
    return model.eval()


# ------------------------------------------------------------------------------------------ DINOv2
def dinov2_to_hf(
    sd: Mapping[str, torch.Tensor], config: Mapping[str, Any], where: str, *, backbone: bool = False
) -> Dinov2Model | Dinov2Backbone:
    """Original DINOv2 keys (facebookresearch/dinov2 as PromptDA, Depth Anything and Rein keep them) →
    transformers ``Dinov2Model`` (``backbone=True``: ``Dinov2Backbone``, the depth encoder).

    The patch size is the kernel's and the position grid the table's (converted files: 16 and 32×32),
    so ``image_size = grid · patch``; the rest of ``config`` (preset) is checked against the tensors.
    """
    kernel = _need(sd, "patch_embed.proj.weight", where)
    positions = _need(sd, "pos_embed", where)
    grid = int(round((positions.shape[1] - 1) ** 0.5))
    if grid * grid != positions.shape[1] - 1:
        raise ValueError(f"{where}: pos_embed {tuple(positions.shape)} is not a cls token plus a square grid")
    if "register_tokens" in sd:
        raise ValueError(f"{where}: DINOv2 with register tokens is not supported by this converter")
    patch = int(kernel.shape[-1])
    cfg = Dinov2Config(**{**config, "patch_size": patch, "image_size": grid * patch,
                          "num_channels": int(kernel.shape[1])})  # fmt: skip
    _check_sizes(where, kernel, _need(sd, "cls_token", where), sd, r"blocks\.(\d+)\.", cfg)
    mapper = _Mapper(sd, where)
    L = r"blocks\.(\d+)\."
    out = mapper.run([
        (r"cls_token", _rename(mapper, "embeddings.cls_token")),
        (r"pos_embed", _rename(mapper, "embeddings.position_embeddings")),
        (r"mask_token", lambda m, t: mapper.put("embeddings.mask_token", t.reshape(1, -1))),
        (r"patch_embed\.proj\.(weight|bias)", _rename(mapper, "embeddings.patch_embeddings.projection.\\1")),
        (L + r"norm([12])\.(weight|bias)", _rename(mapper, "encoder.layer.\\1.norm\\2.\\3")),
        (L + r"attn\.qkv\.(weight|bias)", _split_qkv(mapper, "encoder.layer.\\1.attention", {}, True)),
        (L + r"attn\.proj\.(weight|bias)", _rename(mapper, "encoder.layer.\\1.attention.o_proj.\\2")),
        (L + r"ls([12])\.gamma", _rename(mapper, "encoder.layer.\\1.layer_scale\\2.lambda1")),
        (L + r"mlp\.fc([12])\.(weight|bias)", _rename(mapper, "encoder.layer.\\1.mlp.fc\\2.\\3")),
        (r"norm\.(weight|bias)", _rename(mapper, "layernorm.\\1")),
    ])  # fmt: skip
    model = Dinov2Backbone(cfg) if backbone else Dinov2Model(cfg)
    _load_strict(model, out, where)
    return model.eval()


def _need(sd: Mapping[str, torch.Tensor], key: str, where: str) -> torch.Tensor:
    if key not in sd:
        raise KeyError(f"{where}: missing {key!r}")
    return sd[key]


def _check_sizes(where: str, kernel: torch.Tensor, cls_token: torch.Tensor, sd: Mapping[str, torch.Tensor],
                 block_pattern: str, cfg: Any) -> None:  # fmt: skip
    width = int(cls_token.shape[-1])
    layers = len({m.group(1) for k in sd if (m := re.match(block_pattern, k))})
    if (width, layers) != (cfg.hidden_size, cfg.num_hidden_layers) or kernel.shape[0] != width:
        raise ValueError(
            f"{where}: the file holds a ViT of width {width} with {layers} blocks, the preset needs "
            f"{cfg.hidden_size} and {cfg.num_hidden_layers}"
        )


def _load_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and v.shape != own[k].shape]  # fmt: skip
    if missing or unexpected or wrong:
        raise ValueError(f"{where}: converted weights do not fit {type(model).__name__}: missing {missing[:8]}, "
                         f"unexpected {unexpected[:8]}, shape {wrong[:8]}")  # fmt: skip
    model.load_state_dict(dict(state), strict=True)


# ------------------------------------------------------------------------------------ patch kernel
def adapt_patch_kernel(sd: dict[str, torch.Tensor], num_bands: int, rule: PatchEmbedRule | None, where: str) -> None:
    """Give the visual patch kernel one channel per input band, in place, by an explicit rule.

    A kernel that already has ``num_bands`` channels is what the authors ran and is kept. A 3-channel
    kernel for another band count is what their released converter writes (its active "RGB" variant);
    loaded into their 4-band model it did not fit and mmengine left that layer at its random init, which
    no one can reproduce — so a rule must be chosen: ``"cmod3"`` (their commented "MSI" converter:
    channel c copies RGB channel c mod 3, NIR←R, R←G, G←B, B←R) or ``"wavelength"`` (ours: by band
    wavelength, done when the backbone is built).
    """
    key = "patch_embed.proj.weight"
    kernel = sd[key]
    channels = int(kernel.shape[1])
    if channels == num_bands:
        return
    if channels != 3:
        raise ValueError(f"{where}: patch kernel has {channels} input channels but the model has {num_bands} bands")
    if rule is None:
        raise ValueError(
            f"{where}: the patch kernel has 3 (RGB) input channels but the model has {num_bands} bands. The authors' "
            "4-band model could not load such a kernel (it stayed at its random init), so choose how to make one: "
            "--patch-embed cmod3 (their commented MSI converter: band c takes RGB channel c mod 3) or "
            "--patch-embed wavelength (by band wavelength, this package's rule)"
        )
    if rule == "cmod3":
        sd[key] = kernel[:, [c % 3 for c in range(num_bands)]].clone()
    elif rule != "wavelength":
        raise ValueError(f"patch embedding rule must be 'cmod3' or 'wavelength', got {rule!r}")


# ------------------------------------------------------------------------------------------ files
def find_depth_encoder(sd: Mapping[str, torch.Tensor]) -> tuple[str | None, dict[str, torch.Tensor]]:
    """The DINOv2 encoder of a depth checkpoint: (prefix, its tensors without the prefix)."""
    found = [p for p in DEPTH_ENCODER_PREFIXES if any(k.startswith(p) for k in sd)]
    if not found:
        return None, {}
    prefix = found[0]  # the longest (most specific) prefix comes first
    return prefix, {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def detect_visual_family(sd: Mapping[str, torch.Tensor]) -> str | None:
    """"dinov3" / "dinov2" for the visual backbone keys of an original-format file, None when it has none."""
    keys = {k[len("backbone."):] if k.startswith("backbone.") else k for k in sd}
    visual = {k for k in keys if not k.startswith(("depth_anything.", "pipeline.", "pretrained.", "depth_head."))
              and not _DEPTH_UNUSED.match(k)}  # fmt: skip
    if "storage_tokens" in visual or "rope_embed.periods" in visual:
        return "dinov3"
    if "pos_embed" in visual:
        return "dinov2"
    return None


def convert_frozen_file(
    sd: Mapping[str, torch.Tensor],
    where: str,
    *,
    backbone_config: Mapping[str, Any] | None,
    backbone_family: str | None,
    depth_config: Mapping[str, Any] | None,
    num_bands: int,
    patch_embed: PatchEmbedRule | None = None,
) -> FrozenModels:
    """Split an original-format file into its visual backbone and depth encoder and convert both.

    ``backbone_config``/``depth_config``: the preset fields of the models wanted (None: that part must
    not be in the file, or is not wanted). The visual part is recognised by its keys (DINOv3:
    ``storage_tokens``; DINOv2: ``pos_embed``) and must be of ``backbone_family``.
    """
    if sd and all(k.startswith("backbone.") for k in sd):
        sd = {k[len("backbone."):]: v for k, v in sd.items()}
    result = FrozenModels()
    result.unused = sorted(k for k in sd if _DEPTH_UNUSED.match(k))
    prefix, depth_sd = find_depth_encoder(sd)
    rest = {k: v for k, v in sd.items() if k not in result.unused and (prefix is None or not k.startswith(prefix))}
    if depth_sd:
        if depth_config is None:
            raise ValueError(f"{where}: holds a depth encoder ({prefix}*) but this model uses no depth model")
        result.depth = dinov2_to_hf(depth_sd, depth_config, f"{where} [{prefix}*]", backbone=True)
    if rest:
        family = "dinov3" if "storage_tokens" in rest or "rope_embed.periods" in rest else "dinov2"
        if backbone_config is None:
            raise ValueError(f"{where}: holds a visual backbone but none is wanted from it: {sorted(rest)[:5]}")
        if backbone_family is not None and family != backbone_family:
            raise ValueError(f"{where}: holds a {family} backbone but the model's backbone preset is {backbone_family}")
        visual = dict(rest)
        adapt_patch_kernel(visual, num_bands, patch_embed, where)
        convert = dinov3_to_hf if family == "dinov3" else dinov2_to_hf
        result.backbone, result.family = convert(visual, backbone_config, where), family
    if result.backbone is None and result.depth is None:
        raise ValueError(f"{where}: neither a visual backbone nor a depth encoder found")
    return result
