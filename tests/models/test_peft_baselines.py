"""LoRA, AdaptFormer and VPT-deep baselines on tiny frozen backbones, driven like the segmentor's loop."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from spectralmoe.bands import RGB_TARGETS_UM
from spectralmoe.models.adapters.adaptformer import ADAPTFORMER_PARAMS_VIT_L, AdaptFormer
from spectralmoe.models.adapters.base import Adapter
from spectralmoe.models.adapters.lora import LORA_PARAMS_VIT_L, LoRA
from spectralmoe.models.adapters.vpt import VPT, VPT_PARAMS_VIT_L
from spectralmoe.models.backbones import build_backbone
from spectralmoe.models.backbones.base import FrozenBackbone

IN_BLOCK = ["tiny-dinov3", "tiny-dinov2", "tiny-clip", "tiny-dofa", "tiny-sam"]  # LoRA, AdaptFormer
SEQUENCE = ["tiny-dinov3", "tiny-dinov2", "tiny-clip", "tiny-dofa"]  # VPT (no SAM)
PROMPTS = 3
# (method, backbone) pairs that exist: VPT cannot run on SAM.
PAIRS = [(cls, name) for cls in (LoRA, AdaptFormer, VPT) for name in (SEQUENCE if cls is VPT else IN_BLOCK)]


# ------------------------------------------------------------------------------------------ helpers
def backbone(name: str, **kwargs: object) -> FrozenBackbone:
    torch.manual_seed(0)
    return build_backbone(name, pretrained=False, in_wavelengths=RGB_TARGETS_UM, **kwargs)


def make(cls: type[Adapter], bb: FrozenBackbone, **options: object) -> Adapter:
    """Built the way the registry builds adapters: sizes as keywords, then options."""
    torch.manual_seed(1)
    if cls is VPT:
        options.setdefault("num_prompts", PROMPTS)
    return cls(embed_dim=bb.embed_dim, num_layers=bb.num_layers, num_prefix_tokens=bb.num_prefix_tokens, **options)


def image(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def run(bb: FrozenBackbone, adapter: Adapter, img: torch.Tensor) -> torch.Tensor:
    """The segmentor's loop (Segmentor.extract_features) without the pyramid: last block's tokens."""
    tokens, grid = bb.embed(img)
    adapter.set_grid(grid)
    for layer in range(bb.num_layers):
        tokens = adapter.before_block(tokens, layer)
        tokens = bb.run_block(layer, tokens, grid)
        tokens, aux = adapter(tokens, layer=layer)
        assert aux.shape == () and aux.item() == 0.0
    return tokens


def perturb(adapter: Adapter, bb: FrozenBackbone) -> None:
    """Move zero-initialised weights (LoRA B, AdaptFormer Up) away from zero so every weight gets gradients."""
    with torch.no_grad():
        for name, param in bb.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.2)
        if isinstance(adapter, AdaptFormer):
            for branch in adapter.branches:
                branch.up.weight.normal_(std=0.2)


def wake_layer_scale(bb: FrozenBackbone) -> None:
    """DINOv3's LayerScale (1e-5 at init) would make attention changes invisible next to tolerances."""
    with torch.no_grad():
        for block in bb.blocks:
            for name in ("layer_scale1", "layer_scale2"):
                if hasattr(block, name):
                    getattr(block, name).lambda1.fill_(1.0)


def method_parameters(adapter: Adapter, bb: FrozenBackbone) -> dict[str, nn.Parameter]:
    params = {f"adapter.{n}": p for n, p in adapter.named_parameters()}
    params.update({f"backbone.{n}": p for n, p in bb.named_parameters() if "lora_" in n})
    return params


def attached(cls: type[Adapter], name: str, **options: object) -> tuple[FrozenBackbone, Adapter]:
    bb = backbone(name)
    adapter = make(cls, bb, **options)
    adapter.attach(bb)
    return bb, adapter


# ------------------------------------------------------------------------------------------ contract
@pytest.mark.parametrize("cls", [LoRA, AdaptFormer, VPT])
def test_contract_no_queries_zero_aux(cls: type[Adapter]) -> None:
    bb, adapter = attached(cls, "tiny-dinov2")
    assert adapter.queries() is None and not adapter.needs_depth
    tokens = torch.randn(2, 1 + PROMPTS + 4, bb.embed_dim)
    out, aux = adapter(tokens, layer=0)
    assert aux.shape == () and aux.item() == 0.0
    if cls is not VPT:  # in-block methods: the between-block step is the identity, prefix included
        assert out is tokens


