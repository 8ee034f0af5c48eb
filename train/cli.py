"""`dfmod-train`: one sub-command per step of the training workflow.

Each step lives in its own module, which exposes ``register(subparsers)``; the module is imported only
when listed here, so adding a step is one line.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: sub-command -> module that registers it (in workflow order).
COMMANDS: dict[str, str] = {
    "describe": "train.describe",
    "prepare": "train.data.prepare",
    "fit": "train.fit",
    "evaluate": "train.evaluate",
    "calibrate": "train.calibrate",
    "export": "train.export",
    "import": "train.released.command",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dfmod-train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMANDS.values():
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
