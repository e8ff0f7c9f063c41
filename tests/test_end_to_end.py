"""The user path through the command line on a fake DG benchmark with two target domains:
``spectralmoe fit`` → ``spectralmoe test`` → ``spectralmoe predict``, the files each leaves, and a
training run killed after a checkpoint that resumes to exactly the uninterrupted result."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import rasterio
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image
from safetensors.torch import load_file

from spectralmoe.cli import main
from spectralmoe.data.benchmarks import DG_TASKS
from tests.test_configs import (
    CONFIGS, REPO, cpu_trainer_args, make_prepared_root, tiny_model_args, tiny_task_file,
)  # fmt: skip

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")

TASK = "flair"
TASK_FILE = CONFIGS / "tasks" / f"{TASK}.yaml"
METHOD_FILE = CONFIGS / "methods" / "spectralmoe_dinov3-vitl16.yaml"
DOMAINS = ["D013_2020", "D064_2021"]  # the fake benchmark's two target domains (tests.test_configs)


class KillAtStep(Callback):
    """Stands for a crash: SIGKILL this process when the batch after optimiser step ``step`` starts,
    i.e. after everything that step wrote (validation, checkpoint) and before anything else.

    Args:
        step: optimiser steps to let finish.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> dict[str, Path]:
    """Fake FLAIR benchmark: 4 source tiles (2 steps per epoch at batch 2), two target domains of 2 tiles."""
    base = tmp_path_factory.mktemp("e2e")
    root = make_prepared_root(TASK, base / "flair", source_tiles=4, tiles_per_target=2)
    return {"base": base, "root": root, "task": tiny_task_file(TASK, base)}


def cli_args(bench: dict[str, Path], command: str, name: str, **trainer: Any) -> list[str]:
    """``spectralmoe COMMAND -c task -c method`` at test size, run folder ``<base>/runs/<name>/version_N``."""
    return [
        command, "-c", str(TASK_FILE), "-c", str(METHOD_FILE), *tiny_model_args(METHOD_FILE),
        "--data.root", str(bench["root"]), "--data.task", str(bench["task"]), "--data.batch_size", "2",
        "--data.eval_batch_size", "2", "--data.num_workers", "0", "--model.lr", "1e-3",
        "--run.root", str(bench["base"] / "runs"), "--run.name", name, *cpu_trainer_args(**trainer),
    ]  # fmt: skip


def fit_args(bench: dict[str, Path], name: str) -> list[str]:
    """Four steps (two epochs), validation and checkpoint after each epoch."""
    return cli_args(bench, "fit", name, max_steps=4, val_check_interval=2, log_every_n_steps=1)


def only_version(folder: Path) -> Path:
    versions = sorted(folder.glob("version_*"))
    assert len(versions) == 1, versions
    return versions[0]


@pytest.fixture(scope="module")
def uninterrupted(bench) -> Path:
    assert main(fit_args(bench, "full")) == 0
    return only_version(bench["base"] / "runs" / "full")


