"""`spectralmoe params`: the paper's Params column, built on the meta device."""

import json

import pytest

from spectralmoe.cli import main

PAPER_COUNTS_VIT_L = {
    "spectralmoe": 5_737_985,
    "rein": 2_990_081,
    "depthforge": 2_990_081,
    "lora": 786_432,
    "adaptformer": 3_220_992,
    "vpt": 3_686_400,
    "freeze": 0,
}


def run_params(capsys, *args):
    assert main(["params", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("method, expected", sorted(PAPER_COUNTS_VIT_L.items()))
def test_params_reproduce_the_paper_at_vit_l(capsys, method, expected):
    report = run_params(capsys, "--backbone", "dinov3-vitl16", "--adapter", method)
    assert report["method_trainable"] == expected
    assert report["total_trainable"] == expected + report["head_trainable"]
    assert report["backbone_frozen"] == 303_129_600  # DINOv3 ViT-L/16: frozen whatever the method


def test_spectralmoe_with_three_experts_and_on_sam_h(capsys):
    assert run_params(capsys, "--adapter", "spectralmoe", "--set", "num_experts=3")["method_trainable"] == 4_148_225
    sam = run_params(capsys, "--backbone", "sam-vith", "--adapter", "spectralmoe")
    # 9,026,561 for the adapter itself + a 1024→1280 projection of the depth tokens
    assert sam["method_breakdown"]["depth_proj"] == 1024 * 1280 + 1280
    assert sam["method_trainable"] == 9_026_561 + 1024 * 1280 + 1280
    assert sam["depth_frozen"] > 300_000_000


def test_params_table_text_and_errors(capsys):
    assert main(["params", "--adapter", "rein"]) == 0
    assert "2,990,081" in capsys.readouterr().out
    assert main(["params", "--backbone", "nope"]) == 2
    assert "unknown backbone 'nope'" in capsys.readouterr().err
    assert main(["params", "--set", "novalue"]) == 2  # one line naming the flag, no traceback


def test_params_compare_prints_one_row_per_method(capsys):
    assert main(["params", "--compare"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 10  # header + 9 methods
    assert "| spectralmoe | 5,737,985 | 5.74 M |" in rows
    assert "| lora | 786,432 | 0.79 M |" in rows


@pytest.mark.parametrize("backbone, frozen, same_size", [
    ("eva02-vitl16", 303_453_120, "dinov3-vitl16"),  # the p14to16 file's count (tests/models/test_eva02.py)
    ("softcon-vitb14", 87_230_976 + 768 * 13 * 60, "dinov3-vitb16"),  # released ViT-B/14 + kernel resized 14 → 16
    ("copernicusfm-vitb16", 113_084_672, "dinov3-vitb16"),  # released ViT-B/16 without the language hypernetwork
])  # fmt: skip
def test_params_on_the_backbones_written_for_the_paper_tables(capsys, backbone, frozen, same_size):
    report = run_params(capsys, "--backbone", backbone, "--adapter", "spectralmoe")
    assert report["backbone_frozen"] == frozen
    # The adapter depends on width and depth only: as on the DINOv3 of the same size (5,737,985 at ViT-L).
    assert report["method_trainable"] == run_params(capsys, "--backbone", same_size, "--adapter", "spectralmoe")[
        "method_trainable"]
