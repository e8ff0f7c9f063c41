"""SegmentationTask end to end on a tiny prepared DG benchmark: fit, validate, test, predict,
metrics files against a numpy reference, trainable-only checkpoints, exact resume, seeding,
bf16, gradient accumulation and gradient checkpointing."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from spectralmoe.engine import SegmentationTask
from tests.engine import (
    CLASSES, PALETTE, SIZE, TARGET_SIZE, TARGETS, datamodule, make_root, tiny_task, trainable, trainer,
)  # fmt: skip
from tests.engine.test_metrics import reference


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_root(tmp_path_factory.mktemp("engine") / "toy")


def predictions_per_domain(task: SegmentationTask, dm) -> dict[str, tuple[list[np.ndarray], list[np.ndarray]]]:
    """Argmax maps and labels of every target tile, computed directly with the Segmentor."""
    dm.setup("test")
    out = {}
    task.segmentor.eval()
    for name, loader in zip(dm.target_domains, dm.test_dataloader()):
        preds, labels = [], []
        for batch in loader:
            logits = task.segmentor.predict_logits(batch["image"], mode="whole")
            preds += list(logits.argmax(1).numpy())
            labels += list(batch["mask"].numpy())
        out[name] = (preds, labels)
    return out


def check_report_against_reference(report: dict, per_domain: dict, num_classes: int) -> None:
    for name, (preds, labels) in per_domain.items():
        ref = reference(preds, labels, num_classes)
        row = report["domains"][name]
        np.testing.assert_allclose([np.nan if v is None else v for v in row["IoU"].values()], ref["IoU"],
                                   equal_nan=True, rtol=1e-9)  # fmt: skip
        np.testing.assert_allclose([np.nan if v is None else v for v in row["Acc"].values()], ref["Acc"],
                                   equal_nan=True, rtol=1e-9)  # fmt: skip
        for key in ("mIoU", "mAcc", "aAcc"):
            assert row[key] == pytest.approx(ref[key]), (name, key)
    refs = [reference(*per_domain[name], num_classes) for name in per_domain]
    assert report["mean"]["mIoU"] == pytest.approx(np.mean([r["mIoU"] for r in refs]))
    assert report["mean"]["mAcc"] == pytest.approx(np.mean([r["mAcc"] for r in refs]))
    pooled = reference([p for n in per_domain for p in per_domain[n][0]],
                       [l for n in per_domain for l in per_domain[n][1]], num_classes)  # fmt: skip
    assert report["pooled"]["mIoU"] == pytest.approx(pooled["mIoU"])
    assert report["pooled"]["aAcc"] == pytest.approx(pooled["aAcc"])


@pytest.mark.parametrize("head", ["fpn", "mask2former"])
def test_fit_validate_test_writes_metrics_matching_numpy(root, tmp_path, head):
    L.seed_everything(0, workers=True)
    dm = datamodule(root)
    task = tiny_task(head)
    assert task.segmentor is None and task.hparams.num_classes is None
    fit = trainer(tmp_path, limit_val_batches=None, val_check_interval=2, num_sanity_val_steps=1)
    fit.fit(task, dm)
    assert fit.global_step == 4
    # data facts came from the datamodule and are recorded
    hp = task.hparams
    assert hp.num_classes == 3 and hp.class_names == list(CLASSES) and hp.palette == [list(c) for c in PALETTE]
    assert hp.pixel_mean == [100.0, 110.0, 120.0, 90.0] and hp.value_scale == 255.0 and len(hp.wavelengths) == 4
    # losses are logged term by term and in total
    logged = fit.callback_metrics
    assert {"train/loss", "train/loss_aux"} <= set(logged)
    assert math.isfinite(float(logged["train/loss"]))
    # validation every 2 steps wrote one file pair each, named by epoch and step
    names = sorted(p.name for p in tmp_path.glob("metrics_val_*"))
    assert names == ["metrics_val_epoch0_step2.csv", "metrics_val_epoch0_step2.json",
                     "metrics_val_epoch1_step4.csv", "metrics_val_epoch1_step4.json"]  # fmt: skip
    assert "val/alpha/mIoU" in logged and "val/mean/mIoU" in logged and "val/pooled/aAcc" in logged

    results = fit.test(task, dm, verbose=False)
    report = json.loads((tmp_path / "metrics_test.json").read_text())
    assert report["stage"] == "test" and report["step"] == 4 and list(report["domains"]) == list(TARGETS)
    assert report["classes"] == list(CLASSES)
    # domain beta has no class 2 in its labels: Acc undefined there, defined in alpha
    assert report["domains"]["beta"]["Acc"]["forest"] is None
    assert report["domains"]["alpha"]["Acc"]["forest"] is not None
    assert sum(map(sum, report["confusion"]["alpha"])) == report["domains"]["alpha"]["labelled_pixels"]
    assert report["domains"]["alpha"]["labelled_pixels"] == TARGETS["alpha"] * (TARGET_SIZE**2 - 9)
    check_report_against_reference(report, predictions_per_domain(task, dm), 3)
    assert results[0]["test/mean/mIoU"] == pytest.approx(report["mean"]["mIoU"], rel=1e-6)
    rows = list(csv.DictReader((tmp_path / "metrics_test.csv").open()))
    assert [r["row"] for r in rows] == ["alpha", "beta", "mean", "pooled"]
    assert float(rows[0]["IoU/water"]) == pytest.approx(report["domains"]["alpha"]["IoU"]["water"])

    # validate on its own reuses the built model and writes a file for the current step
    fit.validate(task, dm, verbose=False)
    epoch = fit.current_epoch
    assert task.last_metrics["stage"] == "val" and task.last_metrics["step"] == 4
    assert (tmp_path / f"metrics_val_epoch{epoch}_step4.json").is_file()


def test_predict_returns_class_maps_with_paths(root, tmp_path):
    L.seed_everything(0)
    dm = datamodule(root)
    task = tiny_task("fpn")
    out = trainer(tmp_path).predict(task, dm)
    tiles = [(p, m) for batch in out for p, m in zip(batch["path"], batch["pred"])]
    assert len(tiles) == sum(TARGETS.values())
    for path, pred in tiles:
        assert pred.shape == (TARGET_SIZE, TARGET_SIZE) and pred.dtype == torch.uint8 and int(pred.max()) < 3
        assert "target" in str(path)
    assert {d for batch in out for d in batch["domain"]} == set(TARGETS)


def test_checkpoint_is_trainable_only_and_resume_is_exact(root, tmp_path):
    """A 4-step run checkpoints every 2 steps; a new Trainer resumes from the step-2 checkpoint
    (what a crash after step 2 leaves) and must end with the same weights and test metrics."""

    def run(callbacks=(), ckpt_path=None):
        L.seed_everything(0, workers=True)  # the frozen parts are random here: rebuilt identically
        task = tiny_task("mask2former")
        fit = trainer(tmp_path, callbacks=list(callbacks), enable_checkpointing=bool(callbacks))
        fit.fit(task, datamodule(root), ckpt_path=ckpt_path)
        return task, fit

    every_two = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1, filename="{step}")
    full, full_trainer = run(callbacks=[every_two])
    ckpt = tmp_path / "ckpt" / "step=2.ckpt"
    assert ckpt.is_file() and full_trainer.global_step == 4

    stored = torch.load(ckpt, map_location="cpu", weights_only=False)
    keys = set(stored["state_dict"])
    expected = {f"segmentor.{n}" for n, p in full.segmentor.named_parameters() if p.requires_grad}
    expected.add("segmentor.head.criterion.empty_weight")  # a head buffer: kept
    assert keys == expected
    assert not any(k.startswith(("segmentor.backbone.", "segmentor.depth_encoder.")) for k in keys)
    frozen_bytes = sum(p.numel() * 4 for p in full.segmentor.parameters() if not p.requires_grad)
    trainable_bytes = sum(p.numel() * 4 for p in full.segmentor.parameters() if p.requires_grad)
    assert frozen_bytes > trainable_bytes
    assert ckpt.stat().st_size < 3 * trainable_bytes + 200_000  # weights + AdamW moments + overhead, no frozen part
    assert stored["optimizer_states"] and stored["lr_schedulers"] and stored["global_step"] == 2
    assert stored["hyper_parameters"]["num_classes"] == 3  # data facts recorded for load_from_checkpoint

    resumed, resumed_trainer = run(ckpt_path=ckpt)
    assert resumed_trainer.global_step == 4
    final, again = trainable(full), trainable(resumed)
    assert final.keys() == again.keys()
    for name in final:
        assert torch.equal(final[name], again[name]), name
    assert resumed_trainer.lr_scheduler_configs[0].scheduler.last_epoch == 4

    full_trainer.test(full, datamodule(root), verbose=False)
    first = full.last_metrics
    resumed_trainer.test(resumed, datamodule(root), verbose=False)
    assert resumed.last_metrics["confusion"] == first["confusion"]  # hence identical scores
    assert resumed.last_metrics["mean"]["mIoU"] == first["mean"]["mIoU"]

    # a checkpoint of another model is refused with the names that do not fit
    L.seed_everything(0)
    other = tiny_task("fpn")
    with pytest.raises(ValueError, match="another model.*head: checkpoint 'mask2former', config 'fpn'"):
        trainer(tmp_path).fit(other, datamodule(root), ckpt_path=ckpt)


def test_load_from_checkpoint_without_data(root, tmp_path):
    L.seed_everything(0)
    task = tiny_task("fpn")
    fit = trainer(tmp_path, logger=CSVLogger(tmp_path, name="logs"))
    fit.fit(task, datamodule(root))
    logged = yaml.safe_load((Path(fit.log_dir) / "hparams.yaml").read_text())
    assert logged["num_classes"] == 3 and logged["class_names"] == list(CLASSES)  # resolved values logged
    fit.save_checkpoint(tmp_path / "last.ckpt")
    L.seed_everything(123)  # a different random frozen backbone: only trainable tensors come from the file
    loaded = SegmentationTask.load_from_checkpoint(tmp_path / "last.ckpt")
    assert loaded.hparams.class_names == list(CLASSES) and loaded.segmentor is not None
    for name, value in trainable(task).items():
        assert torch.equal(dict(loaded.named_parameters())[name], value), name


def test_same_seed_same_weights_other_seed_other_weights(root, tmp_path):
    def run(seed):
        L.seed_everything(seed, workers=True)
        task = tiny_task("mask2former")
        trainer(tmp_path).fit(task, datamodule(root))
        return trainable(task)

    first, second, third = run(7), run(7), run(8)
    assert all(torch.equal(first[n], second[n]) for n in first)
    assert not all(torch.equal(first[n], third[n]) for n in first)


def test_bf16_mixed_precision_step_on_cpu(root, tmp_path):
    L.seed_everything(0)
    task = tiny_task("mask2former")
    fit = trainer(tmp_path, precision="bf16-mixed", max_steps=1)
    fit.fit(task, datamodule(root))
    assert fit.global_step == 1 and math.isfinite(float(fit.callback_metrics["train/loss"]))
    assert all(v.dtype == torch.float32 for v in trainable(task).values())
    fit.test(task, datamodule(root), verbose=False)
    assert math.isfinite(task.last_metrics["mean"]["aAcc"])


def test_gradient_accumulation_counts_optimizer_steps(root, tmp_path):
    L.seed_everything(0)
    task = tiny_task("fpn")
    fit = trainer(tmp_path, max_steps=2, accumulate_grad_batches=2)
    fit.fit(task, datamodule(root))
    assert fit.global_step == 2 and fit.fit_loop.total_batch_idx == 3  # 4 batches for 2 steps
    scheduler = fit.lr_scheduler_configs[0].scheduler
    assert scheduler.lr_lambdas[0].total_steps == 2 and scheduler.last_epoch == 2


def test_gradient_checkpointing_gives_the_same_training(root, tmp_path):
    def run(checkpointing):
        L.seed_everything(0)
        task = tiny_task("fpn", gradient_checkpointing=checkpointing)
        trainer(tmp_path, max_steps=2).fit(task, datamodule(root))
        assert task.segmentor.backbone.gradient_checkpointing is checkpointing
        return trainable(task)

    plain, checkpointed = run(False), run(True)
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], rtol=1e-5, atol=1e-6)


def test_data_facts_are_checked(root, tmp_path):
    with pytest.raises(ValueError, match="num_classes=5 but the datamodule has 3"):
        trainer(tmp_path).fit(tiny_task("fpn", num_classes=5), datamodule(root))
    with pytest.raises(ValueError, match="num_classes is unknown"):
        tiny_task("fpn").configure_model()
    task = tiny_task("fpn", num_classes=2, class_names=["x", "y"], wavelengths=[0.49, 0.56, 0.665])
    task.configure_model()  # without any datamodule: from the arguments alone
    assert task.segmentor.num_bands == 3 and task.hparams.palette is None
    with pytest.raises(ValueError, match="class names"):
        tiny_task("fpn", num_classes=2, class_names=["x"]).configure_model()
    with pytest.raises(ValueError, match="eval_stride"):
        tiny_task("fpn", eval_mode="slide", eval_crop=16, eval_stride=32)


def test_slide_evaluation_mode(root, tmp_path):
    L.seed_everything(0)
    task = tiny_task("fpn", eval_mode="slide", eval_crop=SIZE, eval_stride=16, metrics_dir=str(tmp_path / "m"))
    trainer(tmp_path).test(task, datamodule(root), verbose=False)
    assert (tmp_path / "m" / "metrics_test.json").is_file()
    task.eval()
    image = torch.rand(1, 4, TARGET_SIZE, TARGET_SIZE) * 255
    windows = task.segmentor.predict_logits(image, mode="slide", crop=SIZE, stride=16)
    whole = task.segmentor.predict_logits(image, mode="whole")
    torch.testing.assert_close(task(image), windows)  # forward follows eval_mode
    assert not torch.allclose(windows, whole)


def test_batches_mixing_band_layouts():
    from tests.engine.test_export import DATA_FACTS

    task = tiny_task("fpn", band_wavelengths="data", **DATA_FACTS)
    torch.manual_seed(0)
    task.configure_model()
    task.eval()
    image = torch.rand(3, 4, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 255
    own = torch.tensor(DATA_FACTS["wavelengths"], dtype=torch.float32)
    other = own + 0.01
    waves = torch.stack([own, other, own])
    assert task._wavelengths({"wavelengths": own.expand(3, -1)}) is None  # the model's own layout
    assert task._wavelengths({"wavelengths": other[None]}) is not None
    task.hparams.band_wavelengths = "model"  # the default: tiles are fed as the training sensor's bands
    assert task._wavelengths({"wavelengths": other[None]}) is None
    task.hparams.band_wavelengths = "data"
    with pytest.raises(ValueError, match="mixes band layouts"):
        task.training_step({"image": image, "mask": torch.zeros(3, SIZE, SIZE, dtype=torch.long),
                            "wavelengths": waves}, 0)  # fmt: skip
    grouped = task._predict_classes({"image": image, "wavelengths": waves})
    assert torch.equal(grouped[[0, 2]], task(image[[0, 2]]).argmax(1))
    assert torch.equal(grouped[1:2], task(image[1:2], other).argmax(1))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_process_ddp_metrics_equal_single_process(root, tmp_path):
    """Per-domain matrices are summed across ranks; files are written once; nothing hangs."""
    reports = {}
    # find_unused_parameters as in the authors' configs: top-k routing leaves experts without gradient,
    # and with a light head the adapter's query link is unused.
    ddp = {"devices": 2, "strategy": "ddp_spawn_find_unused_parameters_true"}
    for name, options in (("single", {"devices": 1}), ("ddp", ddp)):
        L.seed_everything(0)
        task = tiny_task("fpn", num_classes=3)
        fit = trainer(tmp_path / name, max_steps=2, limit_val_batches=None, val_check_interval=1, **options)
        if name == "ddp":
            fit.fit(task, datamodule(root))  # 1 batch per rank per epoch: validation after each step
            assert sorted(p.name for p in (tmp_path / name).glob("metrics_val_*.json")) == [
                "metrics_val_epoch0_step1.json", "metrics_val_epoch1_step2.json"]  # fmt: skip
        L.seed_everything(0)
        task = tiny_task("fpn", num_classes=3)  # fresh random weights, identical in both runs
        fit.test(task, datamodule(root), verbose=False)
        reports[name] = json.loads((tmp_path / name / "metrics_test.json").read_text())
    assert reports["ddp"]["confusion"] == reports["single"]["confusion"]
    total = sum(sum(map(sum, m)) for m in reports["ddp"]["confusion"].values())
    assert total == sum(TARGETS.values()) * (TARGET_SIZE**2 - 9)  # every tile counted once
