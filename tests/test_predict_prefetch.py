"""predict_scene with its background tile reader: same map as reading in turn; read errors propagate,
leave no file and stop the reader thread."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import spectralmoe.predict as predict_module
from spectralmoe.predict import predict_scene
from tests.test_predict import FAST, read, scene_array, tiny_model, write_scene


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_scene(tmp_path_factory.mktemp("scene") / "scene.tif", scene_array(seed=3))


def test_read_ahead_gives_the_same_map_as_reading_in_turn(model, scene, tmp_path):
    maps = {}
    for ahead in (0, 2):
        torch.manual_seed(0)
        summary = predict_scene(model, scene, tmp_path / f"map{ahead}.tif", read_ahead=ahead, batch_size=2,
                                probabilities=tmp_path / f"p{ahead}.tif", **FAST)  # fmt: skip
        maps[ahead] = (read(summary.output), read(tmp_path / f"p{ahead}.tif"))
        assert summary.tiles > 4
    assert np.array_equal(maps[0][0], maps[2][0])
    assert np.array_equal(maps[0][1], maps[2][1], equal_nan=True)
    with pytest.raises(ValueError, match="read_ahead"):
        predict_scene(model, scene, tmp_path / "x.tif", read_ahead=-1, **FAST)


def test_a_read_error_propagates_and_leaves_nothing(model, scene, tmp_path, monkeypatch):
    original = predict_module._tile_reader

    def failing_reader(*args, **kwargs):
        read_tile = original(*args, **kwargs)
        calls = {"n": 0}

        def read_or_fail(t):
            calls["n"] += 1
            if calls["n"] == 5:
                raise OSError("simulated read failure at tile 5")
            return read_tile(t)

        return read_or_fail

    monkeypatch.setattr(predict_module, "_tile_reader", failing_reader)
    with pytest.raises(OSError, match="tile 5"):
        predict_scene(model, scene, tmp_path / "map.tif", batch_size=2, **FAST)
    assert list(tmp_path.iterdir()) == []
    assert not [t for t in threading.enumerate() if t.name == "spectralmoe-reader"]
