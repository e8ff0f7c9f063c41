"""Tiny stand-ins of the authors' files: an mmengine checkpoint of SpectralMoE or Rein (with metadata of
classes that are not installed) and their converted DINOv3 + Prompt Depth Anything backbone file."""

from __future__ import annotations

import sys
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from transformers import PromptDepthAnythingConfig, PromptDepthAnythingForDepthEstimation

from spectralmoe.data.prepare.fbp import CLASSES as FBP_CLASSES
from spectralmoe.models.adapters.rein import Rein
from spectralmoe.models.adapters.spectralmoe import SpectralMoE
from spectralmoe.models.depth import DEPTH_PRESETS, DepthPreset
from tests.convert import original_vit_reference as ref
from tests.convert.test_mask2former_import import random_mmdet_head

DIM, LAYERS, HEADS, HIDDEN = 64, 4, 4, 128  # tiny-dinov3
QUERY_DIM, TOKENS, EXPERTS, RANK = 32, 8, 3, 4
HEAD = dict(dim=QUERY_DIM, heads=2, enc=1, dec=2, queries=TOKENS, classes=len(FBP_CLASSES), in_channels=(DIM,) * 4)
TINY_DEPTH_NAME = "tiny-prompt-depth-anything-64"
TINY_DEPTH = DepthPreset(
    None, PromptDepthAnythingForDepthEstimation, PromptDepthAnythingConfig,
    dict(hidden_size=DIM, num_hidden_layers=LAYERS, num_attention_heads=HEADS, mlp_ratio=2, image_size=56,
         patch_size=14, out_indices=[1, 2, 3, 4], reshape_hidden_states=False),
    dict(fusion_hidden_size=16, neck_hidden_sizes=[8, 16, 32, 32], head_hidden_size=8),
)  # fmt: skip


@pytest.fixture
def tiny_depth_preset(monkeypatch) -> str:
    """A 64-wide Prompt DA stand-in (as wide as tiny-dinov3: the released module has no depth projection)."""
    monkeypatch.setitem(DEPTH_PRESETS, TINY_DEPTH_NAME, TINY_DEPTH)
    return TINY_DEPTH_NAME


def _randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module


def released_spectralmoe_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """``backbone.depthmoe.*`` as the released ``DepthMoE`` module names them (with its mean/std buffers)."""
    module = _randomised(SpectralMoE(DIM, LAYERS, num_experts=EXPERTS, rank=RANK, token_length=TOKENS,
                                     query_dim=QUERY_DIM, variant="official"), seed)  # fmt: skip
    out = {}
    for name, value in module.state_dict().items():
        out["backbone.depthmoe." + name.replace("query_link.", "")] = value.clone()
    out["backbone.depthmoe.mean"], out["backbone.depthmoe.std"] = torch.tensor([0.0]), torch.tensor([1.0])
    return out


def released_rein_state(seed: int = 0, legacy: bool = False) -> dict[str, torch.Tensor]:
    """``backbone.reins.*`` of Rein's ``LoRAReins`` (``legacy``: query link as ``decode_head.token2query.*``)."""
    module = _randomised(Rein(DIM, LAYERS, rank=RANK, token_length=TOKENS, query_dim=QUERY_DIM), seed)
    names = {"tokens.a": "learnable_tokens_a", "tokens.b": "learnable_tokens_b"}
    out = {}
    for name, value in module.state_dict().items():
        official = names.get(name, name.replace("query_link.", ""))
        if legacy and official.startswith("transform."):
            out["decode_head.token2query.transforms.0." + official.split(".", 1)[1]] = value.clone()
        elif legacy and official.startswith("merge."):
            out["decode_head.token2query." + official] = value.clone()
        else:
            out["backbone.reins." + official] = value.clone()
    return out


@contextmanager
def _fake_mmengine() -> Iterator[type]:
    """A ``HistoryBuffer`` class importable as ``mmengine.logging.history_buffer`` only while saving."""
    names = ["mmengine", "mmengine.logging", "mmengine.logging.history_buffer"]
    for name in names:
        sys.modules[name] = types.ModuleType(name)

    class HistoryBuffer:
        def __init__(self) -> None:
            self._log_history = np.arange(5, dtype=np.float64)
            self._count_history = np.ones(5)
            self.max_length = 1000000

    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = names[-1], "HistoryBuffer"
    sys.modules[names[-1]].HistoryBuffer = HistoryBuffer  # type: ignore[attr-defined]
    try:
        yield HistoryBuffer
    finally:
        for name in names:
            del sys.modules[name]


def write_mmengine_checkpoint(path: Path, state_dict: dict[str, torch.Tensor], cfg: str = "",
                              classes: tuple[str, ...] | None = None) -> Path:  # fmt: skip
    """``torch.save`` of what mmengine's ``save_checkpoint`` writes, with uninstalled metadata classes."""
    with _fake_mmengine() as history_buffer:
        checkpoint: dict[str, Any] = {
            "meta": {"cfg": cfg, "seed": 42, "iter": 78760, "mmengine_version": "0.10.7", "time": "x",
                     "dataset_meta": {"classes": classes, "palette": [[0, 0, 0]]}, "np_scalar": np.float64(1.5)},
            "state_dict": state_dict,
            "message_hub": {"log_scalars": {"train/loss": history_buffer()}, "runtime_info": {"iter": 78760}},
            "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
                          "param_groups": [{"lr": 0.0, "params": [0]}]},
            "param_schedulers": [{"eta_min": 0, "power": 0.9, "last_step": 78760}],
        }  # fmt: skip
        torch.save(checkpoint, path)
    return path


#: Their GID classes as their dataset class spells them (underscores), in the same order as ours.
AUTHORS_GID_CLASSES = tuple(c.replace(" ", "_").replace("bareland", "bare_land") for c in FBP_CLASSES)
CONFIG_TEXT = "model = dict(backbone=dict(depthmoe_config=dict(gating='laplace', top_k=1)))"


def authors_spectralmoe_checkpoint(path: Path, seed: int = 0) -> tuple[Path, dict[str, torch.Tensor]]:
    """The released-model stand-in: adapter + head, mmengine metadata; returns the head's mmdet tensors."""
    head = random_mmdet_head(seed=seed, **HEAD)
    state = {**released_spectralmoe_state(seed), **{f"decode_head.{k}": v for k, v in head.items()}}
    return write_mmengine_checkpoint(path, state, CONFIG_TEXT, AUTHORS_GID_CLASSES), head


def authors_backbone_file(path: Path, bands: int = 4) -> Path:
    """convert_dinov3_depthmoe.py output: original DINOv3 keys + ``depth_anything.`` Prompt DA (patch 16)."""
    visual = ref.random_dinov3(DIM, LAYERS, HEADS, HIDDEN, bands=bands, seed=11)
    depth = ref.random_dinov2(DIM, LAYERS, HIDDEN, grid=4, seed=12)
    weights = {**visual, **{f"depth_anything.pretrained.{k}": v for k, v in depth.items()},
               "depth_anything.depth_head.scratch.output_conv.weight": torch.zeros(1, 8, 3, 3),
               "depth_anything._mean": torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
               "depth_anything._std": torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)}  # fmt: skip
    torch.save(weights, path)
    return path
