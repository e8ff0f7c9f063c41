"""Split-list and table files: the shipped defaults in ``splits/`` and the user's own.

A split list is a UTF-8 text file with one entry per line: a scene / image ID (``S1``,
``GF2_PMS1__L1A0000564539-MSS1``) or a shell-style pattern (``S*``). ``#`` starts a comment;
blank lines are ignored. Lists decide *membership* only (source vs target, which images are
used): tile file names never depend on them, so changing a list and rerunning a converter
re-indexes the tiles already on disk without rewriting them.

Every default shipped in ``splits/`` whose content no source could confirm carries
``UNVERIFIED`` in its file name and says so in its header (see DATA.md §9); pass your own file
to override it.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Iterable, Sequence

SPLITS_DIR = Path(__file__).resolve().parent / "splits"

PathLike = str | os.PathLike[str]


def shipped(name: str) -> Path:
    """Path of a list file shipped in ``splits/`` (``FileNotFoundError`` if it is missing)."""
    path = SPLITS_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: shipped split list is missing (broken installation?)")
    return path


def read_id_list(path: PathLike) -> list[str]:
    """Entries of a split-list file (comments and blanks removed; first whitespace-separated word)."""
    return [row[0] for row in _rows(Path(path), "split-list file", min_columns=1)]


def read_table(path: PathLike, min_columns: int = 2) -> list[list[str]]:
    """Rows of a whitespace-separated table file (``#`` comments, blank lines skipped)."""
    return _rows(Path(path), "table file", min_columns)


def _rows(path: Path, what: str, min_columns: int) -> list[list[str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
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
