"""A mapping engineer's journey on their own GeoTIFFs, end to end on tiny data (issue 10):

``prepare folder`` (two sensors, different band orders, one of them as delivered and as reordered by
hand) → ``fit`` (the task file's schedule) → ``test``/``validate``/``predict`` with ``--ckpt_path`` →
``compare`` → ``predict-scene --ground-truth``; every output readable by others under umask 022.

The central claims, each with its negative control:

* the NIR,R,G,B target as delivered and the same tiles reordered to B,G,R,NIR reach the model as the
  SAME tensors and get the SAME metrics; feeding by position (the old behaviour) makes them differ;
* ``test --ckpt_path --model.eval_mode slide`` runs sliding windows (window-sized inputs reach the
  model), and an architecture flag that contradicts the checkpoint is refused;
* ``prepare folder`` refuses a bad file before writing anything.

Tiny models (``tests.test_configs.tiny_model_args``) on 64-px tiles; the shipped ``*_synthetic.yaml``
configs train one step each in their own test.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import rasterio
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from PIL import Image
from rasterio.transform import Affine

from spectralmoe.bands import BandMismatchError
from spectralmoe.cli import main
from spectralmoe.data.layout import PreparedIndex
from tests.test_configs import CONFIGS, SYNTHETIC_METHOD_FILES, cpu_trainer_args, tiny_model_args

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")

METHOD_FILE = CONFIGS / "methods" / "spectralmoe_dinov3-vitl16.yaml"
SIZE = 96  # Mask2Former's stride-32 level needs windows of 64 px for the sliding-window test
CRS = "EPSG:32633"
#: reflectance of the three classes in B, G, R, NIR (vegetation, built-up, water)
SPECTRA = np.array([[0.05, 0.08, 0.06, 0.45], [0.10, 0.12, 0.14, 0.20], [0.03, 0.04, 0.03, 0.02]])
TARGETS = ["siteA-holdout", "siteB", "siteB-reordered"]


# ------------------------------------------------------------------------------------------ data
def _labels(seed: int) -> np.ndarray:
    coarse = np.random.default_rng(seed).integers(0, 3, (4, 4))
    return np.kron(coarse, np.ones((SIZE // 4, SIZE // 4), dtype=np.int64))


def write_tile(path: Path, array: np.ndarray, *, k: int, descriptions: list[str] | None = None,
               nodata: float | None = None, crs: str = CRS) -> Path:  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "width": array.shape[-1], "height": array.shape[-2], "count": array.shape[0],
               "dtype": array.dtype.name, "crs": crs, "transform": Affine(2.0, 0, 500_000 + 200 * k, 0, -2.0, 4e6),
               "photometric": "minisblack", **({"nodata": nodata} if nodata is not None else {})}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
        for i, name in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, name)
    return path


def write_label(path: Path, label: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label.astype(np.uint8)).save(path)
    return path


def write_own_domains(base: Path) -> dict[str, Path]:
    """Sensor A: B,G,R,NIR uint16 (10-bit), band descriptions; sensor B: NIR,R,G,B uint8 with another gain
    and offset and no descriptions, plus the same tiles reordered by hand to B,G,R,NIR. Raw labels 1..3,
    0 = unlabelled (``--label-offset 1``); a nodata corner (0 in every band) in one B tile."""
    rng = np.random.default_rng(0)
    for k in range(5):
        label = _labels(k)
        reflectance = SPECTRA[label].transpose(2, 0, 1) + rng.normal(0, 0.005, (4, SIZE, SIZE))
        image = np.clip(reflectance * 4000, 0, 1023).astype(np.uint16)
        write_tile(base / "siteA" / "images" / f"a{k}.tif", image, k=k, descriptions=["B", "G", "R", "NIR"])
        raw = label + 1
        raw[:3, :3] = 0  # unlabelled
        write_label(base / "siteA" / "labels" / f"a{k}.png", raw)
    for k in range(2):
        label = _labels(100 + k)
        reflectance = SPECTRA[label].transpose(2, 0, 1) + rng.normal(0, 0.005, (4, SIZE, SIZE))
        bgrn = np.clip(reflectance * 600 + 12, 1, 255).astype(np.uint8)
        if k == 0:
            bgrn[:, -8:, -8:] = 0  # no data
        write_tile(base / "siteB" / "images" / f"b{k}.tif", bgrn[::-1].copy(), k=10 + k, nodata=0)
        write_tile(base / "siteB-reordered" / "images" / f"b{k}.tif", bgrn, k=10 + k, nodata=0,
                   descriptions=["Blue", "Green", "Red", "NIR"])  # fmt: skip
        for domain in ("siteB", "siteB-reordered"):
            write_label(base / domain / "labels" / f"b{k}.png", label + 1)
    (base / "classes.txt").write_text("vegetation\nbuilt-up\nwater\n")
    return {"base": base, "classes": base / "classes.txt"}


def prepare_args(base: Path, out: Path, *extra: str) -> list[str]:
    return [
        "prepare", "folder", "--images", str(base / "siteA" / "images"), "--labels", str(base / "siteA" / "labels"),
        "--images", str(base / "siteB" / "images"), "--labels", str(base / "siteB" / "labels"),
        "--wavelengths", "0.83", "0.665", "0.56", "0.49",
        "--images", str(base / "siteB-reordered" / "images"), "--labels", str(base / "siteB-reordered" / "labels"),
        "--classes", str(base / "classes.txt"), "--label-offset", "1", "--holdout", "0.2", "--batch-size", "2",
        "--max-iters", "2", "--out", str(out), "--quiet", *extra,
    ]  # fmt: skip


# ------------------------------------------------------------------------------------- callbacks
class RecordInputs(Callback):
    """Save the image tensors each target domain's loader hands the model (``<dirpath>/<stage>.pt``).

    Args:
        dirpath: output folder.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath
        self.seen: dict[str, list[torch.Tensor]] = {}

    def _record(self, trainer: L.Trainer, batch: Any, dataloader_idx: int) -> None:
        if trainer.sanity_checking:
            return
        name = trainer.datamodule.target_domains[dataloader_idx]
        self.seen.setdefault(name, []).append(batch["image"].clone())

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):  # noqa: ANN001
        self._record(trainer, batch, dataloader_idx)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):  # noqa: ANN001
        self._record(trainer, batch, dataloader_idx)

    def _save(self, stage: str) -> None:
        Path(self.dirpath).mkdir(parents=True, exist_ok=True)
        torch.save({k: torch.cat(v) for k, v in self.seen.items()}, Path(self.dirpath) / f"{stage}.pt")
        self.seen = {}

    def on_validation_end(self, trainer, pl_module):  # noqa: ANN001
        if not trainer.sanity_checking:
            self._save(f"val_step{trainer.global_step}")

    def on_test_end(self, trainer, pl_module):  # noqa: ANN001
        self._save("test")


