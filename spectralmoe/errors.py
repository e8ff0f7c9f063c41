"""How failures reach the person at the terminal: one line naming the culprit, and the exit code.

Why one module: every command (and the commands other modules add to ``spectralmoe``) shares one
rule, applied once in ``spectralmoe.cli.main``:

* An *expected* failure — bad input (a file, a band, an argument), a refused output, no space, no
  permission — is printed as ``spectralmoe <command>: error: <message>`` (the message names the
  file / band / argument) and the command exits with status 2. ``--debug`` (or
  ``SPECTRALMOE_DEBUG=1``) shows the traceback as well.
* An interruption — Ctrl-C or SIGTERM (SLURM, ``docker stop``, ``kill``) — is handled the same way
  for both signals: the running command cleans up what it was writing and the process exits with
  130 (SIGINT) or 143 (SIGTERM), the shell's convention.
* Anything else is a bug: the traceback is printed and the exit status is 1.

Library code raises ``InputError`` (a ``ValueError``) for problems of the user's input so the CLI
can tell them from bugs; the standard ``ValueError``/``KeyError``/``OSError`` families raised with
a file name in their message are treated the same way.
"""

from __future__ import annotations

import contextlib
import errno
import numbers
import os
import signal
import sys
from typing import Any, Iterator

__all__ = [
    "EXIT_INPUT",
    "EXIT_SIGINT",
    "EXIT_SIGTERM",
    "InputError",
    "InputWarning",
    "Terminated",
    "check_finite",
    "check_int",
    "check_number",
    "debug_requested",
    "describe",
    "is_expected",
    "interrupts_raise",
    "received_signal",
    "warnings_as_lines",
    "yaml_problem",
]

#: Exit status of a refused input (argparse's convention for usage errors).
EXIT_INPUT = 2
#: Exit statuses after Ctrl-C / SIGTERM (128 + signal number, as shells report them).
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM


class InputError(ValueError):
    """A problem of the user's input (file, band, argument, output path); the message names it."""


class InputWarning(UserWarning):
    """Something in the input deserves a look but the result is still right (e.g. values far outside the
    model's band statistics); the CLI prints it as ``spectralmoe <command>: warning: <message>``."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's ``KeyboardInterrupt`` so every ``finally`` /
    ``except BaseException`` clean-up that handles Ctrl-C handles it too."""


#: Exception families that are the user's input, not our bugs (see ``is_expected``).
_EXPECTED: tuple[type[BaseException], ...] = (ValueError, KeyError, TypeError, OSError)


def _expected_types() -> tuple[type[BaseException], ...]:
    extra: list[type[BaseException]] = []
    import argparse

    extra.append(argparse.ArgumentError)
    with contextlib.suppress(ImportError):
        import yaml

        extra.append(yaml.YAMLError)
    if "torch" in sys.modules:  # out of memory is the user's size choice, not a bug
        import torch

        extra.append(torch.OutOfMemoryError)
    if "safetensors" in sys.modules:
        with contextlib.suppress(ImportError, AttributeError):
            from safetensors import SafetensorError

            extra.append(SafetensorError)
    return (*_EXPECTED, *extra)


def is_expected(error: BaseException) -> bool:
    """Whether ``error`` is a failure of the input (print one line) rather than a bug (print a traceback)."""
    if isinstance(error, (AssertionError, NotImplementedError, RecursionError)):
        return False
    return isinstance(error, _expected_types())


def describe(error: BaseException) -> str:
    """One line for ``error``: its message (a ``KeyError``'s without quotes), the file of an ``OSError``,
    and a hint for the two system failures people hit (no space left, no permission)."""
    import argparse

    if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
        text = error.args[0]
    elif isinstance(error, argparse.ArgumentError):
        text = str(error)
    elif isinstance(error, OSError) and error.strerror:
        names = " -> ".join(str(f) for f in (error.filename, error.filename2) if f is not None)
        text = f"{names}: {error.strerror}" if names else error.strerror
        if error.errno == errno.ENOSPC:
            text += " (no space left on the device: free some space or write elsewhere)"
        elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            text += " (no permission to write there: choose another output path)"
    else:
        text = str(error) or type(error).__name__
    if type(error).__name__ == "OutOfMemoryError":
        text = f"out of memory: {text.splitlines()[0] if text else ''} (use a smaller --batch-size or --tile)"
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    # the first line must carry the message alone; detail lines (lists of files) follow, indented
    return lines[0] if len(lines) == 1 else lines[0] + "".join(f"\n  {line}" for line in lines[1:])


