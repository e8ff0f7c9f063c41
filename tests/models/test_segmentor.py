"""The whole model on tiny stand-ins: training signal, frozen parts, inference modes, factory errors."""

import pytest
import torch

from spectralmoe.models.factory import build_segmentor

TINY_M2F = {"hidden_dim": 32, "decoder_layers": 2, "encoder_layers": 1, "num_heads": 2, "train_num_points": 256}


def tiny_model(adapter="spectralmoe", head="mask2former", sensor="gf2", backbone="tiny-dinov3", **adapter_kwargs):
    torch.manual_seed(0)
    head_kwargs = dict(TINY_M2F) if head == "mask2former" else {}
    if adapter in ("spectralmoe", "rein", "depthforge", "set", "fada"):
        adapter_kwargs = {"token_length": 8, "query_dim": 32, **adapter_kwargs}
    if adapter == "spectralmoe":
        adapter_kwargs = {"num_experts": 3, "rank": 4, **adapter_kwargs}
    if adapter in ("rein", "depthforge", "fada"):
        adapter_kwargs = {"rank": 4, **adapter_kwargs}
    if head == "mask2former" and adapter == "freeze":
        head_kwargs["num_queries"] = 8
    return build_segmentor(
        backbone=backbone,
        adapter=adapter,
        head=head,
        depth="tiny-depth-anything",
        sensor=sensor,
        num_classes=4,
        pretrained=False,
        pixel_mean=[100.0] * 4 if sensor == "gf2" else None,
        pixel_std=[50.0] * 4 if sensor == "gf2" else None,
        adapter_kwargs=adapter_kwargs,
        head_kwargs=head_kwargs,
    )


def fixed_batch(bands=4, size=32):
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(2, bands, size, size, generator=generator) * 255
    mask = torch.randint(0, 4, (2, size, size), generator=generator)
    mask[:, :4, :4] = 255
    return image, mask


def test_spectralmoe_trains_frozen_parts_stay_fixed():
    model = tiny_model()
    model.train()
    assert not model.backbone.training and not model.depth_encoder.training
    frozen_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    depth_before = {k: v.clone() for k, v in model.depth_encoder.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(not p.requires_grad for p in model.backbone.parameters())
    adapter_before = {k: v.clone() for k, v in model.adapter.named_parameters()}
    optimiser = torch.optim.AdamW(trainable, lr=1e-3)
    image, mask = fixed_batch()
    losses = []
    for _ in range(12):
        terms = model.loss(image, mask)
        assert {"loss_aux"} <= set(terms)
        total = sum(terms.values())
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
        losses.append(sum(v.item() for k, v in terms.items() if k != "loss_aux"))
    assert losses[-1] < losses[0]
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, frozen_before[key]), key
    for key, value in model.depth_encoder.state_dict().items():
        assert torch.equal(value, depth_before[key]), key
    changed = [k for k, v in model.adapter.named_parameters() if not torch.equal(v, adapter_before[k])]
    assert any(k.startswith("experts") or "expert" in k for k in changed), changed
    assert "scale" in changed


@pytest.mark.parametrize("head", ["mask2former", "fpn"])
def test_freeze_baseline_runs_backbone_without_graph(head):
    model = tiny_model(adapter="freeze", head=head)
    assert model.depth_encoder is None
    image, mask = fixed_batch()
    features, aux = model.extract_features(image)
    assert all(not f.requires_grad for f in features) and aux.item() == 0.0
    assert [f.shape[-1] for f in features] == [8, 4, 2, 1]
    terms = model.loss(image, mask)
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in model.head.parameters() if p.requires_grad)


def test_freeze_features_equal_plain_backbone_stepping():
    model = tiny_model(adapter="freeze", head="fpn")
    image, _ = fixed_batch()
    features, _ = model.extract_features(image)
    tokens, grid = model.backbone.embed(model.normalize(image))
    for layer in range(model.backbone.num_layers):
        tokens = model.backbone.run_block(layer, tokens, grid)
        if layer == model.backbone.out_indices[2]:
            assert torch.allclose(features[2], model.backbone.tokens_to_map(tokens, grid))


