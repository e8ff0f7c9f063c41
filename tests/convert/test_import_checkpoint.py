"""import_checkpoint: a released-model stand-in → an export that rebuilds exactly the released weights,
fed as the authors fed it; untrusted files never run code; every foreign key is used or refused."""

from __future__ import annotations

import hashlib
import json
import os
import pickle

import pytest
import torch

from spectralmoe.convert import import_checkpoint
from spectralmoe.convert.mmseg import route_state_dict
from spectralmoe.convert.safe_pickle import UnsafeCheckpointError, read_checkpoint
from spectralmoe.data.benchmarks import DG_TASKS
from spectralmoe.engine.export import load_exported, read_export_config
from tests.convert import mmdet_m2f_reference as m2f
from tests.convert import original_vit_reference as ref
from tests.convert.fakes import (  # noqa: F401 - tiny_depth_preset is a fixture
    AUTHORS_GID_CLASSES,
    HEAD,
    authors_backbone_file,
    authors_spectralmoe_checkpoint,
    released_rein_state,
    tiny_depth_preset,
    write_mmengine_checkpoint,
)
from tests.convert.test_mask2former_import import random_mmdet_head

TASK = DG_TASKS["fbp-cross-sensor"]


# ------------------------------------------------------------------------------ reading the file
def test_mmengine_checkpoint_with_uninstalled_classes_loads(tmp_path):
    path, _ = authors_spectralmoe_checkpoint(tmp_path / "ckpt.pth")
    contents = read_checkpoint(path)
    assert all(k.startswith(("decode_head.", "backbone.depthmoe.")) for k in contents.state_dict)
    assert contents.dropped == ["message_hub", "optimizer", "param_schedulers"]
    assert contents.meta["dataset_meta"]["classes"] == list(AUTHORS_GID_CLASSES)
    assert contents.meta["seed"] == 42 and contents.meta["np_scalar"] is None  # numpy scalar: dropped, not built


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["torch-zip", "torch-legacy", "raw-pickle"])
def test_a_pickle_that_runs_code_is_refused_before_it_runs(tmp_path, container):
    marker = tmp_path / "ran"
    payload = {"state_dict": {"w": torch.zeros(2)}, "meta": {"x": _RunsCode(str(marker))}}
    path = tmp_path / "evil.pth"
    if container == "raw-pickle":  # (a plain pickle of a tensor goes through torch.load itself: refused too)
        path.write_bytes(pickle.dumps({"meta": payload["meta"]}, protocol=2))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=container == "torch-zip")
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pth: refusing global posix\.system"):
        read_checkpoint(path)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError):  # a builtin that would run code is no better
        path.write_bytes(pickle.dumps({"w": _Eval()}, protocol=2))
        read_checkpoint(path)


class _Eval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


