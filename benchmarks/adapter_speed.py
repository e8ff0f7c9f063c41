"""Speed and peak memory of SpectralMoE adapter layers (forward + backward, training mode).

    python benchmarks/adapter_speed.py --batch 2 --tokens 1024 --dim 1024 --layers 1 \\
        --device cpu|cuda --dtype fp32|bf16 --repeats 7 [--reference] [--dispatch sparse,dense]

Prints one JSON object. Entries: each ``--variants`` × ``--dispatch`` combination (``paper``,
``official``, ``official:dense``…) and, with ``--reference``, ``reference``: a plain re-statement
of the authors' released layer (``authors_layer.py``, written from METHOD.md §1) sharing the
official module's weights; before timing, its output is checked against ``official`` (parity error
printed). One step = all ``--layers`` layers in sequence, then backward of
``mean(out²) + mean_l aux_l``.

Timing: all entries live in ONE process and are timed interleaved (round r runs every entry once, in
rotating order), ``--warmup`` rounds first, then ``--repeats`` rounds; each entry reports its median
and min wall time and median process CPU time; ``ratios`` gives each median over the reference's (and
over the same variant's dense evaluation when present), ``ratios_of_minima`` and
``ratios_of_cpu_time`` the same for the minima and the CPU times. Interleaving makes the ratios robust
to a machine whose load changes; on a CPU shared with other jobs use ``--threads 1`` and read the CPU
time ratios (the work done, not the waits for a core).

Memory (``--memory``, on by default) is measured per entry in a fresh subprocess:

* cuda: ``torch.cuda.max_memory_allocated`` during one step minus the memory allocated before it;
* cpu: peak resident set (Linux ``VmHWM``, reset just before the step) during the FIRST step minus
  the resident set before it, in a fresh process per entry (later steps reuse freed memory).

Inputs mimic the segmentor: tokens [B, 5+N, D] (DINOv3 prefix) that require grad (gradients flow back
to earlier adapters through the frozen blocks), depth tokens [B, N, D] without grad; expert factors
B ~ N(0, 0.02) (non-zero, as after some training). ``bf16`` runs under ``torch.autocast`` with fp32
parameters (mixed precision, as in training).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from authors_layer import AuthorsLayer, check_parity  # noqa: E402
from common import time_interleaved  # noqa: E402

from spectralmoe.models.adapters.spectralmoe import SpectralMoE  # noqa: E402

PREFIX = 5


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=1024, help="patch tokens per image N")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--experts", type=int, default=6)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--token-length", type=int, default=100)
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--gating", default="laplace", choices=["softmax", "laplace", "gaussian"])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (median over them)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--variants", default="paper,official")
    parser.add_argument("--dispatch", default="sparse", help="comma list of sparse, masked, dense")
    parser.add_argument("--reference", action="store_true", help="also time the authors'-style layer")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the per-entry memory runs")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: memory of one entry
    return parser.parse_args(argv)


def _rss_mb() -> float:
    """Current resident set size (Linux /proc), MB."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0). ``ru_maxrss`` cannot be used: in a child it starts
    at the parent's resident set at fork, which already holds every entry's model."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def entry_names(args: argparse.Namespace) -> list[str]:
    names = []
    for variant in args.variants.split(","):
        for dispatch in args.dispatch.split(","):
            names.append(variant if dispatch == "sparse" else f"{variant}:{dispatch}")
    if args.reference:
        names.append("reference")
    return names


