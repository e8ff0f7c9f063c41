"""DSTC: numbers against a plain re-statement of the authors' forward, the clustering against a loop
reference of their CUDA kernel, their checkpoint layout, ImageNet init, sizes, padding, the engine path.

The reference functions below re-state laprf/DSTC (``models/modeling.py``, ``models/backbones/resnet.py``,
``models/spectrum_pixel_clustering.py``, ``models/clustering/pair_wise_distance_cuda_source.py``,
``models/VIT.py``, ``train.py``) with plain torch ops, on state dicts under the authors' key names.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from affine import Affine

from spectralmoe.bands import get_sensor
from spectralmoe.engine.export import export_trainable, load_exported
from spectralmoe.models.accounting import build_on_meta, parameter_report
from spectralmoe.models.dstc import (
    DSTC_CONFIGS,
    DSTCConfig,
    build_dstc,
    load_imagenet_encoder,
    spectral_derivative,
    supertoken_affinity,
)
from spectralmoe.predict import predict_scene

OHS = list(get_sensor("ohs").wavelengths_um)
GF2 = list(get_sensor("gf2").wavelengths_um)
TINY = DSTC_CONFIGS["tiny-resnet18"]
# The authors' spectral_derivate: OHS centre wavelengths in nm, used only when C == 32.
AUTHORS_OHS_NM = [466, 480, 500, 520, 536, 550, 566, 580, 596, 610, 626, 640, 656, 670, 686, 700, 716, 730, 746, 760,
                  776, 790, 806, 820, 836, 850, 866, 880, 896, 910, 926, 940]  # fmt: skip


# ----------------------------------------------------------------------------------- the authors' layout
def official_shapes(cfg: DSTCConfig, bands: int, classes: int, image_size: int) -> dict[str, tuple[int, ...]]:
    """Every key of the authors' ``DSTC(cfg).state_dict()`` (ResNet-18 encoder) and its shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    low, high = cfg.widths

    def conv(name, out, inp, k, bias=False):
        shapes[f"{name}.weight"] = (out, inp, k, k)
        if bias:
            shapes[f"{name}.bias"] = (out,)

    def bn(name, c):
        for p in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{p}"] = (c,)
        shapes[f"{name}.num_batches_tracked"] = ()

    def lin(name, out, inp, bias=True):
        shapes[f"{name}.weight"] = (out, inp)
        if bias:
            shapes[f"{name}.bias"] = (out,)

    def ln(name, c):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (c,), (c,)

    e = "UNet.encoder."
    conv(e + "conv1", low, bands, 7)
    bn(e + "bn1", low)
    for i in range(cfg.blocks[0]):
        conv(e + f"layer1.{i}.conv1", low, low, 3), bn(e + f"layer1.{i}.bn1", low)
        conv(e + f"layer1.{i}.conv2", low, low, 3), bn(e + f"layer1.{i}.bn2", low)
    for i in range(cfg.blocks[1]):
        conv(e + f"layer2.{i}.conv1", high, low if i == 0 else high, 3), bn(e + f"layer2.{i}.bn1", high)
        conv(e + f"layer2.{i}.conv2", high, high, 3), bn(e + f"layer2.{i}.bn2", high)
        if i == 0:
            conv(e + "layer2.0.downsample.0", high, low, 1), bn(e + "layer2.0.downsample.1", high)
    u, f = "UNet.up_sample.", cfg.feature_dim
    conv(u + "up1.0", low, high, 1, True), bn(u + "up1.1", low)
    conv(u + "up2.0", low, 2 * low, 1, True), bn(u + "up2.1", low)
    conv(u + "up3.0", f, 2 * low, 1, True), bn(u + "up3.1", f)
    conv("cluster.f", f, bands, 1, True), conv("cluster.f_sdf1", f, bands - 1, 1, True)
    v, d, inner = "vit.", cfg.dim, cfg.heads * cfg.head_dim
    ln(v + "to_patch_embedding.0", f), lin(v + "to_patch_embedding.1", d, f), ln(v + "to_patch_embedding.2", d)
    shapes[v + "pos_embedding"], shapes[v + "cls_token"] = (1, image_size**2 + 1, d), (1, 1, d)
    for i in range(cfg.depth):
        t = f"{v}transformer.layers.{i}."
        ln(t + "0.norm", d), lin(t + "0.to_qkv", 3 * inner, d, bias=False), lin(t + "0.to_out.0", d, inner)
        ln(t + "1.net.0", d), lin(t + "1.net.1", cfg.mlp_dim, d), lin(t + "1.net.4", d, cfg.mlp_dim)
    ln(v + "transformer.norm", d), lin(v + "mlp_head", classes, d)
    return shapes


