"""Outputs replaced together or not at all: a failure during the renames, Ctrl-C/SIGTERM and SIGKILL of
``predict-scene`` leave the older set of outputs intact, and what a killed run leaves is swept (or its
replacement completed) by the next run — never someone else's file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from spectralmoe.outputs import parse_temporary, sweep_stale, temporary_path
from tests.robustness.conftest import FAST, PYTHON, leftovers, read_map, run, snapshot, subprocess_env


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def older_set(folder: Path) -> dict[str, tuple[int, str]]:
    """An older map, preview and probability raster (any bytes: they must come back unchanged)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("map.tif", "map.png", "prob.tif"):
        (folder / name).write_bytes(f"older {name}".encode() * 100)
    return snapshot(folder)


def command(export, scene, out):
    return ["predict-scene", "--checkpoint", str(export), "--input", str(scene), "--output", str(out / "map.tif"),
            "--probabilities", str(out / "prob.tif"), *FAST]  # fmt: skip


def test_stale_temporaries_of_dead_runs_are_swept_and_nothing_else(capsys, export, scene, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stale = temporary_path(out / "map.tif").with_name(f".map.tif.smoe-tmp-{_host()}-{dead_pid()}-0123abcd")
    stale.write_bytes(b"x" * 10000)
    live = out / f".prob.tif.smoe-tmp-{_host()}-{os.getppid()}-89abcdef"  # a running process (our parent)
    live.write_bytes(b"y")
    (out / ".hidden-notes").write_text("mine")
    (out / "prob.tif.tmp").write_text("someone else's")
    assert run(capsys, *command(export, scene, out)).rc == 0
    names = sorted(p.name for p in out.iterdir())
    assert stale.name not in names and live.name in names
    assert {".hidden-notes", "prob.tif.tmp", "map.tif", "map.png", "prob.tif"} <= set(names)


def _host() -> str:
    return parse_temporary(temporary_path(Path("x"))).host  # type: ignore[union-attr]


def test_a_killed_commit_is_completed_by_the_next_run(tmp_path):
    """A run killed between its renames left a journal: the next run in that folder finishes the
    replacement (all new files complete), so the set is never a mix of old and new."""
    pid = dead_pid()
    entries = []
    for name in ("prob.tif", "map.png", "map.tif"):
        target = tmp_path / name
        target.write_bytes(b"old " + name.encode())
        temp = target.with_name(f".{name}.smoe-tmp-{_host()}-{pid}-0000000{len(entries)}")
        temp.write_bytes(b"new " + name.encode())
        entries.append({"target": str(target), "temp": str(temp), "backup": ""})
    os.replace(entries[0]["temp"], entries[0]["target"])  # the kill came after the first rename
    journal = tmp_path / f".map.tif.smoe-journal-{_host()}-{pid}-00000009"
    journal.write_text(json.dumps({"entries": entries}))
    sweep_stale(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == {
        "prob.tif": b"new prob.tif", "map.png": b"new map.png", "map.tif": b"new map.tif"}


def test_a_failure_between_renames_puts_the_older_set_back(capsys, export, scene, tmp_path, monkeypatch):
    out = tmp_path / "out"
    before = older_set(out)
    real_replace = os.replace
    calls = {"n": 0}

    def failing_replace(source, target):
        if ".smoe-tmp-" in Path(source).name and Path(target).name in ("map.tif", "map.png", "prob.tif"):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(28, "No space left on device", str(target))
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", failing_replace)
    result = run(capsys, *command(export, scene, out))
    assert result.rc == 2 and "no space left" in result.err.lower() and "Traceback" not in result.err
    assert snapshot(out) == before and not leftovers(out)


def test_a_model_failure_midway_keeps_the_older_set(capsys, export, scene, tmp_path, monkeypatch):
    from spectralmoe import predict

    out = tmp_path / "out"
    before = older_set(out)

    def broken(scores, head):
        raise RuntimeError("simulated failure inside the model")

    monkeypatch.setattr(predict, "_to_probabilities", broken)
    with pytest.raises(RuntimeError, match="simulated"):  # a bug, not an input error: it propagates
        run(capsys, *command(export, scene, out))
    assert snapshot(out) == before and not leftovers(out)


def test_success_replaces_the_whole_older_set(capsys, export, scene, tmp_path):
    out = tmp_path / "out"
    before = older_set(out)
    assert run(capsys, *command(export, scene, out)).rc == 0
    after = snapshot(out)
    assert set(after) == set(before) and all(after[name] != before[name] for name in before)
    assert read_map(out / "map.tif").shape == (96, 120) and not leftovers(out)


# ------------------------------------------------------------------------------------- signals
#: predict-scene that pauses inside its tile loop (its temporaries exist) and says so by a file
PAUSING = r"""
import sys, time, pathlib
from spectralmoe import predict
ready, rest = pathlib.Path(sys.argv[1]), sys.argv[2:]
original = predict._to_probabilities
def pausing(scores, head):
    ready.touch()
    time.sleep(60)
    return original(scores, head)
predict._to_probabilities = pausing
from spectralmoe.cli import main
sys.exit(main(rest))
"""


def start_pausing(export, scene, out: Path, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    ready = tmp_path / "ready"
    process = subprocess.Popen([PYTHON, "-c", PAUSING, str(ready), *command(export, scene, out)],
                               env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while not ready.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "predict-scene never reached its tile loop"
        time.sleep(0.1)
    return process, ready


def test_sigterm_exits_143_and_leaves_the_older_set(export, scene, tmp_path):
    out = tmp_path / "out"
    before = older_set(out)
    process, _ = start_pausing(export, scene, out, tmp_path)
    assert leftovers(out), "the run should be writing its temporaries"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-3000:]
    assert "interrupted (SIGTERM)" in err and "Traceback" not in err
    assert snapshot(out) == before and not leftovers(out)


def test_sigkill_leaves_the_older_set_and_the_next_run_sweeps(capsys, export, scene, tmp_path):
    out = tmp_path / "out"
    before = older_set(out)
    process, _ = start_pausing(export, scene, out, tmp_path)
    process.kill()
    process.communicate(timeout=120)
    assert process.returncode == -signal.SIGKILL
    stale = leftovers(out)
    assert stale and {n: v for n, v in snapshot(out).items() if n in before} == before  # older set untouched
    assert run(capsys, *command(export, scene, out)).rc == 0
    assert not leftovers(out) and sorted(p.name for p in out.iterdir()) == ["map.png", "map.tif", "prob.tif"]
