"""Output files that follow the user's umask, written atomically.

Why: every writer of the product (tiles, ``splits.json``, metrics, maps, figures, exports) writes
to a temporary sibling and renames it into place, so a reader never sees half a file. Python's
``tempfile.mkstemp`` / ``mkdtemp`` create those temporaries with mode 0600 / 0700 whatever the
umask, and a rename keeps the mode: maps and metrics would end up unreadable by a colleague or a
GIS server. Every temporary file or folder of the package is therefore made here and given the
mode a plain ``open()`` / ``mkdir()`` would have given it (0666 / 0777 minus the umask).
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Iterator

from spectralmoe.outputs import atomic_write_bytes, temporary_path

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "current_umask",
    "default_dir_mode",
    "default_file_mode",
    "follow_umask",
    "staging_folder",
    "temporary_sibling",
]

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux ``/proc``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # elsewhere: set and restore at once (the only portable way to read it)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def default_file_mode() -> int:
    """Mode of a file created by ``open(path, "w")`` under the current umask."""
    return 0o666 & ~current_umask()


def default_dir_mode() -> int:
    """Mode of a folder created by ``os.mkdir`` under the current umask."""
    return 0o777 & ~current_umask()


def follow_umask(path: str | os.PathLike[str]) -> None:
    """Give ``path`` (a file, or a folder and everything inside it) the umask's default mode."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        os.chmod(path, default_dir_mode())
        for child in path.rglob("*"):
            if not child.is_symlink():
                os.chmod(child, default_dir_mode() if child.is_dir() else default_file_mode())
    else:
        os.chmod(path, default_file_mode())


def temporary_sibling(path: str | os.PathLike[str], suffix: str = "") -> Path:
    """A new, empty temporary file next to ``path`` with the umask's mode, named as
    ``spectralmoe.outputs`` names temporaries (so a later run sweeps it if this one is killed); the
    caller writes it and ``os.replace``-s it onto ``path`` (or deletes it on failure). ``suffix`` is
    appended for writers that infer the format from the name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    tmp = tmp.with_name(tmp.name + suffix)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    os.close(fd)
    return tmp


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """For writers that take a file name (GDAL, Pillow, matplotlib): a new temporary sibling of
    ``path`` (``temporary_sibling``) to write; renamed onto ``path`` when the block ends, removed on
    any error (Ctrl-C included), so ``path`` is never half-written."""
    tmp = temporary_sibling(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def staging_folder(path: str | os.PathLike[str]) -> Path:
    """A new, empty temporary folder next to ``path`` with the umask's mode (for writing a folder
    as a whole and renaming it into place), named as ``spectralmoe.outputs`` names temporaries."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = temporary_path(path)
    folder.mkdir(mode=0o777)  # the umask applies, as for os.mkdir()
    return folder
