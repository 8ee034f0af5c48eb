"""Split assignment by group (video, or FF++ pair): all frames of a video land on one side.

Preset splits (official FF++ lists, a manifest column) are kept; the remaining groups are shuffled with a
seeded RNG and cut by the requested fractions, so the same inputs and seed always give the same split.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from train.data.readers import MediaItem, with_split

SPLIT_NAMES = ("train", "val", "test")


def assign_splits(
    items: Sequence[MediaItem], val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 42
) -> list[MediaItem]:
    """Every item with a split; raises if one group already carries two different preset splits."""
    if not (val_fraction >= 0.0 and test_fraction >= 0.0 and val_fraction + test_fraction < 1.0):
        raise ValueError("fractions must be >= 0 and val + test < 1")
    preset: dict[str, str] = {}
    for it in items:
        if it.split is None:
            continue
        if it.split not in SPLIT_NAMES:
            raise ValueError(f"{it.path}: unknown split {it.split!r}")
        if preset.setdefault(it.group, it.split) != it.split:
            raise ValueError(f"group {it.group!r} is preset to both {preset[it.group]!r} and {it.split!r}")

    free = sorted({it.group for it in items if it.group not in preset})
    random.Random(seed).shuffle(free)
    n_test = round(len(free) * test_fraction)
    n_val = round(len(free) * val_fraction)
    chosen: dict[str, str] = dict(preset)
    for k, group in enumerate(free):
        chosen[group] = "test" if k < n_test else "val" if k < n_test + n_val else "train"
    return [with_split(it, chosen[it.group]) for it in items]


def check_no_leak(pairs: Sequence[tuple[str, str]]) -> None:
    """Raise if any key (video id or group) appears under two splits; `pairs` = (key, split)."""
    seen: dict[str, set[str]] = defaultdict(set)
    for key, split in pairs:
        seen[key].add(split)
    leaks = {k: sorted(v) for k, v in seen.items() if len(v) > 1}
    if leaks:
        some = dict(list(leaks.items())[:5])
        raise ValueError(f"{len(leaks)} videos/groups are in more than one split, e.g. {some}")