def official_state(cfg, bands, classes, image_size, seed=0) -> dict[str, torch.Tensor]:
    """Random tensors in the authors' layout, scaled so activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_shapes(cfg, bands, classes, image_size).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith(("running_mean", ".bias")) or "cls_token" in key or "pos_embedding" in key:
            state[key] = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1:  # norm weights
            state[key] = 1 + torch.randn(shape, generator=g) * 0.1
        else:
            fan_in = math.prod(shape[1:])
            state[key] = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
    return state


# ----------------------------------------------------------------------------- the authors' forward
def ref_bn(x, s, name):
    return F.batch_norm(x, s[name + ".running_mean"], s[name + ".running_var"], s[name + ".weight"],
                        s[name + ".bias"], False, 0.0, 1e-5)  # fmt: skip


def ref_basic_block(x, s, name, stride):
    out = F.relu(ref_bn(F.conv2d(x, s[name + ".conv1.weight"], stride=stride, padding=1), s, name + ".bn1"))
    out = ref_bn(F.conv2d(out, s[name + ".conv2.weight"], padding=1), s, name + ".bn2")
    identity = x
    if name + ".downsample.0.weight" in s:
        identity = ref_bn(F.conv2d(x, s[name + ".downsample.0.weight"], stride=stride), s, name + ".downsample.1")
    return F.relu(out + identity)


def ref_unet(x, s, cfg):
    """resnet._forward_impl (stem, layer1, layer2) then Encoder.forward's up_sample path."""
    e = "UNet.encoder."
    stem = F.relu(ref_bn(F.conv2d(x, s[e + "conv1.weight"], stride=2, padding=3), s, e + "bn1"))
    y = F.max_pool2d(stem, 3, 2, 1)
    for i in range(cfg.blocks[0]):
        y = ref_basic_block(y, s, e + f"layer1.{i}", 1)
    quarter = y
    for i in range(cfg.blocks[1]):
        y = ref_basic_block(y, s, e + f"layer2.{i}", 2 if i == 0 else 1)

    def up(name, z):
        return F.relu(ref_bn(F.conv2d(z, s[name + ".0.weight"], s[name + ".0.bias"]), s, name + ".1"))

    u = "UNet.up_sample."
    feat = F.interpolate(up(u + "up1", y), size=quarter.shape[-2:], mode="nearest")
    feat = F.interpolate(up(u + "up2", torch.cat([feat, quarter], 1)), size=stem.shape[-2:], mode="nearest")
    return F.interpolate(up(u + "up3", torch.cat([feat, stem], 1)), size=x.shape[-2:], mode="nearest")


def ref_sdf(x):
    derivate = x[:, 1:] - x[:, :-1]
    if x.shape[1] == 32:
        delta = torch.tensor(AUTHORS_OHS_NM)
        return derivate / (delta[1:] - delta[:-1]).view(1, -1, 1, 1)
    return derivate


