"""The seven DG tasks of the paper and user-defined YAML tasks."""

from __future__ import annotations

import pytest
import yaml

from spectralmoe.bands import get_sensor
from spectralmoe.data.benchmarks import DG_TASKS, DGTask, load_task, task_names
from spectralmoe.data.transforms import build_train_transforms

EXPECTED = {  # name: (classes, benchmark, sensor, pipeline, max_iters, val_interval, eval batch, group by)
    "whu-ohs": (7, "whu-ohs", "ohs", "flip", 10945, 547, 4, "domain"),
    "fbp-cross-sensor": (24, "fbp-cross-sensor", "gf2", "A", 78760, 3938, 8, "sensor"),
    "fbp-cross-region": (24, "fbp-cross-region", "gf2", "A", 66160, 3308, 1, "region"),
    "flair": (12, "flair", "flair", "A", 77140, 7714, 4, "domain"),
    "loveda-rural2urban": (7, "loveda", "rgb", "B", 23580, 1179, 4, "domain"),
    "potsdam2vaihingen": (6, "potsdam-vaihingen", "potsdam-rgb", "B", 13680, 684, 4, "domain"),
    "openearthmap-europe": (8, "openearthmap", "rgb", "B", 20500, 1025, 4, "continent"),
}


def test_the_seven_tasks():
    assert sorted(DG_TASKS) == sorted(EXPECTED) == task_names()
    for name, (classes, benchmark, sensor, pipeline, iters, interval, eval_bs, group) in EXPECTED.items():
        task = DG_TASKS[name]
        assert task.name == name
        assert task.num_classes == classes == len(task.palette)
        assert (task.benchmark, task.source_sensors, task.train_pipeline) == (benchmark, (sensor,), pipeline)
        assert (task.max_iters, task.val_interval, task.eval_batch_size) == (iters, interval, eval_bs)
        assert task.target_group_by == group
        bands = get_sensor(sensor).num_bands
        assert len(task.mean) == len(task.std) == bands
        assert task.crop_size == 512 and task.batch_size == 4
        assert task.global_batch_size == (4 if name == "whu-ohs" else 8)


def test_statistics_in_file_band_order():
    # FBP / FLAIR: the authors' array order is the file order (NIR,R,G,B and R,G,B,NIR).
    assert DG_TASKS["fbp-cross-sensor"].mean == (110.714, 85.357, 88.594, 82.444)
    assert DG_TASKS["fbp-cross-region"].std == (73.937849, 65.736182, 64.700772, 63.703369)
    assert DG_TASKS["flair"].mean == (105.08, 110.87, 101.82, 106.38)
    assert DG_TASKS["flair"].published_mean is None
    # LoveDA / Potsdam / OEM: the printed lists were applied to cv2's B,G,R array -> reversed for R,G,B files.
    loveda = DG_TASKS["loveda-rural2urban"]
    assert loveda.published_mean == (123.675, 116.28, 103.53)
    assert loveda.mean == (103.53, 116.28, 123.675)
    assert loveda.std == (57.375, 57.12, 58.395)
    assert loveda.stats("published") == ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
    assert DG_TASKS["potsdam2vaihingen"].mean == loveda.mean
    oem = DG_TASKS["openearthmap-europe"]
    assert oem.mean == (100.838, 120.441, 118.246) and oem.std == (48.335, 44.578, 49.52)
    # WHU-OHS: raw / 10000, then mean 0 / std 1  ==  mean 0 / std 10000 on raw values.
    ohs = DG_TASKS["whu-ohs"]
    assert set(ohs.mean) == {0.0} and set(ohs.std) == {10000.0} and ohs.value_scale == 10000.0
    assert ohs.stats("published") == ohs.stats("authors")
    with pytest.raises(ValueError, match="stats"):
        ohs.stats("other")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(DG_TASKS))