def test_fit_then_test_then_predict_writes_per_domain_results(bench, uninterrupted):
    run = uninterrupted
    # fit: config, both loggers, checkpoints (best on the mean target mIoU + last), export, per-domain validation
    assert (run / "config.yaml").is_file() and (run / "hparams.yaml").is_file()
    assert list(run.glob("events.out.tfevents.*")), "no TensorBoard event file"
    with (run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    columns = set(rows[0])
    assert {"train/loss", "train/loss_aux", "val/mean/mIoU", f"val/{DOMAINS[0]}/mIoU"} <= columns
    assert any(c.startswith("lr-") for c in columns), "LearningRateMonitor logged nothing"
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and any(n.startswith("best_epoch") for n in checkpoints), checkpoints
    assert (run / "export" / "model.safetensors").is_file() and (run / "export" / "spectralmoe.json").is_file()
    for step in (2, 4):
        report = json.loads(next(run.glob(f"metrics_val_epoch*_step{step}.json")).read_text())
        assert list(report["domains"]) == DOMAINS

    # test from the last checkpoint: its own run folder with per-domain metrics (JSON + CSV)
    test_args = cli_args(bench, "test", "full-test") + ["--ckpt_path", str(run / "checkpoints" / "last.ckpt")]
    assert main(test_args) == 0
    tested = only_version(bench["base"] / "runs" / "full-test")
    report = json.loads((tested / "metrics_test.json").read_text())
    assert report["stage"] == "test"
    assert list(report["domains"]) == DOMAINS and report["classes"] == list(DG_TASKS[TASK].classes)
    for domain in DOMAINS:
        assert 0.0 <= report["domains"][domain]["mIoU"] <= 100.0
        assert report["domains"][domain]["labelled_pixels"] == 2 * (64 * 64 - 4)  # 2 tiles, 4 ignored pixels each
    assert report["mean"]["mIoU"] == pytest.approx(np.mean([report["domains"][d]["mIoU"] for d in DOMAINS]))
    with (tested / "metrics_test.csv").open() as handle:
        assert [r["row"] for r in csv.DictReader(handle)] == [*DOMAINS, "mean", "pooled"]
    # the final validation of fit saw the same weights and tiles as this test
    final_val = json.loads(next(run.glob("metrics_val_epoch*_step4.json")).read_text())
    assert final_val["confusion"] == report["confusion"]

    # validate from the checkpoint: the same numbers, in a validation file
    assert main(cli_args(bench, "validate", "full-val") + ["--ckpt_path", str(run / "checkpoints" / "last.ckpt")]) == 0
    validated = only_version(bench["base"] / "runs" / "full-val")
    assert json.loads(next(validated.glob("metrics_val_*.json")).read_text())["confusion"] == report["confusion"]

    # predict: one GeoTIFF class map per target tile, at the tile's size and on its grid, under the run folder.
    # Only the task file: the model's arguments come from the checkpoint's hyperparameters.
    predict = [
        "predict", "-c", str(TASK_FILE), "--data.root", str(bench["root"]), "--data.task", str(bench["task"]),
        "--data.eval_batch_size", "2", "--data.num_workers", "0", "--run.root", str(bench["base"] / "runs"),
        "--run.name", "full-predict", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), *cpu_trainer_args(),
    ]  # fmt: skip
    assert main(predict) == 0
    predicted = only_version(bench["base"] / "runs" / "full-predict") / "predictions"
    maps = sorted(p.relative_to(predicted).as_posix() for p in predicted.rglob("*.tif"))
    assert maps == [f"target/{d}/t{k}.tif" for d in DOMAINS for k in (0, 1)]
    with rasterio.open(predicted / maps[0]) as src:
        labels = src.read(1)
        assert src.nodata == 255 and labels.shape == (64, 64) and src.dtypes[0] == "uint8"
        colours = [list(src.colormap(1)[i][:3]) for i in range(len(DG_TASKS[TASK].classes))]
        assert colours == [list(c) for c in DG_TASKS[TASK].palette]
        assert json.loads(src.tags()["CLASS_NAMES"]) == list(DG_TASKS[TASK].classes)
    assert int(labels.max()) < len(DG_TASKS[TASK].classes)

    # --predictions.format png: palette PNGs (no georeference), nodata transparent
    assert main(predict[:-len(cpu_trainer_args())] + ["--run.name", "png-predict", "--predictions.format", "png",
                                                      *cpu_trainer_args()]) == 0  # fmt: skip
    pngs = only_version(bench["base"] / "runs" / "png-predict") / "predictions"
    image = Image.open(pngs / "target" / DOMAINS[0] / "t0.png")
    assert image.mode == "P" and image.size == (64, 64) and image.info.get("transparency") == 255
    palette = np.array(image.getpalette()[: 3 * len(DG_TASKS[TASK].classes)]).reshape(-1, 3)
    assert palette.tolist() == [list(c) for c in DG_TASKS[TASK].palette]
    assert (np.array(image) == labels).all()


def test_training_killed_after_a_checkpoint_resumes_to_the_same_result(bench, uninterrupted, tmp_path):
    """Same command, same 4-step schedule, but the process is SIGKILLed after the step-2 checkpoint (the
    end of epoch 0). A new ``fit --ckpt_path …/last.ckpt`` must end where the uninterrupted run ended:
    identical trainable weights and identical test confusion matrices."""
    killed = fit_args(bench, "killed") + [
        "--trainer.callbacks+=tests.test_end_to_end.KillAtStep", "--trainer.callbacks.step", "2",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}  # the suite runs torch single-threaded (tests/conftest.py)  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "spectralmoe.cli", *killed], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    killed_run = only_version(bench["base"] / "runs" / "killed")
    last = killed_run / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 2
    assert not (killed_run / "export").exists()  # it never reached the end of fit

    assert main(fit_args(bench, "resumed") + ["--ckpt_path", str(last)]) == 0
    resumed_run = only_version(bench["base"] / "runs" / "resumed")
    # it continued from step 2 (a run that ignored the checkpoint would also validate at step 2)
    assert [p.name for p in resumed_run.glob("metrics_val_*.json")] == ["metrics_val_epoch1_step4.json"]
    full = load_file(uninterrupted / "export" / "model.safetensors")
    again = load_file(resumed_run / "export" / "model.safetensors")
    assert full.keys() == again.keys()
    for name in full:
        assert torch.equal(full[name], again[name]), name
    reports = {}
    for name, run in (("full", uninterrupted), ("resumed", resumed_run)):
        for path in run.glob("metrics_val_epoch*_step4.json"):
            reports[name] = json.loads(path.read_text())
    assert reports["resumed"]["confusion"] == reports["full"]["confusion"]
    assert reports["resumed"]["mean"]["mIoU"] == reports["full"]["mean"]["mIoU"]
