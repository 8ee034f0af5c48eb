"""Which frames of a video we look at: N evenly spaced ones (the paper samples 32 per video).

Training (`train prepare`) and serving import these same functions, so a video is sampled identically in
both; change them and bump PIPELINE_VERSION.
"""

from __future__ import annotations

import math


def even_indices(total: int, n: int) -> list[int]:
    """`n` evenly spaced frame indices over [0, total): the first and the last frame are always included.

    Equals ``numpy.linspace(0, total - 1, n)`` rounded half-up and deduplicated; all frames when total <= n.
    """
    if total <= 0 or n <= 0:
        return []
    if total <= n:
        return list(range(total))
    if n == 1:
        return [0]
    step = (total - 1) / (n - 1)
    picked = (min(total - 1, math.floor(i * step + 0.5)) for i in range(n))
    return sorted(set(picked))


def even_times(duration_s: float, n: int) -> list[float]:
    """`n` evenly spaced presentation times over [0, duration_s), for streams whose frame count is unknown.

    ``t_i = duration_s * i / n``: the first is 0 and the last lies one slot before the end, so every target
    has a frame at or after it even when the container rounds its duration up.
    """
    if n <= 0 or not math.isfinite(duration_s) or duration_s <= 0:
        return [0.0] if n > 0 else []
    return [duration_s * i / n for i in range(n)]
