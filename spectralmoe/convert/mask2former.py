"""mmdet/mmseg Mask2Former head weights (``decode_head.*``) → our :class:`Mask2FormerHead`.

The authors' and Rein's heads are mmseg ``Mask2FormerHead`` subclasses built from mmdet 3.x / mmcv
modules; ours is made of transformers' Mask2Former modules. Both compute the same function
(CHECKPOINT_IMPORT.md §3; ``tests/convert/test_mask2former_import.py`` checks it against a plain
re-statement of the mmdet forward). The weights differ only in names, except:

* the decoder self-attention is one fused ``in_proj`` in mmcv and three ``q/k/v_proj`` here: rows
  ``[0:D]``, ``[D:2D]``, ``[2D:3D]``;
* **the decoder norms**: ``Mask2FormerTransformerDecoderLayer`` applies ``norms[0]`` after the
  cross-attention, ``norms[1]`` after the self-attention, ``norms[2]`` after the FFN — so ``norms.0`` is
  our ``cross_attn_layer_norm`` (the parent DETR layer uses the other order: the one trap).

Every hyper-parameter is read from the tensor shapes (:func:`infer_head_spec`), and every source key
must be used exactly once (:func:`convert_head_state_dict`), so a layout we do not know fails loudly.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

import torch

__all__ = [
    "EXPECTED_UNFILLED",
    "HeadSpec",
    "convert_head_state_dict",
    "infer_head_spec",
    "load_head_weights",
]

#: transformers' deformable attention has 3 levels and 4 sampling points hard-coded.
HF_LEVELS, HF_POINTS = 3, 4
#: Destination entries no mmdet key fills: the learned positional queries (replaced by the adapter's
#: queries, deleted from the Rein/SpectralMoE head) and the loss' no-object weight buffer (derived from
#: ``no_object_weight`` = 0.1, mmseg's class_weight last entry). With ``replace_query_feat`` the learned
#: content queries are unused too (``querys2feat`` replaces them).
EXPECTED_UNFILLED = ("transformer_module.queries_embedder.weight", "criterion.empty_weight")
_UNFILLED_WITH_REPLACE = ("transformer_module.queries_features.weight",)


@dataclass(frozen=True)
class HeadSpec:
    """Sizes of a Mask2Former head, read from its mmdet tensors (``Mask2FormerHead`` arguments)."""

    num_classes: int
    in_channels: tuple[int, int, int, int]
    hidden_dim: int
    num_queries: int | None  # None with replace_query_feat (then the adapter's token count decides)
    decoder_layers: int
    encoder_layers: int
    num_heads: int
    dim_feedforward: int
    encoder_feedforward_dim: int
    replace_query_feat: bool

    def head_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``Mask2FormerHead`` (``num_classes``/``in_channels`` excluded)."""
        out = asdict(self)
        for key in ("num_classes", "in_channels"):
            out.pop(key)
        if out["num_queries"] is None:
            out.pop("num_queries")
        return out


def _need(sd: Mapping[str, torch.Tensor], key: str, where: str) -> torch.Tensor:
    if key not in sd:
        raise KeyError(f"{where}: missing {key!r}; is this an mmseg Mask2Former head?")
    return sd[key]


