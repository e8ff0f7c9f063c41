"""mmdet/mmseg Mask2Former head weights → our head: the same function, key by key.

A random mmdet-named state dict for a tiny configuration with odd, non-square feature maps goes
through the importer into ``Mask2FormerHead``; every stage's class and mask logits and the semantic
map must equal a plain re-statement of the mmdet forward (``mmdet_m2f_reference``, written from the
mmdet/mmcv sources). Wrong mappings (the decoder norm order above all) must make the comparison fail.
"""

from __future__ import annotations

import pytest
import torch

from spectralmoe.convert.mask2former import (
    EXPECTED_UNFILLED,
    convert_head_state_dict,
    infer_head_spec,
    load_head_weights,
)
from spectralmoe.models.heads.mask2former import Mask2FormerHead
from tests.convert import mmdet_m2f_reference as ref

D, HEADS, ENC, DEC, Q, K = 64, 4, 2, 4, 7, 5
IN_CHANNELS = (16, 32, 24, 32)  # strides 8 and 32 alike: a swapped level order must show in values
SIZES = ((20, 28), (10, 14), (5, 7), (3, 4))  # strides 4, 8, 16, 32: odd, not square, not exact halves
ENC_FFN, DEC_FFN = 48, 96


def random_mmdet_head(replace_query_feat: bool = False, seed: int = 0, *, dim: int = D, heads: int = HEADS,
                      enc: int = ENC, dec: int = DEC, queries: int = Q, classes: int = K,
                      in_channels: tuple[int, ...] = IN_CHANNELS, enc_ffn: int = ENC_FFN,
                      dec_ffn: int = DEC_FFN) -> dict[str, torch.Tensor]:  # fmt: skip
    """mmdet names and shapes (CHECKPOINT_IMPORT.md §1) with non-trivial norms and far-reaching offsets."""
    D, HEADS, ENC, DEC, Q, K, IN_CHANNELS = dim, heads, enc, dec, queries, classes, in_channels  # noqa: N806
    ENC_FFN, DEC_FFN = enc_ffn, dec_ffn  # noqa: N806
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.3) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    def norm(prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": 1 + rand(D, scale=0.2), f"{prefix}.bias": rand(D, scale=0.2)}

    sd: dict[str, torch.Tensor] = {}
    for i in range(3):  # input_convs.i reads feature 3 - i
        sd[f"pixel_decoder.input_convs.{i}.conv.weight"] = rand(D, IN_CHANNELS[3 - i], 1, 1)
        sd[f"pixel_decoder.input_convs.{i}.conv.bias"] = rand(D)
        sd.update({k.replace("X", f"{i}"): v for k, v in norm("pixel_decoder.input_convs.X.gn").items()})
    for layer in range(ENC):
        p = f"pixel_decoder.encoder.layers.{layer}"
        sd[f"{p}.self_attn.sampling_offsets.weight"] = rand(HEADS * 3 * 4 * 2, D, scale=0.1)
        sd[f"{p}.self_attn.sampling_offsets.bias"] = rand(HEADS * 3 * 4 * 2, scale=2.0)  # samples cross pixels
        sd[f"{p}.self_attn.attention_weights.weight"] = rand(HEADS * 3 * 4, D)
        sd[f"{p}.self_attn.attention_weights.bias"] = rand(HEADS * 3 * 4)
        for name in ("value_proj", "output_proj"):
            sd[f"{p}.self_attn.{name}.weight"] = rand(D, D, scale=0.15)
            sd[f"{p}.self_attn.{name}.bias"] = rand(D)
        sd[f"{p}.ffn.layers.0.0.weight"], sd[f"{p}.ffn.layers.0.0.bias"] = rand(ENC_FFN, D, scale=0.15), rand(ENC_FFN)
        sd[f"{p}.ffn.layers.1.weight"], sd[f"{p}.ffn.layers.1.bias"] = rand(D, ENC_FFN, scale=0.15), rand(D)
        sd.update(norm(f"{p}.norms.0"))
        sd.update(norm(f"{p}.norms.1"))
    sd["pixel_decoder.level_encoding.weight"] = rand(3, D)
    sd["pixel_decoder.lateral_convs.0.conv.weight"] = rand(D, IN_CHANNELS[0], 1, 1)
    sd.update(norm("pixel_decoder.lateral_convs.0.gn"))
    sd["pixel_decoder.output_convs.0.conv.weight"] = rand(D, D, 3, 3, scale=0.05)
    sd.update(norm("pixel_decoder.output_convs.0.gn"))
    sd["pixel_decoder.mask_feature.weight"] = rand(D, D, 1, 1, scale=0.1)
    sd["pixel_decoder.mask_feature.bias"] = rand(D)
    for layer in range(DEC):
        p = f"transformer_decoder.layers.{layer}"
        for attn in ("self_attn", "cross_attn"):
            sd[f"{p}.{attn}.attn.in_proj_weight"] = rand(3 * D, D, scale=0.15)
            sd[f"{p}.{attn}.attn.in_proj_bias"] = rand(3 * D)
            sd[f"{p}.{attn}.attn.out_proj.weight"] = rand(D, D, scale=0.15)
            sd[f"{p}.{attn}.attn.out_proj.bias"] = rand(D)
        sd[f"{p}.ffn.layers.0.0.weight"], sd[f"{p}.ffn.layers.0.0.bias"] = rand(DEC_FFN, D, scale=0.15), rand(DEC_FFN)
        sd[f"{p}.ffn.layers.1.weight"], sd[f"{p}.ffn.layers.1.bias"] = rand(D, DEC_FFN, scale=0.15), rand(D)
        for n in range(3):
            sd.update(norm(f"{p}.norms.{n}"))
    sd.update(norm("transformer_decoder.post_norm"))
    if replace_query_feat:
        sd["querys2feat.weight"], sd["querys2feat.bias"] = rand(D, D, scale=0.2), rand(D)
    else:
        sd["query_feat.weight"] = rand(Q, D, scale=1.0)
    sd["level_embed.weight"] = rand(3, D)
    sd["cls_embed.weight"], sd["cls_embed.bias"] = rand(K + 1, D, scale=0.1), rand(K + 1)
    for i in (0, 2, 4):
        sd[f"mask_embed.{i}.weight"], sd[f"mask_embed.{i}.bias"] = rand(D, D, scale=0.2), rand(D)
    return sd


def features(batch: int = 2, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, h, w, generator=g) for c, (h, w) in zip(IN_CHANNELS, SIZES)]


