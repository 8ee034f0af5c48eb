"""`dfmod-train`: one sub-command per step of the training workflow.

Each step's arguments live in `train.commands.<step>` (``register(subparsers)``), which imports nothing
heavy: the module that does the work (and torch) is imported only when the step runs, so ``--help`` works
on a machine without the training extra. Adding a step is one line here and one parser module.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

#: sub-command -> module that registers it (in workflow order).
COMMANDS: dict[str, str] = {
    "describe": "train.commands.describe",
    "prepare": "train.commands.prepare",
    "fit": "train.commands.fit",
    "evaluate": "train.commands.evaluate",
    "calibrate": "train.commands.calibrate",
    "export": "train.commands.export",
    "benchmark": "train.commands.benchmark",
    "import": "train.commands.import_release",
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dfmod")
    except PackageNotFoundError:
        from worker.core.version import __version__

        return __version__


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every option gets help text that shows its default (sub-commands included)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _show_defaults(sub)
            continue
        if action.help == argparse.SUPPRESS or not action.option_strings:
            continue
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        text = action.help or action.dest.replace("_", " ")
        if action.required:
            text += " (required)" if "required" not in text else ""
        elif "default" not in text and action.default not in (None, argparse.SUPPRESS):
            text += " (default: %(default)s)"
        elif "default" not in text:
            text += " (default: unset)"
        action.help = text


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage errors as one line too (argparse prints the whole usage block first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="dfmod-train", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks of errors (default: off)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)
    for module_name in COMMANDS.values():
        importlib.import_module(module_name).register(sub)
    for command in sub.choices.values():  # `dfmod-train fit ... --debug` works as well as `dfmod-train --debug fit`
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show Python tracebacks (default: off)"
        )
    _show_defaults(parser)
    return parser


def _one_line(exc: BaseException) -> str:
    """The error as one line: its message (which names the file), else its type."""
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror.lower()}"
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command. Errors become one line on stderr and exit code 1 (tracebacks with --debug)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"dfmod-train {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # user errors and environment problems alike: one line, unless asked for more
        if args.debug:
            raise
        print(f"dfmod-train {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
