"""Every writer's output follows the umask (temporaries are created 0600 by ``tempfile``): under umask
022 files are -rw-r--r-- and folders drwxr-xr-x; under 077 they stay private (the umask is followed, not
overridden)."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from spectralmoe.engine.metrics import summarize, write_report
from spectralmoe.files import atomic_write_bytes, current_umask, staging_folder, temporary_sibling


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def test_writers_follow_the_umask(umask, tmp_path):
    from spectralmoe.data.layout import write_image_tile, write_label_tile
    from spectralmoe.engine.class_maps import write_class_map
    from spectralmoe.viz import plot_confusion

    assert current_umask() == umask
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    atomic_write_bytes(tmp_path / "a" / "x.json", b"{}")
    write_image_tile(tmp_path / "t.tif", np.zeros((2, 4, 4), np.uint8))
    write_label_tile(tmp_path / "l.png", np.zeros((4, 4), np.uint8))
    json_path, csv_path = write_report(summarize({"d": np.eye(2, dtype=np.int64)}, ["a", "b"]), tmp_path / "m", "r")
    figure = plot_confusion(np.eye(2), ["a", "b"], tmp_path / "c.png")
    class_map = write_class_map(tmp_path / "map", np.zeros((4, 4), np.uint8), palette=[(1, 2, 3)], class_names=["a"])
    for path in (tmp_path / "a" / "x.json", tmp_path / "t.tif", tmp_path / "l.png", json_path, csv_path, figure,
                 class_map, temporary_sibling(tmp_path / "z")):  # fmt: skip
        assert _mode(path) == file_mode, (path, oct(_mode(path)))
    assert _mode(staging_folder(tmp_path / "s")) == dir_mode


def test_export_folder_follows_the_umask(umask, tmp_path):
    import torch

    from spectralmoe.engine.export import export_trainable
    from spectralmoe.models.factory import build_segmentor

    config = {"backbone": "tiny-dinov3", "adapter": "freeze", "head": "linear", "depth": None, "num_classes": 2}
    model = build_segmentor(**config, pretrained=False)
    torch.manual_seed(0)
    folder = export_trainable(model, tmp_path / "export", build_config=config)
    assert _mode(folder) == 0o777 & ~umask
    assert {_mode(p) for p in folder.iterdir()} == {0o666 & ~umask}


def test_atomic_path_renames_on_success_and_leaves_nothing_on_failure(tmp_path):
    """``files.atomic_path``: the target appears only whole; a failing writer leaves the older file and no
    temporary (what the tile, class-map and figure writers rely on)."""
    from spectralmoe.files import atomic_path

    target = tmp_path / "out" / "map.tif"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.exists() and not target.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer failed")
    assert target.read_bytes() == b"new" and sorted(p.name for p in target.parent.iterdir()) == ["map.tif"]
