"""The pretraining command: both SYNTHETIC-world models, deterministic, with provenance.

``python scripts/pretrain_synthetic.py --out spectralmoe/weights --seed 0`` (or ``python -m
spectralmoe.pretrain …``) renders the corpus, trains the vision backbone and the depth model on
one CPU thread with deterministic kernels, measures them on held-out tiles against randomly
initialised models of the same architecture, and writes for each model::

    OUT/synthetic-dinov2/{config.json, model.safetensors, PROVENANCE.json}
    OUT/synthetic-depth-anything/{config.json, model.safetensors, PROVENANCE.json}

``PROVENANCE.json`` records the command, seed, settings, library versions, the measurements, the
loss curve and the SHA-256 of the two weight files. Same command + same versions of torch, numpy
and transformers → the same bytes (``--verify`` reruns and compares against what is on disk).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["PretrainSettings", "main", "pretrain_all", "sha256_file", "weight_hashes"]

VISION_NAME = "synthetic-dinov2"
DEPTH_NAME = "synthetic-depth-anything"
WEIGHT_FILES = ("config.json", "model.safetensors")
NOTE = ("SYNTHETIC: pretrained by spectralmoe.pretrain on the package's synthetic world only; it knows nothing "
        "of real imagery")  # fmt: skip


@dataclass(frozen=True)
class PretrainSettings:
    """Everything the committed weights depend on (besides library versions)."""

    seed: int = 0
    tiles_per_domain: int = 24
    tile_size: int = 128
    validation_tiles_per_domain: int = 4
    vision_steps: int = 800
    vision_batch_size: int = 32
    vision_lr: float = 2e-3
    mask_ratio: float = 0.4
    target_pool: int = 4
    visible_weight: float = 1.0
    depth_steps: int = 500
    depth_batch_size: int = 16
    depth_lr: float = 2e-3
    depth_loss: str = "correlation"


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weight_hashes(folder: str | os.PathLike[str]) -> dict[str, str]:
    """SHA-256 of ``config.json`` and ``model.safetensors`` in a ``save_pretrained`` folder."""
    return {name: sha256_file(Path(folder) / name) for name in WEIGHT_FILES}


def _versions() -> dict[str, str]:
    import numpy
    import safetensors
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "numpy": numpy.__version__,
            "safetensors": safetensors.__version__, "python": platform.python_version(),
            "machine": platform.machine()}  # fmt: skip


def _save(model: Any, folder: Path, provenance: dict[str, Any]) -> dict[str, str]:
    """``save_pretrained`` into a temporary sibling, then swap it in (a reader never sees half a model)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        model.save_pretrained(staging)
        hashes = weight_hashes(staging)
        record = {**provenance, "sha256": hashes, "bytes": {n: (staging / n).stat().st_size for n in WEIGHT_FILES}}
        (staging / "PROVENANCE.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        folder.mkdir(exist_ok=True)
        for name in (*WEIGHT_FILES, "PROVENANCE.json"):
            os.chmod(staging / name, 0o644)  # package data: readable by everyone, whatever wrote it
            os.replace(staging / name, folder / name)
    finally:
        for leftover in staging.glob("*"):
            leftover.unlink()
        staging.rmdir()
    return hashes


def pretrain_all(
    out: str | os.PathLike[str],
    settings: PretrainSettings = PretrainSettings(),
    *,
    models: Sequence[str] = ("vision", "depth"),
    command: str | None = None,
    workers: int = 2,
    log: Callable[[str], None] = lambda message: print(message, flush=True),
) -> dict[str, dict[str, Any]]:
    """Train the requested models with ``settings`` and write their folders under ``out``.

    Returns, per written folder name, its provenance record (with the SHA-256 of the weights).
    ``workers`` only parallelises tile rendering; it does not change the result.
    """
    import torch

    from spectralmoe.pretrain.common import deterministic_cpu
    from spectralmoe.pretrain.corpus import build_corpus
    from spectralmoe.pretrain.depth import build_depth_model, height_correlation, pretrain_depth
    from spectralmoe.pretrain.vision import build_vision_model, linear_probe, pretrain_vision

    from transformers.utils import logging as hf_logging

    unknown = set(models) - {"vision", "depth"}
    if unknown or not models:
        raise ValueError(f"models must be among 'vision', 'depth', got {list(models)}")
    hf_logging.disable_progress_bar()  # save_pretrained's shard bar says nothing here
    deterministic_cpu(1)
    out = Path(out)
    start = time.perf_counter()
    corpus = build_corpus(settings.seed, tiles_per_domain=settings.tiles_per_domain, tile_size=settings.tile_size,
                          workers=workers)  # fmt: skip
    # Held-out tiles: same world, indices far beyond the training ones (other scenes).
    validation = build_corpus(settings.seed, tiles_per_domain=settings.validation_tiles_per_domain,
                              tile_size=settings.tile_size, first_index=100_000, workers=workers)  # fmt: skip
    render_seconds = round(time.perf_counter() - start, 1)
    log(f"corpus: {len(corpus)} training + {len(validation)} held-out tiles of {settings.tile_size} px from "
        f"{len(set(corpus.sensor))} sensors x {len(set(corpus.region))} regions, world seed {corpus.world_seed} "
        f"({render_seconds} s)")  # fmt: skip
    common = {
        "SYNTHETIC": True,
        "note": NOTE,
        "command": command or f"python -m spectralmoe.pretrain --out {out} --seed {settings.seed}",
        "seed": settings.seed,
        "settings": asdict(settings),
        "corpus": {"tiles": len(corpus), "validation_tiles": len(validation), "world_seed": corpus.world_seed,
                   "sensors": sorted(set(corpus.sensor)), "regions": sorted(set(corpus.region)),
                   "tile_size": settings.tile_size},  # fmt: skip
        "deterministic": "torch.set_num_threads(1), torch.use_deterministic_algorithms(True), seeded generators",
        "versions": _versions(),
    }
    records: dict[str, dict[str, Any]] = {}
    even = list(range(0, len(validation), 2))
    odd = list(range(1, len(validation), 2))
    if "vision" in models:
        model, history = pretrain_vision(
            corpus, steps=settings.vision_steps, batch_size=settings.vision_batch_size, lr=settings.vision_lr,
            mask_ratio=settings.mask_ratio, target_pool=settings.target_pool,
            visible_weight=settings.visible_weight, seed=settings.seed, validation=validation, log=log,
        )  # fmt: skip
        probe = {
            "protocol": "ridge classifier on frozen final patch tokens -> majority class of each 16x16 patch; "
            "fit on even, scored on odd held-out tiles",
            "pretrained": linear_probe(model, validation.subset(even), validation.subset(odd)),
            "random_init": linear_probe(build_vision_model(settings.seed + 1), validation.subset(even),
                                        validation.subset(odd)),  # fmt: skip
        }
        log(f"vision: linear probe pretrained {probe['pretrained']} vs random init {probe['random_init']}")
        provenance = {**common, "model": VISION_NAME, "architecture": "Dinov2Model (transformers)",
                      "history": history, "measurements": {"linear_probe": probe,
                                                           "reconstruction": history.get("validation")}}  # fmt: skip
        hashes = _save(model, out / VISION_NAME, provenance)
        records[VISION_NAME] = {**provenance, "sha256": hashes}
        log(f"wrote {out / VISION_NAME} (model.safetensors sha256 {hashes['model.safetensors']})")
        del model
    if "depth" in models:
        model, history = pretrain_depth(
            corpus, steps=settings.depth_steps, batch_size=settings.depth_batch_size, lr=settings.depth_lr,
            loss=settings.depth_loss, seed=settings.seed, validation=validation, log=log,
        )  # fmt: skip
        baseline = height_correlation(build_depth_model(settings.seed + 1), validation)
        log(f"depth: held-out height correlation {history['validation']} vs random init {baseline}")
        provenance = {**common, "model": DEPTH_NAME, "architecture": "DepthAnythingForDepthEstimation (transformers)",
                      "history": history,
                      "measurements": {"height_correlation": history["validation"],
                                       "random_init_height_correlation": baseline}}  # fmt: skip
        hashes = _save(model, out / DEPTH_NAME, provenance)
        records[DEPTH_NAME] = {**provenance, "sha256": hashes}
        log(f"wrote {out / DEPTH_NAME} (model.safetensors sha256 {hashes['model.safetensors']})")
    log(f"done in {time.perf_counter() - start:.0f} s")
    torch.use_deterministic_algorithms(False)
    return records


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    defaults = PretrainSettings()
    p = argparse.ArgumentParser(
        prog=prog,
        description="Pretrain the SYNTHETIC-world DINOv2 backbone and Depth Anything model shipped in "
        "spectralmoe/weights/ (CPU, deterministic, one thread).",
    )
    p.add_argument("--out", type=Path, default=Path("spectralmoe/weights"), help="folder of the model folders")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--models", nargs="+", choices=("vision", "depth"), default=["vision", "depth"])
    for name, value in asdict(defaults).items():
        if name == "seed":
            continue
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=type(value), default=value,
                       help=f"default {value}")  # fmt: skip
    p.add_argument("--workers", type=int, default=2, help="tile-rendering processes (no effect on the result)")
    p.add_argument("--verify", action="store_true",
                   help="train into a temporary folder and compare the SHA-256 with the weights already in --out")
    return p


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Command-line entry (``prog`` is how the command was invoked, recorded in the provenance)."""
    words = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(words)
    settings = PretrainSettings(**{name: getattr(args, name) for name in asdict(PretrainSettings())})
    invoked = prog or "python -m spectralmoe.pretrain"
    recorded = [w for w in words if w != "--verify"]
    command = f"{invoked} {shlex.join(recorded)}".strip()
    if not args.verify:
        records = pretrain_all(args.out, settings, models=args.models, command=command, workers=args.workers)
        for name, record in records.items():
            print(f"{name}: {args.out / name} sha256 {record['sha256']['model.safetensors']}")
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        records = pretrain_all(scratch, settings, models=args.models, command=command, workers=args.workers)
        mismatched = []
        for name, record in records.items():
            committed = weight_hashes(args.out / name) if (args.out / name / "model.safetensors").is_file() else {}
            same = committed == record["sha256"]
            print(f"{name}: {'IDENTICAL' if same else 'DIFFERENT'} — rerun {record['sha256']}, on disk {committed}")
            if not same:
                mismatched.append(name)
    return 1 if mismatched else 0
