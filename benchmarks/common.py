"""Pieces shared by the benchmark scripts: interleaved timing and a whole-model training step.

Run the scripts from anywhere (``python benchmarks/<script>.py``): they put the repository root on
``sys.path`` themselves, so the source tree works without ``pip install`` (as on a GPU machine whose
image brings its own torch / transformers).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import yaml


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on CPU), so wall-clock times cover the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    steps: dict[str, Callable[[], Any]], device: torch.device, warmup: int, repeats: int,
    cpu_times: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Wall seconds per call of every entry; each round calls every entry once, the order rotating.

    A load change on a shared machine then hits all entries alike, so their RATIOS stay meaningful.
    The first ``warmup`` rounds are not recorded. ``cpu_times``, when given, receives each call's
    process CPU seconds (``time.process_time``): with one torch thread on a CPU shared with other jobs
    that is the work done, not the time spent waiting for a core.
    """
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    if cpu_times is not None:
        cpu_times.update({name: [] for name in names})
    for round_index in range(warmup + repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            steps[name]()
            sync(device)
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
                if cpu_times is not None:
                    cpu_times[name].append(time.process_time() - cpu_start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


@dataclass
class MethodSpec:
    """``name[:key=value[:key=value…]]`` on the command line: an adapter and its options (YAML values)."""

    label: str
    adapter: str
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "MethodSpec":
        adapter, *pairs = text.split(":")
        options: dict[str, Any] = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise ValueError(f"method option {pair!r} in {text!r} is not key=value")
            options[key] = yaml.safe_load(value)
        return cls(text, adapter, options)


@dataclass
class TrainingStep:
    """One model with its optimiser and a fixed batch; ``step()`` runs loss → backward → AdamW."""

    label: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step: Callable[[], torch.Tensor]
    trainable_parameters: int
    fused_adamw: bool
    batch: tuple[torch.Tensor, torch.Tensor]  #: (image, mask)
    autocast: bool


def build_training_step(
    spec: MethodSpec,
    *,
    backbone: str,
    depth: str,
    head: str,
    size: int,
    batch: int,
    num_classes: int,
    sensor: str,
    device: torch.device,
    dtype: str,
    compile_model: bool = False,
    compile_options: dict[str, Any] | None = None,
    fused: bool | None = None,
    head_options: dict[str, Any] | None = None,
    seed: int = 0,
) -> TrainingStep:
    """A ``TrainingStep`` for one method, frozen models with random weights (speed needs no download).

    The step is what ``SegmentationTask.training_step`` + Lightning's optimiser step do: the
    segmentor's losses summed, backward, AdamW over the trainable parameters with the decay groups of
    ``engine.optim``, under bf16 autocast when ``dtype == "bf16"``.
    """
    from spectralmoe.bands import get_sensor
    from spectralmoe.engine.optim import build_adamw, build_param_groups
    from spectralmoe.models.factory import build_segmentor
    from spectralmoe.engine.compile import compile_segmentor

    torch.manual_seed(seed)
    model = build_segmentor(
        backbone=backbone, adapter=spec.adapter, head=head, depth=depth, sensor=sensor, num_classes=num_classes,
        pretrained=False, adapter_kwargs=dict(spec.options), head_kwargs=dict(head_options or {}),
    ).to(device).train()  # fmt: skip
    if compile_model:
        compile_segmentor(model, compile_options)
    optimizer = build_adamw(build_param_groups(model, 0.05), lr=1e-4, fused=fused)
    bands = len(get_sensor(sensor).wavelengths_um)
    generator = torch.Generator().manual_seed(seed + 1)
    image = (torch.rand(batch, bands, size, size, generator=generator, device="cpu") * 255.0).to(device)
    mask = torch.randint(0, num_classes, (batch, size, size), generator=generator, device="cpu").to(device)
    autocast = dtype == "bf16"

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            losses = model.loss(image, mask)
            total = sum(losses.values())
        total.backward()
        optimizer.step()
        return total.detach()

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    is_fused = bool(optimizer.defaults.get("fused"))
    return TrainingStep(spec.label, model, optimizer, step, trainable, is_fused, (image, mask), autocast)