def queries(seed: int = 2) -> torch.Tensor:
    return torch.randn(Q, D, generator=torch.Generator().manual_seed(seed))


def imported_head(sd: dict[str, torch.Tensor], dtype: torch.dtype = torch.float64) -> Mask2FormerHead:
    spec = infer_head_spec(sd)
    torch.manual_seed(0)
    head = Mask2FormerHead(spec.num_classes, in_channels=spec.in_channels, num_queries=Q, **{
        k: v for k, v in spec.head_kwargs().items() if k != "num_queries"})  # fmt: skip
    converted, _ = convert_head_state_dict(sd)
    load_head_weights(head, converted, spec.replace_query_feat)
    return head.to(dtype).eval()


def compare(sd: dict[str, torch.Tensor], head_sd: dict[str, torch.Tensor] | None = None,
            dtype: torch.dtype = torch.float64, batch: int = 2) -> tuple[float, float, float, float]:  # fmt: skip
    """Max |Δ| of class logits, mask logits (over all stages), semantic scores, and argmax agreement."""
    head = imported_head(head_sd if head_sd is not None else sd, dtype)
    feats = [f.to(dtype) for f in features(batch)]
    q = queries().to(dtype)
    ref_sd = {k: v.to(dtype) for k, v in sd.items()}
    with torch.no_grad():
        ours = head(feats, queries=q)
        ref_cls, ref_masks = ref.head_forward(feats, q, ref_sd, HEADS)
        size = (4 * SIZES[0][0] + 3, 4 * SIZES[0][1] - 5)
        ours_sem = head.logits(ours, size)
        ref_sem = ref.semantic_logits(ref_cls[-1], ref_masks[-1], size)
    assert len(ours.class_logits) == len(ref_cls) == DEC + 1
    cls = max((a - b).abs().max().item() for a, b in zip(ours.class_logits, ref_cls))
    masks = max((a - b).abs().max().item() for a, b in zip(ours.mask_logits, ref_masks))
    sem = (ours_sem - ref_sem).abs().max().item()
    agree = (ours_sem.argmax(1) == ref_sem.argmax(1)).double().mean().item()
    return cls, masks, sem, agree