@pytest.mark.parametrize("cls", [LoRA, AdaptFormer])
@pytest.mark.parametrize("name", IN_BLOCK)
def test_in_block_methods_start_as_frozen_backbone(cls: type[Adapter], name: str) -> None:
    img = image()
    bb = backbone(name)
    wake_layer_scale(bb)
    with torch.no_grad():  # same kernels on both sides (SAM's CPU attention differs with/without grad)
        frozen = run(bb, Adapter(), img)
    adapter = make(cls, bb)
    adapter.attach(bb)
    with torch.no_grad():
        assert torch.equal(run(bb, adapter, img), frozen)
        perturb(adapter, bb)
        changed = run(bb, adapter, img)
    assert changed.shape == frozen.shape
    assert (changed - frozen).abs().max() > 1e-3


@pytest.mark.parametrize(("cls", "name"), PAIRS)
def test_only_method_parameters_get_gradients(cls: type[Adapter], name: str) -> None:
    bb, adapter = attached(cls, name)
    wake_layer_scale(bb)
    perturb(adapter, bb)
    out = run(bb, adapter, image())
    out.square().mean().backward()
    method = method_parameters(adapter, bb)
    assert method, "the method has no trainable weights"
    for key, param in method.items():
        assert param.requires_grad and param.grad is not None and param.grad.abs().sum() > 0, key
    frozen = [(n, p) for n, p in bb.named_parameters() if "lora_" not in n]
    assert frozen
    for key, param in frozen:
        assert not param.requires_grad and param.grad is None, key
    assert not any(m.training for m in bb.modules())


