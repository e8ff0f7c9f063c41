"""GPU benchmark suite: ONE command, ONE JSON, sized to finish in under 8 minutes on one H100/H200.

    python3 benchmarks/gpu_suite.py --output gpu_suite.json          # on the GPU machine
    python3 benchmarks/gpu_suite.py --tiny --device cpu               # the same code, tiny sizes (tests)

Runs from the source tree (no ``pip install``): it puts the repository root on ``sys.path`` and
imports only what it uses (torch, transformers, scipy, numpy, yaml; rasterio for the scene part).
Random frozen weights everywhere: speed needs no download.

Parts, in this order (each recorded in the JSON even when it fails or is skipped, with the reason):

1. ``environment``: torch / transformers / GPU name, and what is missing.
2. ``training``: for Freeze, Rein and SpectralMoE at the paper's size — DINOv3-L/16 backbone,
   Prompt Depth Anything-L depth model (SpectralMoE), Mask2Former head, 512² crops, batch 8, bf16
   autocast, 4-band GF-2 input — training images/s (loss, backward, fused AdamW; median over timed
   steps) and peak GPU memory (``max_memory_allocated`` over the timed steps), eager.
3. ``adapter``: one SpectralMoE layer fwd+bwd at (8, 1024, 1024), bf16, both variants (sparse and
   dense dispatch) against the authors'-style re-statement (``adapter_speed.py --reference``).
4. ``predict_scene``: megapixels/s of ``predict_scene`` with the paper-size SpectralMoE on a synthetic
   4-band 8192² uint16 GeoTIFF (tile 512, overlap 128, batch 8, bf16), with the background tile reader
   (default) and reading in turn (``read_ahead=0``); skipped with a message when rasterio is missing.
5. ``training_compiled``: part 2 again with ``torch.compile`` (in place, default mode); the first
   (compiling) steps are timed separately. Runs last, each method in a child process killed when the
   time left in ``--budget-s`` runs out (compilation cannot be interrupted in-process), and a method is
   not started with less than ``--min-compile-s`` left: the suite ends in time whatever compilation costs.

``--output`` also receives the JSON after every part, so a run that is stopped keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import MethodSpec, build_training_step, median, sync  # noqa: E402

FULL = {
    "backbone": "dinov3-vitl16", "depth": "prompt-depth-anything-large", "head": "mask2former", "size": 512,
    "batch": 8, "classes": 24, "warmup": 3, "repeats": 10, "compile_warmup": 3, "head_options": {},
    "adapter": {"batch": 8, "tokens": 1024, "dim": 1024, "rank": 16, "token_length": 100, "repeats": 20,
                "warmup": 3},
    "scene": {"size": 8192, "tile": 512, "overlap": 128, "batch": 8},
}  # fmt: skip
TINY = {
    "backbone": "tiny-dinov3", "depth": "tiny-prompt-depth-anything", "head": "mask2former", "size": 64,
    "batch": 2, "classes": 4, "warmup": 1, "repeats": 2, "compile_warmup": 1,
    "head_options": {"hidden_dim": 32, "decoder_layers": 2, "encoder_layers": 1, "num_heads": 2,
                     "dim_feedforward": 64, "encoder_feedforward_dim": 64, "train_num_points": 64},
    "adapter": {"batch": 2, "tokens": 64, "dim": 64, "rank": 4, "token_length": 10, "repeats": 2, "warmup": 1},
    "scene": {"size": 192, "tile": 64, "overlap": 16, "batch": 2},
    "adapter_options": {"token_length": 10, "query_dim": 32, "rank": 4},
}  # fmt: skip
METHODS = "freeze,rein,spectralmoe"
COMPILED_METHODS = "spectralmoe,rein,freeze"  # the most interesting first: later ones may not fit the budget
#: A compiled run is started only with at least this much of the budget left.
MIN_COMPILE_S = 90.0
SENSOR = "gf2"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny models and sizes (CPU test of the suite itself)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto",
                        help="auto: bf16 autocast on cuda, fp32 on cpu (torch's CPU bf16 patch convs are unreliable)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="wall-clock budget; compiled runs are skipped "
                        "when it would be exceeded")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: training, adapter, predict_scene, "
                        "training_compiled")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here (after every part)")
    parser.add_argument("--methods", default=METHODS, help="methods of the eager training part")
    parser.add_argument("--compile-methods", default=COMPILED_METHODS, help="methods of the compiled part, in order")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode (default: torch's default)")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend (default inductor; 'eager' only traces: the CPU test of the suite)")
    parser.add_argument("--min-compile-s", type=float, default=MIN_COMPILE_S,
                        help="do not start a compiled run with less of the budget left")
    parser.add_argument("--child-compiled", default=None, help=argparse.SUPPRESS)  # internal: one compiled run
    return parser.parse_args(argv)


class Suite:
    """Runs the parts, records each one's result or error, keeps the clock."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sizes = TINY if args.tiny else FULL
        self.device = torch.device(args.device)
        self.dtype = args.dtype if args.dtype != "auto" else ("bf16" if self.device.type == "cuda" else "fp32")
        self.started = time.perf_counter()
        self.result: dict[str, Any] = {"suite": "tiny" if args.tiny else "paper-size", "budget_s": args.budget_s}
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 for the few fp32 matmuls (routing, fusion)

    # -- bookkeeping -------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def save(self) -> None:
        self.result["elapsed_s"] = round(self.elapsed(), 1)
        if self.args.output is not None:
            self.args.output.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.args.output.with_name(self.args.output.name + ".tmp")
            tmp.write_text(json.dumps(self.result, indent=2))
            tmp.replace(self.args.output)

    def part(self, name: str, run: Callable[[], Any]) -> None:
        if name in self.args.skip.split(","):
            self.result[name] = {"skipped": "--skip"}
        else:
            started = time.perf_counter()
            try:
                self.result[name] = run()
            except Exception as error:  # noqa: BLE001 - one broken part must not lose the others
                self.result[name] = {"error": f"{type(error).__name__}: {error}",
                                     "traceback": traceback.format_exc(limit=6)}  # fmt: skip
            if isinstance(self.result[name], dict):
                self.result[name].setdefault("part_s", round(time.perf_counter() - started, 1))
        self._free()
        self.save()

    def _free(self) -> None:
        if self.device.type == "cuda":  # give the last model's memory back before the next one is measured
            gc.collect()
            torch.cuda.empty_cache()

    def _reset_peak(self) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def _peak_gb(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)

    # -- 1. environment ----------------------------------------------------------------------------
    def environment(self) -> dict[str, Any]:
        import transformers

        env: dict[str, Any] = {
            "python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "device": str(self.device), "dtype": self.dtype, "threads": torch.get_num_threads(),
            "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "rasterio": importlib.util.find_spec("rasterio") is not None,
        }  # fmt: skip
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            env.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                       capability=f"{props.major}.{props.minor}", float32_matmul_precision="high")  # fmt: skip
        major_minor = tuple(int(p) for p in transformers.__version__.split(".")[:2])
        if major_minor < (5, 20):
            env["transformers_note"] = (
                "older than the package's pin (>=5.20): the suite's models (DINOv3, Prompt Depth Anything, "
                "Mask2Former) build and run; Mask2Former's level_embed is left at zeros by this version's "
                "post_init (no effect on speed)"
            )
        return env

    # -- 2. / 5. training --------------------------------------------------------------------------
    def _compile_options(self) -> dict[str, Any]:
        options = {"mode": self.args.compile_mode, "backend": self.args.compile_backend}
        return {k: v for k, v in options.items() if v is not None}

    def _build(self, method: str, compile_model: bool) -> Any:
        sizes = self.sizes
        options = dict(sizes.get("adapter_options", {})) if method == "spectralmoe" else {}
        if self.args.tiny and method == "rein":
            options = {"token_length": 10, "query_dim": 32, "rank": 4}
        spec = MethodSpec(method, method, options)
        build = dict(backbone=sizes["backbone"], depth=sizes["depth"], head=sizes["head"], size=sizes["size"],
                     batch=sizes["batch"], num_classes=sizes["classes"], sensor=SENSOR, device=self.device,
                     dtype=self.dtype, compile_model=compile_model, compile_options=self._compile_options(),
                     head_options=sizes["head_options"])  # fmt: skip
        with contextlib.suppress(RuntimeError, NotImplementedError, TypeError):
            with self.device:  # allocate and initialise the weights on the GPU directly (seconds, not minutes)
                return build_training_step(spec, **build)
        return build_training_step(spec, **build)  # fallback: build on the CPU, then move

    def _train(self, method: str, compile_model: bool) -> dict[str, Any]:
        started = time.perf_counter()
        entry = self._build(method, compile_model)
        built = time.perf_counter() - started
        warmup = self.sizes["compile_warmup" if compile_model else "warmup"]
        first_steps = []
        for _ in range(warmup):
            sync(self.device)
            t0 = time.perf_counter()
            loss = entry.step()
            sync(self.device)
            first_steps.append(time.perf_counter() - t0)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{method}: non-finite training loss {float(loss)}")
        self._reset_peak()
        times = []
        for _ in range(self.sizes["repeats"]):
            sync(self.device)
            t0 = time.perf_counter()
            entry.step()
            sync(self.device)
            times.append(time.perf_counter() - t0)
        step = median(times)
        out = {
            "images_per_s": round(self.sizes["batch"] / step, 2), "step_s_median": round(step, 4),
            "step_s_min": round(min(times), 4), "peak_memory_gb": self._peak_gb(),
            "warmup_steps_s": [round(t, 2) for t in first_steps], "build_s": round(built, 1),
            "trainable_parameters": entry.trainable_parameters, "fused_adamw": entry.fused_adamw,
        }  # fmt: skip
        del entry
        self._free()
        return out

    def training(self, compiled: bool = False) -> dict[str, Any]:
        sizes = self.sizes
        out: dict[str, Any] = {
            "backbone": sizes["backbone"], "depth": sizes["depth"], "head": sizes["head"], "crop": sizes["size"],
            "batch": sizes["batch"], "dtype": self.dtype, "compile": compiled, "timed_steps": sizes["repeats"],
        }  # fmt: skip
        if compiled:
            out["compile_options"] = self._compile_options()
        durations: list[float] = []
        methods = (self.args.compile_methods if compiled else self.args.methods).split(",")
        for method in filter(None, methods):
            if compiled:
                left = self.args.budget_s - self.elapsed()
                needed = max([self.args.min_compile_s] + [1.2 * d for d in durations])
                if left < needed:
                    out[method] = {"skipped": f"time budget: {left:.0f} s left, a compiled run needs ~{needed:.0f} s"}
                    continue
            started = time.perf_counter()
            try:
                out[method] = self._train_in_child(method) if compiled else self._train(method, compiled)
            except Exception as error:  # noqa: BLE001 - keep the other methods
                out[method] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(limit=6)}
            durations.append(time.perf_counter() - started)
            self._free()
            self.save()
        return out

    def _train_in_child(self, method: str) -> dict[str, Any]:
        """``_train(method, compiled=True)`` in a child process, killed when the budget runs out."""
        left = self.args.budget_s - self.elapsed()
        command = [sys.executable, str(Path(__file__).resolve()), "--device", self.args.device, "--dtype", self.dtype,
                   "--child-compiled", method]  # fmt: skip
        options = (("--compile-mode", self.args.compile_mode), ("--compile-backend", self.args.compile_backend))
        for flag, value in options:
            if value is not None:
                command += [flag, value]
        if self.args.tiny:
            command.append("--tiny")
        # Own process group: a timeout kills the child AND the compile workers it started.
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 start_new_session=True)  # fmt: skip
        try:
            stdout, stderr = child.communicate(timeout=max(left, 1.0))
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
            return {"skipped": f"killed: did not finish within the {left:.0f} s left of the budget"}
        if child.returncode != 0:
            return {"error": f"child exited with {child.returncode}", "stderr_tail": stderr[-2000:]}
        return json.loads(stdout.strip().splitlines()[-1])

    # -- 3. adapter layer --------------------------------------------------------------------------
    def adapter(self) -> dict[str, Any]:
        import adapter_speed

        sizes = self.sizes["adapter"]
        argv = ["--batch", str(sizes["batch"]), "--tokens", str(sizes["tokens"]), "--dim", str(sizes["dim"]),
                "--rank", str(sizes["rank"]), "--token-length", str(sizes["token_length"]),
                "--repeats", str(sizes["repeats"]), "--warmup", str(sizes["warmup"]), "--device", self.args.device,
                "--dtype", self.dtype, "--dispatch", "sparse,dense", "--reference", "--no-memory"]  # fmt: skip
        args = adapter_speed.parse(argv)
        result = adapter_speed.run(args)
        for name in adapter_speed.entry_names(args):  # peak memory of each entry, one step, same process
            step, _ = adapter_speed.build_entry(args, name)
            self._reset_peak()
            step()
            result[name]["peak_memory_gb"] = self._peak_gb()
            del step
            self._free()
        return result

    # -- 4. predict_scene --------------------------------------------------------------------------
    def predict_scene(self) -> dict[str, Any]:
        if importlib.util.find_spec("rasterio") is None:
            return {"skipped": "rasterio is not installed here: predict_scene needs it (carry its wheels to run "
                               "this part, see README 'GPU benchmark suite')"}  # fmt: skip
        from scene_memory import write_scene

        from spectralmoe.predict import predict_scene

        sizes = self.sizes["scene"]
        folder = Path(tempfile.mkdtemp(prefix="spectralmoe-gpu-suite-"))
        try:
            scene = folder / "scene.tif"
            started = time.perf_counter()
            write_scene(scene, sizes["size"], sizes["size"], 4)
            written = time.perf_counter() - started
            entry = self._build("spectralmoe", compile_model=False)
            model = entry.model.eval()
            del entry
            options = dict(tile=sizes["tile"], overlap=sizes["overlap"], batch_size=sizes["batch"],
                           device=self.args.device, precision=self.dtype, pretrained=False, progress=False,
                           preview=False, overviews=False)  # fmt: skip
            small = folder / "warmup.tif"
            write_scene(small, sizes["tile"] + 40, sizes["tile"] + 40, 4)
            predict_scene(model, small, folder / "warmup_map.tif", **options)  # warm-up (kernels, allocator)
            self._reset_peak()
            summary = predict_scene(model, scene, folder / "map.tif", **options)  # read_ahead=2, the default
            peak = self._peak_gb()
            in_turn = predict_scene(model, scene, folder / "map0.tif", read_ahead=0, **options)
            pixels = sizes["size"] ** 2
            return {
                "scene": f"{sizes['size']}x{sizes['size']}x4 uint16 GeoTIFF (synthetic)", "tile": sizes["tile"],
                "overlap": sizes["overlap"], "batch": sizes["batch"], "precision": self.dtype, "tiles": summary.tiles,
                "loop_s": round(summary.tile_seconds, 2),
                "megapixels_per_s": round(pixels / summary.tile_seconds / 1e6, 3),
                "tiles_per_s": round(summary.tiles_per_second, 2), "peak_memory_gb": peak,
                "megapixels_per_s_reading_in_turn": round(pixels / in_turn.tile_seconds / 1e6, 3),
                "scene_write_s": round(written, 1), "model": "spectralmoe (paper variant), random weights",
            }  # fmt: skip
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    # -- all ---------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.part("environment", self.environment)
        self.part("training", lambda: self.training(compiled=False))
        self.part("adapter", self.adapter)
        self.part("predict_scene", self.predict_scene)
        self.part("training_compiled", lambda: self.training(compiled=True))
        return self.result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_suite: --device cuda but torch sees no GPU (use --tiny --device cpu to test the suite)")
    if args.child_compiled is not None:
        result = Suite(args)._train(args.child_compiled, compile_model=True)
        print(json.dumps(result))
        return result
    result = Suite(args).run()
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