@pytest.mark.parametrize("replace_query_feat", [False, True])
def test_imported_head_equals_mmdet_forward_float64(replace_query_feat):
    sd = random_mmdet_head(replace_query_feat)
    cls, masks, sem, agree = compare(sd)
    assert cls < 1e-9 and masks < 1e-8 and sem < 1e-4, (cls, masks, sem)  # logits() runs in float32
    assert agree == 1.0


def test_imported_head_equals_mmdet_forward_float32_batch_one():
    """The tolerances of CHECKPOINT_IMPORT.md §5 in float32 (class 1e-4, masks 1e-3), batch of 1."""
    cls, masks, sem, agree = compare(random_mmdet_head(seed=5), dtype=torch.float32, batch=1)
    assert cls < 1e-4 and masks < 1e-3 and sem < 1e-4, (cls, masks, sem)
    assert agree == 1.0


def test_every_source_key_used_once_and_only_expected_entries_left_unfilled():
    for replace in (False, True):
        sd = random_mmdet_head(replace)
        converted, used = convert_head_state_dict(sd)
        assert set(used) == set(sd)
        targets = [t for ts in used.values() for t in ts]
        assert len(targets) == len(set(targets)) == len(converted)
        assert len(used["transformer_decoder.layers.0.self_attn.attn.in_proj_weight"]) == 3
        head = imported_head(sd)  # load_head_weights is strict about the rest
        unfilled = set(head.state_dict()) - set(converted)
        expected = set(EXPECTED_UNFILLED) | ({"transformer_module.queries_features.weight"} if replace else set())
        assert unfilled == expected


def test_spec_is_read_from_the_shapes():
    spec = infer_head_spec(random_mmdet_head())
    assert (spec.num_classes, spec.in_channels, spec.hidden_dim, spec.num_queries) == (K, IN_CHANNELS, D, Q)
    assert (spec.decoder_layers, spec.encoder_layers, spec.num_heads) == (DEC, ENC, HEADS)
    assert (spec.dim_feedforward, spec.encoder_feedforward_dim, spec.replace_query_feat) == (DEC_FFN, ENC_FFN, False)
    spec = infer_head_spec(random_mmdet_head(replace_query_feat=True))
    assert spec.replace_query_feat and spec.num_queries is None


def _exchange(sd: dict[str, torch.Tensor], a: str, b: str, within: str = "") -> dict[str, torch.Tensor]:
    """``sd`` with the tensors of keys containing ``a`` and their ``b`` counterparts exchanged (only keys
    containing ``within``)."""
    out = dict(sd)
    for key in sd:
        if within in key and a in key:
            other = key.replace(a, b)
            out[key], out[other] = sd[other], sd[key]
    return out