def build_entry(args: argparse.Namespace, name: str) -> tuple[Callable[[], None], SpectralMoE]:
    """A zero-argument training step for entry ``name`` and the module whose weights it uses."""
    device = torch.device(args.device)
    variant, _, dispatch = name.partition(":")
    reference = variant == "reference"
    torch.manual_seed(0)  # same weights for every entry
    model = SpectralMoE(
        args.dim, args.layers, num_experts=args.experts, rank=args.rank, token_length=args.token_length,
        top_k=args.top_k, gating=args.gating, num_prefix_tokens=PREFIX,
        variant="official" if reference else variant, dispatch=dispatch or "sparse",
    ).to(device).train()  # fmt: skip
    with torch.no_grad():  # non-zero experts, as after some training (S = 0 at init)
        for layer in model.experts_b:
            for b in layer:
                b.normal_(0.0, 0.02)
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randn(args.batch, PREFIX + args.tokens, args.dim, generator=generator).to(device).requires_grad_()
    depth = torch.randn(args.batch, args.tokens, args.dim, generator=generator).to(device)
    layer_fn = AuthorsLayer(model) if reference else (lambda x, layer, d: model(x, layer=layer, depth_tokens=d))

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            x, aux = tokens, []
            for layer in range(args.layers):
                x, loss = layer_fn(x, layer, depth)
                aux.append(loss)
            total = x.float().square().mean() + torch.stack(aux).mean()
        total.backward()
        model.zero_grad(set_to_none=True)
        tokens.grad = None

    step.tokens, step.depth = tokens, depth  # type: ignore[attr-defined]
    return step, model


def measure_memory(args: argparse.Namespace, name: str) -> dict[str, object]:
    """Peak memory of the FIRST step of entry ``name`` (run in a fresh process)."""
    device = torch.device(args.device)
    step, model = build_entry(args, name)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        _sync(device)
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        method = "torch.cuda.max_memory_allocated minus allocated before the step"
    else:
        base = _rss_mb()
        _reset_peak_rss()
        step()
        peak = _peak_rss_mb() - base
        method = "peak resident set (VmHWM, reset before the step) minus the resident set before it, first step"
    return {"peak_memory_mb": round(peak, 1), "memory_method": method,
            "trainable_params": model.num_trainable_parameters()}  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, object]:
    """Build every entry, check the reference's parity, time interleaved; the JSON-ready result."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = entry_names(args)
    result: dict[str, object] = {
        "batch": args.batch, "tokens": args.tokens, "dim": args.dim, "layers": args.layers,
        "experts": args.experts, "rank": args.rank, "token_length": args.token_length, "top_k": args.top_k,
        "gating": args.gating, "device": args.device, "dtype": args.dtype, "repeats": args.repeats,
        "warmup": args.warmup, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "timing": "interleaved rounds in one process, rotating order; median (and min) over repeats",
    }  # fmt: skip
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    steps: dict[str, Callable[[], None]] = {}
    for name in names:
        steps[name], model = build_entry(args, name)
        if name == "reference":
            ref_step = steps[name]
            result["reference_parity_max_abs_diff"] = check_parity(
                model, ref_step.tokens.detach(), ref_step.depth  # type: ignore[attr-defined]
            )
    cpu: dict[str, list[float]] = {}
    times = time_interleaved(steps, device, args.warmup, args.repeats, cpu)
    for name in names:
        result[name] = {"fwd_bwd_ms_median": round(1e3 * statistics.median(times[name]), 2),
                        "fwd_bwd_ms_min": round(1e3 * min(times[name]), 2),
                        "fwd_bwd_cpu_ms_median": round(1e3 * statistics.median(cpu[name]), 2)}  # fmt: skip
    ratios: dict[str, float] = {}
    ratios_min: dict[str, float] = {}
    ratios_cpu: dict[str, float] = {}
    for base in ("reference", "official:dense", "paper:dense"):
        if base not in times:
            continue
        for name in names:
            if name != base and (base == "reference" or name.split(":")[0] == base.split(":")[0]):
                key = f"{name} / {base}"
                ratios[key] = round(statistics.median(times[name]) / statistics.median(times[base]), 3)
                ratios_min[key] = round(min(times[name]) / min(times[base]), 3)
                ratios_cpu[key] = round(statistics.median(cpu[name]) / statistics.median(cpu[base]), 3)
    result["ratios"] = ratios
    result["ratios_of_minima"] = ratios_min
    result["ratios_of_cpu_time"] = ratios_cpu
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.child is not None:
        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(measure_memory(args, args.child)))
        return
    result = run(args)
    if args.memory:
        forwarded = sys.argv[1:] if argv is None else argv
        for name in entry_names(args):
            child = subprocess.run([sys.executable, __file__, *forwarded, "--child", name],
                                   check=True, capture_output=True, text=True)  # fmt: skip
            result[name].update(json.loads(child.stdout.strip().splitlines()[-1]))  # type: ignore[union-attr]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
