"""The packaged SYNTHETIC-world foundation models and the code that pretrains them.

* the pretraining command is deterministic: two runs with the same arguments write the same bytes;
* the committed weights load through the normal preset paths without ``weights=``, their
  ``PROVENANCE.json`` matches the files, and they are small;
* they learnt something measurable on held-out tiles: the backbone's frozen features separate the
  classes better than a randomly initialised backbone's, and the depth model's heights correlate
  with the true heights.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch

from spectralmoe.models.backbones import build_backbone
from spectralmoe.models.backbones.presets import BACKBONE_PRESETS
from spectralmoe.models.depth import DEPTH_PRESETS, build_depth_encoder
from spectralmoe.pretrain.corpus import build_corpus
from spectralmoe.pretrain.depth import build_depth_model, height_correlation
from spectralmoe.pretrain.run import PretrainSettings, pretrain_all, sha256_file, weight_hashes
from spectralmoe.pretrain.vision import build_vision_model, linear_probe
from spectralmoe.weights import packaged_weights

NAMES = ("synthetic-dinov2", "synthetic-depth-anything")


@pytest.fixture
def deterministic():
    """Deterministic kernels for the test, then the previous setting back."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def _tiny_settings(seed: int = 3) -> PretrainSettings:
    return PretrainSettings(seed=seed, tiles_per_domain=1, tile_size=64, validation_tiles_per_domain=1,
                            vision_steps=2, vision_batch_size=4, depth_steps=2, depth_batch_size=4)  # fmt: skip


def test_pretraining_is_reproducible(tmp_path: Path, deterministic) -> None:
    settings = _tiny_settings()
    first = pretrain_all(tmp_path / "a", settings, workers=1, log=lambda message: None)
    second = pretrain_all(tmp_path / "b", settings, workers=1, log=lambda message: None)
    for name in NAMES:
        assert first[name]["sha256"] == second[name]["sha256"] == weight_hashes(tmp_path / "a" / name)
        assert weight_hashes(tmp_path / "b" / name) == weight_hashes(tmp_path / "a" / name)
        record = json.loads((tmp_path / "a" / name / "PROVENANCE.json").read_text())
        assert record["SYNTHETIC"] is True and record["seed"] == 3 and record["model"] == name
        assert record["sha256"]["model.safetensors"] == sha256_file(tmp_path / "a" / name / "model.safetensors")
    # another seed gives other weights (the comparison above can fail)
    other = pretrain_all(tmp_path / "c", _tiny_settings(seed=4), models=("vision",), workers=1, log=lambda m: None)
    assert other["synthetic-dinov2"]["sha256"] != first["synthetic-dinov2"]["sha256"]


def test_pretrained_weights_load_through_the_presets(tmp_path: Path, deterministic) -> None:
    """A folder written by the pretraining code is what the presets load (weights= given or packaged)."""
    pretrain_all(tmp_path, _tiny_settings(), workers=1, log=lambda message: None)
    backbone = build_backbone("synthetic-dinov2", weights=tmp_path / "synthetic-dinov2")
    depth = build_depth_encoder("synthetic-depth-anything", num_visual_layers=6,
                                weights=tmp_path / "synthetic-depth-anything")  # fmt: skip
    image = torch.randn(1, 3, 64, 64)
    tokens, grid = backbone.embed(image)
    assert grid == (4, 4) and tokens.shape == (1, 17, 96)
    assert [t.shape for t in depth(torch.rand(1, 3, 64, 64))] == [torch.Size([1, 16, 96])] * 6


def test_packaged_weights_load_without_a_weights_argument() -> None:
    assert BACKBONE_PRESETS["synthetic-dinov2"].hub_id is None
    assert DEPTH_PRESETS["synthetic-depth-anything"].hub_id is None
    folder = Path(BACKBONE_PRESETS["synthetic-dinov2"].default_weights())
    assert folder == packaged_weights("synthetic-dinov2")
    backbone = build_backbone("synthetic-dinov2", in_wavelengths=[0.83, 0.66, 0.555, 0.485])  # NIR,R,G,B
    assert (backbone.embed_dim, backbone.num_layers, backbone.patch_size) == (96, 6, 16)
    assert not any(p.requires_grad for p in backbone.parameters())
    depth = build_depth_encoder("synthetic-depth-anything", num_visual_layers=backbone.num_layers)
    assert depth.embed_dim == backbone.embed_dim  # SpectralMoE needs no depth projection
    tokens = depth(torch.rand(2, 3, 128, 128))
    assert len(tokens) == 6 and tokens[0].shape == (2, 64, 96) and torch.isfinite(tokens[-1]).all()
    # the packaged files are what transformers loads: same tensors as a direct from_pretrained
    direct = build_depth_model()
    direct = type(direct).from_pretrained(packaged_weights("synthetic-depth-anything"))
    torch.testing.assert_close(depth.backbone.encoder.layer[0].mlp.fc1.weight,
                               direct.backbone.encoder.layer[0].mlp.fc1.weight, rtol=0, atol=0)  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_committed_weights_match_their_provenance(name: str) -> None:
    folder = packaged_weights(name)
    record = json.loads((folder / "PROVENANCE.json").read_text())
    assert record["SYNTHETIC"] is True and "SYNTHETIC" in record["note"]
    assert record["sha256"] == weight_hashes(folder)
    assert record["command"].startswith("python scripts/pretrain_synthetic.py") and "--seed" in record["command"]
    assert set(record["versions"]) >= {"torch", "transformers", "numpy"}
    size = sum((folder / f).stat().st_size for f in ("config.json", "model.safetensors"))
    assert size < 5_000_000, f"{name}: {size} bytes; the packaged models must stay a few MB"


def test_weights_are_package_data() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["spectralmoe.weights"]
    folder = packaged_weights("synthetic-dinov2").parent
    for name in NAMES:
        for file in ("config.json", "model.safetensors", "PROVENANCE.json"):
            assert any((folder / name / file).match(str(folder / p)) for p in patterns), (name, file, patterns)


@pytest.fixture(scope="module")
def held_out() -> tuple:
    """Tiles of every sensor and region never seen in pretraining (indices far beyond the corpus')."""
    corpus = build_corpus(0, tiles_per_domain=4, tile_size=128, first_index=300_000)
    even, odd = list(range(0, len(corpus), 2)), list(range(1, len(corpus), 2))
    return corpus, corpus.subset(even), corpus.subset(odd)


def test_pretrained_backbone_beats_random_init_on_a_linear_probe(held_out) -> None:
    _, fit, score = held_out
    pretrained = build_backbone("synthetic-dinov2").model
    random_init = build_vision_model(seed=1)
    ours = linear_probe(pretrained, fit, score)
    baseline = linear_probe(random_init, fit, score)
    assert ours["balanced_accuracy"] > baseline["balanced_accuracy"] + 0.03, (ours, baseline)
    assert ours["patch_accuracy"] > baseline["patch_accuracy"] + 0.03, (ours, baseline)


def test_depth_model_predicts_heights(held_out) -> None:
    corpus, _, _ = held_out
    model = type(build_depth_model()).from_pretrained(packaged_weights("synthetic-depth-anything"))
    ours = height_correlation(model, corpus)
    baseline = height_correlation(build_depth_model(seed=1), corpus)
    assert ours["pearson_mean"] > 0.2, ours
    assert ours["pearson_mean"] > baseline["pearson_mean"] + 0.15, (ours, baseline)
