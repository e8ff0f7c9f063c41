"""Time of one full training step (loss, backward, AdamW) per method, interleaved, as ONE JSON.

    python benchmarks/train_step.py --backbone dinov3-vitb16 --depth depth-anything-v2-small --head fpn \\
        --size 256 --batch 2 --methods freeze rein depthforge spectralmoe --repeats 5 [--breakdown]

Every method is built with random frozen weights (speed needs no download) on the same 4-band GF-2
input (``--sensor``), and timed in the same process in interleaved rounds (round r steps every
method once, the order rotating), after ``--warmup`` rounds. The JSON holds each method's median and
min step time and median process CPU time, trainable parameters, and the ratios to ``freeze`` and
``rein`` (when they are among the methods) of the median wall times (``ratio_to_*``), of the minima
(``ratio_to_*_min``) and of the median CPU times (``cpu_ratio_to_*``). On a CPU shared with other jobs,
run with ``--threads 1``: CPU time then counts the step's work and not the waits for a core, and the
minimum is the least disturbed run; with several threads, a descheduled thread stalls the others.

A method is ``name[:key=value…]`` with adapter options as YAML values, e.g.
``spectralmoe:dispatch=dense`` (the width-D evaluation of every expert), ``spectralmoe:use_depth=false``
(no depth model, no depth branch, no fusion), ``spectralmoe:fusion=none``: the differences between
such entries show where a method's time goes. ``--breakdown`` adds, per method, the median
forward time of the depth model, of the adapter calls (all layers) and of the head + loss, measured by
module hooks (the rest of the forward is the frozen backbone), and of backward and the optimiser step.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import MethodSpec, build_training_step, median, sync, time_interleaved  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="dinov3-vitb16")
    parser.add_argument("--depth", default="depth-anything-v2-small", help="depth model preset (depth methods)")
    parser.add_argument("--head", default="fpn")
    parser.add_argument("--size", type=int, default=256, help="crop size (pixels)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=24)
    parser.add_argument("--sensor", default="gf2", help="input bands (a built-in sensor)")
    parser.add_argument("--methods", nargs="+", default=["freeze", "rein", "depthforge", "spectralmoe"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                        help="bf16 = bfloat16 autocast (GPU; torch's CPU bf16 patch convs are unreliable)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="torch.compile each segmentor (in place)")
    parser.add_argument("--fused", choices=["auto", "on", "off"], default="auto", help="fused AdamW")
    parser.add_argument("--breakdown", action="store_true", help="per-part forward / backward / optimiser times")
    return parser.parse_args(argv)


class _PartTimer:
    """Forward time of chosen submodules via hooks (synchronising the device around each call)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals: dict[str, float] = {}
        self._start: dict[int, float] = {}
        self.handles: list[Any] = []

    def watch(self, name: str, module: torch.nn.Module | None) -> None:
        if module is None:
            return

        def before(mod: torch.nn.Module, args: Any) -> None:
            sync(self.device)
            self._start[id(mod)] = time.perf_counter()

        def after(mod: torch.nn.Module, args: Any, out: Any) -> None:
            sync(self.device)
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - self._start.pop(id(mod))

        self.handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def breakdown(entry: Any, device: torch.device, repeats: int) -> dict[str, float]:
    """Median seconds of the step's parts for one method (forward parts by hooks, then backward, optimiser)."""
    model, optimizer = entry.model, entry.optimizer
    rows: list[dict[str, float]] = []
    for _ in range(repeats):
        timer = _PartTimer(device)
        timer.watch("depth_model_forward", getattr(model, "depth_encoder", None))
        adapter_trains = any(p.requires_grad for p in model.adapter.parameters())
        timer.watch("adapter_forward", model.adapter if adapter_trains else None)
        timer.watch("head_forward", model.head)
        image, mask = entry.batch
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=entry.autocast):
            losses = model.loss(image, mask)
            total = sum(losses.values())
        sync(device)
        forward_end = time.perf_counter()
        total.backward()
        sync(device)
        backward_end = time.perf_counter()
        optimizer.step()
        sync(device)
        end = time.perf_counter()
        timer.remove()
        row = dict(timer.totals)
        row["forward_total"] = forward_end - start
        row["head_and_loss"] = row.pop("head_forward", 0.0)  # the head's forward; the loss is in the remainder
        row["backbone_and_rest_forward"] = row["forward_total"] - sum(
            row.get(k, 0.0) for k in ("depth_model_forward", "adapter_forward", "head_and_loss")
        )
        row["backward"] = backward_end - forward_end
        row["optimizer_step"] = end - backward_end
        rows.append(row)
    keys = sorted({k for row in rows for k in row})
    return {k: round(median([row.get(k, 0.0) for row in rows]), 4) for k in keys}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    specs = [MethodSpec.parse(text) for text in args.methods]
    fused = {"auto": None, "on": True, "off": False}[args.fused]
    entries = {}
    build_seconds = {}
    for spec in specs:
        started = time.perf_counter()
        entries[spec.label] = build_training_step(
            spec, backbone=args.backbone, depth=args.depth, head=args.head, size=args.size, batch=args.batch,
            num_classes=args.classes, sensor=args.sensor, device=device, dtype=args.dtype,
            compile_model=args.compile, fused=fused,
        )  # fmt: skip
        build_seconds[spec.label] = round(time.perf_counter() - started, 1)
    cpu_times: dict[str, list[float]] = {}
    times = time_interleaved({k: e.step for k, e in entries.items()}, device, args.warmup, args.repeats, cpu_times)
    result: dict[str, Any] = {
        "backbone": args.backbone, "depth": args.depth, "head": args.head, "size": args.size, "batch": args.batch,
        "classes": args.classes, "sensor": args.sensor, "device": args.device, "dtype": args.dtype,
        "compile": args.compile, "repeats": args.repeats, "warmup": args.warmup, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "weights": "random (frozen models built from their configs)",
        "timing": "interleaved rounds in one process, rotating order; median (and min) over repeats",
    }  # fmt: skip
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    methods: dict[str, Any] = {}
    for label, entry in entries.items():
        methods[label] = {
            "step_s_median": round(median(times[label]), 4),
            "step_s_min": round(min(times[label]), 4),
            "step_cpu_s_median": round(median(cpu_times[label]), 4),
            "trainable_parameters": entry.trainable_parameters,
            "fused_adamw": entry.fused_adamw,
            "build_s": build_seconds[label],
        }
    for base in ("freeze", "rein"):
        if base in times:
            for label in entries:
                methods[label][f"ratio_to_{base}"] = round(median(times[label]) / median(times[base]), 3)
                methods[label][f"ratio_to_{base}_min"] = round(min(times[label]) / min(times[base]), 3)
                methods[label][f"cpu_ratio_to_{base}"] = round(median(cpu_times[label]) / median(cpu_times[base]), 3)
    if args.breakdown:
        for label, entry in entries.items():
            methods[label]["breakdown_s"] = breakdown(entry, device, args.repeats)
    result["methods"] = methods
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
