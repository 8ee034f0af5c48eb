"""Frame sampling: N evenly spaced frames, endpoints included, no duplicates."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from worker.media.frame_times import even_indices, even_times


@pytest.mark.parametrize(("total", "n"), [(50, 32), (1000, 32), (33, 32), (7, 3), (100, 2), (12345, 17)])
def test_even_indices_count_endpoints_and_order(total: int, n: int) -> None:
    picked = even_indices(total, n)
    assert len(picked) == n
    assert picked[0] == 0 and picked[-1] == total - 1
    assert all(a < b for a, b in itertools.pairwise(picked))


@pytest.mark.parametrize(("total", "n"), [(50, 32), (1000, 32), (7, 3), (12345, 17)])
def test_even_indices_match_rounded_linspace(total: int, n: int) -> None:
    expected = np.unique(np.floor(np.linspace(0, total - 1, n) + 0.5).astype(int)).tolist()
    assert even_indices(total, n) == expected


def test_even_indices_spacing_is_even() -> None:
    gaps = np.diff(even_indices(1000, 32))
    assert gaps.max() - gaps.min() <= 1


@pytest.mark.parametrize(("total", "n"), [(30, 32), (32, 32), (1, 32), (5, 5)])
def test_even_indices_all_frames_when_too_few(total: int, n: int) -> None:
    assert even_indices(total, n) == list(range(total))


def test_even_indices_degenerate() -> None:
    assert even_indices(0, 32) == []
    assert even_indices(10, 0) == []
    assert even_indices(10, 1) == [0]


def test_even_times() -> None:
    times = even_times(2.0, 4)
    assert times == pytest.approx([0.0, 0.5, 1.0, 1.5])
    assert len(even_times(10.0, 32)) == 32
    assert max(even_times(10.0, 32)) < 10.0
    assert even_times(0.0, 5) == [0.0]
    assert even_times(3.0, 0) == []
