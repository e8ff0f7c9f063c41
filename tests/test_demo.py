"""``spectralmoe demo``: the reduced demo runs end to end with several seeds, maps a scene and writes
every report file; its numbers are recomputable from what it wrote.

The full demo (``make demo``) takes minutes; ``quick=True`` runs the same code on a tiny world for
3 steps per run (2 seeds per method, a 96² scene), which is what these tests exercise.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
from pathlib import Path

import numpy as np
import pytest
import rasterio

from spectralmoe.demo import (
    DEMO_METHODS,
    FULL,
    QUICK,
    REPORT_FILES,
    DemoConfig,
    add_demo_parser,
    default_cache_dir,
    run_demo,
)
from spectralmoe.demo_progress import StepBar, bars_wanted
from spectralmoe.demo_report import (
    MethodResult,
    RunResult,
    Sample,
    compare_methods,
    comparison_sentences,
    samples_figure,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TARGETS = {"gf2/south", "planetscope/north", "planetscope/south", "sentinel2/north", "sentinel2/south"}


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("demo")
    lines: list[str] = []
    result = run_demo(root / "report", world_dir=root / "worlds", quick=True, progress=False, log=lines.append)
    return result, lines


def test_quick_demo_writes_every_report_file(quick_demo) -> None:
    result, _ = quick_demo
    for name in REPORT_FILES:
        path = result.out / name
        assert path.is_file() and path.stat().st_size > 0, name
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == PNG_MAGIC, name
    assert sorted(p.name for p in result.figures) == ["miou.png", "routing.png", "samples.png"]
    for method in DEMO_METHODS:  # the pipeline's own per-run metrics files, one folder per seed
        for seed in QUICK.training_seeds:
            assert (result.out / "runs" / method / f"seed{seed}" / "target" / "metrics_test.json").is_file()
            assert (result.out / "runs" / method / f"seed{seed}" / "source-holdout" / "metrics_test.json").is_file()
        assert (result.out / "runs" / method / f"seed{QUICK.seed}" / "export" / "spectralmoe.json").is_file()


def test_metrics_json_holds_every_seed_and_their_mean_and_std(quick_demo) -> None:
    result, _ = quick_demo
    metrics = json.loads(result.metrics.read_text())
    assert metrics["SYNTHETIC"] is True and "SYNTHETIC" in metrics["note"]
    assert list(metrics["methods"]) == list(DEMO_METHODS)
    assert metrics["seeds"] == [0, 1] and QUICK.seeds == 2
    for method, row in metrics["methods"].items():
        assert row["seeds"] == [0, 1] and len(row["runs"]) == 2, method
        for run in row["runs"]:
            assert set(run["targets"]) == TARGETS
            for scores in [run["source_holdout"], run["mean_target"], *run["targets"].values()]:
                assert 0.0 <= scores["mIoU"] <= 100.0 and 0.0 <= scores["mAcc"] <= 100.0
            mean = sum(r["mIoU"] for r in run["targets"].values()) / len(TARGETS)
            assert math.isclose(run["mean_target"]["mIoU"], mean, rel_tol=1e-6)
            assert math.isclose(run["drop"]["mIoU"], run["source_holdout"]["mIoU"] - mean, abs_tol=1e-9)
            assert run["train_seconds"] > 0
        for domain in TARGETS:  # mean and sample std recomputed from the runs
            values = [run["targets"][domain]["mIoU"] for run in row["runs"]]
            assert math.isclose(row["mean"]["targets"][domain]["mIoU"], statistics.mean(values), abs_tol=1e-9)
            assert math.isclose(row["std"]["targets"][domain]["mIoU"], statistics.stdev(values), abs_tol=1e-9)
        values = [run["mean_target"]["mIoU"] for run in row["runs"]]
        assert math.isclose(row["mean"]["mean_target"]["mIoU"], statistics.mean(values), abs_tol=1e-9)
    assert metrics["methods"]["freeze"]["method_parameters"] == 0
    assert metrics["methods"]["spectralmoe"]["method_parameters"] > metrics["methods"]["rein"]["method_parameters"] > 0
    assert set(metrics["weights"]) == {"synthetic-dinov2", "synthetic-depth-anything"}
    assert metrics["config"]["steps"] == QUICK.steps
    assert metrics["machine"]["workers"] == min(os.cpu_count() or 1, 6)  # runs trained side by side
    for comparison in metrics["comparisons"]:  # "exceeds the seed spread" = the seed ranges do not overlap
        low_of_higher = comparison["range_higher"][0]
        high_of_lower = comparison["range_lower"][1]
        assert comparison["exceeds_seed_spread"] == (low_of_higher > high_of_lower)
        assert comparison["mean_higher"] >= comparison["mean_lower"]


def test_scene_is_mapped_georeferenced_and_its_accuracy_is_real(quick_demo) -> None:
    result, _ = quick_demo
    metrics = json.loads(result.metrics.read_text())
    scene = metrics["scene"]
    best = scene["best_method"]
    means = {m: row["mean"]["mean_target"]["mIoU"] for m, row in metrics["methods"].items()}
    assert best == max(means, key=means.get)
    record = scene["maps"][best]
    with rasterio.open(scene["image"]) as image, rasterio.open(record["map"]) as mapped, \
            rasterio.open(scene["ground_truth"]) as truth:  # fmt: skip
        assert (mapped.height, mapped.width) == (image.height, image.width) == (QUICK.scene_size, QUICK.scene_size)
        assert mapped.crs == image.crs and mapped.crs is not None and mapped.transform == image.transform
        assert json.loads(mapped.tags()["CLASS_NAMES"])[0] == "water"
        prediction, labels = mapped.read(1), truth.read(1)
    assert math.isclose(record["overall_accuracy"], 100.0 * float((prediction == labels).mean()), abs_tol=1e-6)
    assert "spectralmoe" in scene["maps"] and scene["maps"]["spectralmoe"]["routing"]  # the routing map is drawn
    with rasterio.open(scene["maps"]["spectralmoe"]["routing"]) as routing:
        experts = routing.read(1)
    assert experts.max() < 6 and (result.out / "figures" / "scene_routing.png").is_file()


def test_report_says_synthetic_and_holds_the_tables_seeds_scene_and_times(quick_demo) -> None:
    result, lines = quick_demo
    report = result.report.read_text()
    assert report.startswith("# ") and "**SYNTHETIC" in report and "Nothing here says anything about real imagery" in report
    for section in ("## Results: mIoU (%), mean ± std over 2 seed(s)", "## Results: mAcc (%)", "## Every run",
                    "## What the seeds say", "## A mapped scene", "## Run times"):  # fmt: skip
        assert section in report, section
    for label in ("Freeze", "Rein", "SpectralMoE"):
        assert f"| {label} |" in report
    assert " ± " in report and "mean target" in report and "held out" in report
    assert "**Verdict:**" in report and "seed spread" in report
    for figure in ("figures/samples.png", "figures/routing.png", "figures/miou.png", "figures/scene.png",
                   "figures/scene_routing.png", "scene/map.png"):  # fmt: skip
        assert f"]({figure})" in report, figure
    assert "spectralmoe demo --out" in report and "--quick" in report and "pretrain_synthetic.py" in report
    assert "Load average" in report and "predict-scene" in report
    assert any("SYNTHETIC" in line for line in lines)  # the console says so too
    assert result.table("mIoU") in report


def test_second_run_reuses_the_cached_world_and_scene(quick_demo, tmp_path: Path) -> None:
    result, _ = quick_demo
    again = run_demo(tmp_path / "again", world_dir=result.world.parent, quick=True, methods=["freeze"], seeds=1,
                     progress=False, log=None, workers=1)  # fmt: skip
    assert again.world == result.world
    # in this process (workers=1) or in a worker process: the same run gives the same numbers
    assert result.config.training_seeds[0] == again.methods["freeze"].runs[0].seed
    assert again.methods["freeze"].runs[0].targets == result.methods["freeze"].runs[0].targets
    assert again.seconds["world"] < 2.0 and again.scene is not None and again.scene.cached  # nothing rendered
    assert list(again.methods) == ["freeze"] and len(again.methods["freeze"].runs) == 1
    assert (tmp_path / "again" / "figures" / "routing.png").is_file()  # says SpectralMoE was not run
    report = (tmp_path / "again" / "report.md").read_text()
    assert "seed-to-seed spread is unknown" in report  # one seed: nothing can be resolved, and it says so


# ------------------------------------------------------------------------------------ seeds in words
def _method(name: str, mean_targets: list[float]) -> MethodResult:
    runs = [RunResult(seed=k, source={"mIoU": 50.0, "mAcc": 60.0}, targets={"a": {"mIoU": v, "mAcc": v}},
                      mean_target={"mIoU": v, "mAcc": v}, train_seconds=1.0, eval_seconds=1.0)
            for k, v in enumerate(mean_targets)]  # fmt: skip
    return MethodResult(name, runs)


def test_a_difference_exceeds_the_seed_spread_only_when_seed_ranges_do_not_overlap() -> None:
    apart = {"freeze": _method("freeze", [20.0, 21.0]), "spectralmoe": _method("spectralmoe", [22.0, 23.5])}
    (mean,) = [c for c in compare_methods(apart) if c.place == "mean target"]
    assert (mean.a, mean.b) == ("spectralmoe", "freeze") and mean.exceeds_spread and mean.delta == pytest.approx(2.25)
    text = "\n".join(comparison_sentences(compare_methods(apart)))
    assert "SpectralMoE beats every baseline on the mean target beyond the seed spread" in text
    overlapping = {"freeze": _method("freeze", [20.0, 23.0]), "spectralmoe": _method("spectralmoe", [22.0, 23.5])}
    (mean,) = [c for c in compare_methods(overlapping) if c.place == "mean target"]
    assert not mean.exceeds_spread  # higher mean, but a Freeze seed beats a SpectralMoE seed
    text = "\n".join(comparison_sentences(compare_methods(overlapping)))
    assert "does **not** beat the baselines" in text and "within the seed spread" in text
    worse = {"freeze": _method("freeze", [25.0, 26.0]), "spectralmoe": _method("spectralmoe", [20.0, 21.0])}
    assert "is **worse** than Freeze" in "\n".join(comparison_sentences(compare_methods(worse)))
    single = {"freeze": _method("freeze", [20.0]), "spectralmoe": _method("spectralmoe", [30.0])}
    assert not any(c.exceeds_spread for c in compare_methods(single))
    assert "spread is unknown" in "\n".join(comparison_sentences(compare_methods(single)))


# ----------------------------------------------------------------------------------- figures, bars
def test_every_column_of_the_samples_figure_has_a_title() -> None:
    rng = np.random.default_rng(0)
    samples = [Sample(d, d, rng.integers(0, 255, (4, 32, 32)).astype(np.uint8), rng.integers(0, 7, (32, 32)),
                      [0.83, 0.66, 0.555, 0.485], {"freeze": rng.integers(0, 7, (32, 32)).astype(np.uint8)},
                      rng.integers(0, 3, (2, 2)).astype(np.uint8)) for d in ("gf2/north", "gf2/south")]  # fmt: skip
    fig = samples_figure(samples, ["freeze"], ["c"] * 7, [(i * 30, 0, 0) for i in range(7)], 3, 5, "gf2/north", 0)
    axes = fig.axes
    top = axes[: len(axes) // 2]
    titles = [ax.get_title() for ax in top]
    assert len(titles) == 4 and all(titles), titles  # composite, truth, Freeze, experts
    assert titles[2] == "Freeze (seed 0)"
    assert all(not ax.get_title() for ax in axes[len(axes) // 2:])  # rows below: titles once, at the top


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_bars_only_on_a_terminal_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    assert bars_wanted(_Stream(True)) and not bars_wanted(_Stream(False))
    monkeypatch.setenv("CI", "true")
    assert not bars_wanted(_Stream(True))
    monkeypatch.setenv("CI", "false")
    assert bars_wanted(_Stream(True))


def test_step_bar_counts_steps_shows_losses_and_time_left(capsys: pytest.CaptureFixture[str]) -> None:
    import lightning as L
    import torch

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            loss = self.layer(batch[0]).pow(2).mean()
            self.log("train/loss_ce", loss)
            self.log("train/loss_aux", loss * 0)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 2)), batch_size=2)
    trainer = L.Trainer(max_steps=5, max_epochs=-1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                        callbacks=[StepBar("Tiny seed 0")])  # fmt: skip
    trainer.fit(Tiny(), data)
    err = capsys.readouterr().err
    assert "Tiny seed 0: train" in err and "5/5" in err and "head loss" in err and "aux loss" in err
    assert "<" in err  # tqdm's "elapsed<remaining"


# ----------------------------------------------------------------------------------------- CLI, config
def test_cli_parser() -> None:
    parser = argparse.ArgumentParser(prog="spectralmoe")
    add_demo_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo", "--quick", "--steps", "5", "--out", "r", "--methods", "freeze", "rein",
                              "--seeds", "3", "--scene-size", "0", "--no-progress", "--started", "12.5",
                              "--workers", "1"])  # fmt: skip
    assert callable(args.func) and args.quick and args.steps == 5 and args.out == Path("r")
    assert args.methods == ["freeze", "rein"] and args.seed is None and args.seeds == 3 and args.scene_size == 0
    assert args.progress is False and args.started == 12.5 and args.workers == 1
    defaults = parser.parse_args(["demo"])
    assert defaults.out == Path("demo-report") and defaults.methods == list(DEMO_METHODS) and not defaults.quick
    assert defaults.progress is None and defaults.seeds is None


def test_config_checks_and_cache_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        DemoConfig(tile_size=72)
    with pytest.raises(ValueError, match="batch_size"):
        DemoConfig(tiles_per_domain=4, batch_size=8)
    with pytest.raises(ValueError, match="target domain"):
        DemoConfig(scene_sensor="gf2", scene_region="north")  # the source domain is no test
    with pytest.raises(ValueError, match="seeds"):
        DemoConfig(seeds=0)
    assert FULL.head == "fpn" and QUICK.steps < FULL.steps
    assert FULL.tile_size // 16 >= 16 and FULL.seeds >= 2 and FULL.scene_size >= 2048  # what the demo promises
    assert DemoConfig(seed=3, seeds=3).training_seeds == [3, 4, 5]
    monkeypatch.setenv("SPECTRALMOE_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("SPECTRALMOE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "spectralmoe"
