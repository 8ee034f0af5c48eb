"""`dfmod-train describe`'s arguments; the work is `train.describe.run`, imported when it runs."""

from __future__ import annotations

from typing import Any

from train.arches import ARCHES, RANDOM_INIT
from train.commands import lazy


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("describe", help="parameter breakdown of an architecture under LN-tuning")
    p.add_argument("--arch", choices=sorted(ARCHES), default="ViT-L-14")
    p.add_argument("--weights", default=RANDOM_INIT, help="random-init (default) | openai | PATH")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=lazy("train.describe"))
