"""Speed options of training: ``model.compile`` (torch.compile of the segmentor) and fused AdamW.

Compilation is tested with torch.compile's ``eager`` backend: it runs dynamo's graph capture (where
breaks, guards and wrong traces show up) without inductor's minutes of C++ compilation on CPU.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from spectralmoe.engine.compile import compile_segmentor
from spectralmoe.engine.optim import build_adamw, build_param_groups
from tests.engine import datamodule, make_root, tiny_task, trainable, trainer


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_root(tmp_path_factory.mktemp("speed") / "toy")


def test_compile_switch_trains_like_eager_and_keeps_parameter_names(root, tmp_path):
    def run(compiled: bool):
        L.seed_everything(0)
        task = tiny_task("fpn", compile=compiled, compile_options={"backend": "eager"} if compiled else None)
        trainer(tmp_path, max_steps=2).fit(task, datamodule(root))
        return task, trainable(task)

    eager_task, eager = run(False)
    compiled_task, compiled = run(True)
    assert compiled_task.segmentor._compiled_call_impl is not None
    assert eager_task.segmentor._compiled_call_impl is None
    assert set(compiled) == set(eager) and not any("_orig_mod" in n for n in compiled_task.state_dict())
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-5, atol=1e-6)
    # the compiled model also serves evaluation (another input shape: recompiled, same numbers)
    image = torch.rand(1, 4, 48, 48) * 255
    compiled_task.segmentor.eval()
    eager_task.segmentor.eval()
    torch.testing.assert_close(compiled_task.segmentor.predict_logits(image),
                               eager_task.segmentor.predict_logits(image), rtol=1e-4, atol=1e-5)  # fmt: skip


def test_compile_options_are_checked():
    with pytest.raises(ValueError, match="unknown compile option.*'modes'"):
        compile_segmentor(nn.Linear(2, 2), {"modes": "max-autotune"})


def test_task_uses_fused_adamw_where_available(root, tmp_path):
    for setting, expected in ((None, True), (False, False), (True, True)):
        task = tiny_task("fpn", fused_adamw=setting)
        fit = trainer(tmp_path, max_steps=1)
        fit.fit(task, datamodule(root))
        assert bool(fit.optimizers[0].defaults.get("fused")) is expected, setting


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 3))


def test_fused_adamw_step_equals_the_default_step():
    nets, optimizers = [], []
    for fused in (True, False):
        net = _net()
        nets.append(net)
        optimizers.append(build_adamw(build_param_groups(net, 0.05), lr=1e-2, weight_decay=0.05, fused=fused))
    assert optimizers[0].defaults["fused"] is True and not optimizers[1].defaults["fused"]
    x = torch.randn(16, 8)
    for _ in range(3):
        for net, opt in zip(nets, optimizers):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(nets[0][0].weight, _net()[0].weight)  # it did train


def test_fused_adamw_refused_where_unsupported():
    net = _net()
    groups = build_param_groups(net, 0.05)
    groups[0]["params"].append(torch.zeros(2, dtype=torch.int64))  # not floating point
    with pytest.raises(ValueError, match="fused AdamW needs floating-point parameters"):
        build_adamw(groups, lr=1e-3, fused=True)
    assert not build_adamw(groups, lr=1e-3).defaults["fused"]  # auto: falls back
