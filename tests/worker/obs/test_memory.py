"""MemoryTrimmer: glibc's malloc_trim on a timer, and nothing where it cannot run."""

from __future__ import annotations

import os
import threading

from worker.obs.memory import MemoryTrimmer, glibc_malloc_trim


def test_the_trim_runs_every_interval_until_stopped() -> None:
    calls: list[int] = []
    third = threading.Event()

    def trim() -> int:
        calls.append(1)
        if len(calls) >= 3:
            third.set()
        return 1

    trimmer = MemoryTrimmer(0.01, trim).start()
    assert third.wait(5)
    trimmer.stop()
    after_stop = len(calls)
    threading.Event().wait(0.05)
    assert len(calls) == after_stop and trimmer.trims == after_stop


def test_interval_zero_disables_it() -> None:
    trimmer = MemoryTrimmer(0.0, lambda: 1).start()
    assert not trimmer.active
    trimmer.stop()
    assert trimmer.trims == 0


def test_a_failing_trim_stops_the_trimmer_not_the_worker() -> None:
    def broken() -> int:
        raise OSError("no")

    trimmer = MemoryTrimmer(0.01, broken).start()
    assert trimmer._thread is not None
    trimmer._thread.join(5)
    assert not trimmer._thread.is_alive() and trimmer.trims == 0
    trimmer.stop()


def test_glibc_trim_is_found_and_callable_here() -> None:
    """The build machine and the worker image are glibc Linux: the real function must be found and run."""
    trim = glibc_malloc_trim()
    assert trim is not None
    trim()  # start from a trimmed heap
    # 40 MB in blocks far below glibc's mmap threshold stay in the heap after `del`; the trim must hand them back.
    blocks = [bytearray(4096) for _ in range(10_000)]
    blocks[0][0] = 1
    before = _rss_bytes()
    del blocks
    assert trim() == 1  # 1: memory was released
    assert before - _rss_bytes() > 20 * 1024 * 1024


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
