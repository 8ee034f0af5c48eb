"""`dfmod-train fit`'s arguments; the work is `train.fit.run`, imported when it runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from train.commands import lazy
from train.recipes import DEFAULT_RECIPE, LR_SCHEDULES, PRECISIONS, RECIPES, SELECT_BY

#: (flag, FitConfig field, argparse kwargs) of every hyper-parameter flag; default None = "from the recipe".
_HP_FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--epochs", "epochs", {"type": int}),
    ("--batch-size", "batch_size", {"type": int}),
    ("--lr", "lr", {"type": float}),
    ("--lr-min", "lr_min", {"type": float}),
    ("--lr-schedule", "lr_schedule", {"choices": LR_SCHEDULES}),
    ("--warmup-epochs", "warmup_epochs", {"type": float}),
    ("--restart-epochs", "restart_epochs", {"type": float}),
    ("--weight-decay", "weight_decay", {"type": float}),
    ("--betas", "betas", {"type": float, "nargs": 2, "metavar": ("B1", "B2")}),
    ("--seed", "seed", {"type": int}),
    ("--ce-weight", "ce_weight", {"type": float}),
    ("--label-smoothing", "label_smoothing", {"type": float}),
    ("--uniformity-weight", "uniformity_weight", {"type": float}),
    ("--alignment-weight", "alignment_weight", {"type": float}),
    ("--slerp", "slerp", {"action": argparse.BooleanOptionalAction}),
    ("--slerp-range", "slerp_range", {"type": float, "nargs": 2, "metavar": ("T0", "T1")}),
    ("--augment", "augment", {"action": argparse.BooleanOptionalAction}),
    ("--flip-p", "flip_p", {"type": float}),
    ("--affine-degrees", "affine_degrees", {"type": float}),
    ("--affine-translate", "affine_translate", {"type": float, "nargs": 2, "metavar": ("X", "Y")}),
    ("--affine-scale", "affine_scale", {"type": float, "nargs": 2, "metavar": ("LO", "HI")}),
    ("--blur-p", "blur_p", {"type": float}),
    ("--blur-kernel", "blur_kernel", {"type": int, "nargs": 2, "metavar": ("W", "H")}),
    ("--blur-sigma", "blur_sigma", {"type": float, "nargs": 2, "metavar": ("LO", "HI")}),
    ("--jitter-brightness", "jitter_brightness", {"type": float}),
    ("--jitter-contrast", "jitter_contrast", {"type": float}),
    ("--jpeg-quality", "jpeg_quality", {"type": int, "nargs": 2, "metavar": ("LO", "HI")}),
    ("--select-by", "select_by", {"choices": SELECT_BY}),
    ("--early-stopping-patience", "early_stopping_patience", {"type": int}),
    ("--precision", "precision", {"choices": PRECISIONS}),
]


_HP_HELP = {
    "epochs": "training epochs",
    "batch_size": "crops per optimizer step",
    "lr": "peak learning rate",
    "lr_min": "final (and warmup start) learning rate",
    "lr_schedule": "learning-rate schedule, per step",
    "warmup_epochs": "linear warmup from lr-min, in epochs",
    "restart_epochs": "cosine-restarts cycle length, in epochs",
    "weight_decay": "AdamW weight decay of the head's weight matrix",
    "betas": "AdamW betas",
    "seed": "seed of batches, augmentation, slerp and random init",
    "ce_weight": "cross-entropy weight",
    "label_smoothing": "cross-entropy label smoothing",
    "uniformity_weight": "hypersphere uniformity loss weight",
    "alignment_weight": "label-aware alignment loss weight",
    "slerp": "replace features by same-class slerp interpolations",
    "slerp_range": "range of the slerp t",
    "augment": "image augmentations",
    "flip_p": "horizontal flip probability",
    "affine_degrees": "random rotation, degrees",
    "affine_translate": "random translation, fraction of size",
    "affine_scale": "random scale range",
    "blur_p": "Gaussian blur probability (1 = every image)",
    "blur_kernel": "Gaussian blur kernel, width height",
    "blur_sigma": "Gaussian blur sigma range",
    "jitter_brightness": "colour jitter brightness",
    "jitter_contrast": "colour jitter contrast",
    "jpeg_quality": "JPEG re-encoding quality range (100 100 = off)",
    "select_by": "metric that picks best.pt",
    "early_stopping_patience": "stop after this many epochs without a better best.pt (0 = never)",
    "precision": "bf16-mixed (autocast on CUDA) or 32",
}


def _recipe_default_help(key: str) -> str:
    vals = ", ".join(f"{name} {RECIPES[name].settings[key].value!r}" for name in RECIPES)
    return f"{_HP_HELP[key]} (default: the recipe's: {vals})"


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "fit", help="LN-tune a detector on prepared crops with a named recipe"
    )
    p.add_argument("--data", type=Path, required=True, help="prepared folder (manifest.jsonl) or manifest file")
    p.add_argument("--out", type=Path, required=True, help="run folder (run.json, history.json, last.pt, best.pt)")
    p.add_argument(
        "--arch",
        default=None,
        help="ViT-L-14 (paper), ViT-B-16, ViT-B-32, tiny (default: the --init/--resume checkpoint's, else ViT-L-14)",
    )
    p.add_argument(
        "--weights",
        default=None,
        help="openai | PATH to backbone weights | random-init (must be asked for by name) "
        "(default: openai for ViT-*, random-init for tiny)",
    )
    p.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default=None,
        help=f"named recipe; `python -m train.recipes --sources` cites every value "
        f"(default: {DEFAULT_RECIPE}, or the --init checkpoint's own hyper_parameters when imported)",
    )
    p.add_argument("--init", type=Path, default=None, help="start from this dfmod checkpoint (default: none)")
    for flag, key, kw in _HP_FLAGS:
        p.add_argument(flag, dest=key, default=None, help=_recipe_default_help(key), **kw)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR's run with its own settings")
    p.add_argument(
        "--allow-override",
        action="store_true",
        help="with --resume: let flags change the run's settings (recorded in history.json)",
    )
    p.add_argument("--overwrite", action="store_true", help="clear RUN_DIR's previous run (best.pt included) first")
    p.add_argument("--max-steps", type=int, default=None, help="stop (and save) after this many steps in all")
    p.add_argument("--eval-batch-size", type=int, default=256, help="validation batch size")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=lazy("train.fit"))