def ref_ssn(pixel_features, deep_feature, sdf_feature, proposal, n_iter=2, update_seeds=True):
    """ssn_iter with the CUDA distance kernel as plain loops over pixels and the 9 seed offsets."""
    b, c, h, w = pixel_features.shape
    nw = nh = proposal
    num_spixels = nw * nh
    spix = F.adaptive_avg_pool2d(pixel_features, (nh, nw)).reshape(b, c, -1)
    labels = torch.arange(num_spixels, dtype=torch.float32).reshape(1, 1, nh, nw)
    init = F.interpolate(labels, size=(h, w), mode="nearest").reshape(-1).long()
    n = h * w
    r = torch.arange(-1, 2.0)
    relative = torch.cat([r - nw, r, r + nw])
    abs_pix = torch.arange(n)[None, None].repeat(b, 9, 1).reshape(-1)
    abs_spix = (init[None, None, :] + relative[None, :, None]).expand(b, 9, n).reshape(-1).long()
    abs_batch = torch.arange(b)[:, None, None].repeat(1, 9, n).reshape(-1)
    abs_indices = torch.stack([abs_batch, abs_spix, abs_pix])
    pix = pixel_features.reshape(b, c, n)
    guide = deep_feature.reshape(b, c, n) + sdf_feature.reshape(b, c, n)
    permuted = pix.permute(0, 2, 1)
    for k in range(n_iter):
        dist = torch.empty(b, 9, n)
        for p in range(n):
            for offset in range(9):
                dx, dy = offset % 3 - 1, offset // 3 - 1
                x_index, y_index = int(init[p]) % nw, int(init[p]) // nw
                if not (0 <= x_index + dx < nw and 0 <= y_index + dy < nh):
                    dist[:, offset, p] = 1e16
                    continue
                query = int(init[p]) + dx + nw * dy
                dist[:, offset, p] = ((pix[:, :, p] + guide[:, :, p] - spix[:, :, query]) ** 2).sum(1)
        affinity = (-dist).softmax(1).reshape(-1)
        mask = (abs_indices[1] >= 0) & (abs_indices[1] < num_spixels)
        dense = torch.sparse_coo_tensor(abs_indices[:, mask], affinity[mask], check_invariants=False).to_dense()
        if k < n_iter - 1 and update_seeds:
            spix = (torch.bmm(dense, permuted) / (dense.sum(2, keepdim=True) + 1e-16)).permute(0, 2, 1)
    return dense