def test_plain_state_dict_files_and_bad_entries(tmp_path):
    torch.save({"decode_head.a": torch.ones(1)}, tmp_path / "flat.pth")
    assert list(read_checkpoint(tmp_path / "flat.pth").state_dict) == ["decode_head.a"]
    torch.save({"state_dict": {"a": [1, 2]}}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad\.pth: state dict entry 'a' is a list"):
        read_checkpoint(tmp_path / "bad.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(tmp_path / "text.pth")


# ------------------------------------------------------------------------------------- routing
def test_keys_outside_head_and_adapter_are_refused_by_name():
    head = {f"decode_head.{k}": v for k, v in random_mmdet_head(**HEAD).items()}
    rein = released_rein_state()
    with pytest.raises(KeyError, match=r"backbone\.blocks\.0\.attn\.qkv\.weight.*|frozen backbone"):
        route_state_dict({**head, **rein, "backbone.blocks.0.attn.qkv.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match=r"backbone\.depthforge\.learnable_tokens_a"):
        route_state_dict({**head, **rein, "backbone.depthforge.learnable_tokens_a": torch.zeros(1)})
    with pytest.raises(KeyError, match="one adapter"):
        route_state_dict(head)
    with pytest.raises(KeyError, match="no decode_head"):
        route_state_dict(rein)
    legacy = route_state_dict({**head, **released_rein_state(legacy=True)})
    assert legacy.legacy_query_link and {"transform.weight", "merge.weight"} <= set(legacy.adapter_state)


# ------------------------------------------------------------------------------- SpectralMoE import
def _reference_head_logits(model, head_sd, image):
    """The mmdet re-statement of the head on OUR backbone+adapter features and queries."""
    with torch.no_grad():
        features, _ = model.extract_features(image)
        queries = model.adapter.queries()
        ours = model.head(features, queries=queries)
        cls, masks = m2f.head_forward(features, queries, head_sd, HEAD["heads"])
    return ours, cls, masks


def test_spectralmoe_import_rebuilds_the_released_model(tmp_path, tiny_depth_preset):
    ckpt, head_sd = authors_spectralmoe_checkpoint(tmp_path / "iter_78760.pth")
    backbone_file = authors_backbone_file(tmp_path / "dinov3_converted_depthmoe.pth")
    result = import_checkpoint(ckpt, tmp_path / "export", task="fbp-cross-sensor", backbone="tiny-dinov3",
                               depth=tiny_depth_preset, backbone_weights=backbone_file)  # fmt: skip
    info = read_export_config(result.export)
    assert info["imported_from"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert info["imported_from"]["file"] == "iter_78760.pth"
    assert info["imported_from"]["backbone_weights"]["sha256"] == hashlib.sha256(backbone_file.read_bytes()).hexdigest()
    assert info["evaluation"] == {"mode": "whole", "pad": False}
    assert info["frozen_weights"] == {"backbone": "frozen/backbone", "depth": "frozen/depth"}
    build = info["build"]
    assert build["depth_input"] == "official" and build["adapter_kwargs"]["variant"] == "official"
    assert build["adapter_kwargs"]["gating"] == "laplace" and build["head_kwargs"]["num_heads"] == 2
    assert (build["pixel_mean"], build["pixel_std"]) == (list(TASK.mean), list(TASK.std))
    assert info["classes"] == list(TASK.classes)

    model = load_exported(result.export)  # frozen parts from the export's frozen/ folders
    released = read_checkpoint(ckpt).state_dict
    torch.testing.assert_close(model.adapter.experts_a[2][1], released["backbone.depthmoe.experts_a.2.1"])
    torch.testing.assert_close(model.adapter.query_link.merge.weight, released["backbone.depthmoe.merge.weight"])
    assert model.backbone.patch_conv.weight.shape[1] == 4  # the file's 4-band kernel, used as is

    image = torch.rand(1, 4, 64, 48, generator=torch.Generator().manual_seed(0)) * 255
    ours, cls, masks = _reference_head_logits(model, head_sd, image)
    for a, b in zip(ours.class_logits, cls):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    for a, b in zip(ours.mask_logits, masks):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-4)

    # The depth model sees bands 2-4 of the normalised image, as they are: the original DINOv2 forward of the
    # file's depth weights on exactly that input gives the tokens the adapter receives.
    square = torch.rand(1, 4, 64, 64, generator=torch.Generator().manual_seed(1)) * 255  # grid = the 4×4 table
    normalised = (square - torch.tensor(TASK.mean).view(1, 4, 1, 1)) / torch.tensor(TASK.std).view(1, 4, 1, 1)
    prefix = "depth_anything.pretrained."
    stored = read_checkpoint(backbone_file).state_dict
    depth_sd = {k[len(prefix):]: v for k, v in stored.items() if k.startswith(prefix)}
    seen = []
    handle = model.depth_encoder.register_forward_hook(lambda m, args, kwargs, out: seen.append((args, kwargs, out)),
                                                       with_kwargs=True)  # fmt: skip
    with torch.no_grad():
        model.extract_features(square)
    handle.remove()
    ((args, kwargs, tokens),) = seen
    torch.testing.assert_close(args[0], normalised[:, 1:])
    assert kwargs == {"imagenet_normalize": False}
    expected = ref.dinov2_blocks(depth_sd, normalised[:, 1:], heads=4)
    for layer, got in enumerate(tokens):
        torch.testing.assert_close(got, expected[layer][:, 1:], atol=1e-4, rtol=1e-4)

    with torch.no_grad():
        logits = model.predict_logits(image, **info["evaluation"])
    assert logits.shape == (1, TASK.num_classes, 64, 48)
    with pytest.raises(ValueError, match="not a multiple of the patch size 16"):
        model.predict_logits(image[..., :60, :], **info["evaluation"])


def test_checks_against_the_task_and_the_checkpoint_config(tmp_path, tiny_depth_preset):
    ckpt, _ = authors_spectralmoe_checkpoint(tmp_path / "c.pth")
    common = dict(backbone="tiny-dinov3", depth=tiny_depth_preset)
    with pytest.raises(ValueError, match="24 classes, task 'flair' has 12"):
        import_checkpoint(ckpt, tmp_path / "e1", task="flair", **common)
    with pytest.raises(ValueError, match="config says 'laplace'"):
        import_checkpoint(ckpt, tmp_path / "e2", task="fbp-cross-sensor", adapter_options={"gating": "softmax"},
                          **common)
    shuffled = tuple(reversed(AUTHORS_GID_CLASSES))
    head = random_mmdet_head(**HEAD)
    state = {**read_checkpoint(ckpt).state_dict, **{f"decode_head.{k}": v for k, v in head.items()}}
    other = write_mmengine_checkpoint(tmp_path / "other.pth", state, classes=shuffled)
    with pytest.raises(ValueError, match="same order"):
        import_checkpoint(other, tmp_path / "e3", task="fbp-cross-sensor", **common)
    rgb_file = authors_backbone_file(tmp_path / "rgb.pth", bands=3)
    with pytest.raises(ValueError, match="--patch-embed cmod3"):
        import_checkpoint(ckpt, tmp_path / "e4", task="fbp-cross-sensor", backbone_weights=rgb_file, **common)
    result = import_checkpoint(ckpt, tmp_path / "e5", task="fbp-cross-sensor", backbone_weights=rgb_file,
                               patch_embed="cmod3", **common)  # fmt: skip
    kernel = load_exported(result.export).backbone.patch_conv.weight
    original = read_checkpoint(rgb_file).state_dict["patch_embed.proj.weight"]
    torch.testing.assert_close(kernel, original[:, [0, 1, 2, 0]])
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), "failed imports left temporaries"
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e4").exists()


@pytest.mark.parametrize("legacy", [False, True])
def test_rein_import_keeps_its_slide_protocol(tmp_path, legacy):
    head = random_mmdet_head(replace_query_feat=True, **{**HEAD, "queries": HEAD["queries"]})
    state = {**released_rein_state(legacy=legacy), **{f"decode_head.{k}": v for k, v in head.items()}}
    torch.save(state, tmp_path / "rein.pth")  # a plain state dict works too
    result = import_checkpoint(tmp_path / "rein.pth", tmp_path / "export", task="fbp-cross-sensor",
                               backbone="tiny-dinov2")  # fmt: skip
    info = read_export_config(result.export)
    assert info["evaluation"] == {"mode": "slide", "crop": 512, "stride": 341, "pad": False}
    assert info["imported_from"]["legacy_query_link"] is legacy
    assert info["build"]["head_kwargs"]["replace_query_feat"] is True and "frozen_weights" not in info
    model = load_exported(result.export, pretrained=False)
    torch.testing.assert_close(model.adapter.tokens.a, state["backbone.reins.learnable_tokens_a"])
    torch.testing.assert_close(model.head.query_feat_proj.weight, head["querys2feat.weight"])
    key = "decode_head.token2query.transforms.0.weight" if legacy else "backbone.reins.transform.weight"
    torch.testing.assert_close(model.adapter.query_link.transform.weight, state[key])


def test_cli_import_writes_the_export_and_says_what_is_next(tmp_path, tiny_depth_preset, capsys):
    from spectralmoe.cli import main

    ckpt, _ = authors_spectralmoe_checkpoint(tmp_path / "c.pth")
    code = main(["import-checkpoint", str(ckpt), "--task", "fbp-cross-sensor", "--out", str(tmp_path / "export"),
                 "--backbone", "tiny-dinov3", "--depth", tiny_depth_preset])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "spectralmoe test" in out and "predict-scene" in out
    assert json.loads((tmp_path / "export" / "spectralmoe.json").read_text())["build"]["backbone"] == "tiny-dinov3"
    code = main(["import-checkpoint", str(ckpt), "--task", "flair", "--out", str(tmp_path / "bad"),
                 "--backbone", "tiny-dinov3", "--depth", tiny_depth_preset])  # fmt: skip
    assert code == 2 and "12" in capsys.readouterr().err


def test_an_imported_model_carries_its_protocol_into_the_task(tmp_path):
    from spectralmoe.engine.task import SegmentationTask

    head = random_mmdet_head(replace_query_feat=True, **HEAD)
    torch.save({**released_rein_state(), **{f"decode_head.{k}": v for k, v in head.items()}}, tmp_path / "r.pth")
    export = str(import_checkpoint(tmp_path / "r.pth", tmp_path / "e", task="fbp-cross-sensor",
                                   backbone="tiny-dinov2").export)  # fmt: skip
    facts = {"num_classes": 24, "class_names": list(TASK.classes), "pretrained": False}
    task = SegmentationTask(export=export, eval_mode="whole", **facts)
    task.configure_model()
    assert task.evaluation_settings() == {"mode": "slide", "crop": 512, "stride": 341, "pad": False}
    assert (task.hparams.backbone, task.hparams.adapter) == ("tiny-dinov2", "rein")  # the export's, not the defaults
    own = SegmentationTask(export=export, eval_protocol="task", eval_mode="whole", **facts)
    own.configure_model()
    assert own.evaluation_settings() == {"mode": "whole", "crop": 512, "stride": None, "pad": True}
    wrong = SegmentationTask(export=export, **{**facts, "class_names": list(reversed(TASK.classes))})
    with pytest.raises(ValueError, match="same order"):
        wrong.configure_model()


def test_rein_with_its_converted_dinov2_file_and_refusals(tmp_path):
    head = random_mmdet_head(replace_query_feat=True, **HEAD)
    torch.save({**released_rein_state(), **{f"decode_head.{k}": v for k, v in head.items()}}, tmp_path / "r.pth")
    dinov2 = ref.random_dinov2(64, 4, 128, grid=4, seed=3)  # Rein's convert_dinov2.py output: patch 16, 32×32 → 4×4
    torch.save(dinov2, tmp_path / "dinov2_converted.pth")
    result = import_checkpoint(tmp_path / "r.pth", tmp_path / "e", task="fbp-cross-sensor", backbone="tiny-dinov2",
                               backbone_weights=tmp_path / "dinov2_converted.pth", patch_embed="cmod3")  # fmt: skip
    assert result.frozen == ["backbone"]
    model = load_exported(result.export)
    image = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(2))
    cmod3 = {**dinov2, "patch_embed.proj.weight": dinov2["patch_embed.proj.weight"][:, [0, 1, 2, 0]]}
    expected = ref.dinov2_blocks(cmod3, image, heads=4)
    with torch.no_grad():
        tokens, grid = model.backbone.embed(image)
        for layer in range(4):
            tokens = model.backbone.run_block(layer, tokens, grid)
    torch.testing.assert_close(tokens, expected[-1], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="stride 16"):
        import_checkpoint(tmp_path / "r.pth", tmp_path / "d", task="fbp-cross-sensor", backbone="dofa-vitl")
    with pytest.raises(ValueError, match="dinov2 backbone but the model's backbone preset is dinov3"):
        import_checkpoint(tmp_path / "r.pth", tmp_path / "d", task="fbp-cross-sensor", backbone="tiny-dinov3",
                          backbone_weights=tmp_path / "dinov2_converted.pth", patch_embed="cmod3")  # fmt: skip