@pytest.mark.parametrize("cls", [LoRA, AdaptFormer, VPT])
def test_bf16_backbone_without_autocast(cls: type[Adapter]) -> None:
    """A backbone stored in bf16 with float32 adapter weights (LoRA's follow the backbone)."""
    bb, adapter = attached(cls, "tiny-dinov3")
    bb.to(torch.bfloat16)
    perturb(adapter, bb)
    out = run(bb, adapter, image().to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    out.float().square().mean().backward()
    assert all(p.grad is not None for p in method_parameters(adapter, bb).values())


@pytest.mark.parametrize("cls", [LoRA, AdaptFormer, VPT])
def test_segmentor_trains_only_the_method_and_head(cls: type[Adapter]) -> None:
    from spectralmoe.models.heads import build_head
    from spectralmoe.models.segmentor import Segmentor

    bb = backbone("tiny-dinov2")
    adapter = make(cls, bb)
    head = build_head("fpn", num_classes=3, in_channels=(bb.embed_dim,) * 4, channels=16)  # uses all 4 taps
    model = Segmentor(bb, adapter, head, wavelengths=RGB_TARGETS_UM)  # calls adapter.attach(bb)
    perturb(adapter, bb)
    model.train()
    mask = torch.randint(0, 3, (2, 32, 32), generator=torch.Generator().manual_seed(3))
    losses = model.loss(image(), mask)
    sum(losses.values()).backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    expected = {f"adapter.{n}" for n, _ in adapter.named_parameters()}
    expected |= {f"backbone.{n}" for n, _ in bb.named_parameters() if "lora_" in n}
    expected |= {f"head.{n}" for n, _ in head.named_parameters()}
    assert trained == expected
    assert not any(m.training for m in bb.modules())


# ------------------------------------------------------------------------------------------ LoRA
LORA_SITES = {
    "tiny-dinov3": ("model.layer.{}.attention.q_proj", "model.layer.{}.attention.v_proj"),
    "tiny-dinov2": ("encoder.layer.{}.attention.q_proj", "encoder.layer.{}.attention.v_proj"),
    "tiny-clip": ("encoder.layers.{}.self_attn.q_proj", "encoder.layers.{}.self_attn.v_proj"),
    "tiny-dofa": ("blocks.{}.attn.qkv",),
    "tiny-sam": ("vision_encoder.layers.{}.attn.qkv",),
}


@pytest.mark.parametrize("name", IN_BLOCK)
def test_lora_wraps_the_attention_projections(name: str) -> None:
    bb, lora = attached(LoRA, name)
    wrapped = {n for n, m in bb.model.named_modules() if hasattr(m, "lora_A")}
    want = {site.format(i) for i in range(bb.num_layers) for site in LORA_SITES[name]}
    assert wrapped == want
    trainable = [n for n, p in bb.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 2 * len(want)  # A and B per wrapped projection
    d, r, layers = bb.embed_dim, 8, bb.num_layers
    # q+v split: 2 matrices of r·(D + D); fused qkv: one r·(D + 3D) — the same number.
    assert lora.num_trainable_parameters() == layers * 4 * r * d
    assert sum(p.numel() for p in bb.parameters() if p.requires_grad) == layers * 4 * r * d
    assert sum(p.numel() for p in lora.parameters()) == 0  # the weights live in the backbone


def test_lora_options_rank_alpha_targets() -> None:
    bb, lora = attached(LoRA, "tiny-dinov3", rank=2, alpha=6, targets=("q", "k", "v", "o"))
    layer = bb.blocks[0].attention.o_proj
    assert layer.lora_A["default"].weight.shape == (2, bb.embed_dim)
    assert layer.scaling["default"] == pytest.approx(3.0)
    assert lora.num_trainable_parameters() == bb.num_layers * 4 * 2 * 2 * bb.embed_dim
    with pytest.raises(ValueError, match="targets"):
        LoRA(embed_dim=64, num_layers=4, targets=("q", "x"))


def test_lora_attach_twice_is_an_error() -> None:
    bb, lora = attached(LoRA, "tiny-dinov3")
    with pytest.raises(RuntimeError, match="already attached"):
        lora.attach(bb)
    with pytest.raises(RuntimeError, match="already holds peft"):
        make(LoRA, bb).attach(bb)


def test_lora_backbone_stays_eval_dropout_follows_adapter() -> None:
    bb, lora = attached(LoRA, "tiny-dinov2", dropout=0.1)
    model = nn.ModuleDict({"backbone": bb, "adapter": lora})  # the segmentor's registration order
    model.train()
    dropouts = {n for n, m in bb.named_modules() if ".lora_dropout" in n}
    training = {n for n, m in bb.named_modules() if m.training}
    assert dropouts and training == dropouts
    model.eval()
    assert not any(m.training for m in bb.modules())


def test_lora_size_mismatch_is_an_error() -> None:
    bb = backbone("tiny-dinov3")
    with pytest.raises(ValueError, match="embed_dim"):
        LoRA(embed_dim=32, num_layers=bb.num_layers, num_prefix_tokens=bb.num_prefix_tokens).attach(bb)


def test_lora_fused_qkv_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="spectralmoe.models.adapters.lora"):
        attached(LoRA, "tiny-sam")
    assert "fused" in caplog.text


# ------------------------------------------------------------------------------------------ AdaptFormer
def _x_attn(name: str, bb: FrozenBackbone, block: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Residual stream after the attention branch, computed by hand per family."""
    if name == "tiny-dinov3":
        rope = bb.rope(grid, x.device, x.dtype)
        return x + block.layer_scale1(block.attention(block.norm1(x), position_embeddings=rope)[0])
    if name == "tiny-dinov2":
        return x + block.layer_scale1(block.attention(block.norm1(x))[0])
    if name == "tiny-clip":
        return x + block.self_attn(block.layer_norm1(x), None)[0]
    return x + block.attn(block.norm1(x))  # DOFA


def _mlp_branch(name: str, block: nn.Module, x_attn: torch.Tensor) -> torch.Tensor:
    if name in ("tiny-dinov3", "tiny-dinov2"):
        return block.layer_scale2(block.mlp(block.norm2(x_attn)))
    if name == "tiny-clip":
        return block.mlp(block.layer_norm2(x_attn))
    return block.mlp(block.norm2(x_attn))


@pytest.mark.parametrize("name", SEQUENCE)
def test_adaptformer_block_equation(name: str) -> None:
    """x_out = x_attn + γ₂·MLP(LN₂(x_attn)) + s·Up(ReLU(Down(LN_a(x_attn)))): the branch is not under γ₂."""
    bb, adapter = attached(AdaptFormer, name, scale=0.5)
    perturb(adapter, bb)
    with torch.no_grad():
        tokens, grid = bb.embed(image())
        got = bb.run_block(1, tokens, grid)
        adapter.detach()  # the hand computation below must not fire the hooks
        block = bb.blocks[1]
        x_attn = _x_attn(name, bb, block, tokens, grid)
        want = x_attn + _mlp_branch(name, block, x_attn) + 0.5 * adapter.branches[1](x_attn)
        frozen = bb.run_block(1, tokens, grid)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - frozen).abs().max() > 1e-2  # the branch is visible (DINOv3's γ₂ = 1e-5 would hide it)


def test_adaptformer_parameter_count_and_init() -> None:
    adapter = AdaptFormer(embed_dim=16, num_layers=3, num_prefix_tokens=1, bottleneck=4)
    assert adapter.num_trainable_parameters() == 3 * (2 * 16 * 4 + 4 + 16 + 2 * 16)
    no_ln = AdaptFormer(embed_dim=16, num_layers=3, num_prefix_tokens=1, bottleneck=4, layer_norm=False)
    assert no_ln.num_trainable_parameters() == 3 * (2 * 16 * 4 + 4 + 16)
    branch = adapter.branches[0]
    assert torch.count_nonzero(branch.up.weight) == 0 and torch.count_nonzero(branch.up.bias) == 0
    assert torch.count_nonzero(branch.down.bias) == 0 and branch.down.weight.std() > 0


def test_adaptformer_attach_twice_and_detach() -> None:
    bb, adapter = attached(AdaptFormer, "tiny-dinov3")
    with pytest.raises(RuntimeError, match="already attached"):
        adapter.attach(bb)
    perturb(adapter, bb)
    img = image()
    with torch.no_grad():
        adapted = run(bb, adapter, img)
        adapter.detach()
        frozen = run(bb, Adapter(), img)
        adapter.attach(bb)
        again = run(bb, adapter, img)
    assert not torch.equal(adapted, frozen) and torch.equal(adapted, again)


def test_adaptformer_hooks_follow_a_deepcopy() -> None:
    """Hooks are bound methods, so a copied model's blocks call the copied adapter."""
    bb, adapter = attached(AdaptFormer, "tiny-dinov2")
    model = nn.ModuleDict({"backbone": bb, "adapter": adapter})
    clone = copy.deepcopy(model)
    perturb(clone["adapter"], clone["backbone"])
    img = image()
    with torch.no_grad():
        original = run(model["backbone"], model["adapter"], img)
        copied = run(clone["backbone"], clone["adapter"], img)
        adapter.detach()
        frozen = run(bb, Adapter(), img)
    assert torch.equal(original, frozen) and not torch.equal(copied, frozen)


@pytest.mark.parametrize("name", ["tiny-dinov3", "tiny-sam"])
def test_adaptformer_under_bf16_autocast(name: str) -> None:
    bb, adapter = attached(AdaptFormer, name)
    img = image()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            adapter.detach()
            frozen = run(bb, Adapter(), img)
            adapter.attach(bb)
            assert torch.equal(run(bb, adapter, img), frozen)
        perturb(adapter, bb)
        out = run(bb, adapter, img)
    assert torch.isfinite(out).all()
    out.float().square().mean().backward()
    for param in adapter.parameters():
        assert param.grad is not None and param.grad.dtype == torch.float32 and torch.isfinite(param.grad).all()
    assert adapter.branches[0].up.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------ checkpointing
@pytest.mark.parametrize(("cls", "name"), [p for p in PAIRS if p[1] in ("tiny-dinov3", "tiny-sam")])
def test_activation_checkpointing_gives_the_same_gradients(cls: type[Adapter], name: str) -> None:
    img = image()
    grads = []
    for checkpointing in (False, True):
        bb = backbone(name, gradient_checkpointing=checkpointing)
        adapter = make(cls, bb)
        adapter.attach(bb)
        perturb(adapter, bb)
        calls = []
        bb.blocks[-1].register_forward_pre_hook(lambda m, a: calls.append(1))
        run(bb, adapter, img).square().mean().backward()
        assert len(calls) == (2 if checkpointing else 1)  # the last block was recomputed in backward
        grads.append({k: p.grad.clone() for k, p in method_parameters(adapter, bb).items()})
    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], rtol=1e-5, atol=1e-7, msg=key)


