"""BackgroundReader: order, real overlap with the consumer, errors raised in the consumer, clean stop."""

from __future__ import annotations

import threading

import pytest

from spectralmoe.data.prefetch import BackgroundReader


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "spectralmoe-reader"]


@pytest.mark.parametrize("ahead", [0, 1, 3])
def test_yields_items_with_their_results_in_order(ahead):
    with BackgroundReader(range(20), lambda i: i * i, ahead=ahead) as pairs:
        assert list(pairs) == [(i, i * i) for i in range(20)]
    assert _reader_threads() == []


def test_the_next_item_is_read_while_the_consumer_works():
    # Deterministic overlap check: while the consumer holds item 0 it waits for read(1) to START.
    # Reading in turn (ahead=0) cannot do that, so the same wait times out there (negative control).
    for ahead, expect_overlap in ((2, True), (0, False)):
        started = {i: threading.Event() for i in range(3)}
        threads = []

        def read(i):
            threads.append(threading.current_thread().name)
            started[i].set()
            return i

        with BackgroundReader(range(3), read, ahead=ahead) as pairs:
            item, _ = next(pairs)
            assert item == 0
            assert started[1].wait(timeout=5 if expect_overlap else 0.2) is expect_overlap
            assert [i for i, _ in pairs] == [1, 2]
        assert set(threads) == ({"spectralmoe-reader"} if expect_overlap else {threading.current_thread().name})


def test_an_error_in_read_is_raised_in_the_consumer_after_the_good_items():
    def read(i):
        if i == 3:
            raise OSError("tile 3 unreadable")
        return i

    seen = []
    with pytest.raises(OSError, match="tile 3"):
        with BackgroundReader(range(10), read, ahead=2) as pairs:
            for item, _ in pairs:
                seen.append(item)
    assert seen == [0, 1, 2] and _reader_threads() == []


def test_leaving_early_stops_the_thread_before_returning():
    reads = []
    with BackgroundReader(range(1000), lambda i: reads.append(i) or i, ahead=2) as pairs:
        next(pairs)
    assert _reader_threads() == []
    count = len(reads)
    assert count <= 1 + 2 + 2  # consumed + queued + at most one in flight (+1 racing the stop)
    with pytest.raises(ValueError, match="ahead"):
        BackgroundReader([], lambda i: i, ahead=-1)