def test_predict_whole_pads_odd_sizes_and_slide_matches_whole_for_one_window():
    model = tiny_model(head="fpn").eval()
    image = torch.rand(1, 4, 40, 56) * 255
    whole = model.predict_logits(image, mode="whole")
    assert whole.shape == (1, 4, 40, 56)
    single = model.predict_logits(image, mode="slide", crop=64)
    assert torch.allclose(single, whole, atol=1e-5)
    slide = model.predict_logits(image, mode="slide", crop=32, stride=16)
    assert slide.shape == whole.shape and torch.isfinite(slide).all()


def test_slide_averages_overlapping_windows():
    model = tiny_model(head="fpn").eval()
    image = torch.rand(1, 4, 48, 48) * 255
    slide = model.predict_logits(image, mode="slide", crop=32, stride=16)
    top_left = model.predict_logits(image[..., :32, :32], mode="whole")
    # pixels covered by the top-left window only
    assert torch.allclose(slide[..., :16, :16], top_left[..., :16, :16], atol=1e-5)
    shifted = model.predict_logits(image[..., :32, 16:48], mode="whole")
    both = (top_left[..., :16, 16:32] + shifted[..., :16, :16]) / 2
    assert torch.allclose(slide[..., :16, 16:32], both, atol=1e-5)


def test_depth_rgb_chooses_bands_by_wavelength_and_stretches():
    model = tiny_model(sensor="gf2")  # NIR,R,G,B
    image = torch.zeros(1, 4, 32, 32)
    image[:, 0] = 250  # NIR must not reach the depth model
    image[:, 1] = torch.linspace(0, 100, 32)  # R
    image[:, 2] = 7.0
    rgb = model.depth_rgb(image)
    assert rgb.shape == (1, 3, 32, 32)
    assert rgb[0, 0].min() == 0 and rgb[0, 0].max() == 1
    assert torch.all(rgb[0, 1] == 0)  # constant band → 0 after stretching
    model.depth_input = "scale"
    assert torch.allclose(model.depth_rgb(image)[0, 1], torch.full((32, 32), 7 / 255))