# ------------------------------------------------------------------------------------------ VPT
@pytest.mark.parametrize("name", SEQUENCE)
def test_vpt_inserts_after_prefix_and_removes_after_block(name: str) -> None:
    bb, vpt = attached(VPT, name)
    prefix = bb.num_prefix_tokens
    with torch.no_grad():
        tokens, grid = bb.embed(image())
        patches = grid[0] * grid[1]
        assert tokens.shape[1] == prefix + patches
        inserted = vpt.before_block(tokens, 1)
        assert inserted.shape == (2, prefix + PROMPTS + patches, bb.embed_dim)
        assert torch.equal(inserted[:, :prefix], tokens[:, :prefix])
        assert torch.equal(inserted[:, prefix:prefix + PROMPTS], vpt.prompts[1].expand(2, -1, -1))
        assert torch.equal(inserted[:, prefix + PROMPTS:], tokens[:, prefix:])
        block_out = bb.run_block(1, inserted, grid)
        out, aux = vpt(block_out, layer=1)
    assert out.shape == tokens.shape and aux.item() == 0.0
    assert torch.equal(out[:, :prefix], block_out[:, :prefix])  # prefix outputs pass through
    assert torch.equal(out[:, prefix:], block_out[:, prefix + PROMPTS:])  # prompt outputs dropped
    assert bb.tokens_to_map(out, grid).shape == (2, bb.embed_dim, *grid)