class RecordForwardSizes(Callback):
    """Write the spatial sizes of the images entering the segmentor during ``test`` (``<dirpath>/sizes.json``).

    Args:
        dirpath: output folder.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath
        self.sizes: list[list[int]] = []

    def on_test_start(self, trainer, pl_module):  # noqa: ANN001
        segmentor = pl_module.segmentor
        forward = segmentor.forward

        def recording(image, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
            self.sizes.append(list(image.shape[-2:]))
            return forward(image, *args, **kwargs)

        segmentor.forward = recording

    def on_test_end(self, trainer, pl_module):  # noqa: ANN001
        del pl_module.segmentor.forward  # back to the class's method
        Path(self.dirpath).mkdir(parents=True, exist_ok=True)
        (Path(self.dirpath) / "sizes.json").write_text(json.dumps(self.sizes))


# -------------------------------------------------------------------------------------- journey
def cli(journey: dict[str, Path], command: str, name: str, *extra: str, config: Path | None = None) -> list[str]:
    """``spectralmoe COMMAND`` on the prepared folder with the tiny model, run folder ``runs/<name>``."""
    head = ["-c", str(config)] if config is not None else ["-c", str(journey["prepared"] / "fit.yaml"),
                                                          "-c", str(METHOD_FILE), *tiny_model_args(METHOD_FILE)]
    return [command, *head, "--data.num_workers", "0", "--run.root", str(journey["runs"]), "--run.name", name,
            *cpu_trainer_args(), *extra]  # fmt: skip


@pytest.fixture(scope="module")
def journey(tmp_path_factory) -> dict[str, Path]:
    """Own data → ``prepare folder`` → ``fit`` (no ``--trainer.max_steps``: the task's 2 steps), all under umask 022."""
    base = tmp_path_factory.mktemp("own")
    previous = os.umask(0o022)
    try:
        paths = write_own_domains(base / "raw")
        paths.update(prepared=base / "prepared", runs=base / "runs", records=base / "records")
        assert main(prepare_args(paths["base"], paths["prepared"])) == 0
        record = ["--trainer.callbacks+=tests.test_own_data.RecordInputs", f"--trainer.callbacks.dirpath={paths['records']}"]
        assert main(cli(paths, "fit", "fit", *record)) == 0
        paths["fit"] = paths["runs"] / "fit" / "version_0"
        yield paths
    finally:
        os.umask(previous)


def test_prepare_folder_writes_the_layout_the_task_and_a_fit_config(journey):
    out = journey["prepared"]
    index = PreparedIndex.load(out)
    domains = index.options["domains"]
    assert domains["siteA"]["bands_from"] == "band descriptions B,G,R,NIR" and domains["siteA"]["role"] == "source"
    assert domains["siteB"]["model_bands_from_file_bands"] == [4, 3, 2, 1]  # NIR,R,G,B file → B,G,R,NIR model
    assert domains["siteB-reordered"]["model_bands_from_file_bands"] == [1, 2, 3, 4]
    assert sorted(index.domains("target")) == TARGETS and index.domains("source") == ["siteA"]
    assert len(index.select("source")) == 4 and len(index.select("target", ["siteA-holdout"])) == 1
    assert index.sensors["siteA"].wavelengths_um == (0.49, 0.56, 0.665, 0.83) and index.classes == [
        "vegetation", "built-up", "water"]  # fmt: skip
    # the files themselves are copied (georeference kept), labels offset: raw 0 → 255, raw 1..3 → 0..2
    tile = next(t for t in index.tiles if t.domain == "siteB")
    with rasterio.open(out / tile.image) as src:
        assert src.crs == rasterio.crs.CRS.from_string(CRS) and src.count == 4 and src.nodata == 0
    label = np.array(Image.open(out / index.select("source")[0].label))
    assert set(np.unique(label)) <= {0, 1, 2, 255} and (label[:3, :3] == 255).all()

    task = yaml.safe_load((out / "task.yaml").read_text())
    assert task["source_domains"] == ["siteA"] and task["band_matching"] == "wavelength"
    assert task["value_scale"] == 1023.0  # 10-bit data in uint16: 2^10 - 1
    assert task["crop_size"] == 96 and task["resize_scales"] == [int(96 * x * 0.1) for x in range(6, 13)]
    assert (task["max_iters"], task["val_interval"], task["batch_size"]) == (2, 2, 2)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["band_names"] == ["B", "G", "R", "NIR"] and task["mean"] == pytest.approx(stats["mean"], abs=1e-3)
    fit = yaml.safe_load((out / "fit.yaml").read_text())
    assert fit["data"] == {**fit["data"], "root": str(out.resolve()), "task": str((out / "task.yaml").resolve())}


def test_the_task_schedule_drives_fit_and_short_runs_log(journey):
    run = journey["fit"]
    export = json.loads((run / "export" / "spectralmoe.json").read_text())
    assert export["metadata"]["step"] == 2  # task.yaml's max_iters: 2 (no --trainer.max_steps given)
    training = export["metadata"]["training"]
    assert training["crop_size"] == 96 and training["resize_shortest_edge"] == [57, 67, 76, 86, 96, 105, 115]
    assert (run / "metrics_val_epoch0_step2.json").is_file()  # validation every val_interval = 2 steps
    metrics = (run / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    assert "train/loss_head" in header and "train/loss_aux" in header
    rows = [dict(zip(header, line.split(","))) for line in metrics[1:]]
    assert any(r.get("train/loss") for r in rows), "a 2-step run logged no train/loss"


def test_as_delivered_and_reordered_targets_reach_the_model_identically(journey):
    report = json.loads((journey["fit"] / "metrics_val_epoch0_step2.json").read_text())
    assert list(report["domains"]) == TARGETS
    assert report["confusion"]["siteB"] == report["confusion"]["siteB-reordered"]
    assert report["domains"]["siteB"]["mIoU"] == report["domains"]["siteB-reordered"]["mIoU"]
    inputs = torch.load(journey["records"] / "val_step2.pt")
    assert torch.equal(inputs["siteB"], inputs["siteB-reordered"])
    # the model sees B,G,R,NIR: band 4 (NIR) of water-free vegetation is the brightest
    assert inputs["siteB"].shape[1] == 4


def test_feeding_bands_by_position_is_the_negative_control(journey, tmp_path):
    """The same checkpoint validated with ``band_matching: position`` (the behaviour before issue 10): the
    as-delivered NIR,R,G,B tiles reach the model in file order, unlike their reordered copies."""
    task = yaml.safe_load((journey["prepared"] / "task.yaml").read_text())
    position = tmp_path / "position.yaml"
    position.write_text(yaml.safe_dump({**task, "band_matching": "position"}))
    records = tmp_path / "records"
    assert main(cli(journey, "validate", "position", "--data.task", str(position), "--ckpt_path",
                    str(journey["fit"] / "checkpoints" / "last.ckpt"),
                    "--trainer.callbacks+=tests.test_own_data.RecordInputs",
                    f"--trainer.callbacks.dirpath={records}")) == 0  # fmt: skip
    inputs = torch.load(next(records.glob("val_*.pt")))
    assert not torch.equal(inputs["siteB"], inputs["siteB-reordered"])
    assert torch.equal(inputs["siteB"], inputs["siteB-reordered"].flip(1))  # file order = reversed bands


def test_ckpt_path_applies_eval_flags_and_refuses_architecture_changes(journey, caplog, capfd):
    caplog.set_level(logging.INFO)
    run, last = journey["fit"], journey["fit"] / "checkpoints" / "last.ckpt"
    config = run / "config.yaml"
    sizes = {}
    for mode, extra in (("whole", []), ("slide", ["--model.eval_mode", "slide", "--model.eval_crop", "64"])):
        folder = journey["runs"] / f"sizes-{mode}"
        assert main(cli(journey, "test", mode, *extra, "--ckpt_path", str(last),
                        "--trainer.callbacks+=tests.test_own_data.RecordForwardSizes",
                        f"--trainer.callbacks.dirpath={folder}", config=config)) == 0  # fmt: skip
        sizes[mode] = {tuple(s) for s in json.loads((folder / "sizes.json").read_text())}
        tested = journey["runs"] / mode / "version_0"
        assert yaml.safe_load((tested / "config.yaml").read_text())["model"]["eval_mode"] == mode
        assert list(json.loads((tested / "metrics_test.json").read_text())["domains"]) == TARGETS
    assert sizes == {"whole": {(96, 96)}, "slide": {(64, 64)}}
    logged = caplog.text
    assert "applying --model.eval_mode 'slide' (the checkpoint had 'whole')" in logged
    assert "spectralmoe test: per target domain" in logged and "  siteB-reordered  " in logged  # full names
    assert "DataLoader 0" not in logged + "".join(capfd.readouterr())  # not Lightning's per-dataloader columns
    # the test of the final weights equals fit's last validation (same tiles, whole tiles)
    whole = json.loads((journey["runs"] / "whole" / "version_0" / "metrics_test.json").read_text())
    assert whole["confusion"] == json.loads((run / "metrics_val_epoch0_step2.json").read_text())["confusion"]
    capfd.readouterr()
    assert main(cli(journey, "test", "refused", "--model.adapter", "rein", "--ckpt_path", str(last), config=config)) == 2
    assert "--model.adapter: the checkpoint was trained with 'spectralmoe', not 'rein'" in capfd.readouterr().err


def test_predict_writes_georeferenced_maps_with_nodata(journey):
    last = journey["fit"] / "checkpoints" / "last.ckpt"
    assert main(cli(journey, "predict", "whole", "--ckpt_path", str(last), config=journey["fit"] / "config.yaml")) == 0
    maps = journey["runs"] / "whole" / "version_1" / "predictions"
    produced = sorted(p.relative_to(maps).as_posix() for p in maps.rglob("*.tif"))
    assert produced == ["siteA/a1.tif", "siteB-reordered/b0.tif", "siteB-reordered/b1.tif", "siteB/b0.tif",
                        "siteB/b1.tif"] or len(produced) == 5  # fmt: skip
    for domain in ("siteB", "siteB-reordered"):
        with rasterio.open(maps / domain / "b0.tif") as out, rasterio.open(journey["base"] / domain / "images" /
                                                                            "b0.tif") as source:  # fmt: skip
            labels = out.read(1)
            assert out.crs == source.crs and out.transform == source.transform and out.nodata == 255
        assert (labels[-8:, -8:] == 255).all() and (labels[:-8] < 3).all()  # nodata corner, classes elsewhere
    with rasterio.open(maps / "siteB" / "b0.tif") as a, rasterio.open(maps / "siteB-reordered" / "b0.tif") as b:
        assert (a.read(1) == b.read(1)).all()  # the same map whichever order the file has


def test_compare_puts_runs_side_by_side(journey, capsys):
    needed = [journey["runs"] / "whole" / "version_1" / "predictions"]
    if not all(p.is_dir() for p in needed):
        pytest.skip("needs the predict run of test_predict_writes_georeferenced_maps_with_nodata")
    last = journey["fit"] / "checkpoints" / "last.ckpt"
    assert main(cli(journey, "predict", "slide", "--model.eval_mode", "slide", "--model.eval_crop", "64",
                    "--ckpt_path", str(last), config=journey["fit"] / "config.yaml")) == 0  # fmt: skip
    out = journey["runs"].parent / "compare"
    assert main(["compare", str(journey["runs"] / "whole"), str(journey["runs"] / "slide"), "--output", str(out),
                 "--tiles", "2"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "| run | siteA-holdout | siteB | siteB-reordered | mean | pooled |" in printed
    summary = json.loads((out / "compare.json").read_text())
    assert [r["label"] for r in summary["runs"]] == ["whole", "slide"]
    assert summary["runs"][0]["metrics_file"].endswith("whole/version_0/metrics_test.json")
    whole = json.loads((journey["runs"] / "whole" / "version_0" / "metrics_test.json").read_text())
    assert summary["table"]["rows"][0][1:4] == [whole["domains"][d]["mIoU"] for d in TARGETS]
    with Image.open(out / "compare.png") as figure:
        assert figure.size[0] > 400 and figure.size[1] > 200


def test_predict_scene_reads_band_descriptions_and_scores_ground_truth(journey, tmp_path):
    """A B,G,R,NIR scene whose descriptions name its bands is matched without --sensor, like the NIR,R,G,B
    copy given --wavelengths; with --ground-truth the map is scored (per-class IoU) and areas are in ha."""
    from spectralmoe.predict import predict_scene

    label = np.kron(np.random.default_rng(5).integers(0, 3, (3, 4)), np.ones((32, 32), dtype=np.int64))  # 96×128
    bgrn = np.clip(SPECTRA[label].transpose(2, 0, 1) * 600 + 12, 1, 255).astype(np.uint8)
    described = write_tile(tmp_path / "bgrn.tif", bgrn, k=0, descriptions=["Blue", "Green", "Red", "NIR"])
    as_delivered = write_tile(tmp_path / "nrgb.tif", bgrn[::-1].copy(), k=0)
    truth = write_tile(tmp_path / "truth.tif", label[None].astype(np.uint8), k=0)
    export = journey["fit"] / "export"
    common = {"tile": 64, "overlap": 16, "preview": False, "progress": False, "pretrained": False}
    a = predict_scene(export, described, tmp_path / "a.tif", ground_truth=truth, **common)
    assert a.bands_matched_by == "band descriptions Blue,Green,Red,NIR" and a.bands_used == [0, 1, 2, 3]
    b = predict_scene(export, as_delivered, tmp_path / "b.tif", wavelengths=[0.83, 0.665, 0.56, 0.49], **common)
    assert b.bands_used == [3, 2, 1, 0]
    with rasterio.open(tmp_path / "a.tif") as ra, rasterio.open(tmp_path / "b.tif") as rb:
        assert (ra.read(1) == rb.read(1)).all()
    assert a.pixel_area_m2 == pytest.approx(4.0)  # 2 m pixels in a projected CRS
    assert a.class_hectares == {n: pytest.approx(c * 4.0 / 1e4) for n, c in a.class_pixels.items()}
    report = json.loads(a.metrics.read_text())
    assert set(report["domains"]["scene"]["IoU"]) == {"vegetation", "built-up", "water"}
    assert report["domains"]["scene"]["labelled_pixels"] == 96 * 128 and a.scores["mIoU"] == report["mean"]["mIoU"]
    assert a.metrics_csv.read_text().startswith("row,kind,mIoU")
    # without descriptions or --sensor: a warning that the file order is assumed
    with pytest.warns(UserWarning, match="assuming the file's bands are in the model's order"):
        c = predict_scene(export, as_delivered, tmp_path / "c.tif", **common)
    assert c.bands_matched_by.startswith("assumed")
    # a ground truth on another grid is refused before the model runs, and nothing is written
    moved = write_tile(tmp_path / "moved.tif", label[None].astype(np.uint8), k=3)
    with pytest.raises(ValueError, match="not on the grid"):
        predict_scene(export, described, tmp_path / "d.tif", ground_truth=moved, **common)
    assert not (tmp_path / "d.tif").exists()


def test_outputs_are_readable_by_others_under_umask_022(journey):
    """Every file the journey wrote (prepared folder, run folders: maps, metrics, checkpoints, exports,
    configs) is -rw-r--r-- and every folder drwxr-xr-x."""
    wrong = []
    for top in (journey["prepared"], journey["runs"]):
        for path in [top, *top.rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode != (0o755 if path.is_dir() else 0o644):
                wrong.append(f"{oct(mode)} {path}")
    assert not wrong, wrong[:20]
    assert (journey["fit"] / "export" / "model.safetensors").is_file()


# ---------------------------------------------------------------------------- prepare refusals
_CAPTURED: Any = None


@pytest.fixture
def raw(tmp_path, capsys) -> Path:
    global _CAPTURED
    _CAPTURED = capsys
    return write_own_domains(tmp_path / "raw")["base"]


def _refused(raw: Path, out: Path, match: str, *extra: str, error: type = ValueError) -> None:
    """The command fails (exit 2, one message naming the culprit) and leaves nothing behind; so does the
    function, with ``error``."""
    from spectralmoe.data.prepare.folder import DomainSpec, prepare_folder

    assert main(prepare_args(raw, out, *extra)) == 2
    import re

    message = _CAPTURED.readouterr().err
    assert re.search(match, message), message
    domains = [DomainSpec("siteA", raw / "siteA" / "images", raw / "siteA" / "labels", "source"),
               DomainSpec("siteB", raw / "siteB" / "images", raw / "siteB" / "labels",
                          wavelengths=(0.83, 0.665, 0.56, 0.49)),
               DomainSpec("siteB-reordered", raw / "siteB-reordered" / "images", raw / "siteB-reordered" / "labels")]
    with pytest.raises(error, match=match):
        prepare_folder(domains, out, classes=raw / "classes.txt", label_offset=1, holdout=0.2, batch_size=2,
                       max_iters=2, progress=False)  # fmt: skip
    assert not out.exists(), "something was written"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")], "staging left behind"


def test_prepare_folder_refuses_a_bad_label_value_before_writing(raw, tmp_path):
    write_label(raw / "siteB" / "labels" / "b1.png", np.full((SIZE, SIZE), 7))
    _refused(raw, tmp_path / "out", r"label .*siteB/labels/b1.png holds values \[6\] after subtracting label_offset 1")


def test_prepare_folder_refuses_mismatched_size_crs_missing_label_and_bands(raw, tmp_path):
    label = raw / "siteB" / "labels" / "b1.png"
    write_label(label, np.ones((SIZE, SIZE - 1)))
    _refused(raw, tmp_path / "a", r"image .*b1.tif is 96 × 96 px but label .*b1.png is 95 × 96 px")
    label.unlink()
    write_tile(label.with_suffix(".tif"), np.ones((1, SIZE, SIZE), np.uint8), k=11, crs="EPSG:4326")
    _refused(raw, tmp_path / "b", r"has CRS EPSG:32633 but label .*b1.tif has CRS EPSG:4326")
    label.with_suffix(".tif").unlink()
    _refused(raw, tmp_path / "c", r"image .*b1.tif has no label", error=FileNotFoundError)
    write_label(label, np.ones((SIZE, SIZE)))
    # a target domain lacking the model's NIR band: named, with the band and its wavelength
    rgb = raw / "siteB-reordered" / "images" / "b0.tif"
    for tile in (raw / "siteB-reordered" / "images").glob("*.tif"):
        with rasterio.open(tile) as src:
            three = src.read()[:3]
        write_tile(tile, three, k=0, descriptions=["Blue", "Green", "Red"])
    _refused(raw, tmp_path / "d", r"domain 'siteB-reordered'.*model band 4 \(0.830 µm\) is missing",
             error=BandMismatchError)  # fmt: skip
    write_tile(rgb, np.ones((3, SIZE, SIZE), np.uint8), k=0)  # descriptions differing between tiles
    _refused(raw, tmp_path / "e", r"domain 'siteB-reordered': band descriptions differ between .*b0.tif")
    for tile in (raw / "siteB-reordered" / "images").glob("*.tif"):
        write_tile(tile, np.ones((3, SIZE, SIZE), np.uint8), k=0)  # no descriptions, no --sensor
    _refused(raw, tmp_path / "f", r"domain 'siteB-reordered': the bands of .*b0.tif are unknown")


# ---------------------------------------------------------------------------- other entry points
@pytest.mark.parametrize("method_file", SYNTHETIC_METHOD_FILES, ids=lambda p: p.stem)
def test_synthetic_cpu_configs_train_on_a_prepared_folder(method_file, tmp_path):
    """``configs/methods/*_synthetic.yaml`` (the shipped synthetic backbones, no tiny stand-ins) train and
    validate one step on a ``prepare folder`` output."""
    base = write_own_domains(tmp_path / "raw")["base"]
    assert main(prepare_args(base, tmp_path / "prepared")) == 0
    assert main(["fit", "-c", str(tmp_path / "prepared" / "fit.yaml"), "-c", str(method_file),
                 "--data.num_workers", "0", "--run.root", str(tmp_path / "runs"),
                 *cpu_trainer_args(max_steps=1, val_check_interval=1)]) == 0  # fmt: skip
    run = next((tmp_path / "runs").glob("*/*/version_0"))
    report = json.loads(next(run.glob("metrics_val_*.json")).read_text())
    assert list(report["domains"]) == TARGETS and report["domains"]["siteB"] == report["domains"]["siteB-reordered"]


def test_fast_dev_run_writes_into_a_run_folder_with_the_step_bar_and_summary(journey, tmp_path, monkeypatch, capfd,
                                                                             caplog):  # fmt: skip
    caplog.set_level(logging.INFO)
    monkeypatch.chdir(tmp_path)
    assert main(cli(journey, "fit", "dev", "--trainer.fast_dev_run", "true", "--trainer.enable_progress_bar",
                    "true")) == 0  # fmt: skip
    assert list(tmp_path.iterdir()) == [], "fast_dev_run littered the working directory"
    run = journey["runs"] / "dev" / "version_0"
    assert (run / "config.yaml").is_file() and (run / "export" / "spectralmoe.json").is_file()
    assert list(run.glob("metrics_val_*.json"))
    out, err = capfd.readouterr()
    err += caplog.text
    assert "run folder None" not in err and f"run folder {run}" in err
    # the bar: optimiser steps of the whole run, head and balance losses apart; no "Epoch 0/-2"
    assert "train step" in out and "1/1" in out and "head loss=" in out and "balance loss=" in out
    assert "Epoch" not in out
    # the fit summary: per-domain validation, files, next commands
    assert "validation mIoU (%)" in err and "siteB-reordered" in err and "export (for predict-scene)" in err
    assert "next:\n  spectralmoe test -c " in err and "spectralmoe predict-scene --checkpoint" in err


def test_domains_file_and_a_user_sensor_file_give_the_same_preparation(raw, tmp_path):
    """The same three domains from a ``--domains`` YAML, site B described by a sensor YAML file instead of
    ``--wavelengths``: the same band orders and tiles (relative paths in the file are the file's folder's)."""
    (raw / "sensor-b.yaml").write_text("name: sensor-b\nband_names: [NIR, R, G, B]\nwavelengths_um: [0.83, 0.665, "
                                       "0.56, 0.49]\nvalue_scale: 255\ngsd_m: 3.0\n")  # fmt: skip
    (raw / "domains.yaml").write_text(yaml.safe_dump({
        "classes": "classes.txt", "label_offset": 1, "holdout": 0.2, "batch_size": 2, "max_iters": 2,
        "domains": [{"name": "siteA", "images": "siteA/images", "labels": "siteA/labels"},
                    {"name": "siteB", "images": "siteB/images", "labels": "siteB/labels", "sensor": "sensor-b.yaml"},
                    {"name": "siteB-reordered", "images": "siteB-reordered/images",
                     "labels": "siteB-reordered/labels"}],
    }))  # fmt: skip
    assert main(["prepare", "folder", "--domains", str(raw / "domains.yaml"), "--out", str(tmp_path / "a"),
                 "--quiet"]) == 0  # fmt: skip
    assert main(prepare_args(raw, tmp_path / "b")) == 0
    a, b = PreparedIndex.load(tmp_path / "a"), PreparedIndex.load(tmp_path / "b")
    for name in ("siteA", "siteB", "siteB-reordered"):
        assert (a.options["domains"][name]["model_bands_from_file_bands"]
                == b.options["domains"][name]["model_bands_from_file_bands"])  # fmt: skip
    assert a.sensors["sensor-b"].gsd_m == 3.0 and a.options["domains"]["siteB"]["bands_from"].startswith("sensor")
    assert [t.image for t in a.tiles] == [t.image for t in b.tiles]
    (raw / "bad.yaml").write_text(yaml.safe_dump({"domains": [{"name": "x", "images": "../up", "labels": "l"}]}))
    assert main(["prepare", "folder", "--domains", str(raw / "bad.yaml"), "--out", str(tmp_path / "c")]) == 2
    assert "leaves the file's folder" in _CAPTURED.readouterr().err


def test_prepare_folder_reads_wavelength_metadata_as_predict_scene_does(raw, tmp_path):
    """Tiles without band descriptions whose metadata gives every band's wavelength (GDAL ``IMAGERY``
    ``CENTRAL_WAVELENGTH_UM``) are known bands, read by the same ``BandInfo`` as ``predict-scene`` uses; tiles
    whose metadata differ are refused."""
    tiles = sorted((raw / "siteB-reordered" / "images").glob("*.tif"))
    for k, tile in enumerate(tiles):
        with rasterio.open(tile) as src:
            bgrn = src.read()
        write_tile(tile, bgrn, k=10 + k, nodata=0)  # no descriptions
        with rasterio.open(tile, "r+") as dst:
            for band, wavelength in enumerate(("0.49", "0.56", "0.665", "0.83"), start=1):
                dst.update_tags(band, ns="IMAGERY", CENTRAL_WAVELENGTH_UM=wavelength)
    assert main(prepare_args(raw, tmp_path / "a")) == 0
    domain = PreparedIndex.load(tmp_path / "a").options["domains"]["siteB-reordered"]
    assert domain["bands_from"] == "wavelength metadata" and domain["model_bands_from_file_bands"] == [1, 2, 3, 4]
    with rasterio.open(tiles[0], "r+") as dst:
        dst.update_tags(4, ns="IMAGERY", CENTRAL_WAVELENGTH_UM="0.865")
    _refused(raw, tmp_path / "b", r"domain 'siteB-reordered': band wavelength metadata differ between")


def test_last_ckpt_holds_the_last_weights_when_the_best_came_earlier(journey, tmp_path):
    """Monitoring ``step`` in mode ``min`` makes the first validation the best forever: ``last.ckpt`` must still
    follow the run to its last step. Lightning's own ``ModelCheckpoint`` (the negative control, added next
    to ours) leaves its ``last.ckpt`` at the best step."""
    plain = tmp_path / "lightning"
    assert main(cli(journey, "fit", "last", "--trainer.max_steps", "3", "--trainer.val_check_interval", "1",
                    "--trainer.check_val_every_n_epoch", "null", "--checkpoint.monitor", "step", "--checkpoint.mode", "min",
                    "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                    f"--trainer.callbacks.dirpath={plain}", "--trainer.callbacks.monitor=step",
                    "--trainer.callbacks.mode=min", "--trainer.callbacks.save_last=true")) == 0  # fmt: skip
    ours = journey["runs"] / "last" / "version_0" / "checkpoints"
    step = {p.name: torch.load(p, weights_only=True, map_location="cpu")["global_step"] for p in ours.iterdir()}
    assert step.pop("last.ckpt") == 3 and list(step.values()) == [1]
    assert torch.load(plain / "last.ckpt", weights_only=True, map_location="cpu")["global_step"] == 1  # the trap
