"""``spectralmoe fit|validate|test|predict``: one help for every command, LightningCLI options and config
composition (``--print_config``), and a two-process CPU DDP fit whose metrics agree across ranks and
with a single-process evaluation of the same weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from spectralmoe.cli import TRAINER_COMMANDS, main
from tests.test_configs import CONFIGS, cpu_trainer_args, make_prepared_root, tiny_model_args, tiny_task_file

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")


def run_for_output(capsys, argv: list[str]) -> str:
    """Run a command that prints and exits (help, print_config); its standard output."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code in (0, None)
    return capsys.readouterr().out


def test_help_lists_every_command(capsys):
    out = run_for_output(capsys, ["--help"])
    for command in (*TRAINER_COMMANDS, "params", "prepare", "stats", "predict-scene", "viz", "compare", "demo"):
        assert f"    {command} " in out, command
    assert "spectralmoe fit --help" in out


def test_fit_help_shows_every_section(capsys):
    out = run_for_output(capsys, ["fit", "--help"])
    for flag in ("--model.adapter", "--model.adapter_options", "--data.root", "--data.task", "--trainer.max_steps",
                 "--trainer.strategy", "--checkpoint.monitor", "--export.dirpath", "--predictions.dirpath",
                 "--run.root", "--ckpt_path", "--print_config", "--seed_everything"):  # fmt: skip
        assert flag in out, flag


def test_print_config_composes_task_and_method(capsys):
    task, method = CONFIGS / "tasks" / "loveda-rural2urban.yaml", CONFIGS / "methods" / "spectralmoe-e3_dinov3-vitl16.yaml"
    out = run_for_output(capsys, ["fit", "-c", str(task), "-c", str(method), "--trainer.max_steps", "7",
                                  "--model.lr", "0.5", "--print_config"])  # fmt: skip
    config = yaml.safe_load(out)
    assert config["seed_everything"] == 42
    assert config["data"]["task"] == "loveda-rural2urban" and config["data"]["root"] == "data/loveda"
    assert config["trainer"]["max_steps"] == 7  # the command line wins over the task file
    assert config["trainer"]["val_check_interval"] == 1179 and config["trainer"]["check_val_every_n_epoch"] is None
    assert config["trainer"]["strategy"] == "ddp_find_unused_parameters_true"
    model = config["model"]
    assert model["backbone"] == "dinov3-vitl16" and model["adapter"] == "spectralmoe" and model["lr"] == 0.5
    assert model["adapter_options"]["num_experts"] == 3 and model["depth"] == "prompt-depth-anything-large"
    assert model["weight_decay"] == 0.05 and model["head"] == "mask2former"  # task file + task defaults
    checkpoint = config["checkpoint"]
    assert checkpoint["monitor"] == "val/mean/mIoU" and checkpoint["mode"] == "max"
    assert checkpoint["save_last"] is True and checkpoint["auto_insert_metric_name"] is False
    assert config["run"] == {"root": "runs", "name": None, "version": None}

    # a second command in the same process starts from the defaults again (nothing carried over)
    other = yaml.safe_load(run_for_output(capsys, [
        "fit", "-c", str(CONFIGS / "tasks" / "whu-ohs.yaml"), "-c", str(CONFIGS / "methods" / "rein_dofa-vitl.yaml"),
        "--print_config",
    ]))  # fmt: skip
    assert other["trainer"]["max_steps"] == 10945 and other["trainer"]["strategy"] == "auto"
    assert other["model"]["lr"] == 1e-4 and other["model"]["adapter"] == "rein"
    assert other["model"]["adapter_options"] == {"rank": 16, "token_length": 100, "low_rank": True}
    assert other["model"]["head_options"] == {"replace_query_feat": True}


def test_bad_options_fail_with_a_message(capsys):
    assert main(["fit", "-c", str(CONFIGS / "tasks" / "flair.yaml"), "--model.no_such_option", "1"]) == 2
    err = capsys.readouterr().err
    assert "spectralmoe fit: error:" in err and "no_such_option" in err and "usage:" not in err


class RankMetrics(Callback):
    """Write each rank's logged validation metrics to ``<dirpath>/rank<R>_step<S>.json``.

    Args:
        dirpath: output folder.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        path = Path(self.dirpath) / f"rank{trainer.global_rank}_step{trainer.global_step}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values, sort_keys=True))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_process_ddp_fit_metrics_agree_across_ranks_and_with_one_process(tmp_path):
    """``fit --trainer.devices 2 --trainer.strategy ddp_spawn_find_unused_parameters_true`` on CPU: the two
    ranks report the same per-domain metrics, and they equal a single-process ``test`` of the final
    weights (each target tile counted once: 2 tiles per domain, one per rank)."""
    root = make_prepared_root("flair", tmp_path / "flair", source_tiles=4, tiles_per_target=2)
    method = CONFIGS / "methods" / "spectralmoe_dinov3-vitl16.yaml"

    def args(command: str, name: str, **trainer: Any) -> list[str]:
        return [
            command, "-c", str(CONFIGS / "tasks" / "flair.yaml"), "-c", str(method), *tiny_model_args(method),
            "--data.root", str(root), "--data.task", str(tiny_task_file("flair", tmp_path)),
            "--data.batch_size", "2", "--data.eval_batch_size", "1", "--data.num_workers", "0",
            "--run.root", str(tmp_path / "runs"), "--run.name", name, *cpu_trainer_args(**trainer),
        ]  # fmt: skip

    ranks = tmp_path / "ranks"
    ddp = args("fit", "ddp", devices=2, strategy="ddp_spawn_find_unused_parameters_true", max_steps=2,
               val_check_interval=1, log_every_n_steps=1)  # fmt: skip
    assert main([*ddp, "--trainer.callbacks+=tests.test_cli_train.RankMetrics",
                 f"--trainer.callbacks.dirpath={ranks}"]) == 0  # fmt: skip
    run = tmp_path / "runs" / "ddp" / "version_0"
    final = json.loads((run / "metrics_val_epoch1_step2.json").read_text())  # 1 batch per rank per epoch
    assert list(final["domains"]) == ["D013_2020", "D064_2021"]
    assert sum(final["domains"][d]["labelled_pixels"] for d in final["domains"]) == 4 * (64 * 64 - 4)
    for step in (1, 2):
        rank0 = json.loads((ranks / f"rank0_step{step}.json").read_text())
        rank1 = json.loads((ranks / f"rank1_step{step}.json").read_text())
        assert rank0 == rank1 and "val/D013_2020/mIoU" in rank0
    assert rank0["val/mean/mIoU"] == pytest.approx(final["mean"]["mIoU"])

    assert main(args("test", "single", devices=1) + ["--ckpt_path", str(run / "checkpoints" / "last.ckpt")]) == 0
    single = json.loads((tmp_path / "runs" / "single" / "version_0" / "metrics_test.json").read_text())
    assert single["confusion"] == final["confusion"]