def test_yaml_round_trip(name, tmp_path):
    path = tmp_path / f"{name}.yaml"
    DG_TASKS[name].to_yaml(path)
    assert load_task(path) == DG_TASKS[name]
    assert load_task(str(path)) == DG_TASKS[name]
    build_train_transforms(DG_TASKS[name])  # every task has a buildable pipeline


def test_user_task_from_yaml_with_extends(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "extends: loveda-rural2urban\n"
        "name: loveda-urban2rural\n"
        "target_group_by: all\n"
        "max_iters: 100\n"
        "val_interval: 10\n"
        "mean: [123.675, 116.28, 103.53]\n"
    )
    task = load_task(path)
    assert task.name == "loveda-urban2rural" and task.max_iters == 100 and task.target_group_by == "all"
    assert task.mean == (123.675, 116.28, 103.53)
    assert task.classes == DG_TASKS["loveda-rural2urban"].classes
    # A second file may extend the first.
    child = tmp_path / "child.yaml"
    child.write_text("extends: mine.yaml\nname: child\neval_batch_size: 2\n")
    assert load_task(child).eval_batch_size == 2 and load_task(child).max_iters == 100


def test_standalone_user_task(tmp_path):
    data = {
        "name": "toy", "benchmark": "toy", "classes": ["a", "b"], "palette": [[0, 0, 0], [255, 0, 0]],
        "source_sensors": ["gf2"], "mean": [1, 2, 3, 4], "std": [1, 1, 1, 1], "value_scale": 255,
        "train_pipeline": "A", "max_iters": 10, "val_interval": 5,
    }  # fmt: skip
    path = tmp_path / "toy.yml"
    path.write_text(yaml.safe_dump(data))
    task = load_task(path)
    assert task.num_classes == 2 and task.mean == (1.0, 2.0, 3.0, 4.0) and task.crop_size == 512
    assert load_task(data) == task
    assert load_task(task) is task


def _write(tmp_path, text: str):
    path = tmp_path / "bad.yaml"
    path.write_text("extends: flair\n" + text)
    return path


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("mean: [1, 2, 3]\n", "mean"),  # 3 values for the 4-band flair sensor
        ("std: [1, 2, 3, 0]\n", "std"),
        ("std: abc\n", "std"),
        ("palette: [[1, 2, 3]]\n", "palette"),
        ("palette: [[1, 2, 3, 4]]\n", "palette"),
        ("classes: building\n", "classes"),
        ("train_pipeline: C\n", "train_pipeline"),
        ("max_iters: 0\n", "max_iters"),
        ("batch_size: 2.5\n", "batch_size"),
        ("val_interval: 100000000\n", "val_interval"),
        ("value_scale: -1\n", "value_scale"),
        ("target_domains: []\n", "target_domains"),
        ("published_mean: [1]\n", "published_mean"),
        ("colour: red\n", "colour"),
    ],
)
def test_yaml_errors_name_the_field(tmp_path, text, field):
    with pytest.raises(ValueError, match=f"'?{field}'?"):
        load_task(_write(tmp_path, text))


def test_missing_fields_and_unknown_names(tmp_path):
    path = tmp_path / "partial.yaml"
    path.write_text("name: x\nbenchmark: y\n")
    with pytest.raises(ValueError, match="missing required field.*classes"):
        load_task(path)
    with pytest.raises(KeyError, match="whu-ohs"):
        load_task("no-such-task")
    with pytest.raises(FileNotFoundError):
        load_task(tmp_path / "absent.yaml")
    path.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_task(path)
    path.write_text("extends: no-such-task\nname: z\n")
    with pytest.raises(ValueError, match="extends"):
        load_task(path)


def test_dgtask_validates_in_python_too():
    with pytest.raises(ValueError, match="'palette'"):
        DGTask(name="t", benchmark="b", classes=("a",), palette=(), source_sensors=("rgb",), mean=(0, 0, 0),
               std=(1, 1, 1), value_scale=255, train_pipeline="B", max_iters=2, val_interval=1)  # fmt: skip
