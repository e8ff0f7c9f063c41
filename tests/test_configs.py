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
#: Rows that train on ONE task here (their own column of the main table would not add coverage): the
#: frozen multi-token backbones and DSTC; every other method file runs on every task.
SINGLE_TASK_ROWS = {"freeze_galileo-base": "fbp-cross-sensor", "freeze_senpamae-vitb16": "whu-ohs",
                    "dstc_resnet18": "whu-ohs"}  # fmt: skip
GRID_METHOD_FILES = [p for p in METHOD_FILES if p.stem not in SINGLE_TASK_ROWS]

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
    "sam-vith": "tiny-sam", "dofa-vitl": "tiny-dofa", "eva02-vitl16": "tiny-eva02", "softcon-vitb14": "tiny-softcon",
    "copernicusfm-vitb16": "tiny-copernicusfm", "galileo-base": "tiny-galileo", "senpamae-vitb16": "tiny-senpamae",
    "resnet18": "tiny-resnet18",
}  # fmt: skip
_TOKENS = {"token_length": 8, "query_dim": 32, "rank": 4}
#: Size options of each method, merged over the method file's own options (which are kept: E=3 stays 3).
TINY_ADAPTER_OPTIONS: dict[str, dict[str, Any] | None] = {
    "spectralmoe": _TOKENS, "rein": _TOKENS, "depthforge": _TOKENS, "set": _TOKENS, "fada": _TOKENS,
    "lora": {"rank": 2}, "adaptformer": {"bottleneck": 8}, "vpt": {"num_prompts": 4}, "freeze": None,
}  # fmt: skip
TINY_FPN = {"channels": 16}
TINY_HEAD = {"hidden_dim": 32, "decoder_layers": 1, "encoder_layers": 1, "num_heads": 2, "train_num_points": 64,
             "dim_feedforward": 64, "encoder_feedforward_dim": 64, "num_queries": 8}  # fmt: skip


