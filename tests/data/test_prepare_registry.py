"""The converter registry (``spectralmoe.data.prepare.PREPARERS``): what a command line builds its
``prepare`` flags from, so it must name every benchmark and match each converter's signature."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from spectralmoe.data.prepare import OPTION_TYPES, PREPARERS, Preparer

BENCHMARKS = ("whu-ohs", "fbp-cross-sensor", "fbp-cross-region", "flair", "loveda", "potsdam-vaihingen",
              "openearthmap")  # fmt: skip


def test_registry_lists_the_seven_benchmarks() -> None:
    assert sorted(PREPARERS) == sorted(BENCHMARKS)
    for name, preparer in PREPARERS.items():
        assert isinstance(preparer, Preparer) and preparer.name == name
        assert preparer.description.strip(), name


@pytest.mark.parametrize("name", BENCHMARKS)
def test_options_match_the_converter_signature(name: str) -> None:
    """prepare(raw, out, *, progress=True, **options) accepts exactly the registered options, with the
    registered defaults; every option has a CLI-buildable type, a default of that type (or None) and a help."""
    preparer = PREPARERS[name]
    params = inspect.signature(preparer.prepare).parameters
    kinds = {n: p.kind for n, p in params.items()}
    assert list(kinds)[:2] == ["raw", "out"]
    assert all(kinds[n] is inspect.Parameter.POSITIONAL_OR_KEYWORD for n in ("raw", "out"))
    assert inspect.Parameter.VAR_KEYWORD not in kinds.values() and inspect.Parameter.VAR_POSITIONAL not in kinds.values()
    keywords = {n: p.default for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert keywords.pop("progress") is True
    assert keywords == {option: default for option, (_, default, _) in preparer.options.items()}
    for option, (kind, default, help_text) in preparer.options.items():
        assert kind in OPTION_TYPES, (option, kind)
        assert default is None or (isinstance(default, kind) and (kind is not int or not isinstance(default, bool)))
        assert help_text.strip(), option


@pytest.mark.parametrize("name", BENCHMARKS)
def test_converter_records_its_registry_name(name: str) -> None:
    """The benchmark a converter writes into splits.json (and its output marker) is its registry name."""
    function = PREPARERS[name].prepare.load()  # type: ignore[attr-defined]
    module = sys.modules[function.__module__]
    names = getattr(module, "BENCHMARKS", None) or (module.BENCHMARK,)
    assert name in names
    assert len(module.CLASSES) == len(module.PALETTE)


def test_importing_the_registry_does_not_import_the_converters() -> None:
    code = ("import sys, spectralmoe.data.prepare as p; assert len(p.PREPARERS) == 7; "
            "print(sorted(m for m in ('torch', 'numpy', 'rasterio', 'spectralmoe.data.prepare.fbp') if m in sys.modules))")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_registry_call_reaches_the_converter(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="raw folder not found"):
        PREPARERS["loveda"].prepare(tmp_path / "no_such_raw", tmp_path / "out", progress=False)
    with pytest.raises(TypeError, match="tile_sise"):
        PREPARERS["openearthmap"].prepare(tmp_path, tmp_path / "out", progress=False, tile_sise=3)
    assert not (tmp_path / "out").exists()
