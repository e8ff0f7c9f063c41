"""``spectralmoe demo``: the reduced demo runs end to end and writes every report file.

The full demo (``make demo``) takes minutes; ``quick=True`` runs the same code on a tiny world for
3 steps per method, which is what these tests exercise.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

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

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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
    for method in DEMO_METHODS:  # the pipeline's own per-run metrics files
        assert (result.out / "runs" / method / "target" / "metrics_test.json").is_file()
        assert (result.out / "runs" / method / "source-holdout" / "metrics_test.json").is_file()


def test_metrics_json_is_labelled_synthetic_and_complete(quick_demo) -> None:
    result, _ = quick_demo
    metrics = json.loads(result.metrics.read_text())
    assert metrics["SYNTHETIC"] is True and "SYNTHETIC" in metrics["note"]
    assert list(metrics["methods"]) == list(DEMO_METHODS)
    targets = {"gf2/south", "planetscope/north", "planetscope/south", "sentinel2/north", "sentinel2/south"}
    for method, row in metrics["methods"].items():
        assert set(row["targets"]) == targets, method
        for scores in [row["source_holdout"], row["mean_target"], *row["targets"].values()]:
            assert 0.0 <= scores["mIoU"] <= 100.0 and 0.0 <= scores["mAcc"] <= 100.0
        mean = sum(r["mIoU"] for r in row["targets"].values()) / len(targets)
        assert math.isclose(row["mean_target"]["mIoU"], mean, rel_tol=1e-6)
        assert math.isclose(row["drop"]["mIoU"], row["source_holdout"]["mIoU"] - mean, rel_tol=1e-6, abs_tol=1e-9)
        assert row["train_seconds"] > 0
    assert metrics["methods"]["freeze"]["method_parameters"] == 0
    assert metrics["methods"]["spectralmoe"]["method_parameters"] > metrics["methods"]["rein"]["method_parameters"] > 0
    assert set(metrics["weights"]) == {"synthetic-dinov2", "synthetic-depth-anything"}
    assert metrics["config"]["steps"] == QUICK.steps


def test_report_says_synthetic_and_holds_the_tables(quick_demo) -> None:
    result, lines = quick_demo
    report = result.report.read_text()
    assert report.startswith("# ") and "**SYNTHETIC" in report
    assert "## Results: mIoU (%)" in report and "## Results: mAcc (%)" in report and "## Run times" in report
    for label in ("Freeze", "Rein", "SpectralMoE"):
        assert f"| {label} |" in report
    assert "mean target" in report and "drop" in report and "held out" in report
    for figure in ("figures/samples.png", "figures/routing.png", "figures/miou.png"):
        assert f"]({figure})" in report
    assert "spectralmoe demo --out" in report and "--quick" in report and "pretrain_synthetic.py" in report
    assert any("SYNTHETIC" in line for line in lines)  # the console says so too
    assert result.table("mIoU") in report


def test_second_run_reuses_the_cached_world(quick_demo, tmp_path: Path) -> None:
    result, _ = quick_demo
    again = run_demo(tmp_path / "again", world_dir=result.world.parent, quick=True, methods=["freeze"],
                     progress=False, log=None)  # fmt: skip
    assert again.world == result.world
    assert again.seconds["world"] < 2.0  # cached: nothing rendered
    assert list(again.methods) == ["freeze"]
    assert (tmp_path / "again" / "figures" / "routing.png").is_file()  # says SpectralMoE was not run


def test_cli_parser() -> None:
    parser = argparse.ArgumentParser(prog="spectralmoe")
    add_demo_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo", "--quick", "--steps", "5", "--out", "r", "--methods", "freeze", "rein"])
    assert callable(args.func) and args.quick and args.steps == 5 and args.out == Path("r")
    assert args.methods == ["freeze", "rein"] and args.seed is None
    defaults = parser.parse_args(["demo"])
    assert defaults.out == Path("demo-report") and defaults.methods == list(DEMO_METHODS) and not defaults.quick


def test_config_checks_and_cache_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        DemoConfig(tile_size=72)
    with pytest.raises(ValueError, match="batch_size"):
        DemoConfig(tiles_per_domain=4, batch_size=8)
    assert FULL.head == "fpn" and QUICK.steps < FULL.steps
    monkeypatch.setenv("SPECTRALMOE_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("SPECTRALMOE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "spectralmoe"