def debug_requested(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--debug`` words, and whether one was there (or ``SPECTRALMOE_DEBUG`` is set)."""
    words = [w for w in argv if w != "--debug"]
    flag = len(words) != len(argv) or os.environ.get("SPECTRALMOE_DEBUG", "") not in ("", "0")
    return words, flag


@contextlib.contextmanager
def warnings_as_lines(prefix: str) -> Iterator[None]:
    """Print each ``InputWarning`` as one line ``<prefix>: warning: <message>`` (others as usual)."""
    import warnings

    with warnings.catch_warnings():
        default = warnings.showwarning

        def show(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
                 line: str | None = None) -> None:  # fmt: skip
            if issubclass(category, InputWarning):
                print(f"{prefix}: warning: {message}", file=sys.stderr if file is None else file)
            else:
                default(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        warnings.simplefilter("always", InputWarning)
        yield


def yaml_problem(path: object, error: BaseException) -> str:
    """One line for a YAML parse error: the file, line and column, and what the parser expected."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"{path}: not valid YAML{where} ({problem})"


_RECEIVED: list[int] = []


def received_signal() -> int | None:
    """The last SIGINT/SIGTERM received while ``interrupts_raise`` was active (``None``: none)."""
    return _RECEIVED[-1] if _RECEIVED else None


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """While active, SIGTERM raises ``Terminated`` in the main thread as Ctrl-C (SIGINT) raises
    ``KeyboardInterrupt``, and both are remembered (``received_signal``) — Lightning turns an
    interrupted ``fit`` into ``SystemExit(1)``, and the CLI still has to report which signal it was.
    The previous handlers come back afterwards. Outside the main thread it does nothing."""

    def handler(signum: int, frame: Any) -> None:
        _RECEIVED.append(signum)
        if signum == signal.SIGTERM:
            raise Terminated(f"received signal {signum} (SIGTERM)")
        raise KeyboardInterrupt

    _RECEIVED.clear()
    try:
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


# ------------------------------------------------------------------------------ argument checks
def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None,
              where: str = "") -> int:  # fmt: skip
    """``value`` as an ``int`` if it is an integer (``3`` or ``3.0``, not ``True``, ``2.5`` or ``"3"``) within
    ``[minimum, maximum]``; else an ``InputError`` naming ``name``."""
    prefix = f"{where}: " if where else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or (
        not isinstance(value, numbers.Integral) and not float(value).is_integer()
    ):
        raise InputError(f"{prefix}{name} must be an integer, got {value!r}")
    number = int(value)
    if minimum is not None and number < minimum:
        raise InputError(f"{prefix}{name} must be >= {minimum}, got {value!r}")
    if maximum is not None and number > maximum:
        raise InputError(f"{prefix}{name} must be <= {maximum}, got {value!r}")
    return number


def check_number(name: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
                 positive: bool = False, where: str = "") -> float:  # fmt: skip
    """``value`` as a finite ``float`` within ``[minimum, maximum]`` (``> 0`` with ``positive``); else an
    ``InputError`` naming ``name``."""
    prefix = f"{where}: " if where else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{prefix}{name} must be a number, got {value!r}")
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        raise InputError(f"{prefix}{name} must be finite, got {value!r}")
    if positive and number <= 0:
        raise InputError(f"{prefix}{name} must be > 0, got {value!r}")
    if minimum is not None and number < minimum:
        raise InputError(f"{prefix}{name} must be >= {minimum}, got {value!r}")
    if maximum is not None and number > maximum:
        raise InputError(f"{prefix}{name} must be <= {maximum}, got {value!r}")
    return number


def check_finite(name: str, values: Any, *, where: str = "") -> list[float]:
    """A sequence of finite numbers as floats; else an ``InputError`` naming ``name`` and the bad entries."""
    prefix = f"{where}: " if where else ""
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise InputError(f"{prefix}{name} must be a list of numbers, got {values!r}") from None
    bad = [i for i, v in enumerate(numbers) if v != v or v in (float("inf"), float("-inf"))]
    if bad:
        raise InputError(f"{prefix}{name} must be finite; entries {bad} are {[numbers[i] for i in bad]}")
    return numbers
