"""Read ahead in a background thread, so that reading the next tiles overlaps with the model.

``predict_scene`` reads each batch of tiles from the raster, then runs the model on it; done in turn,
the model waits for the disk and GDAL's decompression, and the reader waits for the model. GDAL (via
rasterio) and torch both release the GIL, so one reader thread suffices to overlap them.

``BackgroundReader(items, read, ahead)`` is a context manager yielding ``(item, read(item))`` in order,
with ``read`` run by ONE background thread at most ``ahead`` items ahead of the consumer (so at most
``ahead`` read batches wait in memory). Only that thread calls ``read`` while the reader is open, so a
dataset handle used by ``read`` is never used from two threads at once. An exception in ``read`` is
re-raised in the consumer; leaving the ``with`` block (normally, by ``break`` or an exception) stops
the thread and waits for it, so the caller can close the file right after — enter the reader in the
same ``ExitStack`` AFTER the file it reads. ``ahead=0`` reads in the consumer's thread, in turn.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

__all__ = ["BackgroundReader"]

Item = TypeVar("Item")
Result = TypeVar("Result")

_DONE = object()
_POLL_S = 0.1


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class BackgroundReader(Generic[Item, Result]):
    """``(item, read(item))`` for each item, computed up to ``ahead`` items early in one thread."""

    def __init__(self, items: Iterable[Item], read: Callable[[Item], Result], ahead: int = 2,
                 name: str = "spectralmoe-reader") -> None:  # fmt: skip
        if ahead < 0:
            raise ValueError(f"ahead must be >= 0, got {ahead}")
        self._items = items
        self._read = read
        self.ahead = ahead
        self._name = name
        self._stop = threading.Event()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(ahead, 1))
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Iterator[tuple[Item, Result]]:
        if self.ahead == 0:
            return ((item, self._read(item)) for item in self._items)
        self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
        self._thread.start()
        return self._consume()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the thread and wait until it has left ``read`` (idempotent)."""
        self._stop.set()
        thread = self._thread
        if thread is None:
            return
        while thread.is_alive():
            self._drain()  # a full queue would keep the thread blocked in put()
            thread.join(_POLL_S)
        self._drain()
        self._thread = None

    # -- the two sides ---------------------------------------------------------------------------
    def _put(self, value: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(value, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for item in self._items:
                if self._stop.is_set():
                    return
                if not self._put((item, self._read(item))):
                    return
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(_Failure(error))
            return
        self._put(_DONE)

    def _consume(self) -> Iterator[tuple[Item, Result]]:
        while True:
            value = self._queue.get()
            if value is _DONE:
                return
            if isinstance(value, _Failure):
                raise value.error
            yield value  # type: ignore[misc]

    def _drain(self) -> None:
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