def test_bad_inputs_raise_clear_errors():
    model = tiny_model(head="fpn")
    with pytest.raises(ValueError, match=r"3 bands .*expects 4"):
        model.loss(torch.rand(1, 3, 32, 32), torch.zeros(1, 32, 32, dtype=torch.long))
    with pytest.raises(ValueError, match="mask shape"):
        model.loss(torch.rand(1, 4, 32, 32), torch.zeros(1, 16, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="no blue band"):
        tiny_model(sensor="vaihingen")
    with pytest.raises(KeyError, match="unknown adapter"):
        tiny_model(adapter="nope")


def test_adapter_queries_drive_mask2former():
    model = tiny_model()
    assert model.head.uses_queries
    image, mask = fixed_batch()
    terms = model.loss(image, mask)
    sum(terms.values()).backward()
    assert model.adapter.query_link.merge.weight.grad is not None


METHODS = ["freeze", "lora", "adaptformer", "vpt", "rein", "depthforge", "set", "fada", "spectralmoe"]


@pytest.mark.parametrize("head", ["mask2former", "fpn"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_one_step_with_both_heads(method, head):
    options = {"num_prompts": 4} if method == "vpt" else {}
    model = tiny_model(adapter=method, head=head, **options)
    head_params = {id(p) for p in model.head.parameters()}
    method_params = [p for p in model.parameters() if p.requires_grad and id(p) not in head_params]
    assert (len(method_params) == 0) == (method == "freeze")
    before = [p.detach().clone() for p in method_params]
    frozen_before = {k: v.clone() for k, v in model.backbone.state_dict().items() if "lora_" not in k}
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    image, mask = fixed_batch()
    terms = model.loss(image, mask)
    total = sum(terms.values())
    assert torch.isfinite(total)
    total.backward()
    optimiser.step()
    if method != "freeze":
        assert any(not torch.equal(b, p) for b, p in zip(before, method_params)), "method weights did not move"
    for key, value in model.backbone.state_dict().items():
        if key in frozen_before:
            assert torch.equal(value, frozen_before[key]), key


def test_gradient_checkpointing_gives_the_same_gradients():
    image, mask = fixed_batch()
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(adapter="rein", head="fpn")
        model.backbone.gradient_checkpointing = checkpointing
        sum(model.loss(image, mask).values()).backward()
        grads.append({n: p.grad for n, p in model.adapter.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "scale" in grads[0]
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-6), name


def test_bf16_autocast_forward_and_backward():
    model = tiny_model()
    image, mask = fixed_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = model.loss(image, mask)
    total = sum(terms.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.adapter.scale.grad is not None


def test_repeated_out_indices_still_give_four_maps():
    model = tiny_model(adapter="freeze", head="fpn", backbone="tiny-dofa")
    assert len(set(model.backbone.out_indices)) < 4  # tiny-dofa taps a block twice
    features, _ = model.extract_features(fixed_batch()[0])
    assert [f.shape[-1] for f in features] == [8, 4, 2, 1]


@pytest.mark.parametrize("backbone", ["tiny-dinov3", "tiny-dofa"])
def test_cpu_bf16_autocast_features_stay_close_to_fp32(backbone):
    """torch's CPU bf16 patchify convolution is wrong for 4 bands at kernel 16 (relative error ≈ 1):
    the segmentor must keep the patch embedding exact so a bf16 map equals the fp32 one up to rounding."""
    model = tiny_model(adapter="rein", head="fpn", backbone=backbone).eval()
    image = torch.rand(2, 4, 64, 64, generator=torch.Generator().manual_seed(3)) * 255
    with torch.no_grad():
        reference, _ = model.extract_features(image)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, _ = model.extract_features(image)
    for ref, got in zip(reference, low):
        assert (ref - got.float()).abs().max() <= 0.05 * ref.abs().max()


# ------------------------------------------------------------------ the authors' test-time settings
def _official_depth_model(sensor: str = "gf2"):
    torch.manual_seed(0)
    bands = 4 if sensor == "gf2" else 3
    return build_segmentor(
        backbone="tiny-dinov3", adapter="spectralmoe", head="fpn", depth="tiny-depth-anything", sensor=sensor,
        num_classes=4, pretrained=False, pixel_mean=[100.0, 90.0, 80.0, 70.0][:bands], pixel_std=[50.0] * bands,
        depth_input="official", adapter_kwargs={"num_experts": 3, "rank": 4, "token_length": 8, "query_dim": 32},
    )  # fmt: skip


def test_official_depth_input_feeds_bands_2_to_4_of_the_normalised_image():
    """The authors' released code: ``x[:, 1:]`` of the dataset-normalised input, no ImageNet step."""
    model = _official_depth_model().eval()
    seen = []
    model.depth_encoder.register_forward_hook(lambda m, a, kw, out: seen.append((a[0], kw)), with_kwargs=True)
    image, _ = fixed_batch()
    with torch.no_grad():
        model.extract_features(image)
    normalised = (image - torch.tensor([100.0, 90.0, 80.0, 70.0]).view(1, 4, 1, 1)) / 50.0
    torch.testing.assert_close(seen[0][0], normalised[:, 1:])
    assert seen[0][1] == {"imagenet_normalize": False}
    reversed_bands = list(reversed(model.wavelengths.tolist()))
    with pytest.raises(ValueError, match="model's own band order"):
        model.extract_features(image, wavelengths=reversed_bands)


def test_official_depth_input_is_only_defined_for_four_bands():
    with pytest.raises(ValueError, match="has 3 bands"):
        _official_depth_model(sensor="rgb")


def test_whole_image_without_padding_refuses_sizes_that_are_not_patch_multiples():
    model = tiny_model(head="fpn").eval()
    image, _ = fixed_batch(size=48)
    with torch.no_grad():
        torch.testing.assert_close(model.predict_logits(image, pad=False), model.predict_logits(image))
        assert model.predict_logits(image[..., :40], pad=True).shape[-1] == 40
        with pytest.raises(ValueError, match="48x40 is not a multiple of the patch size 16"):
            model.predict_logits(image[..., :40], pad=False)
