"""The experiment configs: one YAML per DG task, one per method × backbone, composed on the command line.

Checks that the task files carry the recipe of ``DG_TASKS`` (METHOD §5), that the method files cover
the paper's tables, that the README's paper-row table names existing files, and — the expensive one —
that every task × method pair parses, builds with tiny stand-ins of the hub models and trains two steps
on a fake prepared benchmark through ``spectralmoe fit``.

The helpers at the top (fake prepared roots, tiny overrides) are shared with ``test_cli_train`` and
``test_end_to_end``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from safetensors.torch import load_file

from spectralmoe.bands import get_sensor
from spectralmoe.cli import main
from spectralmoe.data.benchmarks import DG_TASKS
from spectralmoe.data.prepare.common import PrepareRun, TileArrays
from spectralmoe.engine.export import CONFIG_FILE, WEIGHTS_FILE

# main(argv) runs LightningCLI in-process while pytest's own arguments sit in sys.argv: not a mistake here
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TASK_FILES = sorted((CONFIGS / "tasks").glob("*.yaml"))
#: The paper's method files; ``*_synthetic.yaml`` are CPU-sized configs on the shipped synthetic backbones,
#: trained end to end by ``tests/test_own_data.py``.
METHOD_FILES = sorted(p for p in (CONFIGS / "methods").glob("*.yaml") if not p.stem.endswith("_synthetic"))
SYNTHETIC_METHOD_FILES = sorted((CONFIGS / "methods").glob("*_synthetic.yaml"))

# ------------------------------------------------------------------------------------ fake data
#: Per task: the source sensor and two target groups (name, sensor, tile attributes) that the task's
#: ``target_group_by`` turns into two target domains.
FAKE_TARGETS: dict[str, tuple[str, list[tuple[str, str, dict[str, str]]]]] = {
    "whu-ohs": ("ohs", [("T1", "ohs", {}), ("T2", "ohs", {})]),
    "fbp-cross-sensor": ("gf2", [("gf1-city", "gf1", {}), ("planet-city", "planetscope", {})]),
    "fbp-cross-region": ("gf2", [("s1", "gf2", {"region": "beijing"}), ("s2", "gf2", {"region": "wuhan"})]),
    "flair": ("flair", [("D013_2020", "flair", {}), ("D064_2021", "flair", {})]),
    "loveda-rural2urban": ("rgb", [("urban-a", "rgb", {}), ("urban-b", "rgb", {})]),
    "potsdam2vaihingen": ("potsdam-rgb", [("vaihingen-a", "vaihingen", {}), ("vaihingen-b", "vaihingen", {})]),
    "openearthmap-europe": ("rgb", [("oem-a", "rgb", {"continent": "north"}), ("oem-b", "rgb", {"continent": "south"})]),
}  # fmt: skip


def _tile(seed: int, bands: int, classes: int, size: int, scale: float) -> TileArrays:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, int(scale), (bands, size, size)).astype(np.uint16 if scale > 255 else np.uint8)
    label = np.clip(image[0].astype(np.int64) * classes // int(scale), 0, classes - 1).astype(np.uint8)
    label[:2, :2] = 255
    return TileArrays(image, label)


def make_prepared_root(
    task_name: str, out: Path, *, source_tiles: int = 2, tiles_per_target: int = 1, size: int = 32,
    target_size: int = 64,
) -> Path:  # fmt: skip
    """A prepared benchmark for ``task_name`` (``PrepareRun``, as ``spectralmoe prepare`` writes it) with
    ``source_tiles`` source tiles and two target domains. Target tiles are 64 px so that Mask2Former's
    stride-32 map of a single tile has more than one pixel."""
    task = DG_TASKS[task_name]
    source, targets = FAKE_TARGETS[task_name]
    run = PrepareRun(task.benchmark, out, progress=False)
    classes, sensors = len(task.classes), {source: get_sensor(source)}
    for i in range(source_tiles):
        s = sensors[source]
        run.add_tile(f"source/s{i}", lambda i=i, s=s: _tile(i, s.num_bands, classes, size, s.value_scale),
                     split="source", domain="source", sensor=source)  # fmt: skip
    seed = 100
    for domain, name, attributes in targets:
        sensors[name] = sensor = get_sensor(name)
        for k in range(tiles_per_target):
            run.add_tile(f"target/{domain}/t{k}",
                         lambda seed=seed, s=sensor: _tile(seed, s.num_bands, classes, target_size, s.value_scale),
                         split="target", domain=domain, sensor=name, attributes=attributes)  # fmt: skip
            seed += 1
    run.finish(classes=list(task.classes), palette=list(task.palette), sensors=sensors)
    return out


def tiny_task_file(task_name: str, folder: Path, **fields: Any) -> Path:
    """A task YAML that ``extends`` a built-in task with a 32-px crop and batches of 2."""
    path = folder / f"tiny-{task_name}.yaml"
    path.write_text(yaml.safe_dump({"extends": task_name, "crop_size": 32, "batch_size": 2, "eval_batch_size": 2,
                                    **fields}))  # fmt: skip
    return path


# ---------------------------------------------------------------------------------- tiny models
#: Test-sized stand-ins of the hub backbones (random weights, no download).
TINY_BACKBONES = {
    "dinov3-vitl16": "tiny-dinov3", "dinov2-vitl14": "tiny-dinov2", "clip-vitl14": "tiny-clip",
    "sam-vith": "tiny-sam", "dofa-vitl": "tiny-dofa",
}  # fmt: skip
_TOKENS = {"token_length": 8, "query_dim": 32, "rank": 4}
#: Size options of each method, merged over the method file's own options (which are kept: E=3 stays 3).
TINY_ADAPTER_OPTIONS: dict[str, dict[str, Any] | None] = {
    "spectralmoe": _TOKENS, "rein": _TOKENS, "depthforge": _TOKENS, "set": _TOKENS, "fada": _TOKENS,
    "lora": {"rank": 2}, "adaptformer": {"bottleneck": 8}, "vpt": {"num_prompts": 4}, "freeze": None,
}  # fmt: skip
TINY_HEAD = {"hidden_dim": 32, "decoder_layers": 1, "encoder_layers": 1, "num_heads": 2, "train_num_points": 64,
             "dim_feedforward": 64, "encoder_feedforward_dim": 64, "num_queries": 8}  # fmt: skip


def tiny_model_args(method_file: Path) -> list[str]:
    """``--model.*`` overrides that shrink the method file's model (backbone, depth, adapter, head) to
    test size while keeping every option the file sets."""
    model = yaml.safe_load(method_file.read_text())["model"]
    tiny = TINY_ADAPTER_OPTIONS[model["adapter"]]
    adapter_options = None if tiny is None else {**(model.get("adapter_options") or {}), **tiny}
    head_options = {**(model.get("head_options") or {}), **TINY_HEAD}
    return [
        "--model.backbone", TINY_BACKBONES[model["backbone"]], "--model.depth", "tiny-depth-anything",
        "--model.pretrained", "false", "--model.adapter_options", json.dumps(adapter_options),
        "--model.head_options", json.dumps(head_options),
    ]  # fmt: skip


def cpu_trainer_args(**overrides: Any) -> list[str]:
    """One CPU process, no progress bar or model summary: what every test run shares."""
    options = {"accelerator": "cpu", "devices": 1, "strategy": "auto", "enable_progress_bar": False,
               "enable_model_summary": False, "num_sanity_val_steps": 0, **overrides}  # fmt: skip
    text = {key: str(value).lower() if isinstance(value, bool) else str(value) for key, value in options.items()}
    return [item for key, value in text.items() for item in (f"--trainer.{key}", value)]


@pytest.fixture
def four_block_tiny_dofa(monkeypatch):
    """``tiny-dofa`` has 2 blocks, so its 4 decoder taps repeat a block, and ``Segmentor.extract_features``
    keeps one map per distinct block (2 maps for a 4-level head). Until that is fixed, the DOFA rows run
    on a 4-block tiny DOFA (distinct taps 0..3), as every other tiny backbone has."""
    from spectralmoe.models.backbones import dofa

    tiny = dataclasses.replace(dofa.DOFA_CONFIGS["tiny-dofa"], depth=4)
    monkeypatch.setitem(dofa.DOFA_CONFIGS, "tiny-dofa", tiny)


# ------------------------------------------------------------------------------ the YAML files
def test_one_task_file_per_dg_task_with_the_recipe():
    assert sorted(p.stem for p in TASK_FILES) == sorted(DG_TASKS)
    for path in TASK_FILES:
        config = yaml.safe_load(path.read_text())
        task = DG_TASKS[path.stem]
        data, trainer, model = config["data"], config["trainer"], config["model"]
        assert data["task"] == task.name and data["root"] == f"data/{task.benchmark}", path
        assert (data["batch_size"], data["eval_batch_size"]) == (task.batch_size, task.eval_batch_size), path
        assert trainer["max_steps"] == task.max_iters and trainer["val_check_interval"] == task.val_interval, path
        assert "check_val_every_n_epoch" in trainer and trainer["check_val_every_n_epoch"] is None, path
        assert trainer["devices"] == task.devices and trainer["precision"] == "32-true", path
        if task.devices > 1:  # routing leaves experts without gradient: DDP must allow unused parameters
            assert trainer["strategy"] == "ddp_find_unused_parameters_true", path
        assert config["seed_everything"] == 42 and data["seed"] == 42
        assert model == {"lr": 1e-4, "weight_decay": 0.05, "poly_power": 0.9, "warmup_iters": 0, "eval_mode": "whole"}
        assert f"configs/tasks/{path.name}" in path.read_text()  # the header shows the paper-row command


# The paper's tables (see README "Paper rows"): the main table compares every method on every task with
# DINOv3-L (DOFA-L for WHU-OHS, so every method also has a DOFA-L file); the backbone table runs Freeze,
# Rein and SpectralMoE on each frozen backbone; the PEFT table is the DINOv3-L column of methods.
METHODS = ["freeze", "lora", "adaptformer", "vpt", "set", "fada", "rein", "depthforge", "spectralmoe"]
EXPECTED_METHOD_FILES = (
    {f"{m}_dinov3-vitl16" for m in METHODS} | {f"{m}_dofa-vitl" for m in METHODS} | {"spectralmoe-e3_dinov3-vitl16"}
    | {f"{m}_{b}" for m in ("freeze", "rein", "spectralmoe") for b in ("dinov2-vitl14", "clip-vitl14", "sam-vith")}
)  # fmt: skip


def test_method_files_cover_the_paper_tables():
    assert {p.stem for p in METHOD_FILES} == EXPECTED_METHOD_FILES
    for path in METHOD_FILES:
        config = yaml.safe_load(path.read_text())
        assert set(config) == {"model"}, f"{path}: a method file sets the model only"
        model = config["model"]
        method, backbone = path.stem.split("_")
        assert model["backbone"] == backbone and model["adapter"] == method.removesuffix("-e3"), path
        assert model["head"] == "mask2former", path
        options = model.get("adapter_options") or {}
        if model["adapter"] in ("spectralmoe", "depthforge"):
            assert model["depth"] == "prompt-depth-anything-large", path
        if model["adapter"] == "spectralmoe":
            assert options["num_experts"] == (3 if method.endswith("-e3") else 6) and options["top_k"] == 1, path
            assert (options["rank"], options["token_length"], options["gating"]) == (16, 100, "laplace"), path
        if model["adapter"] in ("rein", "depthforge", "set", "fada"):  # Rein's configs
            assert model["head_options"] == {"replace_query_feat": True}, path
        else:
            assert model.get("head_options") is None, path


def test_readme_paper_rows_name_existing_configs():
    """Every config is a row (or cell) of the README's paper tables, and every name there exists."""
    text = (REPO / "README.md").read_text()
    start = text.index("### Paper rows")
    section = text[start : text.find("\n## ", start) if "\n## " in text[start:] else len(text)]
    tasks = set(re.findall(r"configs/tasks/([\w.-]+)\.yaml", section))
    methods = set(re.findall(r"`((?:spectralmoe-e3|[a-z]+)_[a-z0-9.-]+)`", section))
    methods |= set(re.findall(r"configs/methods/([\w.-]+)\.yaml", section))
    assert tasks == {p.stem for p in TASK_FILES}
    assert methods == {p.stem for p in METHOD_FILES}
    rows = [line for line in section.splitlines() if line.startswith("| ") and "`" in line]
    main_rows = [r for r in rows if r.count("|") == 9]  # method + 7 tasks
    assert len(main_rows) == len(METHODS)
    header = next(line for line in section.splitlines() if line.startswith("| method | whu-ohs"))
    columns = [c.strip().split(" ")[0] for c in header.strip("|").split("|")[1:]]
    assert columns == ["whu-ohs", "fbp-cross-sensor", "fbp-cross-region", "flair", "loveda-rural2urban",
                       "potsdam2vaihingen", "openearthmap-europe"]  # fmt: skip
    for row in main_rows:  # the WHU-OHS column runs on DOFA-L; E=3 only for LoveDA and OpenEarthMap
        name, *cells = [c.strip(" `") for c in row.strip("|").split("|")]
        assert cells[0].endswith("_dofa-vitl") and all(c.endswith("_dinov3-vitl16") for c in cells[1:]), row
        e3 = [False] * 4 + [True, False, True] if name == "SpectralMoE" else [False] * 7
        assert ["-e3_" in c for c in cells] == e3, row
        assert len({c.split("_")[0].removesuffix("-e3") for c in cells}) == 1, row  # one method per row


