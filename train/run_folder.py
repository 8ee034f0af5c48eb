"""What a run folder holds and the rules that keep it truthful.

A run folder is owned by one run: `fit` refuses a folder that already holds one unless it resumes it
(`--resume`) or replaces it (`--overwrite`, which removes every file listed in ``RUN_FILES`` first).
``run.json`` records the recipe, every effective value and where it came from; ``history.json`` grows by
one row as each epoch ends (written atomically), so a killed run keeps its finished epochs.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

RUN_JSON = "run.json"
HISTORY_JSON = "history.json"
#: Every file `fit` writes into a run folder (what `--overwrite` clears); the state file is per step.
RUN_FILES = ("last.pt", "best.pt", HISTORY_JSON, RUN_JSON)
STATE_GLOB = "last.state-*.pt"


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (a user error: the CLI prints one line)."""


def existing_run_files(out: Path) -> list[str]:
    found = [name for name in RUN_FILES if (out / name).exists()]
    return found + sorted(p.name for p in out.glob(STATE_GLOB)) if out.is_dir() else found


def claim(out: Path, resume: bool, overwrite: bool) -> list[str]:
    """Check that a run may use `out`; returns the previous run's files that `clear` must remove first.

    Checking and clearing are apart so `fit` can build everything that may still fail (weights, data)
    before an ``--overwrite`` removes the old run.
    """
    found = existing_run_files(out)
    if resume:
        if overwrite:
            raise RunFolderError("--resume and --overwrite contradict each other")
        if found and "last.pt" not in found:
            raise RunFolderError(f"{out}: holds {', '.join(found)} but no last.pt; nothing to resume from")
        return []
    if found and not overwrite:
        raise RunFolderError(
            f"{out}: already holds a run ({', '.join(found)}); pass --resume to continue it "
            "or --overwrite to replace it"
        )
    return found


def clear(out: Path, names: list[str]) -> None:
    for name in names:
        (out / name).unlink(missing_ok=True)


def json_safe(obj: Any) -> Any:
    """NaN/inf -> null, tuples -> lists, Paths -> str, so the files are strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: Path, doc: Any) -> None:
    """Atomic write (temp file + rename): a reader or a kill never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(json_safe(doc), indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def conflicts(stored: dict[str, Any], requested: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (stored, requested)} for every requested value that differs from the stored run's.

    Values are compared after a JSON round trip, so (0.9, 0.999) equals the stored [0.9, 0.999].
    """
    out: dict[str, tuple[Any, Any]] = {}
    for key, value in requested.items():
        if key in stored and json_safe(value) != json_safe(stored[key]):
            out[key] = (stored[key], value)
    return out
