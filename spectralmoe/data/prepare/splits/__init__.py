"""Split-list files shipped with the converters, and the helpers that read them (and the user's).

A split list is a UTF-8 text file with one entry per line: a scene / image ID (``S1``,
``GF2_PMS1__L1A0000564539-MSS1``) or a shell-style pattern (``S*``). ``#`` starts a comment;
blank lines are ignored. Lists decide *membership* only (source vs target, which images are
used): tile file names never depend on them, so changing a list and rerunning a converter
re-indexes the tiles already on disk without rewriting them.

Every default shipped here whose content no source could confirm carries ``UNVERIFIED`` in its
file name and says so in its header (see DATA.md §9); pass your own file to override it.

This package also holds the one helper the three converters of WHU-OHS, FBP and FLAIR share to
refuse resuming into a folder prepared with different content-changing options
(``guard_tile_options``).
"""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from spectralmoe.data.layout import atomic_write_bytes

SPLITS_DIR = Path(__file__).resolve().parent
TILE_OPTIONS_FILE = ".spectralmoe-tile-options.json"

PathLike = str | os.PathLike[str]


def shipped(name: str) -> Path:
    """Path of a list file shipped in this package (``FileNotFoundError`` if it is missing)."""
    path = SPLITS_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: shipped split list is missing (broken installation?)")
    return path


def read_id_list(path: PathLike) -> list[str]:
    """Entries of a split-list file (comments and blanks removed; first whitespace-separated word)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split-list file not found")
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            entries.append(text.split()[0])
    return entries


def read_table(path: PathLike, min_columns: int = 2) -> list[list[str]]:
    """Rows of a whitespace-separated table file (``#`` comments, blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: table file not found")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        row = text.split()
        if len(row) < min_columns:
            raise ValueError(f"{path}:{number}: expected at least {min_columns} columns, got {line!r}")
        rows.append(row)
    return rows


def matches(identifier: str, patterns: Sequence[str]) -> bool:
    """Whether ``identifier`` equals or (shell-style, case-sensitive) matches one of ``patterns``."""
    return any(identifier == p or fnmatch.fnmatchcase(identifier, p) for p in patterns)


def select(identifiers: Iterable[str], patterns: Sequence[str]) -> list[str]:
    """The identifiers matched by ``patterns``, in input order."""
    return [i for i in identifiers if matches(i, patterns)]


def unmatched_entries(identifiers: Iterable[str], patterns: Sequence[str]) -> list[str]:
    """Plain (non-pattern) entries of ``patterns`` that name no identifier: likely typos or missing files."""
    known = set(identifiers)
    return [p for p in patterns if not any(ch in p for ch in "*?[") and p not in known]


def guard_tile_options(out: PathLike, benchmark: str, options: dict[str, Any]) -> None:
    """Record the options that change tile *content* in ``out``; refuse a rerun with other values.

    Resuming skips tiles already on disk, so a rerun with e.g. another band selection would
    silently mix two kinds of tiles. Call this after ``PrepareRun`` has claimed ``out`` and
    before the first tile is written.
    """
    path = Path(out) / TILE_OPTIONS_FILE
    record = {"benchmark": benchmark, "options": json.loads(json.dumps(options))}
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: unreadable record of the previous run's options ({error})") from error
        if previous != record:
            old, new = previous.get("options", {}), record["options"]
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            details = "; ".join(f"{k}: was {old.get(k)!r}, now {new.get(k)!r}" for k in changed)
            raise ValueError(
                f"{out}: tiles already there were prepared with other options ({details or previous}); "
                f"rerun with the same options or prepare into a new, empty folder"
            )
        return
    atomic_write_bytes(path, (json.dumps(record, indent=1) + "\n").encode())
