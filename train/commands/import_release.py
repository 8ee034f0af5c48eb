"""`dfmod-train import`'s arguments; the work is `train.released.command.run`, imported when it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from train.commands import lazy


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "import", help="import a released detector (model.ckpt, model.torchscript, GenD folder or hub repo id)"
    )
    p.add_argument("source", help="local file/folder, or a hub repo id such as yermandy/GenD_CLIP_L_14")
    p.add_argument("--out", type=Path, required=True, help="dfmod checkpoint to write")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit); default: main")
    p.add_argument("--file", default=None, help="hub/folder file to import, e.g. model.torchscript (default: detected)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=lazy("train.released.command"))