def fold_windows(x, f):  # rearrange "b c (f1 w) (f2 h) -> (b f1 f2) c w h"
    b, c, hh, ww = x.shape
    return x.reshape(b, c, f, hh // f, f, ww // f).permute(0, 2, 4, 1, 3, 5).reshape(b * f * f, c, hh // f, ww // f)


def ref_vit(tokens, s, cfg, training=False):
    v, d = "vit.", cfg.dim
    e = v + "to_patch_embedding."
    x = F.layer_norm(tokens, (tokens.shape[-1],), s[e + "0.weight"], s[e + "0.bias"])
    x = F.linear(x, s[v + "to_patch_embedding.1.weight"], s[v + "to_patch_embedding.1.bias"])
    x = F.layer_norm(x, (d,), s[v + "to_patch_embedding.2.weight"], s[v + "to_patch_embedding.2.bias"])
    x = torch.cat([s[v + "cls_token"].expand(len(x), -1, -1), x], 1)
    x = x + s[v + "pos_embedding"][:, : x.shape[1]]
    for i in range(cfg.depth):
        t = f"{v}transformer.layers.{i}."
        h = F.layer_norm(x, (d,), s[t + "0.norm.weight"], s[t + "0.norm.bias"])
        q, k, val = F.linear(h, s[t + "0.to_qkv.weight"]).chunk(3, -1)
        q, k, val = (z.reshape(len(x), -1, cfg.heads, cfg.head_dim).transpose(1, 2) for z in (q, k, val))
        attn = (q @ k.transpose(-1, -2) * cfg.head_dim**-0.5).softmax(-1)
        out = (attn @ val).transpose(1, 2).reshape(len(x), -1, cfg.heads * cfg.head_dim)
        x = F.linear(out, s[t + "0.to_out.0.weight"], s[t + "0.to_out.0.bias"]) + x
        h = F.layer_norm(x, (d,), s[t + "1.net.0.weight"], s[t + "1.net.0.bias"])
        h = F.linear(F.gelu(F.linear(h, s[t + "1.net.1.weight"], s[t + "1.net.1.bias"])), s[t + "1.net.4.weight"],
                     s[t + "1.net.4.bias"])  # fmt: skip
        x = h + x
    x = F.layer_norm(x, (d,), s[v + "transformer.norm.weight"], s[v + "transformer.norm.bias"])
    return F.linear(x[:, 1:], s[v + "mlp_head.weight"], s[v + "mlp_head.bias"])


def ref_dstc(s, cfg, img, gt, classes, aggregate="affinity", update_seeds=True):
    """DSTC.forward(img, gt) → (vit_out [B, S, K], labels [B, K, S], spix_map [B, H, W]); gt uses -1 = ignore."""
    feat = ref_unet(img, s, cfg)
    sdf = ref_sdf(img)
    f, p = cfg.fold, cfg.proposal
    hsi_in = F.conv2d(img, s["cluster.f.weight"], s["cluster.f.bias"])
    sdf_in = F.conv2d(sdf, s["cluster.f_sdf1.weight"], s["cluster.f_sdf1.bias"])
    value = fold_windows(feat, f)
    sim = ref_ssn(value, fold_windows(hsi_in, f), fold_windows(sdf_in, f), p, cfg.iterations, update_seeds)
    value_centers = F.adaptive_avg_pool2d(value, (p, p)).flatten(2).transpose(1, 2)
    idx = sim.max(dim=1, keepdim=True)[1]
    mask = torch.zeros_like(sim).scatter_(1, idx, 1.0)
    weights = sim * mask if aggregate == "affinity" else mask
    value2 = value.flatten(2).transpose(1, 2)
    out = ((value2[:, None] * weights[..., None]).sum(2) + value_centers) / (weights.sum(-1, keepdim=True) + 1.0)
    b, hh, ww = gt.shape
    out = out.reshape(b, f * f * p * p, -1)
    mask5 = mask.reshape(b, f * f, p * p, hh // f, ww // f)
    small = (mask5 * torch.arange(p * p).view(1, 1, -1, 1, 1)).sum(2)
    small = small + torch.arange(0, f * f * p * p, p * p).view(1, -1, 1, 1)
    spix_map = small.reshape(b, f, f, hh // f, ww // f).permute(0, 1, 3, 2, 4).reshape(b, hh, ww)
    gt_windows = gt.reshape(b, f, hh // f, f, ww // f).permute(0, 1, 3, 2, 4).reshape(b, f * f, hh // f, ww // f) + 1
    gt_filt = (gt_windows[:, :, None] * mask5).flatten(3).long()
    count = torch.zeros(b, f * f, p * p, classes + 1, dtype=torch.long)
    count.scatter_add_(3, gt_filt, torch.ones_like(gt_filt))
    labels = count[..., 1:].reshape(b, f * f * p * p, classes).transpose(1, 2).float()
    return ref_vit(out, s, cfg), labels, spix_map.long()


def tiny_model(bands=OHS, seed=0, classes=5):
    torch.manual_seed(seed)
    return build_dstc("tiny-resnet18", num_classes=classes, wavelengths=bands, pretrained=False).eval()


# ----------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("proposal", [2, 3])
def test_clustering_matches_a_loop_reference_of_the_cuda_kernel(proposal):
    """Same soft affinity and the same hard assignment as the authors' kernel run pixel by pixel; a
    reference that does not move its seeds between rounds assigns pixels differently (negative control)."""
    g = torch.Generator().manual_seed(proposal)
    values = torch.randn(3, 6, 6, 9, generator=g)  # 3 windows of 6 × 9 pixels, 6 channels
    deep, sdf = torch.randn(3, 6, 6, 9, generator=g), torch.randn(3, 6, 6, 9, generator=g) * 0.5
    ours = supertoken_affinity(values, values + deep + sdf, proposal, iterations=2)
    reference = ref_ssn(values, deep, sdf, proposal, n_iter=2)
    assert ours.shape == reference.shape == (3, proposal**2, 54)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    assert torch.equal(ours.argmax(1), reference.argmax(1))
    if proposal == 3:  # corner seeds are outside a corner pixel's 3 × 3 neighbourhood: exactly 0
        assert float(ours[:, 8, 0].abs().max()) == 0.0
    frozen_seeds = ref_ssn(values, deep, sdf, proposal, n_iter=2, update_seeds=False)
    assert not torch.equal(ours.argmax(1), frozen_seeds.argmax(1))


def test_forward_matches_the_authors_computation_on_their_checkpoint_layout(tmp_path):
    """A stand-in ``best_model.pth`` in the authors' key layout (``module.`` prefix, 32² + 1 position rows)
    loads strictly; logits, supertoken map, count targets, loss and per-pixel scores equal the re-stated
    original. Negative control: aggregating by pixel counts instead of affinities changes the logits."""
    state = official_state(TINY, 32, 5, image_size=32)
    path = tmp_path / "best_model.pth"
    torch.save({"module." + k: v for k, v in state.items()}, path)
    model = build_dstc("tiny-resnet18", num_classes=5, wavelengths=OHS, pretrained=True, checkpoint=path).eval()
    assert model.transformer.pos_embedding.shape[1] == TINY.num_supertokens + 1  # rows kept: the used ones
    g = torch.Generator().manual_seed(1)
    img = torch.rand(2, 32, 32, 32, generator=g)
    mask = torch.randint(0, 5, (2, 32, 32), generator=g)
    mask[0, :5, :7] = 255
    ref_logits, ref_labels, ref_map = ref_dstc(state, TINY, img, torch.where(mask == 255, -1, mask), 5)
    logits, supertoken_map = model(img)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(supertoken_map, ref_map)
    torch.testing.assert_close(model.supertoken_targets(supertoken_map, mask), ref_labels.transpose(1, 2))
    expected_loss = torch.nn.CrossEntropyLoss(ignore_index=-1)(ref_logits.permute(0, 2, 1), ref_labels)
    torch.testing.assert_close(model.loss(img, mask)["loss_ce"], expected_loss, rtol=1e-4, atol=1e-5)
    scores = model.predict_logits(img)
    onehot = (ref_map[..., None] == torch.arange(ref_logits.shape[1])).float()  # test.py's (mask @ pred)
    expected = torch.einsum("bhws,bsk->bkhw", onehot, ref_logits)
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)
    by_count, _, _ = ref_dstc(state, TINY, img, mask.clamp(max=4), 5, aggregate="count")
    assert (by_count - ref_logits).abs().max() > 1e-3
    # pretrained=False (rebuilding a trained model) does not read it: the weights stay random
    unread = build_dstc("tiny-resnet18", num_classes=5, wavelengths=OHS, pretrained=False, checkpoint=path)
    assert not torch.equal(unread.cluster.image_proj.weight, model.cluster.image_proj.weight)


def test_spectral_derivative_uses_the_sensor_wavelengths():
    """OHS: identical to the authors' (their 32-band branch); GF-2 NIR,R,G,B: sorted by wavelength and
    divided by the steps in nm, where the authors' code takes NIR−R, R−G, G−B undivided."""
    img = torch.randn(2, 32, 4, 4)
    torch.testing.assert_close(spectral_derivative(img, OHS), ref_sdf(img), rtol=1e-6, atol=1e-7)
    four = torch.randn(1, 4, 3, 3)
    bgrn = four[:, [3, 2, 1, 0]]
    expected = (bgrn[:, 1:] - bgrn[:, :-1]) / torch.tensor([70.0, 105.0, 165.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(spectral_derivative(four, GF2), expected)
    assert (spectral_derivative(four, GF2) - ref_sdf(four)).abs().max() > 1e-2  # the authors' non-OHS branch
    with pytest.raises(ValueError, match="distinct wavelengths"):
        build_dstc("tiny-resnet18", num_classes=3, wavelengths=[0.5, 0.5, 0.6], pretrained=False)
    with pytest.raises(ValueError, match="a wavelength"):
        build_dstc("tiny-resnet18", num_classes=3, wavelengths=[0.5, float("nan")], pretrained=False)


def test_checkpoint_with_unknown_or_missing_keys_is_refused(tmp_path):
    state = official_state(TINY, 32, 5, image_size=32)
    path = tmp_path / "best_model.pth"
    torch.save({**state, "vit.extra_head.weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match=r"not DSTC's \['vit.extra_head.weight'\]"):
        build_dstc("tiny-resnet18", num_classes=5, wavelengths=OHS, pretrained=True, checkpoint=path)
    del state["cluster.f_sdf1.bias"]
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing \['cluster.derivative_proj.bias'\]"):
        build_dstc("tiny-resnet18", num_classes=5, wavelengths=OHS, pretrained=True, checkpoint=path)
    with pytest.raises(ValueError, match="shape mismatch"):  # a 4-band model cannot take the 32-band file
        torch.save(official_state(TINY, 32, 5, image_size=32), path)
        build_dstc("tiny-resnet18", num_classes=5, wavelengths=GF2, pretrained=True, checkpoint=path)


def torchvision_resnet18_state(seed=0) -> dict[str, torch.Tensor]:
    """A stand-in of torchvision's ``resnet18`` state dict (every key and shape, layer3/4 and fc included)."""
    g = torch.Generator().manual_seed(seed)
    state = {"conv1.weight": torch.randn(64, 3, 7, 7, generator=g)}
    def bn(name, c):  # noqa: E306
        for p in ("weight", "bias", "running_mean", "running_var"):
            state[f"{name}.{p}"] = torch.rand(c, generator=g) + 0.5
        state[f"{name}.num_batches_tracked"] = torch.tensor(0)
    bn("bn1", 64)
    inp = 64
    for layer, width in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            n = f"layer{layer}.{block}"
            state[f"{n}.conv1.weight"] = torch.randn(width, inp if block == 0 else width, 3, 3, generator=g)
            bn(f"{n}.bn1", width)
            state[f"{n}.conv2.weight"] = torch.randn(width, width, 3, 3, generator=g)
            bn(f"{n}.bn2", width)
            if block == 0 and inp != width:
                state[f"{n}.downsample.0.weight"] = torch.randn(width, inp, 1, 1, generator=g)
                bn(f"{n}.downsample.1", width)
        inp = width
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 512, generator=g), torch.randn(1000, generator=g)
    # layer3/4 and fc are never read: keep their shapes, not their memory (a 1-element storage each)
    used = ("conv1", "bn1", "layer1", "layer2")
    return {k: v if k.startswith(used) or not v.ndim else v.flatten()[:1].expand(v.shape) for k, v in state.items()}


def test_imagenet_resnet18_initialises_the_encoder_like_the_authors(tmp_path):
    """Every stem/layer1/layer2 tensor comes from the file; conv1 is skipped for N ≠ 3 bands (authors'
    rule) and loaded for RGB; the decoder and the rest keep their init."""
    state = torchvision_resnet18_state()
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(state, path)
    model = build_dstc("resnet18", num_classes=24, wavelengths=OHS, pretrained=True, weights=path)
    own = model.encoder.state_dict()
    assert set(own) <= set(state) and not any(k.startswith(("layer3", "layer4", "fc")) for k in own)
    for key, value in own.items():
        if key == "conv1.weight":
            assert value.shape == (64, 32, 7, 7)
        else:
            assert torch.equal(value, state[key]), key
    rgb = build_dstc("resnet18", num_classes=6, wavelengths=[0.665, 0.56, 0.49], pretrained=True, weights=path)
    assert torch.equal(rgb.encoder.conv1.weight, state["conv1.weight"])
    del state["layer2.1.bn2.running_var"]
    torch.save(state, path)
    with pytest.raises(ValueError, match="missing 'layer2.1.bn2.running_var'"):
        load_imagenet_encoder(model, path)


def test_parameter_counts_with_and_without_the_authors_unused_position_rows():
    """71,107,160 as the authors' ResNet-18 DSTC (24 classes, 32 bands, 512² + 1 position rows, RSFM.md §5),
    4,260,440 with the 1025 rows it reads; ``spectralmoe params`` reports both."""
    model = build_on_meta(architecture="dstc", backbone="resnet18", sensor="ohs", num_classes=24)
    report = parameter_report(model)
    assert report["total_trainable"] == 4_260_440 and report["authors_total"] == 71_107_160
    assert report["method_breakdown"] == {"encoder": 774_016, "decoder": 29_344, "cluster": 6_240,
                                          "transformer": 3_450_840}  # fmt: skip
    with torch.device("meta"):
        authors = build_dstc("resnet18", num_classes=24, wavelengths=OHS, pretrained=False, position_rows=512**2 + 1)
    assert sum(p.numel() for p in authors.parameters()) == 71_107_160
    assert DSTC_CONFIGS["resnet18"].num_supertokens == 1024


def test_spectralmoe_params_prints_both_counts(capsys):
    from spectralmoe.cli import main

    assert main(["params", "--architecture", "dstc", "--sensor", "ohs", "--num-classes", "24"]) == 0
    out = capsys.readouterr().out
    assert "total trainable:                           4,260,440" in out
    assert "(262,145 rows instead of 1,025): 71,107,160" in out


def test_sizes_that_are_not_multiples_of_the_fold_are_padded_and_cropped():
    model = tiny_model(GF2, classes=4)
    img = torch.rand(2, 4, 37, 42) * 255  # fold 4: padded to 40 × 44
    scores = model.predict_logits(img)
    assert scores.shape == (2, 4, 37, 42) and torch.isfinite(scores).all()
    padded = torch.zeros(2, 4, 40, 44)  # pixel_mean 0: what the model pads with
    padded[..., :37, :42] = img
    torch.testing.assert_close(scores, model.predict_logits(padded)[..., :37, :42])
    with pytest.raises(ValueError, match="divisible by fold=4"):
        model(img)  # the bare forward states the constraint; loss and predict_logits pad
    slide = model.predict_logits(img, mode="slide", crop=32, stride=16)
    assert slide.shape == (2, 4, 37, 42)
    mask = torch.randint(0, 4, (2, 37, 42))
    model.train()
    loss = model.loss(img, mask)["loss_ce"]
    loss.backward()
    assert torch.isfinite(loss)
    untouched = {n for n, p in model.named_parameters() if p.grad is None}
    # as in the original, the 1×1 convs that steer the (gradient-free) assignment receive no gradient
    assert untouched == {"cluster.image_proj.weight", "cluster.image_proj.bias", "cluster.derivative_proj.weight",
                         "cluster.derivative_proj.bias"}  # fmt: skip
    with pytest.raises(ValueError, match=r"labels \[9\] outside \[0, 4\)"):
        model.loss(img, torch.full((2, 37, 42), 9))
    with pytest.raises(ValueError, match="cannot take other wavelengths"):
        model.predict_logits(img, wavelengths=GF2[::-1])


def test_runs_under_cpu_bf16_autocast_with_fp32_convolutions():
    model = tiny_model(OHS)
    img = torch.rand(2, 32, 32, 32)
    exact = model.predict_logits(img)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model.predict_logits(img)
    assert torch.isfinite(mixed).all()
    assert (mixed.argmax(1) == exact.argmax(1)).float().mean() > 0.9


def test_export_round_trip_and_predict_scene(tmp_path):
    """A DSTC export (every tensor, BatchNorm statistics included) rebuilds the same model, and
    predict-scene maps a GeoTIFF with it."""
    model = tiny_model(GF2, seed=3, classes=4)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.add_(0.3)
    build = {"architecture": "dstc", "backbone": "tiny-resnet18", "sensor": "gf2", "num_classes": 4}
    folder = export_trainable(model, tmp_path / "export", build_config=build, class_names=list("abcd"))
    loaded = load_exported(folder)  # pretrained=True: a complete model downloads nothing
    img = torch.rand(1, 4, 48, 48) * 255
    torch.testing.assert_close(loaded.predict_logits(img), model.predict_logits(img), rtol=0, atol=0)
    scene = np.random.default_rng(0).uniform(0, 255, (4, 70, 90)).astype(np.float32)
    profile = {"driver": "GTiff", "height": 70, "width": 90, "count": 4, "dtype": "float32", "crs": "EPSG:32650",
               "transform": Affine(4.0, 0, 500000.0, 0, -4.0, 4000000.0)}  # fmt: skip
    with rasterio.open(tmp_path / "scene.tif", "w", **profile) as dst:
        dst.write(scene)
    summary = predict_scene(folder, tmp_path / "scene.tif", tmp_path / "map.tif", tile=48, overlap=16,
                            progress=False)  # fmt: skip
    with rasterio.open(tmp_path / "map.tif") as out:
        classes = out.read(1)
        assert out.crs.to_string() == "EPSG:32650" and classes.shape == (70, 90)
    assert set(np.unique(classes)) <= {0, 1, 2, 3} and sum(summary.class_pixels.values()) == 70 * 90