@pytest.mark.parametrize("name", SEQUENCE)
def test_vpt_prompts_change_the_output(name: str) -> None:
    bb, vpt = attached(VPT, name)
    wake_layer_scale(bb)
    img = image()
    with torch.no_grad():
        frozen = run(bb, Adapter(), img)
        prompted = run(bb, vpt, img)
    assert prompted.shape == frozen.shape
    assert (prompted - frozen).abs().max() > 1e-3


def test_vpt_dinov3_rope_goes_to_the_patches() -> None:
    """RoPE rotates the last h·w tokens: prompts after the prefix act like extra prefix tokens."""
    bb, vpt = attached(VPT, "tiny-dinov3")
    wake_layer_scale(bb)
    with torch.no_grad():
        tokens, grid = bb.embed(image())
        prefix = bb.num_prefix_tokens
        after_prefix = bb.run_block(0, vpt.before_block(tokens, 0), grid)
        prompts = vpt.prompts[0].expand(2, -1, -1)
        in_front = bb.run_block(0, torch.cat([prompts, tokens], dim=1), grid)  # unrotated tokens, other order
    torch.testing.assert_close(after_prefix[:, prefix + PROMPTS:], in_front[:, prefix + PROMPTS:])
    torch.testing.assert_close(after_prefix[:, :prefix], in_front[:, PROMPTS:PROMPTS + prefix])


def test_vpt_init_and_count() -> None:
    vpt = VPT(embed_dim=64, num_layers=4, num_prefix_tokens=1, num_prompts=10)
    bound = (6.0 / (3 * 16 * 16 + 64)) ** 0.5
    assert vpt.prompts.shape == (4, 10, 64) and vpt.num_trainable_parameters() == 4 * 10 * 64
    assert vpt.prompts.abs().max() <= bound and vpt.prompts.abs().max() > 0.9 * bound


def test_vpt_refuses_sam_and_mismatched_backbones() -> None:
    sam = backbone("tiny-sam")
    with pytest.raises(ValueError, match="SAM"):
        make(VPT, sam).attach(sam)
    dinov3 = backbone("tiny-dinov3")
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        VPT(embed_dim=dinov3.embed_dim, num_layers=dinov3.num_layers, num_prefix_tokens=1).attach(dinov3)


# ------------------------------------------------------------------------------------------ ViT-L counts
def _meta_backbone(name: str) -> FrozenBackbone:
    with torch.device("meta"):
        return build_backbone(name, pretrained=False)


@pytest.mark.parametrize(
    ("cls", "options", "expected"),
    [
        (LoRA, {}, LORA_PARAMS_VIT_L),
        (LoRA, {"targets": ("q", "k", "v", "o")}, 2 * LORA_PARAMS_VIT_L),
        (AdaptFormer, {}, ADAPTFORMER_PARAMS_VIT_L),
        (AdaptFormer, {"layer_norm": False}, 3_171_840),
        (VPT, {"num_prompts": 150}, VPT_PARAMS_VIT_L),
    ],
)
def test_vit_l_parameter_counts(cls: type[Adapter], options: dict, expected: int) -> None:
    assert (LORA_PARAMS_VIT_L, ADAPTFORMER_PARAMS_VIT_L, VPT_PARAMS_VIT_L) == (786_432, 3_220_992, 3_686_400)
    bb = _meta_backbone("dinov3-vitl16")
    adapter = cls(embed_dim=bb.embed_dim, num_layers=bb.num_layers, num_prefix_tokens=bb.num_prefix_tokens, **options)
    adapter.attach(bb)
    in_backbone = sum(p.numel() for p in bb.parameters() if p.requires_grad)
    own = sum(p.numel() for p in adapter.parameters() if p.requires_grad)
    assert own + in_backbone == expected  # what the segmentor's accounting adds up
    assert adapter.num_trainable_parameters() == expected


def test_vit_l_lora_on_fused_qkv_has_the_same_count() -> None:
    bb = _meta_backbone("sam-vitl")
    lora = LoRA(embed_dim=bb.embed_dim, num_layers=bb.num_layers, num_prefix_tokens=0)
    lora.attach(bb)
    assert lora.num_trainable_parameters() == LORA_PARAMS_VIT_L
