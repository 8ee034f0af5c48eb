"""The one exception of the importers: a one-line message naming the file and, where known, the key."""

from __future__ import annotations

from pathlib import Path


class ReleaseError(ValueError):
    """A release that dfmod does not understand (or cannot read); nothing was written."""

    def __init__(self, file: str | Path, problem: str, key: str | None = None) -> None:
        self.file = str(file)
        self.key = key
        where = self.file + (f": key {key!r}" if key else "")
        super().__init__(f"{where}: {problem}".replace("\n", " "))
