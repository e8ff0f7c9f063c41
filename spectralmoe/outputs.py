"""Output files that are whole or absent, replaced together, and never an input.

Why one module: every command that writes files (``predict-scene``, ``viz``, ``prepare``, exports,
checkpoints) must promise the same things, so the rules live here once:

* **Checked before any work.** ``OutputSet.check`` refuses — before a model is loaded or a pixel
  read — an output that is the same file as an input (also through a link), two outputs that are one
  file, an output that names a folder, a folder without write permission (a real probe file, so
  read-only mounts and ACLs count) and a file system without room for the estimated size.
* **Whole or absent.** Every file is written under a temporary sibling name and renamed into place.
* **Replaced together.** ``OutputSet.commit`` writes a small journal, keeps a hard link to every
  older output, renames each new file into place and only then drops the links and the journal. An
  exception (or Ctrl-C / SIGTERM) during the renames puts the older files back; a process killed
  outright (SIGKILL, power loss) leaves the journal, and the next run in that folder completes the
  replacement from it (every new file was complete before the journal was written).
* **Recognisable temporaries, swept.** Temporary names are
  ``.<name>.smoe-<kind>-<host>-<pid>-<token>``: a later run removes those whose process (same host)
  is gone, and nothing else — a live run's files and other people's files are never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Literal, Mapping

from spectralmoe.errors import InputError

__all__ = [
    "OutputSet",
    "OutputError",
    "atomic_open",
    "atomic_write_bytes",
    "owner_alive",
    "parse_temporary",
    "sweep_stale",
    "temporary_name",
    "temporary_path",
]

Kind = Literal["tmp", "old", "journal"]
#: Temporaries of another host are swept only when older than this (their owner cannot be asked).
FOREIGN_STALE_SECONDS = 24 * 3600
#: Extra room required beyond the estimated size (file-system metadata, GDAL overviews, previews).
SPACE_MARGIN = 1.05
_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname() or "host")[:40] or "host"
_PATTERN = re.compile(
    r"^\.(?P<name>.+)\.smoe-(?P<kind>tmp|old|journal)-(?P<host>[A-Za-z0-9._]+)-(?P<pid>\d+)-(?P<token>[0-9a-f]{8})"
    r"(?P<suffix>(?:\.[A-Za-z0-9]{1,8}){1,2})?$"  # writers that infer the format from the name keep a suffix
)


class OutputError(InputError):
    """An output path that cannot be written as asked (same as an input, not writable, no space…)."""


# ------------------------------------------------------------------------------------ temporaries
def temporary_name(name: str, kind: Kind = "tmp") -> str:
    """``.<name>.smoe-<kind>-<host>-<pid>-<token>``: hidden, unique, and recognisable by ``sweep_stale``."""
    return f".{name}.smoe-{kind}-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"


def temporary_path(target: str | os.PathLike[str], kind: Kind = "tmp") -> Path:
    """A fresh temporary sibling of ``target`` (not created)."""
    target = Path(target)
    return target.with_name(temporary_name(target.name, kind))


@dataclass(frozen=True)
class Temporary:
    """What a temporary's name says about it."""

    path: Path
    target: Path
    kind: str
    host: str
    pid: int


def parse_temporary(path: str | os.PathLike[str]) -> Temporary | None:
    """The parts of one of our temporary names, or ``None`` for any other name."""
    path = Path(path)
    match = _PATTERN.match(path.name)
    if match is None:
        return None
    return Temporary(path, path.with_name(match["name"]), match["kind"], match["host"], int(match["pid"]))