def _swap_q_k(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(sd)
    for key, value in sd.items():
        if "self_attn.attn.in_proj" in key:
            q, k, v = value.chunk(3, dim=0)
            out[key] = torch.cat([k, q, v])
    return out


NEGATIVE_CONTROLS = {
    "decoder norms.0 <-> norms.1 (the DETR order)":
        lambda sd: _exchange(sd, "norms.0", "norms.1", "transformer_decoder"),
    "self-attention q and k slices swapped": _swap_q_k,
    "input_convs in reverse level order": lambda sd: _exchange(sd, "input_convs.0.", "input_convs.2."),
    "mask_embed.2 and mask_embed.4 exchanged": lambda sd: _exchange(sd, "mask_embed.2.", "mask_embed.4."),
    "encoder norms.0 <-> norms.1": lambda sd: _exchange(sd, "norms.0", "norms.1", "encoder.layers"),
}


@pytest.mark.parametrize("name", list(NEGATIVE_CONTROLS))
def test_negative_controls_fail_the_comparison(name):
    """A wrong mapping applied on the way in (the reference keeps the true weights) must show."""
    sd = random_mmdet_head()
    cls, masks, sem, _ = compare(sd, head_sd=NEGATIVE_CONTROLS[name](sd))
    assert max(cls, masks) > 1e-2, (name, cls, masks, sem)


def test_all_masked_rows_are_unmasked_on_both_sides():
    """Mask logits negative everywhere (mask features −1, positive mask embeddings): every attention row
    is fully masked and must be cleared; both sides finite and equal."""
    sd = random_mmdet_head(seed=3)
    sd["pixel_decoder.mask_feature.weight"] = torch.zeros_like(sd["pixel_decoder.mask_feature.weight"])
    sd["pixel_decoder.mask_feature.bias"] = -torch.ones(D)
    sd["mask_embed.4.weight"] = torch.zeros(D, D)
    sd["mask_embed.4.bias"] = torch.full((D,), 0.5)
    head = imported_head(sd)
    with torch.no_grad():
        ours = head([f.double() for f in features()], queries=queries().double())
    assert all((m < 0).all() for m in ours.mask_logits)
    assert all(torch.isfinite(c).all() for c in ours.class_logits)
    cls, masks, sem, agree = compare(sd)
    assert cls < 1e-9 and masks < 1e-8 and agree == 1.0


def test_unknown_head_keys_are_refused_by_name():
    sd = random_mmdet_head()
    with pytest.raises(KeyError, match=r"DQCM\.linear_fuse\.weight.*|DepthForge"):
        convert_head_state_dict({**sd, "DQCM.linear_fuse.weight": torch.zeros(2, 2)})
    with pytest.raises(KeyError, match="query_embed"):
        convert_head_state_dict({**sd, "query_embed.weight": torch.zeros(Q, D)})


def test_unsupported_layouts_are_refused():
    sd = random_mmdet_head()
    four_points = dict(sd)
    four_points["pixel_decoder.encoder.layers.0.self_attn.attention_weights.weight"] = torch.zeros(HEADS * 3 * 5, D)
    four_points["pixel_decoder.encoder.layers.0.self_attn.sampling_offsets.weight"] = torch.zeros(HEADS * 3 * 5 * 3, D)
    with pytest.raises(ValueError, match="levels"):
        infer_head_spec(four_points)
    wrong_shape = {**sd, "cls_embed.weight": torch.zeros(K + 2, D)}
    spec = infer_head_spec(sd)
    head = Mask2FormerHead(spec.num_classes, in_channels=spec.in_channels, **spec.head_kwargs())
    converted, _ = convert_head_state_dict(wrong_shape)
    with pytest.raises(ValueError, match="class_predictor.weight"):
        load_head_weights(head, converted, False)


@pytest.mark.parametrize("replace_query_feat, classes, tensors, parameters", [
    (False, 24, 291, 20_540_889),  # SpectralMoE, GID (CHECKPOINT_IMPORT.md §1)
    (True, 19, 292, 20_579_796),  # Rein, Cityscapes classes
])  # fmt: skip
def test_the_released_head_layout_at_full_size(replace_query_feat, classes, tensors, parameters):
    """The paper's head (256 wide, 1024-channel features, 6 encoder / 9 decoder layers, 8 heads, 100 queries):
    the tensor and parameter counts of a real checkpoint, read back as the paper's configuration."""
    sd = random_mmdet_head(replace_query_feat, dim=256, heads=8, enc=6, dec=9, queries=100, classes=classes,
                           in_channels=(1024,) * 4, enc_ffn=1024, dec_ffn=2048)  # fmt: skip
    assert (len(sd), sum(v.numel() for v in sd.values())) == (tensors, parameters)
    spec = infer_head_spec(sd)
    assert (spec.hidden_dim, spec.num_heads, spec.encoder_layers, spec.decoder_layers) == (256, 8, 6, 9)
    assert (spec.dim_feedforward, spec.encoder_feedforward_dim, spec.in_channels) == (2048, 1024, (1024,) * 4)
    head = Mask2FormerHead(classes, in_channels=spec.in_channels, num_queries=100, **{
        k: v for k, v in spec.head_kwargs().items() if k != "num_queries"})  # fmt: skip
    converted, used = convert_head_state_dict(sd)
    load_head_weights(head, converted, replace_query_feat)
    assert set(used) == set(sd)
