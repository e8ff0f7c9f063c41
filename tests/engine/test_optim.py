"""Parameter groups on real tiny models, and the poly schedule's values."""

from __future__ import annotations

import pytest
import torch

from spectralmoe.engine.optim import build_param_groups, build_poly_scheduler, decay_table, poly_factor
from spectralmoe.models.factory import build_segmentor
from tests.engine import TINY_M2F, TINY_SMOE


def tiny(adapter: str, head: str = "mask2former", **adapter_kwargs):
    torch.manual_seed(0)
    if adapter == "spectralmoe":
        adapter_kwargs = {**TINY_SMOE, **adapter_kwargs}
    if adapter == "rein":
        adapter_kwargs = {"token_length": 8, "query_dim": 32, "rank": 4, **adapter_kwargs}
    head_kwargs = dict(TINY_M2F) if head == "mask2former" else {"channels": 32}
    if head == "mask2former" and adapter not in ("spectralmoe", "rein"):
        head_kwargs["num_queries"] = 8
    return build_segmentor(backbone="tiny-dinov3", adapter=adapter, head=head, depth="tiny-depth-anything",
                           sensor="gf2", num_classes=3, pretrained=False, adapter_kwargs=adapter_kwargs,
                           head_kwargs=head_kwargs)  # fmt: skip


def groups_by_name(model) -> dict[str, set[str]]:
    return {g["name"]: set(g["param_names"]) for g in build_param_groups(model, 0.05)}


def test_spectralmoe_mask2former_groups():
    model = tiny("spectralmoe")
    groups = build_param_groups(model, 0.05)
    by_name = {g["name"]: g for g in groups}
    assert by_name["decay"]["weight_decay"] == 0.05 and by_name["no_decay"]["weight_decay"] == 0.0
    no_decay, decay = set(by_name["no_decay"]["param_names"]), set(by_name["decay"]["param_names"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert no_decay | decay == trainable and not no_decay & decay  # every trainable param exactly once
    params = dict(model.named_parameters())
    for group in groups:  # the tensors are the named ones
        assert all(p is params[n] for p, n in zip(group["params"], group["param_names"]))
    assert not any(n.startswith(("backbone.", "depth_encoder.")) for n in no_decay | decay)  # frozen never
    expected_no_decay = [
        "adapter.scale", "adapter.experts_a.0.0", "adapter.experts_b.1.2", "adapter.w_gate.0.0", "adapter.w_noise.0.0",
        "head.transformer_module.queries_embedder.weight", "head.transformer_module.level_embed.weight",
        "head.transformer_module.decoder.layers.0.self_attn_layer_norm.weight",
        "head.transformer_module.decoder.layernorm.bias",
        "head.pixel_decoder.adapter_1.1.weight",  # a GroupNorm: no decay by type
        "head.pixel_decoder.encoder.layers.0.final_layer_norm.weight",
    ]  # fmt: skip
    expected_decay = [
        "adapter.mlp_token2feat.weight", "adapter.mlp_token2feat.bias", "adapter.mlp_delta_f.weight",
        "adapter.depth_proj.weight", "adapter.query_link.transform.weight", "adapter.query_link.merge.bias",
        "head.transformer_module.queries_features.weight",  # mmseg query_feat: not matched by query_embed
        "head.pixel_decoder.level_embed",  # mmdet level_encoding: not matched by level_embed
        "head.class_predictor.weight", "head.class_predictor.bias",
        "head.pixel_decoder.encoder.layers.0.self_attn.sampling_offsets.weight",
    ]  # fmt: skip
    for name in expected_no_decay:
        assert name in no_decay, name
    for name in expected_decay:
        assert name in decay, name
    table = decay_table(model)
    assert table["head.pixel_decoder.adapter_1.1.weight"] == "normalisation layer"
    assert table["adapter.w_gate.0.0"] == "SpectralMoE gate/noise routers"


def test_lora_parameters_inside_the_backbone_are_optimised_with_decay():
    model = tiny("lora", head="fpn")
    groups = groups_by_name(model)
    lora = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n for n in lora)
    assert {f"backbone.{n}" for n in lora} <= groups["decay"]
    assert "head.smooth.0.1.weight" in groups["no_decay"]  # FPN's GroupNorm


@pytest.mark.parametrize(
    "adapter, no_decay_names",
    [("rein", ["adapter.tokens.a", "adapter.tokens.b", "adapter.scale"]), ("vpt", ["adapter.prompts"]),
     ("adaptformer", ["adapter.branches.0.norm.weight"])],
)  # fmt: skip
def test_token_and_prompt_parameters_do_not_decay(adapter, no_decay_names):
    model = tiny(adapter, head="fpn")
    groups = groups_by_name(model)
    for name in no_decay_names:
        assert name in groups["no_decay"], name
    if adapter == "rein":
        assert "adapter.mlp_token2feat.weight" in groups["decay"]
    if adapter == "adaptformer":
        assert "adapter.branches.0.down.weight" in groups["decay"]


def test_freeze_without_trainable_parameters_is_an_error():
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        build_param_groups(frozen, 0.05)


def test_poly_factor_values():
    # mmengine PolyLR(power=0.9, eta_min=0, end=T): lr_t = lr · (1 - t/(T-1))^0.9
    total = 11
    assert poly_factor(0, total) == 1.0
    assert poly_factor(5, total) == pytest.approx(0.5**0.9)
    assert poly_factor(10, total) == 0.0
    assert poly_factor(50, total) == 0.0  # clamped past the end
    assert poly_factor(5, total, min_ratio=0.1) == pytest.approx(0.1 + 0.9 * 0.5**0.9)
    # warm-up multiplies: ratio at step 0, linear up to 1 at step W
    assert poly_factor(0, total, warmup_steps=4, warmup_ratio=0.01) == pytest.approx(0.01)
    assert poly_factor(2, total, warmup_steps=4, warmup_ratio=0.01) == pytest.approx((1 - 0.2) ** 0.9 * 0.505)
    assert poly_factor(4, total, warmup_steps=4, warmup_ratio=0.01) == pytest.approx((1 - 0.4) ** 0.9)


def test_scheduler_drives_the_optimizer_per_step():
    weight = torch.nn.Parameter(torch.zeros(2))
    bias = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW(
        [{"params": [weight], "weight_decay": 0.05}, {"params": [bias], "weight_decay": 0.0}], lr=1e-4
    )
    scheduler = build_poly_scheduler(optimizer, 5, power=0.9, min_lr=1e-6)
    seen = []
    for _ in range(6):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    expected = [1e-6 + (1e-4 - 1e-6) * (1 - min(t, 4) / 4) ** 0.9 for t in range(6)]
    for lrs, lr in zip(seen, expected):
        assert lrs == pytest.approx([lr, lr])
    assert seen[4][0] == pytest.approx(1e-6)
    state = scheduler.state_dict()  # picklable multipliers: checkpointable
    assert state["lr_lambdas"][0]["total_steps"] == 5
    with pytest.raises(ValueError, match="min_lr"):
        build_poly_scheduler(optimizer, 5, min_lr=1.0)