def owner_alive(temporary: Temporary) -> bool:
    """Whether the process that made ``temporary`` may still be running (unknown counts as alive,
    except for another host's files older than ``FOREIGN_STALE_SECONDS``)."""
    if temporary.host != _HOST:
        try:
            age = time.time() - temporary.path.lstat().st_mtime
        except OSError:
            return False
        return age < FOREIGN_STALE_SECONDS
    if temporary.pid == os.getpid():
        return True
    try:
        os.kill(temporary.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sweep_stale(folder: str | os.PathLike[str]) -> list[Path]:
    """Finish or remove what killed runs left in ``folder``; return the paths removed.

    A journal of a dead run is completed first (its new files renamed into place, its backups
    dropped), then every other temporary of a dead owner is deleted. Names that are not ours, and
    temporaries of live processes, are left alone. A missing or unreadable folder sweeps nothing."""
    folder = Path(folder)
    try:
        entries = [parse_temporary(p) for p in folder.iterdir()]
    except OSError:
        return []
    stale = [t for t in entries if t is not None and not owner_alive(t)]
    removed: list[Path] = []
    for journal in [t for t in stale if t.kind == "journal"]:
        _roll_forward(journal.path)
        removed.append(journal.path)
    for retired in [t for t in stale if t.kind == "old" and not t.target.exists() and t.path.exists()]:
        # killed between retiring the old copy and renaming the new one in (folders: exports):
        # the new one is complete when it exists (it is retired only then), else the old one returns
        newer = [t for t in stale if t.kind == "tmp" and t.target == retired.target and t.pid == retired.pid
                 and t.path.exists()]  # fmt: skip
        os.replace(newer[0].path if newer else retired.path, retired.target)
    for temporary in stale:
        if temporary.kind != "journal" and temporary.path.exists():
            _remove(temporary.path)
            removed.append(temporary.path)
    return removed


def _roll_forward(journal: Path) -> None:
    """Complete the replacement a killed ``commit`` recorded in ``journal``."""
    try:
        entries = json.loads(journal.read_text())["entries"]
    except (OSError, ValueError, KeyError, TypeError):
        journal.unlink(missing_ok=True)  # unreadable: it was being written, so no rename had started
        return
    for entry in entries:
        target, temporary, backup = (Path(entry[k]) if entry.get(k) else None for k in ("target", "temp", "backup"))
        if temporary is not None and target is not None and temporary.exists():
            os.replace(temporary, target)
        if backup is not None:
            backup.unlink(missing_ok=True)
    journal.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary handle on a recognisable temporary sibling of ``path``; when the block ends the data
    is fsynced and renamed onto ``path``, and on any error (Ctrl-C included) the temporary is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a recognisable temporary sibling and a rename."""
    with atomic_open(path) as handle:
        handle.write(data)


# ------------------------------------------------------------------------------------- the set
def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _existing_ancestor(path: Path) -> Path:
    current = path.absolute()
    while not current.exists():
        if current.parent == current:
            break
        current = current.parent
    return current


def _probe_writable(folder: Path, what: str) -> None:
    """Create and delete a probe file in ``folder`` (os.access misses read-only mounts and ACLs)."""
    probe = folder / temporary_name("write-probe")
    try:
        with open(probe, "wb"):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise OutputError(f"{what}: cannot write in {folder} ({reason})") from error
    finally:
        probe.unlink(missing_ok=True)


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} TB"


@dataclass
class OutputSet:
    """Files a command writes together. Usage::

        outputs = OutputSet({"map": Path("map.tif"), "preview": Path("map.png")},
                            inputs={"input": Path("scene.tif")}, sizes={"map": 1e9})
        outputs.check()                     # before any work; raises OutputError naming the path
        with outputs:                       # sweeps stale temporaries of earlier killed runs
            write(outputs.temporary("map")) # write each file to its temporary
            ...
            outputs.commit()                # all replaced together; an exception removes the temporaries

    Args:
        targets: name → final path (names appear in messages, e.g. ``--output``).
        inputs: name → path of every file the command reads (none may be an output).
        sizes: name → estimated bytes of that output (for the free-space check).
    """

    targets: Mapping[str, Path]
    inputs: Mapping[str, Path] = field(default_factory=dict)
    sizes: Mapping[str, float] = field(default_factory=dict)
    _temporaries: dict[str, Path] = field(default_factory=dict, init=False)
    _created_dirs: list[Path] = field(default_factory=list, init=False)
    _committed: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.targets = {name: Path(path) for name, path in self.targets.items()}
        self.inputs = {name: Path(path) for name, path in self.inputs.items() if path is not None}

    # ------------------------------------------------------------------------------- checks
    def check(self) -> None:
        """Refuse outputs that would overwrite an input or each other, folders, unwritable places and
        file systems without room for ``sizes`` — before anything is read or written."""
        seen: dict[Path, str] = {}
        for name, path in self.inputs.items():
            seen.setdefault(path.absolute(), name)
        for name, target in self.targets.items():
            for other_name, other in [*((n, p) for n, p in self.inputs.items()),
                                      *((n, p) for n, p in self.targets.items() if n != name)]:  # fmt: skip
                if target.exists() and other.exists() and _same_file(target, other) or (
                    target.absolute() == other.absolute() or target.resolve() == other.resolve()
                ):
                    role = "input" if other_name in self.inputs else "output"
                    raise OutputError(f"{name} {target} is the same file as the {role} {other_name} {other}; "
                                      "choose another output path")  # fmt: skip
            if target.is_dir():
                raise OutputError(f"{name} {target} is a folder; give a file path")
            if target.exists() and not os.access(target, os.W_OK):
                # replacing a read-only file would succeed (it is a rename); refusing is what people expect
                raise OutputError(f"{name} {target} exists and is read-only; remove it or choose another path")
            ancestor = _existing_ancestor(target.parent)
            if not ancestor.is_dir():
                raise OutputError(f"{name} {target}: {ancestor} is a file, not a folder")
            _probe_writable(ancestor, f"{name} {target}")
        self._check_space()

    def _check_space(self) -> None:
        needed: dict[int, tuple[Path, float, list[str]]] = {}
        for name, target in self.targets.items():
            size = float(self.sizes.get(name, 0.0))
            if size <= 0:
                continue
            folder = _existing_ancestor(target.parent)
            device = folder.stat().st_dev
            place, total, names = needed.get(device, (folder, 0.0, []))
            needed[device] = (place, total + size, [*names, name])
        for place, total, names in needed.values():
            free = shutil.disk_usage(place).free
            if free < total * SPACE_MARGIN:
                raise OutputError(
                    f"not enough free space in {place} for {', '.join(names)}: about {_human(total)} needed "
                    f"(uncompressed estimate), {_human(free)} free"
                )

    # --------------------------------------------------------------------------- writing
    def __enter__(self) -> "OutputSet":
        for folder in {t.parent for t in self.targets.values()}:
            sweep_stale(folder)
        return self

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        if not self._committed:
            self.abort()

    def temporary(self, name: str) -> Path:
        """The temporary path to write output ``name`` to (its folder is created)."""
        if name not in self._temporaries:
            target = self.targets[name]
            self._make_parent(target.parent)
            self._temporaries[name] = temporary_path(target)
        return self._temporaries[name]

    def _make_parent(self, folder: Path) -> None:
        missing = []
        current = folder.absolute()
        while not current.exists():
            missing.append(current)
            current = current.parent
        folder.mkdir(parents=True, exist_ok=True)
        self._created_dirs.extend(reversed(missing))

    def abort(self) -> None:
        """Remove every temporary and the folders this set created (only if left empty)."""
        for path in self._temporaries.values():
            _remove(path)
        self._temporaries.clear()
        for folder in reversed(self._created_dirs):
            try:
                folder.rmdir()
            except OSError:
                pass
        self._created_dirs.clear()

    def commit(self, order: Iterable[str] | None = None) -> None:
        """Rename every written temporary into place, together (see the module docstring).

        ``order``: names in the order to rename (default: insertion order); put the file whose
        presence means "the set is complete" (the map) last."""
        names = list(order) if order is not None else list(self._temporaries)
        missing = [n for n in names if n not in self._temporaries or not self._temporaries[n].exists()]
        if missing:
            raise RuntimeError(f"outputs {missing} were never written")
        for name in names:
            _fsync(self._temporaries[name])
        entries = [{"name": n, "target": str(self.targets[n].absolute()),
                    "temp": str(self._temporaries[n].absolute()),
                    "backup": str(temporary_path(self.targets[n], "old").absolute())} for n in names]  # fmt: skip
        journal = temporary_path(self.targets[names[-1]], "journal")
        atomic_write_bytes(journal, json.dumps({"entries": entries}).encode())
        done: list[dict[str, str]] = []
        try:
            for entry in entries:
                target, backup = Path(entry["target"]), Path(entry["backup"])
                if target.exists():
                    try:
                        os.link(target, backup)  # the older file stays in place until the rename
                    except OSError:
                        os.replace(target, backup)  # no hard links on this file system
                else:
                    entry["backup"] = ""
                done.append(entry)
                os.replace(entry["temp"], target)
        except BaseException:
            for entry in reversed(done):  # put the older files back (or remove the new ones)
                target = Path(entry["target"])
                if entry["backup"]:
                    os.replace(entry["backup"], target)
                elif not Path(entry["temp"]).exists():  # it was renamed into place: the name was new
                    target.unlink(missing_ok=True)
            for entry in entries:
                if entry["backup"]:
                    Path(entry["backup"]).unlink(missing_ok=True)
            journal.unlink(missing_ok=True)
            raise
        for entry in entries:
            if entry["backup"]:
                Path(entry["backup"]).unlink(missing_ok=True)
        journal.unlink(missing_ok=True)
        self._temporaries.clear()
        self._created_dirs.clear()
        self._committed = True


def _fsync(path: Path) -> None:
    if path.is_dir():
        return
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def iter_temporaries(folder: str | os.PathLike[str]) -> Iterator[Temporary]:
    """Our temporaries in ``folder`` (live or stale), for tests and diagnostics."""
    try:
        paths = list(Path(folder).iterdir())
    except OSError:
        return
    for path in paths:
        parsed = parse_temporary(path)
        if parsed is not None:
            yield parsed