def tiny_model_args(method_file: Path, backbone: str | None = None, head: str = "mask2former") -> list[str]:
    """``--model.*`` overrides that shrink the method file's model (backbone, depth, adapter, head) to
    test size while keeping every option the file sets; ``backbone`` swaps in another hub backbone,
    ``head="fpn"`` the light head."""
    model = yaml.safe_load(method_file.read_text())["model"]
    if model.get("architecture") == "dstc":  # a complete model: no adapter, head or depth to shrink
        return ["--model.backbone", TINY_BACKBONES[model["backbone"]], "--model.pretrained", "false"]
    tiny = TINY_ADAPTER_OPTIONS[model["adapter"]]
    adapter_options = None if tiny is None else {**(model.get("adapter_options") or {}), **tiny}
    head_options = {**(model.get("head_options") or {}), **TINY_HEAD} if head == "mask2former" else TINY_FPN
    return [
        "--model.backbone", TINY_BACKBONES[backbone or model["backbone"]], "--model.depth", "tiny-depth-anything",
        "--model.pretrained", "false", "--model.adapter_options", json.dumps(adapter_options),
        "--model.head", head, "--model.head_options", json.dumps(head_options),
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
#: Backbones written for issue 12: their paper rows (EVA02-L in the backbone table with Freeze/SET/FADA/Rein/
#: DepthForge/SpectralMoE; SoftCon and Copernicus-FM frozen + Mask2Former in the main table).
NEW_BACKBONES = ("eva02-vitl16", "softcon-vitb14", "copernicusfm-vitb16")
EXPECTED_METHOD_FILES = (
    {f"{m}_dinov3-vitl16" for m in METHODS} | {f"{m}_dofa-vitl" for m in METHODS} | {"spectralmoe-e3_dinov3-vitl16"}
    | {f"{m}_{b}" for m in ("freeze", "rein", "spectralmoe") for b in ("dinov2-vitl14", "clip-vitl14", "sam-vith")}
    | {f"{m}_eva02-vitl16" for m in ("freeze", "set", "fada", "rein", "depthforge", "spectralmoe")}
    | {"freeze_softcon-vitb14", "freeze_copernicusfm-vitb16"}
    | {"freeze_galileo-base", "freeze_senpamae-vitb16", "dstc_resnet18"}
)  # fmt: skip
#: The every-task run covers the backbones before issue 12; the new ones run every method × both heads on
#: one task (``test_every_method_trains_on_the_new_backbones``), which keeps the suite's time.
ALL_TASK_METHOD_FILES = [p for p in GRID_METHOD_FILES if p.stem.split("_")[1] not in NEW_BACKBONES]


def test_method_files_cover_the_paper_tables():
    assert {p.stem for p in METHOD_FILES} == EXPECTED_METHOD_FILES
    for path in METHOD_FILES:
        config = yaml.safe_load(path.read_text())
        assert set(config) == {"model"}, f"{path}: a method file sets the model only"
        model = config["model"]
        method, backbone = path.stem.split("_")
        if method == "dstc":  # the complete model: selected by architecture, nothing of the segmentor set
            assert model["architecture"] == "dstc" and model["backbone"] == backbone, path
            assert all(model[k] is None for k in ("adapter", "adapter_options", "head", "head_options", "depth"))
            continue
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


@pytest.mark.parametrize("method_file", ALL_TASK_METHOD_FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("task_file", TASK_FILES, ids=lambda p: p.stem)
def test_every_task_and_method_trains_two_steps(task_file, method_file, fake_roots, tmp_path, four_block_tiny_dofa):
    """Two steps of ``spectralmoe fit -c TASK -c METHOD`` with tiny models on the task's fake benchmark.

    Evaluation depends on the task's target sensors and on the backbone, not on the adapter: the
    SpectralMoE file of each backbone also validates on both target domains (the others skip it, to
    keep the 196 runs within the suite's time)."""
    root, tiny_task = fake_roots[task_file.stem]
    validate = method_file.stem.startswith("spectralmoe")
    _fit_two_steps(task_file, method_file, root, tiny_task, tmp_path, validate)


@pytest.mark.parametrize("row", sorted(SINGLE_TASK_ROWS))
def test_single_task_rows_train_two_steps_and_validate(row, fake_roots, tmp_path, monkeypatch):
    """Galileo, SenPa-MAE (frozen) and DSTC: two steps and a validation on both target domains of one task;
    the trained DSTC maps a GeoTIFF through predict-scene from its export and from its Lightning checkpoint
    (same map; a complete model restores every tensor, so nothing is downloaded)."""
    task_file = CONFIGS / "tasks" / f"{SINGLE_TASK_ROWS[row]}.yaml"
    root, tiny_task = fake_roots[task_file.stem]
    export = _fit_two_steps(task_file, CONFIGS / "methods" / f"{row}.yaml", root, tiny_task, tmp_path, True)
    if not row.startswith("dstc"):  # frozen backbone: only the head trains
        assert all(name.startswith("head.") for name in export["tensors"]), export["tensors"][:5]
        return
    assert export["build"]["architecture"] == "dstc" and export["build"]["backbone"] == "tiny-resnet18"
    import rasterio
    import torch

    from spectralmoe.predict import predict_scene

    def no_download(*args, **kwargs):
        raise AssertionError("a restored DSTC must not fetch ImageNet weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    scene = np.random.default_rng(0).integers(0, 10000, (32, 40, 50)).astype(np.uint16)
    with rasterio.open(tmp_path / "scene.tif", "w", driver="GTiff", height=40, width=50, count=32,
                       dtype="uint16") as dst:  # fmt: skip
        dst.write(scene)
    maps = []
    for source in (tmp_path / "export", tmp_path / "ckpt" / "last.ckpt"):
        predict_scene(source, tmp_path / "scene.tif", tmp_path / f"{source.stem}.tif", tile=32, overlap=8,
                      progress=False, preview=False)  # fmt: skip
        with rasterio.open(tmp_path / f"{source.stem}.tif") as out:
            maps.append(out.read(1))
    assert maps[0].shape == (40, 50) and np.array_equal(maps[0], maps[1])
    assert set(np.unique(maps[0])) <= set(range(DG_TASKS[task_file.stem].num_classes))


def _fit_two_steps(task_file: Path, method_file: Path, root: Path, tiny_task: Path, tmp_path: Path,
                   validate: bool, model_args: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Two steps of ``spectralmoe fit`` (tiny stand-ins: ``model_args``, default ``tiny_model_args(method_file)``);
    checks the export and, with ``validate``, the validation on both target domains; returns the export record."""
    code = main([
        "fit", "-c", str(task_file), "-c", str(method_file),
        *(tiny_model_args(method_file) if model_args is None else model_args),
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
    return export


# ---------------------------------------------------------------- the backbones of issue 12, one task
NEW_BACKBONE_TASK = "fbp-cross-sensor"  # GF-2 source (NIR,R,G,B, 4 m, bandwidths on record), GF-1/PlanetScope targets


@pytest.mark.parametrize("head", ["mask2former", "fpn"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backbone", NEW_BACKBONES)
def test_every_method_trains_on_the_new_backbones(backbone, method, head, fake_roots, tmp_path):
    """Every method × both heads on EVA02-L, SoftCon and Copernicus-FM stand-ins: two steps of ``spectralmoe fit``
    on one task (the backbone's own method file where the paper has the row, else the DINOv3-L one with the
    backbone swapped). The SpectralMoE runs also validate on both target domains. The source sensor's
    bandwidths and GSD reach the model and its export."""
    own = CONFIGS / "methods" / f"{method}_{backbone}.yaml"
    method_file = own if own.is_file() else CONFIGS / "methods" / f"{method}_dinov3-vitl16.yaml"
    task_file = CONFIGS / "tasks" / f"{NEW_BACKBONE_TASK}.yaml"
    root, tiny_task = fake_roots[NEW_BACKBONE_TASK]
    export = _fit_two_steps(task_file, method_file, root, tiny_task, tmp_path, validate=method == "spectralmoe",
                            model_args=tiny_model_args(method_file, backbone, head))  # fmt: skip
    build = export["build"]
    assert (build["backbone"], build["adapter"], build["head"]) == (TINY_BACKBONES[backbone], method, head)
    gf2 = get_sensor("gf2")
    assert build["gsd_m"] == gf2.gsd_m == 4.0 and build["in_bandwidths"] == list(gf2.bandwidths())
