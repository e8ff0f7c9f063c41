"""Heads: Mask2Former (transformers components + adapter queries), FPN and linear heads."""

from __future__ import annotations

import pytest
import torch

from spectralmoe.models.heads import HEADS, FPNHead, LinearHead, Mask2FormerHead, build_head

IN_CHANNELS = (32, 48, 64, 64)  # distinct widths catch level-order mistakes
TINY = dict(
    in_channels=IN_CHANNELS,
    num_queries=8,
    hidden_dim=32,
    decoder_layers=3,  # 3 layers visit all 3 feature levels
    encoder_layers=1,
    num_heads=4,
    dim_feedforward=64,
    encoder_feedforward_dim=64,
    train_num_points=256,
)
NUM_CLASSES = 3
SIZE = 64


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors: intra-op threads only add synchronisation cost (40x slower on a busy 2-core box)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_head(**kwargs) -> Mask2FormerHead:
    torch.manual_seed(0)
    return Mask2FormerHead(NUM_CLASSES, **{**TINY, **kwargs})


def features(batch: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(batch, c, SIZE // s, SIZE // s, generator=g) for c, s in zip(IN_CHANNELS, (4, 8, 16, 32))]


def semantic_mask(batch: int = 2) -> torch.Tensor:
    """Three blocky classes plus an ignored band, so every head has something learnable."""
    m = torch.zeros(batch, SIZE, SIZE, dtype=torch.long)
    m[:, :, SIZE // 2:] = 1
    m[:, SIZE // 2:, : SIZE // 2] = 2
    m[-1, :8] = 255
    return m


def train_losses(head: torch.nn.Module, steps: int = 15, lr: float = 3e-3) -> list[float]:
    feats, mask = features(), semantic_mask()
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        total = sum(head.loss(head(feats), mask).values())
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(total.item())
    return history


# --------------------------------------------------------------------------- Mask2Former
def test_default_queries_match_library_module() -> None:
    head = tiny_head().eval()
    feats = features()
    with torch.no_grad():
        ours = head(feats)
        stock_pos = head(feats, queries=head.transformer_module.queries_embedder.weight)
        pixels = head.pixel_decoder(feats)
        ref = head.transformer_module(pixels.multi_scale_features, pixels.mask_features)
    ref_classes = [head.class_predictor(h.transpose(0, 1)) for h in ref.intermediate_hidden_states]
    assert len(ours.mask_logits) == len(ref.masks_queries_logits) == 4  # initial + 3 layers
    for out in (ours, stock_pos):
        assert all(torch.equal(a, b) for a, b in zip(out.mask_logits, ref.masks_queries_logits))
        assert all(torch.equal(a, b) for a, b in zip(out.class_logits, ref_classes))
    assert ours.mask_logits[-1].shape == (2, 8, SIZE // 4, SIZE // 4)
    assert ours.class_logits[-1].shape == (2, 8, NUM_CLASSES + 1)


def test_custom_queries_change_output_and_receive_gradients() -> None:
    head = tiny_head()
    feats = features()
    queries = torch.randn(8, 32, requires_grad=True)  # stands in for the adapter's query tokens
    out = head(feats, queries=queries)
    with torch.no_grad():
        stock = head(feats)
    assert not torch.allclose(out.mask_logits[-1], stock.mask_logits[-1])
    sum(head.loss(out, semantic_mask()).values()).backward()
    assert queries.grad is not None and queries.grad.abs().sum() > 0
    # The stock positional embedding is bypassed; the stock content queries are still used.
    assert head.transformer_module.queries_embedder.weight.grad is None
    assert head.transformer_module.queries_features.weight.grad is not None


def test_replace_query_feat_uses_linear_of_queries() -> None:
    plain, replaced = tiny_head(), tiny_head(replace_query_feat=True)
    assert plain.query_feat_proj is None
    assert isinstance(replaced.query_feat_proj, torch.nn.Linear)
    extra = sum(p.numel() for p in replaced.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 32 * 32 + 32
    # Same weights everywhere else; Linear(q) == 0 must equal stock content queries set to 0.
    replaced.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        replaced.query_feat_proj.weight.zero_()
        replaced.query_feat_proj.bias.zero_()
        plain.transformer_module.queries_features.weight.zero_()
    feats, queries = features(), torch.randn(8, 32)
    with torch.no_grad():
        assert torch.allclose(replaced(feats, queries).mask_logits[-1], plain(feats, queries).mask_logits[-1])
    # With a non-zero Linear the content queries follow it and it gets gradients.
    torch.nn.init.normal_(replaced.query_feat_proj.weight)
    out = replaced(feats, queries)
    assert not torch.allclose(out.mask_logits[-1], plain(feats, queries).mask_logits[-1])
    sum(replaced.loss(out, semantic_mask()).values()).backward()
    assert replaced.query_feat_proj.weight.grad.abs().sum() > 0
    assert replaced.transformer_module.queries_features.weight.grad is None


def test_loss_terms_are_weighted_sums_over_all_stages() -> None:
    head = tiny_head()
    out, mask = head(features()), semantic_mask()
    torch.manual_seed(5)
    losses = head.loss(out, mask)
    assert set(losses) == {"loss_cls", "loss_mask", "loss_dice"}
    # Recompute stage by stage, in the criterion's order (last stage, then stages 0..L-2), same RNG.
    mask_labels, class_labels = head.semantic_to_targets(mask)
    torch.manual_seed(5)
    order = [len(out.mask_logits) - 1, *range(len(out.mask_logits) - 1)]
    per_stage = [head.criterion(out.mask_logits[i], out.class_logits[i], mask_labels, class_labels) for i in order]
    for name, raw, weight in (("loss_cls", "loss_cross_entropy", 2.0), ("loss_mask", "loss_mask", 5.0),
                              ("loss_dice", "loss_dice", 5.0)):
        expected = weight * sum(stage[raw] for stage in per_stage)
        torch.testing.assert_close(losses[name], expected)
    no_aux = tiny_head(aux_loss=False).loss(out, mask)
    assert no_aux["loss_cls"] < losses["loss_cls"]


def test_mask2former_loss_decreases() -> None:
    history = train_losses(tiny_head())
    assert all(torch.isfinite(torch.tensor(history)))
    assert sum(history[-3:]) / 3 < 0.9 * sum(history[:3]) / 3, history


def test_mask2former_all_ignore_mask_does_not_crash() -> None:
    head = tiny_head()
    out = head(features())
    mixed = semantic_mask()
    mixed[0] = 255
    for mask in (torch.full((2, SIZE, SIZE), 255), mixed):
        losses = head.loss(out, mask)
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward(retain_graph=True)
    # No target at all: matched mask terms are 0, every query is pushed to "no object".
    empty = head.loss(out, torch.full((2, SIZE, SIZE), 255))
    assert empty["loss_mask"] == 0 and empty["loss_dice"] == 0 and empty["loss_cls"] > 0


def test_mask2former_logits() -> None:
    head = tiny_head()
    out = head(features())
    logits = head.logits(out, (50, 70))
    assert logits.shape == (2, NUM_CLASSES, 50, 70) and logits.dtype == torch.float32
    masks = torch.nn.functional.interpolate(out.mask_logits[-1], size=(50, 70), mode="bilinear").sigmoid()
    expected = torch.einsum("bqc,bqhw->bchw", out.class_logits[-1].softmax(-1)[..., :-1], masks)
    torch.testing.assert_close(logits, expected)


def test_mask2former_runs_under_bf16_autocast() -> None:
    head = tiny_head()
    queries = torch.randn(8, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(features(), queries=queries)
        losses = head.loss(out, semantic_mask())
        logits = head.logits(out, (SIZE, SIZE))
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    assert logits.dtype == torch.float32
    sum(losses.values()).backward()
    assert queries.grad is not None


def test_mask2former_builds_on_meta_device() -> None:
    with torch.device("meta"):
        meta = Mask2FormerHead(NUM_CLASSES, **TINY)
        paper = Mask2FormerHead(24)  # METHOD §4.1 configuration on ViT-L features
    assert {t.device.type for t in [*meta.parameters(), *meta.buffers()]} == {"meta"}
    assert sum(p.numel() for p in meta.parameters()) == sum(p.numel() for p in tiny_head().parameters())
    assert len(paper.transformer_module.decoder.layers) == 9
    assert len(paper.pixel_decoder.encoder.layers) == 6
    # 20.57 M: pixel decoder 6,101,440 + transformer module 14,458,624 + classifier 6,425.
    assert sum(p.numel() for p in paper.parameters()) == 20_566_489


def test_mask2former_post_init_initialises_level_embed() -> None:
    head = tiny_head()
    level_embed = head.pixel_decoder.level_embed
    assert torch.isfinite(level_embed).all() and 0.3 < level_embed.std() < 3.0


def test_mask2former_rejects_bad_inputs() -> None:
    head = tiny_head()
    with pytest.raises(ValueError, match="queries"):
        head(features(), queries=torch.randn(7, 32))
    with pytest.raises(ValueError, match="feature map 1"):
        head([f if i != 1 else f[:, :5] for i, f in enumerate(features())])
    bad = semantic_mask()
    bad[0, 0, 0] = NUM_CLASSES
    with pytest.raises(ValueError, match="outside"):
        head.loss(head(features()), bad)
    with pytest.raises(TypeError, match="unknown"):
        Mask2FormerHead(NUM_CLASSES, **TINY, not_a_field=1)


# ---------------------------------------------------------------------------- light heads
def test_fpn_head_trains_and_ignores_queries() -> None:
    torch.manual_seed(0)
    head = FPNHead(NUM_CLASSES, IN_CHANNELS, channels=32)
    assert head.uses_queries is False
    out = head(features(), queries=torch.randn(8, 32))
    assert out.shape == (2, NUM_CLASSES, SIZE // 4, SIZE // 4)
    assert head.logits(out, (SIZE, SIZE)).shape == (2, NUM_CLASSES, SIZE, SIZE)
    history = train_losses(head)
    assert history[-1] < 0.7 * history[0], history


@pytest.mark.parametrize("head_class", [FPNHead, LinearHead])
def test_light_heads_all_ignore_mask(head_class) -> None:
    head = head_class(NUM_CLASSES, IN_CHANNELS)
    losses = head.loss(head(features()), torch.full((2, SIZE, SIZE), 255))
    assert set(losses) == {"loss_ce"} and losses["loss_ce"].item() == 0.0
    losses["loss_ce"].backward()


def test_linear_head() -> None:
    head = LinearHead(NUM_CLASSES, IN_CHANNELS)
    out = head(features())
    assert out.shape == (2, NUM_CLASSES, SIZE // 16, SIZE // 16)
    assert head.logits(out, (SIZE, SIZE)).shape == (2, NUM_CLASSES, SIZE, SIZE)
    loss = head.loss(out, semantic_mask())["loss_ce"]
    assert torch.isfinite(loss) and loss > 0


# ---------------------------------------------------------------------------- factory
def test_build_head() -> None:
    assert set(HEADS) == {"mask2former", "fpn", "linear"}
    assert isinstance(build_head("fpn", 4, IN_CHANNELS, channels=32), FPNHead)
    head = build_head("mask2former", 4, IN_CHANNELS, **{k: v for k, v in TINY.items() if k != "in_channels"})
    assert isinstance(head, Mask2FormerHead) and head.num_classes == 4
    with pytest.raises(ValueError, match="fpn.*linear.*mask2former"):
        build_head("segformer", 4, IN_CHANNELS)


def _odd_features(batch: int = 2, channels: int = 16) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(batch, channels, h, w, generator=generator) for h, w in ((36, 44), (18, 22), (9, 11), (5, 6))]


def test_pixel_decode_equals_the_library_pixel_decoder_in_float32() -> None:
    torch.manual_seed(0)
    head = Mask2FormerHead(4, in_channels=(16,) * 4, hidden_dim=32, num_heads=2, encoder_layers=2,
                           decoder_layers=1, num_queries=5).eval()  # fmt: skip
    features = _odd_features()
    with torch.no_grad():
        mask_features, multi_scale = head.pixel_decode(features)
        library = head.pixel_decoder(features, return_dict=True)
    assert torch.equal(mask_features, library.mask_features)
    assert all(torch.equal(a, b) for a, b in zip(multi_scale, library.multi_scale_features))


def test_positions_and_reference_points_stay_float32_under_bf16_autocast() -> None:
    """mmdet builds them in float32 whatever the features' dtype; the library would use bfloat16."""
    torch.manual_seed(0)
    head = Mask2FormerHead(4, in_channels=(16,) * 4, hidden_dim=32, num_heads=2, encoder_layers=1,
                           decoder_layers=1, num_queries=5).eval()  # fmt: skip
    seen = []
    head.pixel_decoder.encoder.layers[0].self_attn.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((kwargs["reference_points"].dtype, kwargs["position_embeddings"].dtype)),
        with_kwargs=True,
    )  # fmt: skip
    cross_keys = []
    head.transformer_module.decoder.layers[0].cross_attn.register_forward_pre_hook(
        lambda module, args, kwargs: cross_keys.append(kwargs["key"].dtype), with_kwargs=True
    )
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        head([f.bfloat16() for f in _odd_features()], queries=torch.randn(5, 32))
    assert seen == [(torch.float32, torch.float32)]
    assert cross_keys == [torch.float32]  # bf16 features + float32 sine positions
