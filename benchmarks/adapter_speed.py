"""Speed and peak memory of SpectralMoE adapter layers (forward + backward, training mode).

    python benchmarks/adapter_speed.py --batch 2 --tokens 1024 --dim 1024 --layers 1 \\
        --device cpu|cuda --dtype fp32|bf16 --repeats 10

Prints one JSON object with, for each variant ("paper", "official"): the median time of one
training step (all ``--layers`` adapter layers applied in sequence, then backward of
``mean(out²) + mean_l aux_l``) over ``--repeats`` runs after ``--warmup`` runs, and its peak memory:

* cuda: ``torch.cuda.max_memory_allocated`` during one step minus the memory allocated before it;
* cpu: growth of the process's peak resident set size (``resource.getrusage(...).ru_maxrss``)
  during the FIRST step. ru_maxrss is a process-lifetime high-water mark, so each variant is
  measured in its own fresh subprocess and its first step is the measured one (later steps
  cannot raise it further); tracemalloc is not used because it does not see torch's allocator.

Inputs mimic the segmentor: tokens [B, 5+N, D] (DINOv3 prefix) that require grad (gradients
flow back to earlier adapters through the frozen blocks), depth tokens [B, N, D] without grad.
``bf16`` runs under ``torch.autocast`` with fp32 parameters (mixed precision, as in training).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spectralmoe.models.adapters.spectralmoe import SpectralMoE  # noqa: E402

PREFIX = 5


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=1024, help="patch tokens per image N")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--experts", type=int, default=6)
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--variants", default="paper,official")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: one variant per process
    return parser.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args: argparse.Namespace, variant: str) -> dict[str, object]:
    """Time and peak memory of one training step of ``args.layers`` adapter layers."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = SpectralMoE(
        args.dim, args.layers, num_experts=args.experts, top_k=args.top_k, num_prefix_tokens=PREFIX, variant=variant
    ).to(device).train()
    with torch.no_grad():  # non-zero experts, as after some training (S = 0 at init)
        for layer in model.experts_b:
            for b in layer:
                b.normal_(0.0, 0.02)
    tokens = torch.randn(args.batch, PREFIX + args.tokens, args.dim, device=device, requires_grad=True)
    depth = torch.randn(args.batch, args.tokens, args.dim, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            x, aux = tokens, []
            for layer in range(args.layers):
                x, loss = model(x, layer=layer, depth_tokens=depth)
                aux.append(loss)
            total = x.float().square().mean() + torch.stack(aux).mean()
        total.backward()
        model.zero_grad(set_to_none=True)
        tokens.grad = None

    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        _sync(device)
        peak = {"peak_memory_mb": (torch.cuda.max_memory_allocated(device) - base) / 2**20,
                "memory_method": "torch.cuda.max_memory_allocated minus allocated before the step"}
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        step()
        peak = {"peak_memory_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024,
                "memory_method": "growth of peak RSS (ru_maxrss) during the first step, fresh process"}
    for _ in range(max(0, args.warmup - 1)):
        step()
    times = []
    for _ in range(args.repeats):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return {
        "fwd_bwd_ms_median": 1e3 * statistics.median(times),
        "fwd_bwd_ms_min": 1e3 * min(times),
        **peak,
        "trainable_params": model.num_trainable_parameters(),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.child is not None:
        print(json.dumps(measure(args, args.child)))
        return
    result: dict[str, object] = {
        "batch": args.batch, "tokens": args.tokens, "dim": args.dim, "layers": args.layers,
        "experts": args.experts, "top_k": args.top_k, "device": args.device, "dtype": args.dtype,
        "repeats": args.repeats, "warmup": args.warmup, "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if args.device == "cuda":
        result["gpu"] = torch.cuda.get_device_name(0)
    forwarded = sys.argv[1:] if argv is None else argv
    for variant in args.variants.split(","):
        run = subprocess.run(
            [sys.executable, __file__, *forwarded, "--child", variant], check=True, capture_output=True, text=True
        )
        result[variant] = json.loads(run.stdout.strip().splitlines()[-1])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
