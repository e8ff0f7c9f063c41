"""``spectralmoe fit`` / ``test`` with bad configs, tasks, data, checkpoints and model arguments: one line
naming the file or option, exit 2, before the first step; non-finite losses stop the run naming the
tiles; SIGTERM stops it cleanly and a run killed outright resumes to the metrics of an uninterrupted one."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image
from safetensors.torch import load_file

from spectralmoe.errors import InputError
from spectralmoe.models.adapters.spectralmoe import SpectralMoE
from spectralmoe.models.factory import build_segmentor
from tests.robustness.conftest import (
    PYTHON, fit_args, leftovers, prepared_root, refused, run, subprocess_env, write_raster,
)  # fmt: skip


@pytest.fixture
def bench(tmp_path: Path) -> tuple[Path, Path]:
    return prepared_root(tmp_path / "flair"), tmp_path


def checkpoints(base: Path) -> list[Path]:
    return sorted((base / "runs").rglob("*.ckpt")) if (base / "runs").exists() else []


# ------------------------------------------------------------------------------ configs and tasks
def test_config_file_missing(capsys, bench):
    root, base = bench
    refused(run(capsys, *fit_args(root, base), "-c", base / "absent.yaml"), "absent.yaml")
    assert not checkpoints(base)


def test_config_file_not_yaml(capsys, bench):
    root, base = bench
    (base / "broken.yaml").write_text("model:\n  lr: [1\n")
    refused(run(capsys, *fit_args(root, base), "-c", base / "broken.yaml"), "broken.yaml")


def test_task_file_not_yaml(capsys, bench):
    root, base = bench
    (base / "task.yaml").write_text("extends: flair\ncrop_size: [oops\n")
    refused(run(capsys, *fit_args(root, base), "--data.task", base / "task.yaml"), "task.yaml", "not valid YAML")


def test_task_file_extends_an_unknown_task(capsys, bench):
    root, base = bench
    (base / "task.yaml").write_text("extends: no-such-task\n")
    refused(run(capsys, *fit_args(root, base), "--data.task", base / "task.yaml"), "task.yaml", "no-such-task")


def test_unknown_option(capsys, bench):
    root, base = bench
    refused(run(capsys, *fit_args(root, base), "--model.no_such_option", "1"), "no_such_option")


def test_crop_smaller_than_the_model_accepts(capsys, bench):
    root, base = bench
    from tests.test_configs import tiny_task_file

    task = tiny_task_file("flair", base, crop_size=16)
    refused(run(capsys, *fit_args(root, base), "--data.task", task), "crop_size 16", "32 pixels")
    assert not checkpoints(base)


def test_data_root_without_splits_json(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    refused(run(capsys, *fit_args(tmp_path / "empty", tmp_path)), "splits.json")


def test_bad_tiles_are_reported_before_the_first_step(capsys, bench):
    root, base = bench
    labels = sorted((root / "label").rglob("*.png"))
    for label in labels[:2]:
        shape = np.array(Image.open(label)).shape
        Image.fromarray(np.full(shape, 60, dtype=np.uint8)).save(label)
    message = refused(run(capsys, *fit_args(root, base)), "2 problems", lines=3)
    assert all(str(label) in message for label in labels[:2])
    assert not checkpoints(base)


# -------------------------------------------------------------------------------- checkpoints
def test_ckpt_path_missing(capsys, bench):
    root, base = bench
    refused(run(capsys, *fit_args(root, base, command="test"), "--ckpt_path", base / "none.ckpt"), "none.ckpt")


def test_ckpt_path_garbage(capsys, bench):
    root, base = bench
    (base / "junk.ckpt").write_bytes(os.urandom(2048))
    refused(run(capsys, *fit_args(root, base, command="test"), "--ckpt_path", base / "junk.ckpt"), "junk.ckpt",
            "unreadable")  # fmt: skip


def test_ckpt_of_another_method_than_the_config_asks(capsys, bench):
    """A Rein checkpoint with ``--model.adapter spectralmoe`` used to train Rein silently."""
    root, base = bench
    ckpt = base / "rein.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"backbone": "tiny-dinov3", "adapter": "rein", "head": "fpn",
                                                        "adapter_options": {"rank": 4}, "num_classes": 12}}, ckpt)  # fmt: skip
    message = refused(run(capsys, *fit_args(root, base), "--model.adapter", "spectralmoe", "--ckpt_path", ckpt),
                      "rein.ckpt", "--model.adapter: the checkpoint was trained with 'rein', not 'spectralmoe'")  # fmt: skip
    assert "--model.head: the checkpoint was trained with 'fpn', not 'mask2former'" in message and not checkpoints(base)


# ----------------------------------------------------------------------------- non-finite loss
def test_extreme_source_values_stop_training_with_the_tiles_named(capsys, bench):
    root, base = bench
    rng = np.random.default_rng(0)
    for image in sorted((root / "image" / "source").rglob("*.tif")):  # 64 px: the validation samples the centre
        array = np.full((4, 64, 64), 3e38, dtype=np.float32)  # an undeclared fill around the centre
        array[:, 16:48, 16:48] = rng.uniform(0, 255, (4, 32, 32))
        write_raster(image, array, crs=None)
        label = root / "label" / image.relative_to(root / "image").with_suffix(".png")
        Image.fromarray(rng.integers(0, 12, (64, 64)).astype(np.uint8)).save(label)
    result = run(capsys, *fit_args(root, base))
    refused(result, "non-finite training loss at step 0", "source/s0.tif")
    exports = list((base / "runs").rglob("export"))
    assert not exports  # nothing trained on garbage is exported


# ------------------------------------------------------------------------------ model arguments
@pytest.mark.parametrize(("kwargs", "named"), [
    ({"embed_dim": 0}, "embed_dim must be >= 1"),
    ({"balance_coef": math.nan}, "balance_coef must be finite"),
    ({"num_experts": 2.5}, "num_experts must be an integer"),
    ({"rank": "4"}, "rank must be a positive int"),
    ({"top_k": 4}, "top_k"),
    ({"noisy_gating": "yes"}, "noisy_gating must be true or false"),
], ids=["embed-dim-0", "balance-nan", "experts-2.5", "rank-string", "top-k-gt-experts", "noisy-string"])  # fmt: skip
def test_spectralmoe_arguments(kwargs, named):
    options = {"embed_dim": 32, "num_layers": 2, "num_experts": 3, "token_length": 8, "query_dim": 32, **kwargs}
    with pytest.raises(ValueError, match=named):
        SpectralMoE(**options)


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"num_classes": 0}, "num_classes must be >= 1"),
    ({"num_classes": True}, "num_classes must be an integer"),
    ({"pixel_std": [1.0, 1.0, 0.0]}, "pixel_std of band 3"),
    ({"pixel_mean": [float("inf"), 0.0, 0.0]}, "pixel_mean of band 1"),
    ({"wavelengths": ["red", 0.5, 0.4]}, "wavelengths must be numbers"),
    ({"adapter_kwargs": {"num_experts": -1}}, "num_experts must be >= 1"),
], ids=["classes-0", "classes-bool", "std-0", "mean-inf", "wavelength-word", "experts-negative"])  # fmt: skip
def test_build_segmentor_arguments(kwargs, named):
    options = {"backbone": "tiny-dinov3", "adapter": "spectralmoe", "head": "fpn", "depth": "tiny-depth-anything",
               "num_classes": 3, "pretrained": False, "wavelengths": [0.665, 0.56, 0.49],
               "adapter_kwargs": {"num_experts": 3, "token_length": 8, "query_dim": 32}, **kwargs}  # fmt: skip
    with pytest.raises(InputError, match=named):
        build_segmentor(**options)


def test_params_command_with_a_bad_adapter_option(capsys):
    refused(run(capsys, "params", "--backbone", "tiny-dinov3", "--depth", "tiny-depth-anything", "--set",
                "num_experts=0"), "num_experts must be >= 1")  # fmt: skip


# ------------------------------------------------------------------------------- interruptions
class PauseAtStep(Callback):
    """Touch ``ready`` and wait when the batch after optimiser step ``step`` starts (a signal arrives then).

    Args:
        ready: file to create.
        step: optimiser steps to let finish.
        kill: SIGKILL this process instead of waiting.
    """

    def __init__(self, ready: str, step: int, kill: bool = False) -> None:
        self.ready, self.step, self.kill = ready, step, kill

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            if self.kill:
                os.kill(os.getpid(), signal.SIGKILL)
            Path(self.ready).touch()
            time.sleep(120)


def fit_in_subprocess(args: list[str], ready: Path, *, kill: bool) -> subprocess.Popen:
    callback = ["--trainer.callbacks+=tests.robustness.test_training_inputs.PauseAtStep",
                f"--trainer.callbacks.ready={ready}", "--trainer.callbacks.step=1",
                f"--trainer.callbacks.kill={'true' if kill else 'false'}"]  # fmt: skip
    return subprocess.Popen([PYTHON, "-m", "spectralmoe.cli", *args, *callback], env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def two_step_args(root: Path, base: Path, name: str) -> list[str]:
    """Two epochs of one step (2 source tiles, batch 2), validation and checkpoint after each."""
    return fit_args(root, base, "--run.name", name, "--model.lr", "1e-3", max_steps=2)


def test_sigterm_stops_fit_cleanly(bench):
    root, base = bench
    ready = base / "ready"
    process = fit_in_subprocess(two_step_args(root, base, "term"), ready, kill=False)
    deadline = time.monotonic() + 300
    while not ready.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=180)
    assert process.returncode == 143, err[-3000:]
    assert "interrupted (SIGTERM)" in err and "Traceback" not in err
    saved = checkpoints(base)
    assert saved and all(torch.load(p, map_location="cpu", weights_only=True)["global_step"] == 1 for p in saved)
    assert not leftovers(base / "runs") and not list((base / "runs").rglob("export"))


def test_fit_killed_outright_resumes_to_the_uninterrupted_metrics(capsys, bench):
    root, base = bench
    assert run(capsys, *two_step_args(root, base, "full")).rc == 0
    ready = base / "ready"
    process = fit_in_subprocess(two_step_args(root, base, "killed"), ready, kill=True)
    _, err = process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL, err[-3000:]
    last = next((base / "runs" / "killed").rglob("last.ckpt"))
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 1
    assert run(capsys, *two_step_args(root, base, "resumed"), "--ckpt_path", last).rc == 0
    full, resumed = (next((base / "runs" / n).glob("version_*")) for n in ("full", "resumed"))
    weights = [load_file(run_dir / "export" / "model.safetensors") for run_dir in (full, resumed)]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    reports = [json.loads(next(run_dir.glob("metrics_val_*_step2.json")).read_text()) for run_dir in (full, resumed)]
    assert reports[0]["confusion"] == reports[1]["confusion"] and reports[0]["mean"] == reports[1]["mean"]