def _indices(sd: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    regex = re.compile(pattern)
    found = sorted({int(m.group(1)) for key in sd if (m := regex.match(key))})
    if found != list(range(len(found))):
        raise ValueError(f"layer indices matching {pattern!r} are not 0..n-1: {found}")
    return found


def infer_head_spec(sd: Mapping[str, torch.Tensor], where: str = "decode_head") -> HeadSpec:
    """Sizes from the tensors of a head state dict whose keys have the ``decode_head.`` prefix removed.

    The attention heads come from the deformable attention (``attention_weights`` rows = heads · 3 levels
    · 4 points); the decoder is assumed to use the same count, as every released config does (its fused
    projections do not reveal it; a different count would not show in any shape).
    """
    cls = _need(sd, "cls_embed.weight", where)
    hidden = int(_need(sd, "mask_embed.0.weight", where).shape[0])
    levels = int(_need(sd, "pixel_decoder.level_encoding.weight", where).shape[0])
    if levels != HF_LEVELS:
        raise ValueError(f"{where}: {levels} pixel-decoder levels; only {HF_LEVELS} are supported (transformers)")
    input_convs = _indices(sd, r"pixel_decoder\.input_convs\.(\d+)\.conv\.weight$")
    if len(input_convs) != HF_LEVELS:
        raise ValueError(f"{where}: {len(input_convs)} input convs, expected {HF_LEVELS}")
    if _indices(sd, r"pixel_decoder\.lateral_convs\.(\d+)\.conv\.weight$") != [0]:
        raise ValueError(f"{where}: expected exactly one FPN lateral conv (4 input levels)")
    # input_convs.i reads feature 3 - i (stride 32, 16, 8); lateral_convs.0 reads feature 0 (stride 4).
    stride_channels = [int(sd[f"pixel_decoder.input_convs.{i}.conv.weight"].shape[1]) for i in range(3)]
    lateral = int(sd["pixel_decoder.lateral_convs.0.conv.weight"].shape[1])
    in_channels = (lateral, stride_channels[2], stride_channels[1], stride_channels[0])
    encoder = _indices(sd, r"pixel_decoder\.encoder\.layers\.(\d+)\.")
    decoder = _indices(sd, r"transformer_decoder\.layers\.(\d+)\.")
    if not encoder or not decoder:
        raise ValueError(f"{where}: no pixel-decoder encoder layers or no transformer decoder layers")
    weights_rows = int(_need(sd, "pixel_decoder.encoder.layers.0.self_attn.attention_weights.weight", where).shape[0])
    offsets_rows = int(_need(sd, "pixel_decoder.encoder.layers.0.self_attn.sampling_offsets.weight", where).shape[0])
    if weights_rows % (HF_LEVELS * HF_POINTS) or offsets_rows != 2 * weights_rows:
        raise ValueError(
            f"{where}: deformable attention with {weights_rows} attention weights and {offsets_rows} offsets is not "
            f"heads × {HF_LEVELS} levels × {HF_POINTS} points (the only layout transformers implements)"
        )
    heads = weights_rows // (HF_LEVELS * HF_POINTS)
    replace = "querys2feat.weight" in sd
    if replace and "query_feat.weight" in sd:
        raise ValueError(f"{where}: holds both query_feat and querys2feat")
    num_queries = None if replace else int(_need(sd, "query_feat.weight", where).shape[0])
    return HeadSpec(
        num_classes=int(cls.shape[0]) - 1,
        in_channels=in_channels,  # type: ignore[arg-type]
        hidden_dim=hidden,
        num_queries=num_queries,
        decoder_layers=len(decoder),
        encoder_layers=len(encoder),
        num_heads=heads,
        dim_feedforward=int(_need(sd, "transformer_decoder.layers.0.ffn.layers.0.0.weight", where).shape[0]),
        encoder_feedforward_dim=int(_need(sd, "pixel_decoder.encoder.layers.0.ffn.layers.0.0.weight", where).shape[0]),
        replace_query_feat=replace,
    )


# ------------------------------------------------------------------------------------------ mapping
_Rule = tuple[re.Pattern[str], Callable[[re.Match[str], torch.Tensor], dict[str, torch.Tensor]]]


def _rename(template: str) -> Callable[[re.Match[str], torch.Tensor], dict[str, torch.Tensor]]:
    return lambda m, t: {m.expand(template): t}


def _split_qkv(template: str) -> Callable[[re.Match[str], torch.Tensor], dict[str, torch.Tensor]]:
    """Fused ``in_proj`` rows [q; k; v] → three projections (D read from the tensor, never assumed)."""

    def split(m: re.Match[str], t: torch.Tensor) -> dict[str, torch.Tensor]:
        if t.shape[0] % 3:
            raise ValueError(f"{m.group(0)}: fused q/k/v with {t.shape[0]} rows (not a multiple of 3)")
        q, k, v = t.chunk(3, dim=0)
        return {m.expand(template.replace("{p}", p)): x.clone() for p, x in (("q", q), ("k", k), ("v", v))}

    return split


_ENC = r"pixel_decoder\.encoder\.layers\.(\d+)\."
_DEC = r"transformer_decoder\.layers\.(\d+)\."
_WB = r"(weight|bias)"
_PD, _TD = "pixel_decoder.encoder.layers.\\1.", "transformer_module.decoder.layers.\\1."
#: One rule per source key family; the first that matches a key converts it (CHECKPOINT_IMPORT.md §2).
_RULES: list[_Rule] = [
    (re.compile(rf"pixel_decoder\.input_convs\.(\d+)\.conv\.{_WB}$"),
     _rename("pixel_decoder.input_projections.\\1.0.\\2")),
    (re.compile(rf"pixel_decoder\.input_convs\.(\d+)\.gn\.{_WB}$"),
     _rename("pixel_decoder.input_projections.\\1.1.\\2")),
    (re.compile(r"pixel_decoder\.level_encoding\.weight$"), _rename("pixel_decoder.level_embed")),
    (re.compile(rf"{_ENC}self_attn\.(sampling_offsets|attention_weights|value_proj|output_proj)\.{_WB}$"),
     _rename(_PD + "self_attn.\\2.\\3")),
    (re.compile(rf"{_ENC}ffn\.layers\.0\.0\.{_WB}$"), _rename(_PD + "fc1.\\2")),
    (re.compile(rf"{_ENC}ffn\.layers\.1\.{_WB}$"), _rename(_PD + "fc2.\\2")),
    (re.compile(rf"{_ENC}norms\.0\.{_WB}$"), _rename(_PD + "self_attn_layer_norm.\\2")),
    (re.compile(rf"{_ENC}norms\.1\.{_WB}$"), _rename(_PD + "final_layer_norm.\\2")),
    (re.compile(r"pixel_decoder\.lateral_convs\.0\.conv\.weight$"), _rename("pixel_decoder.adapter_1.0.weight")),
    (re.compile(rf"pixel_decoder\.lateral_convs\.0\.gn\.{_WB}$"), _rename("pixel_decoder.adapter_1.1.\\1")),
    (re.compile(r"pixel_decoder\.output_convs\.0\.conv\.weight$"), _rename("pixel_decoder.layer_1.0.weight")),
    (re.compile(rf"pixel_decoder\.output_convs\.0\.gn\.{_WB}$"), _rename("pixel_decoder.layer_1.1.\\1")),
    (re.compile(rf"pixel_decoder\.mask_feature\.{_WB}$"), _rename("pixel_decoder.mask_projection.\\1")),
    (re.compile(rf"{_DEC}cross_attn\.attn\.in_proj_{_WB}$"), _rename(_TD + "cross_attn.in_proj_\\2")),
    (re.compile(rf"{_DEC}cross_attn\.attn\.out_proj\.{_WB}$"), _rename(_TD + "cross_attn.out_proj.\\2")),
    (re.compile(rf"{_DEC}self_attn\.attn\.in_proj_{_WB}$"), _split_qkv(_TD + "self_attn.{p}_proj.\\2")),
    (re.compile(rf"{_DEC}self_attn\.attn\.out_proj\.{_WB}$"), _rename(_TD + "self_attn.out_proj.\\2")),
    (re.compile(rf"{_DEC}norms\.0\.{_WB}$"), _rename(_TD + "cross_attn_layer_norm.\\2")),  # after cross-attn
    (re.compile(rf"{_DEC}norms\.1\.{_WB}$"), _rename(_TD + "self_attn_layer_norm.\\2")),  # after self-attn
    (re.compile(rf"{_DEC}norms\.2\.{_WB}$"), _rename(_TD + "final_layer_norm.\\2")),
    (re.compile(rf"{_DEC}ffn\.layers\.0\.0\.{_WB}$"), _rename(_TD + "fc1.\\2")),
    (re.compile(rf"{_DEC}ffn\.layers\.1\.{_WB}$"), _rename(_TD + "fc2.\\2")),
    (re.compile(rf"transformer_decoder\.post_norm\.{_WB}$"), _rename("transformer_module.decoder.layernorm.\\1")),
    (re.compile(rf"mask_embed\.0\.{_WB}$"), _rename("transformer_module.decoder.mask_predictor.mask_embedder.0.0.\\1")),
    (re.compile(rf"mask_embed\.2\.{_WB}$"), _rename("transformer_module.decoder.mask_predictor.mask_embedder.1.0.\\1")),
    (re.compile(rf"mask_embed\.4\.{_WB}$"), _rename("transformer_module.decoder.mask_predictor.mask_embedder.2.0.\\1")),
    (re.compile(r"level_embed\.weight$"), _rename("transformer_module.level_embed.weight")),
    (re.compile(r"query_feat\.weight$"), _rename("transformer_module.queries_features.weight")),
    (re.compile(rf"querys2feat\.{_WB}$"), _rename("query_feat_proj.\\1")),
    (re.compile(rf"cls_embed\.{_WB}$"), _rename("class_predictor.\\1")),
]  # fmt: skip


def convert_head_state_dict(
    sd: Mapping[str, torch.Tensor], where: str = "decode_head"
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """mmdet-named head tensors (``decode_head.`` removed) → our head's state-dict names.

    Returns the converted tensors and, per source key, the destination keys it filled (so callers and
    tests can check that every source key was used once). A source key no rule knows (e.g. DepthForge's
    ``DQCM.*`` query-correction module, or a ``query_embed`` that a stock mmseg head keeps) raises
    ``KeyError`` naming it; two source keys filling one destination raise ``ValueError``.
    """
    out: dict[str, torch.Tensor] = {}
    used: dict[str, list[str]] = {}
    unknown: list[str] = []
    for key, tensor in sd.items():
        for pattern, convert in _RULES:
            match = pattern.match(key)
            if match:
                produced = convert(match, tensor)
                clash = sorted(set(produced) & set(out))
                if clash:
                    raise ValueError(f"{where}.{key}: fills {clash} a second time")
                out.update(produced)
                used[key] = sorted(produced)
                break
        else:
            unknown.append(key)
    if unknown:
        hint = ""
        if any(k.startswith("DQCM.") for k in unknown):
            hint = " (DepthForge's dynamic query correction module, not implemented here)"
        elif any(k.startswith("query_embed.") for k in unknown):
            hint = " (a learned positional query: a stock Mask2Former head, not the Rein/SpectralMoE one)"
        shown = ", ".join(f"{where}.{k}" for k in sorted(unknown)[:12])
        raise KeyError(f"{len(unknown)} head keys have no counterpart in our Mask2Former head{hint}: {shown}")
    return out, used


def load_head_weights(head: torch.nn.Module, converted: Mapping[str, torch.Tensor], replace_query_feat: bool) -> None:
    """Copy converted tensors into ``head`` strictly: shapes must match, and the only entries left
    unfilled are :data:`EXPECTED_UNFILLED` (plus the unused content queries with ``replace_query_feat``)."""
    state = head.state_dict()
    unexpected = sorted(set(converted) - set(state))
    allowed = set(EXPECTED_UNFILLED) | (set(_UNFILLED_WITH_REPLACE) if replace_query_feat else set())
    missing = sorted(set(state) - set(converted) - allowed)
    wrong = [f"{k}: checkpoint {tuple(v.shape)} vs head {tuple(state[k].shape)}"
             for k, v in converted.items() if k in state and tuple(v.shape) != tuple(state[k].shape)]  # fmt: skip
    if unexpected or missing or wrong:
        raise ValueError(
            "the converted head weights do not fit the Mask2Former head:"
            f"\n  not in the head: {unexpected[:12]}\n  not in the checkpoint: {missing[:12]}\n  shape: {wrong[:12]}"
        )
    with torch.no_grad():
        for key, value in converted.items():
            state[key].copy_(value.to(state[key].dtype))
