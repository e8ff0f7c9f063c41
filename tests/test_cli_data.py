"""`spectralmoe prepare` and `spectralmoe stats` through the command line."""

import json

import numpy as np

from spectralmoe.cli import main
from spectralmoe.data.datasets.prepared import PreparedDataset
from tests.data.fakes_ohs_fbp_flair import write_flair
from tests.data.fakes_rgb import write_loveda


def test_prepare_flair_from_zips_then_stats(tmp_path, capsys):
    raw = tmp_path / "raw"
    write_flair(raw, zipped=True)
    out = tmp_path / "flair"
    assert main(["prepare", "flair", "--raw", str(raw), "--out", str(out), "--quiet"]) == 0
    summary = capsys.readouterr().out
    assert "flair: 4 tiles (3 source, 1 target)" in summary
    dataset = PreparedDataset(out, split="source")
    assert dataset[0]["image"].shape[0] == 4  # R,G,B,NIR: elevation dropped by default

    assert main(["stats", "--data", str(out), "--split", "source", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["band_names"] == ["R", "G", "B", "NIR"]
    pixels = np.concatenate([dataset[i]["image"].reshape(4, -1).numpy() for i in range(len(dataset))], axis=1)
    assert np.allclose(stats["mean"], pixels.mean(axis=1), rtol=1e-5)
    assert np.allclose(stats["std"], pixels.std(axis=1), rtol=1e-4)


def test_prepare_options_and_refusals(tmp_path, capsys):
    raw = tmp_path / "raw"
    write_flair(raw)
    out = tmp_path / "flair5"
    assert main(["prepare", "flair", "--raw", str(raw), "--out", str(out), "--keep-elevation", "--quiet"]) == 0
    assert PreparedDataset(out)[0]["image"].shape[0] == 5
    capsys.readouterr()
    loveda_raw = tmp_path / "loveda_raw"
    write_loveda(loveda_raw)
    # an output folder that already holds FLAIR tiles is refused, with the reason on stderr
    assert main(["prepare", "loveda", "--raw", str(loveda_raw), "--out", str(out), "--quiet"]) == 2
    assert "prepared for 'flair'" in capsys.readouterr().err
