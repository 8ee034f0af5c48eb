"""`dfmod-train describe`: what LN-tuning trains for an architecture, counted on the real module.

Builds the random-init detector (no download), so the numbers hold for any weights of that arch.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from train.commands.describe import register as register  # the parser is defined without torch
from train.factory import create_model
from train.model import parameter_breakdown


def render(breakdown: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    total = breakdown["total"]
    table = Table(title=f"{breakdown['arch']} ({breakdown['weights']}), feature dim {breakdown['feature_dim']}")
    table.add_column("group")
    table.add_column("params", justify="right")
    table.add_column("trainable", justify="right")
    table.add_column("% of total", justify="right")
    for group, count in breakdown["groups"].items():
        trainable = breakdown["trainable_groups"].get(group, 0)
        table.add_row(group, f"{count:,}", f"{trainable:,}", f"{100 * count / total:.3f}")
    table.add_section()
    table.add_row("total", f"{total:,}", f"{breakdown['trainable']:,}", "100.000")
    console = Console()
    console.print(table)
    console.print(
        f"LayerNorms: {breakdown['layernorm_count']}; frozen {breakdown['frozen']:,}; "
        f"trainable fraction of encoder {100 * breakdown['trainable_fraction_of_encoder']:.4f} %"
    )


def run(args: argparse.Namespace) -> int:
    detector = create_model(args.arch, args.weights)
    breakdown = parameter_breakdown(detector)
    if args.json:
        print(json.dumps(breakdown, indent=2))
    else:
        render(breakdown)
    return 0
