"""Trainable-only export: round trip, contents, size, strict loading, callbacks."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from safetensors.torch import load_file, save_file

import spectralmoe
from spectralmoe.bands import get_sensor
from spectralmoe.engine import ExportBest, ExportOnFitEnd, export_trainable, load_exported, read_export_config
from spectralmoe.engine.export import CONFIG_FILE, WEIGHTS_FILE, trainable_state_keys
from tests import perturb_trainable
from tests.engine import CLASSES, PALETTE, TASK, datamodule, make_root, tiny_task, trainable, trainer

DATA_FACTS = {
    "num_classes": 3, "class_names": list(CLASSES), "palette": [list(c) for c in PALETTE],
    "wavelengths": list(get_sensor("gf2").wavelengths_um), "pixel_mean": list(TASK.mean),
    "pixel_std": list(TASK.std), "value_scale": 255.0,
}  # fmt: skip


def built_task(head: str = "mask2former", adapter: str = "spectralmoe", seed: int = 0):
    """A task built without data, its trainable weights moved away from their initial values."""
    task = tiny_task(head, adapter, **DATA_FACTS)
    torch.manual_seed(seed)
    task.configure_model()
    perturb_trainable(task.segmentor)
    return task.eval()


def test_round_trip_gives_identical_logits(tmp_path):
    task = built_task()
    folder = export_trainable(task, tmp_path / "exp", metadata={"note": "test"})
    assert sorted(p.name for p in folder.iterdir()) == [WEIGHTS_FILE, CONFIG_FILE]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left

    tensors = load_file(str(folder / WEIGHTS_FILE))
    assert sorted(tensors) == sorted(trainable_state_keys(task.segmentor))
    assert not any(k.startswith(("backbone.", "depth_encoder.")) for k in tensors)
    trainable_bytes = sum(p.numel() * 4 for p in task.segmentor.parameters() if p.requires_grad)
    frozen_bytes = sum(p.numel() * 4 for p in task.segmentor.parameters() if not p.requires_grad)
    size = (folder / WEIGHTS_FILE).stat().st_size
    assert trainable_bytes <= size < trainable_bytes + 64_000 and size < frozen_bytes

    info = read_export_config(folder)
    assert info["spectralmoe_version"] == spectralmoe.__version__ and info["classes"] == list(CLASSES)
    assert info["palette"] == [list(c) for c in PALETTE] and info["metadata"] == {"note": "test"}
    assert info["build"]["adapter_kwargs"]["num_experts"] == 3
    assert info["build"]["wavelengths"] == DATA_FACTS["wavelengths"]
    assert info["trainable_parameters"] == sum(v.numel() for v in tensors.values())

    torch.manual_seed(0)  # same random frozen parts as the task (pretrained=False builds them randomly)
    model = load_exported(folder, pretrained=False)
    assert not model.training
    for name, value in trainable(task).items():
        assert torch.equal(model.state_dict()[name.removeprefix("segmentor.")], value), name
    image = torch.rand(2, 4, 32, 32, generator=torch.Generator().manual_seed(3)) * 255
    assert torch.equal(model.predict_logits(image), task.segmentor.predict_logits(image))


def test_lora_weights_inside_the_backbone_are_exported(tmp_path):
    task = built_task(head="fpn", adapter="lora")
    folder = export_trainable(task, tmp_path / "lora")
    keys = list(load_file(str(folder / WEIGHTS_FILE)))
    in_backbone = [k for k in keys if k.startswith("backbone.")]
    assert in_backbone and all("lora_" in k for k in in_backbone)
    torch.manual_seed(0)
    model = load_exported(folder, pretrained=False)
    image = torch.rand(1, 4, 32, 32) * 255
    assert torch.equal(model.predict_logits(image), task.segmentor.predict_logits(image))


def test_loading_is_strict_and_names_the_culprits(tmp_path):
    folder = export_trainable(built_task(head="fpn"), tmp_path / "exp")
    tensors = load_file(str(folder / WEIGHTS_FILE))
    dropped = dict(tensors)
    dropped.pop("adapter.scale")
    save_file(dropped, str(folder / WEIGHTS_FILE))
    with pytest.raises(ValueError, match=r"missing \['adapter.scale'\]"):
        load_exported(folder, pretrained=False)
    save_file({**tensors, "head.extra": torch.zeros(1)}, str(folder / WEIGHTS_FILE))
    with pytest.raises(ValueError, match="head.extra"):
        load_exported(folder, pretrained=False)
    save_file(tensors, str(folder / WEIGHTS_FILE))
    info = json.loads((folder / CONFIG_FILE).read_text())
    info["build"]["num_classes"] = 5
    info["classes"], info["palette"] = [f"c{i}" for i in range(5)], None
    (folder / CONFIG_FILE).write_text(json.dumps(info))
    with pytest.raises(ValueError, match="shape mismatch"):
        load_exported(folder, pretrained=False)
    info["build"]["bogus"] = 1
    (folder / CONFIG_FILE).write_text(json.dumps(info))
    with pytest.raises(ValueError, match="bogus"):
        load_exported(folder, pretrained=False)


def test_folder_rules(tmp_path):
    task = built_task(head="fpn")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a spectralmoe export"):
        export_trainable(task, foreign)
    assert (foreign / "keep.txt").read_text() == "mine"
    first = export_trainable(task, tmp_path / "exp", metadata={"n": 1})
    export_trainable(task, first, metadata={"n": 2})  # an export is replaced as a whole
    assert read_export_config(first)["metadata"] == {"n": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "foreign"]
    with pytest.raises(ValueError, match="build_config"):
        export_trainable(task.segmentor, tmp_path / "bare")
    bare = export_trainable(task.segmentor, tmp_path / "bare", build_config=task.build_config())
    assert read_export_config(bare)["classes"] == ["class0", "class1", "class2"]
    with pytest.raises(FileNotFoundError):
        read_export_config(tmp_path / "nothing")


def test_export_callbacks_during_fit(tmp_path):
    root = make_root(tmp_path / "toy")
    L.seed_everything(0)
    task = tiny_task("fpn")
    best = ExportBest(monitor="val/mean/mIoU", mode="max")
    at_end = ExportOnFitEnd()
    fit = trainer(tmp_path / "run", callbacks=[best, at_end], limit_val_batches=None, val_check_interval=2)
    fit.fit(task, datamodule(root))
    end_folder = tmp_path / "run" / "export"
    assert at_end.last_path == end_folder
    end_info = read_export_config(end_folder)
    assert end_info["metadata"]["step"] == 4 and end_info["metadata"]["reason"] == "fit end"
    best_info = read_export_config(tmp_path / "run" / "export_best")
    assert best_info["metadata"]["monitor"] == "val/mean/mIoU" and best_info["metadata"]["step"] == best.best_step
    assert best_info["metadata"]["value"] == pytest.approx(best.best)
    assert best.best == pytest.approx(max(
        json.loads((tmp_path / "run" / f"metrics_val_epoch{e}_step{s}.json").read_text())["mean"]["mIoU"]
        for e, s in ((0, 2), (1, 4))
    ))  # fmt: skip
    fit.save_checkpoint(tmp_path / "run" / "last.ckpt")
    stored = torch.load(tmp_path / "run" / "last.ckpt", weights_only=False)
    assert stored["callbacks"][best.state_key]["best"] == best.best  # a resumed run keeps comparing

    L.seed_everything(0)  # the frozen parts were random: rebuild them identically
    model = load_exported(end_folder, pretrained=False)
    for name, value in trainable(task).items():
        assert torch.equal(model.state_dict()[name.removeprefix("segmentor.")], value), name
