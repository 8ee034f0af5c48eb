"""The sub-commands' parsers, importable without torch, so `dfmod-train --help` and every
`dfmod-train COMMAND --help` work on a machine without the training extra.

Each module here only declares arguments; `lazy("train.x")` imports the module that does the work when
the command runs, and a missing training dependency becomes one line that says how to install it.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

#: Modules of the `train` extra; a command that needs one that is missing says how to install it.
TRAIN_EXTRA = ("torch", "torchvision", "open_clip", "transformers", "peft", "safetensors", "huggingface_hub")
INSTALL_HINT = "pip install -e '.[train]'"


class MissingDependency(RuntimeError):
    """A command needs a package of the training extra that is not installed."""


def load(module: str) -> object:
    """Import `module`; a missing training dependency -> MissingDependency with the install line."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top in TRAIN_EXTRA:
            raise MissingDependency(f"this command needs {top}, which is not installed: {INSTALL_HINT}") from exc
        raise


def lazy(module: str, func: str = "run") -> Callable[[argparse.Namespace], int]:
    """A `func` for `set_defaults` that imports `module` only when the command runs."""

    def run(args: argparse.Namespace) -> int:
        return int(getattr(load(module), func)(args) or 0)

    run.__qualname__ = f"lazy({module}.{func})"
    return run
