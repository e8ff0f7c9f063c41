"""Shared pieces of the robustness catalogue: one tiny export, one scene, fake prepared benchmarks, and
the assertions every bad input shares (exit 2, one line naming the culprit, nothing written).

Everything expensive is built once per session; commands run in-process through
``spectralmoe.cli.main`` (subprocesses only where a signal has to hit a real process)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from spectralmoe.cli import main
from spectralmoe.engine.export import export_trainable
from spectralmoe.models.factory import build_segmentor
from tests import perturb_trainable

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["water", "field", "forest", "urban"]
PALETTE = [(0, 90, 200), (230, 200, 90), (20, 130, 40), (200, 40, 40)]
MEAN, STD = [100.0, 110.0, 120.0, 90.0], [50.0, 55.0, 60.0, 45.0]
BUILD = {
    "backbone": "tiny-dinov3", "adapter": "spectralmoe", "head": "fpn", "depth": "tiny-depth-anything",
    "sensor": "gf2", "num_classes": 4, "head_kwargs": {"channels": 32},
    "adapter_kwargs": {"token_length": 8, "query_dim": 32, "num_experts": 3, "rank": 4},
    "pixel_mean": MEAN, "pixel_std": STD,
}  # fmt: skip
CRS = "EPSG:32650"
TRANSFORM = Affine(0.8, 0.0, 500000.0, 0.0, -0.8, 4000000.0)
H, W = 96, 120
#: predict-scene options of every test run: small tiles, no download, no progress bar
FAST = ["--tile", "64", "--overlap", "16", "--random-frozen", "--quiet"]



def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # main(argv) runs LightningCLI in-process while pytest's own arguments sit in sys.argv: not a mistake here
    for item in items:
        item.add_marker(pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning"))


# ------------------------------------------------------------------------------------ running
@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if ": error: " in line and line.startswith("spectralmoe")]


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> Result:
    """``spectralmoe ARGV`` in this process (torch seeded, so random frozen weights are the same every run)."""
    torch.manual_seed(0)
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return Result(rc, captured.out, captured.err)


def refused(result: Result, *names: object, lines: int = 1) -> str:
    """Exit status 2, no traceback, and ONE error line (``lines`` > 1: a head line plus listed files)
    naming every one of ``names``; returns the error text."""
    assert result.rc == 2, (result.rc, result.err[-3000:])
    assert "Traceback" not in result.err, result.err[-3000:]
    assert len(result.error_lines) == 1, result.err[-3000:]
    start = result.err.index(result.error_lines[0])
    text = result.err[start:].rstrip("\n")
    message = "\n".join(text.splitlines()[:lines])
    assert len(text.splitlines()) >= lines, text
    if lines == 1:
        assert not any(line.startswith("  ") for line in text.splitlines()[1:2]), f"detail lines follow: {text}"
    for name in names:
        assert str(name) in message, (str(name), message)
    return message


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``folder`` (hidden ones included) with its size and content hash."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            files[path.relative_to(folder).as_posix()] = (path.stat().st_size, hashlib.sha1(path.read_bytes()).hexdigest())
    return files


def leftovers(folder: Path) -> list[str]:
    """Our temporaries (``.<name>.smoe-…``) under ``folder``."""
    return sorted(p.name for p in folder.rglob("*") if ".smoe-" in p.name)


# ----------------------------------------------------------------------------------- the model
def tiny_model(adapter: str = "spectralmoe") -> torch.nn.Module:
    build = {**BUILD, "adapter": adapter, "adapter_kwargs": BUILD["adapter_kwargs"] if adapter == "spectralmoe" else {}}
    torch.manual_seed(0)
    model = build_segmentor(**build, pretrained=False)
    perturb_trainable(model)
    return model.eval()


@pytest.fixture(scope="session")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny GF-2 export (never modified: tests that corrupt an export copy it first)."""
    folder = tmp_path_factory.mktemp("model") / "export"
    return export_trainable(tiny_model(), folder, build_config=BUILD, class_names=CLASSES, palette=PALETTE)


@pytest.fixture
def export_copy(export: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(export, tmp_path / "export"))


def edit_export(folder: Path, **changes: object) -> Path:
    info = json.loads((folder / "spectralmoe.json").read_text())
    for key, value in changes.items():
        if key.startswith("build_"):
            info["build"][key[len("build_"):]] = value
        else:
            info[key] = value
    (folder / "spectralmoe.json").write_text(json.dumps(info))
    return folder


# ----------------------------------------------------------------------------------- rasters
def scene_array(seed: int = 0, height: int = H, width: int = W, bands: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.uniform(20, 230, (bands, height // 8 + 2, width // 8 + 2)).astype(np.float32)
    array = np.repeat(np.repeat(base, 8, 1), 8, 2)[:, :height, :width]
    return np.ascontiguousarray(array + rng.normal(0, 6, array.shape).astype(np.float32))


def write_raster(path: Path, array: np.ndarray, *, nodata: float | None = None, transform: Affine = TRANSFORM,
                 crs: str | None = CRS, **profile: object) -> Path:  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"driver": "GTiff", "height": array.shape[-2], "width": array.shape[-1], "count": array.shape[0],
               "dtype": array.dtype.name, "crs": crs, "transform": transform, "nodata": nodata, **profile}  # fmt: skip
    with rasterio.open(path, "w", **options) as dst:
        dst.write(array)
    return path


@pytest.fixture(scope="session")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_raster(tmp_path_factory.mktemp("scene") / "scene.tif", scene_array())


def read_map(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


@pytest.fixture(scope="session")
def reference_map(export: Path, scene: Path, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The map of the clean scene (the result odd inputs are compared with)."""
    out = tmp_path_factory.mktemp("reference") / "map.tif"
    torch.manual_seed(0)
    assert main(["predict-scene", "--checkpoint", str(export), "--input", str(scene), "--output", str(out), *FAST,
                 "--no-preview"]) == 0  # fmt: skip
    return read_map(out)


# ---------------------------------------------------------------------------- prepared data
def prepared_root(folder: Path, *, source_tiles: int = 2, tiles_per_target: int = 1) -> Path:
    """A fake prepared FLAIR benchmark (4 bands, two target domains) as ``spectralmoe prepare`` writes it."""
    from tests.test_configs import make_prepared_root

    return make_prepared_root("flair", folder, source_tiles=source_tiles, tiles_per_target=tiles_per_target)


def fit_args(root: Path, base: Path, *extra: object, command: str = "fit", **trainer: object) -> list[str]:
    """``spectralmoe fit`` of the tiny SpectralMoE on ``root`` (run folders under ``base/runs``)."""
    from tests.test_configs import CONFIGS, cpu_trainer_args, tiny_model_args, tiny_task_file

    method = CONFIGS / "methods" / "spectralmoe_dinov3-vitl16.yaml"
    options = {"max_steps": 1, "val_check_interval": 1, "log_every_n_steps": 1, **trainer}
    if command != "fit":
        options = {}
    task = base / "tiny-flair.yaml"
    if not task.exists():
        tiny_task_file("flair", base)
    return [
        command, "-c", str(CONFIGS / "tasks" / "flair.yaml"), "-c", str(method), *tiny_model_args(method),
        "--data.root", str(root), "--data.task", str(task), "--data.batch_size", "2",
        "--data.eval_batch_size", "2", "--data.num_workers", "0", "--run.root", str(base / "runs"),
        *cpu_trainer_args(**options), *map(str, extra),
    ]  # fmt: skip


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # fmt: skip


PYTHON = sys.executable