# ------------------------------------------------------------------------- every task × method
@pytest.fixture(scope="module")
def fake_roots(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """One fake prepared benchmark (2 source + 2 target tiles) and tiny task file per task, shared by
    every method."""
    base = tmp_path_factory.mktemp("benchmarks")
    return {name: (make_prepared_root(name, base / name), tiny_task_file(name, base)) for name in DG_TASKS}


@pytest.mark.parametrize("method_file", METHOD_FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("task_file", TASK_FILES, ids=lambda p: p.stem)
def test_every_task_and_method_trains_two_steps(task_file, method_file, fake_roots, tmp_path, four_block_tiny_dofa):
    """Two steps of ``spectralmoe fit -c TASK -c METHOD`` with tiny models on the task's fake benchmark.

    Evaluation depends on the task's target sensors and on the backbone, not on the adapter: the
    SpectralMoE file of each backbone also validates on both target domains (the others skip it, to
    keep the 196 runs within the suite's time)."""
    root, tiny_task = fake_roots[task_file.stem]
    validate = method_file.stem.startswith("spectralmoe")
    code = main([
        "fit", "-c", str(task_file), "-c", str(method_file), *tiny_model_args(method_file),
        "--data.root", str(root), "--data.task", str(tiny_task), "--data.batch_size", "2",
        "--data.eval_batch_size", "2", "--data.num_workers", "0",
        *cpu_trainer_args(max_steps=2, val_check_interval=2, limit_val_batches=1.0 if validate else 0,
                          logger=False, default_root_dir=str(tmp_path)),
        "--checkpoint.dirpath", str(tmp_path / "ckpt"), "--export.dirpath", str(tmp_path),
        "--model.metrics_dir", str(tmp_path),
    ])  # fmt: skip
    assert code == 0
    export = json.loads((tmp_path / "export" / CONFIG_FILE).read_text())
    assert export["metadata"]["step"] == 2  # two optimiser steps ran
    assert export["build"]["adapter"] == yaml.safe_load(method_file.read_text())["model"]["adapter"]
    assert export["build"]["num_classes"] == DG_TASKS[task_file.stem].num_classes
    weights = load_file(tmp_path / "export" / WEIGHTS_FILE)
    assert weights and all(bool(t.isfinite().all()) for t in weights.values())
    if validate:
        report = json.loads((tmp_path / "metrics_val_epoch1_step2.json").read_text())
        assert len(report["domains"]) == 2  # validated on both target domains
