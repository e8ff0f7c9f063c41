"""The speed benchmark scripts run (tiny sizes, CPU) and report what they claim, so they cannot rot:
benchmarks/gpu_suite.py --tiny (all five parts), adapter_speed.py --reference, train_step.py,
predict_read_ahead.py. The GPU suite's test is the slow one of this file (~20–50 s on 2 cores): it is
the only check of that script before a GPU machine runs it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import adapter_speed  # noqa: E402
import gpu_suite  # noqa: E402
import predict_read_ahead  # noqa: E402
import train_step  # noqa: E402
from common import MethodSpec  # noqa: E402

TINY_ADAPTER = ["--tokens", "16", "--dim", "32", "--rank", "4", "--token-length", "6", "--repeats", "1",
                "--warmup", "0", "--device", "cpu", "--no-memory"]  # fmt: skip


def _errors(tree, path=""):
    if isinstance(tree, dict):
        found = [f"{path}: {tree['error']}"] if "error" in tree else []
        return found + [e for k, v in tree.items() for e in _errors(v, f"{path}/{k}")]
    return []


def test_gpu_suite_tiny_runs_every_part_on_cpu(tmp_path, capsys):
    out = tmp_path / "suite.json"
    result = gpu_suite.main(["--tiny", "--device", "cpu", "--compile-backend", "eager",
                             "--compile-methods", "spectralmoe", "--output", str(out)])  # fmt: skip
    assert _errors(result) == []
    assert json.loads(out.read_text()) == json.loads(capsys.readouterr().out)  # the file = what was printed
    assert result["environment"]["dtype"] == "fp32" and result["environment"]["rasterio"] is True
    for method in ("freeze", "rein", "spectralmoe"):
        row = result["training"][method]
        assert row["images_per_s"] > 0 and row["fused_adamw"] is True and row["trainable_parameters"] > 0
    trainable = {m: result["training"][m]["trainable_parameters"] for m in ("rein", "spectralmoe")}
    assert trainable["spectralmoe"] > trainable["rein"]
    compiled = result["training_compiled"]
    assert compiled["compile_options"] == {"backend": "eager"} and compiled["spectralmoe"]["images_per_s"] > 0
    adapter = result["adapter"]
    assert adapter["reference_parity_max_abs_diff"] < 1e-4
    assert set(adapter["ratios"]) >= {"paper / reference", "official / reference", "official / official:dense"}
    scene = result["predict_scene"]
    assert scene["tiles"] == 16 and scene["megapixels_per_s"] > 0 and scene["megapixels_per_s_reading_in_turn"] > 0


def test_gpu_suite_skips_what_cannot_run(monkeypatch, tmp_path):
    real = gpu_suite.importlib.util.find_spec
    monkeypatch.setattr(gpu_suite.importlib.util, "find_spec", lambda name: None if name == "rasterio" else real(name))
    result = gpu_suite.main(["--tiny", "--device", "cpu", "--skip", "training,adapter,training_compiled"])
    assert "rasterio is not installed" in result["predict_scene"]["skipped"]
    assert result["training"] == {"skipped": "--skip"}
    with pytest.raises(SystemExit, match="no GPU"):
        monkeypatch.setattr(gpu_suite.torch.cuda, "is_available", lambda: False)
        gpu_suite.main(["--device", "cuda"])


def test_gpu_suite_compiled_runs_respect_the_budget():
    result = gpu_suite.main(["--tiny", "--device", "cpu", "--skip", "training,adapter,predict_scene",
                             "--budget-s", "0"])  # fmt: skip
    assert all("time budget" in result["training_compiled"][m]["skipped"] for m in ("spectralmoe", "rein", "freeze"))
    # a compiled run that outlasts the budget is killed (inductor on CPU takes minutes: 4 s cannot suffice)
    result = gpu_suite.main(["--tiny", "--device", "cpu", "--skip", "training,adapter,predict_scene",
                             "--budget-s", "4", "--min-compile-s", "0", "--compile-methods", "spectralmoe"])  # fmt: skip
    assert "killed" in result["training_compiled"]["spectralmoe"]["skipped"] and result["elapsed_s"] < 30


def test_adapter_speed_reference_parity_and_ratios():
    args = adapter_speed.parse(TINY_ADAPTER + ["--reference", "--dispatch", "sparse,dense"])
    result = adapter_speed.run(args)
    assert result["reference_parity_max_abs_diff"] < 1e-4
    names = ["paper", "paper:dense", "official", "official:dense", "reference"]
    assert all(result[n]["fwd_bwd_ms_median"] > 0 for n in names)
    ratios = result["ratios"]
    expected = result["official"]["fwd_bwd_ms_median"] / result["reference"]["fwd_bwd_ms_median"]
    assert ratios["official / reference"] == pytest.approx(expected, rel=0.02)


def test_train_step_ratios_and_breakdown():
    result = train_step.main(["--backbone", "tiny-dinov3", "--depth", "tiny-depth-anything", "--size", "32",
                              "--repeats", "1", "--warmup", "0", "--device", "cpu", "--breakdown",
                              "--methods", "freeze", "rein", "spectralmoe:dispatch=dense"])  # fmt: skip
    methods = result["methods"]
    assert methods["rein"]["ratio_to_rein"] == 1.0 and methods["freeze"]["ratio_to_freeze"] == 1.0
    smoe = methods["spectralmoe:dispatch=dense"]
    assert smoe["ratio_to_rein"] == pytest.approx(smoe["step_s_median"] / methods["rein"]["step_s_median"], rel=0.02)
    assert smoe["breakdown_s"]["depth_model_forward"] > 0 and smoe["breakdown_s"]["adapter_forward"] > 0
    assert "adapter_forward" not in methods["freeze"]["breakdown_s"]


def test_method_spec_parsing():
    spec = MethodSpec.parse("spectralmoe:dispatch=dense:use_depth=false:top_k=2")
    assert spec.adapter == "spectralmoe" and spec.options == {"dispatch": "dense", "use_depth": False, "top_k": 2}
    with pytest.raises(ValueError, match="key=value"):
        MethodSpec.parse("rein:rank")


def test_predict_read_ahead_reports_both_settings(tmp_path):
    result = predict_read_ahead.main(["--size", "160", "--tile", "64", "--overlap", "16", "--batch-size", "2",
                                      "--rounds", "1", "--workdir", str(tmp_path)])  # fmt: skip
    assert result["tiles"] == 9 and result["read_ahead=0"]["speedup_vs_first"] == 1.0
    assert result["read_ahead=2"]["tiles_per_s_median"] > 0
