"""Named training recipes: the published configurations, every value tied to the reference line it copies.

``paper`` is yermandy/deepfake-detection's ``run.py --train`` (the LN-tuning paper); ``gend`` is GenD's
main CLIP experiment ``wacv-LN+L2+UnAl`` (WACV 2026). A released Lightning ``model.ckpt`` records its
own ``hyper_parameters`` (the reference ``Config`` dumped by ``save_hyperparameters``);
``recipe_from_hparams`` turns those into a recipe, so fine-tuning an imported checkpoint defaults to the
settings it was trained with. ``fit`` flags override single values; the run folder records which.

``python -m train.recipes`` prints every value with its source.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DFDET = "yermandy/deepfake-detection@0b872f7"
GEND = "yermandy/GenD@e03532d"

#: Every key a recipe defines; `FitConfig` has one field per key.
HYPER_PARAMETERS: tuple[str, ...] = (
    "ce_weight",
    "label_smoothing",
    "uniformity_weight",
    "alignment_weight",
    "slerp",
    "slerp_range",
    "epochs",
    "batch_size",
    "lr",
    "lr_min",
    "lr_schedule",
    "warmup_epochs",
    "restart_epochs",
    "weight_decay",
    "betas",
    "seed",
    "augment",
    "flip_p",
    "affine_degrees",
    "affine_translate",
    "affine_scale",
    "blur_p",
    "blur_kernel",
    "blur_sigma",
    "jitter_brightness",
    "jitter_contrast",
    "jpeg_quality",
    "select_by",
    "early_stopping_patience",
    "precision",
)

LR_SCHEDULES = ("cosine", "cosine-restarts", "constant")
SELECT_BY = ("val_video_map", "val_video_auroc")
PRECISIONS = ("bf16-mixed", "32")


@dataclass(frozen=True)
class Setting:
    value: Any
    source: str


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    settings: Mapping[str, Setting]

    def values(self) -> dict[str, Any]:
        return {k: s.value for k, s in self.settings.items()}

    def sources(self) -> dict[str, str]:
        return {k: s.source for k, s in self.settings.items()}


def _s(value: Any, source: str) -> Setting:
    return Setting(value, source)


PAPER = Recipe(
    "paper",
    "deepfake-detection run.py get_train_config (CLIP ViT-L/14, LN-tuning, LinearNorm head)",
    {
        "ce_weight": _s(1.0, f"{DFDET} run.py:105 loss.ce_labels = 1.0"),
        "label_smoothing": _s(0.0, f"{DFDET} src/config.py:47 Loss.label_smoothing default"),
        "uniformity_weight": _s(0.0, f"{DFDET} src/config.py:51 Loss.uniformity default (run.py leaves it)"),
        "alignment_weight": _s(0.0, f"{DFDET} src/config.py:52 Loss.alignment_labels default (run.py leaves it)"),
        "slerp": _s(True, f"{DFDET} run.py:106; in place per class: src/model/dfdet.py:273-309"),
        "slerp_range": _s((0.0, 1.0), f"{DFDET} src/config.py:105 slerp_feature_augmentation_range"),
        "epochs": _s(10, f"{DFDET} run.py:113 max_epochs"),
        "batch_size": _s(128, f"{DFDET} run.py:108 batch_size = mini_batch_size"),
        "lr": _s(8e-5, f"{DFDET} run.py:110"),
        "lr_min": _s(5e-5, f"{DFDET} run.py:111 min_lr"),
        "lr_schedule": _s("cosine", f"{DFDET} run.py:109; per step, T_max = epochs x steps: dfdet.py:636-647"),
        "warmup_epochs": _s(0.0, f"{DFDET} src/model/dfdet.py:606-649 configures no warmup"),
        "restart_epochs": _s(None, f"{DFDET} (no restarts: plain CosineAnnealingLR, dfdet.py:641)"),
        "weight_decay": _s(0.0, f"{DFDET} run.py:112"),
        "betas": _s((0.9, 0.999), f"{DFDET} src/config.py:121"),
        "seed": _s(42, f"{DFDET} src/config.py:87"),
        "augment": _s(True, f"{DFDET} src/dataset/base.py:69-78 init_augmentations (always on for train)"),
        "flip_p": _s(0.5, f"{DFDET} src/dataset/base.py:72"),
        "affine_degrees": _s(10.0, f"{DFDET} src/dataset/base.py:73"),
        "affine_translate": _s((0.1, 0.1), f"{DFDET} src/dataset/base.py:73"),
        "affine_scale": _s((0.9, 1.1), f"{DFDET} src/dataset/base.py:73"),
        "blur_p": _s(1.0, f"{DFDET} src/dataset/base.py:74 (GaussianBlur outside RandomApply: every image)"),
        "blur_kernel": _s((3, 7), f"{DFDET} src/dataset/base.py:74 kernel_size=(3, 7): 3 wide x 7 high"),
        "blur_sigma": _s((0.1, 2.0), f"{DFDET} src/dataset/base.py:74"),
        "jitter_brightness": _s(0.1, f"{DFDET} src/dataset/base.py:75"),
        "jitter_contrast": _s(0.1, f"{DFDET} src/dataset/base.py:75"),
        "jpeg_quality": _s((40, 100), f"{DFDET} src/dataset/base.py:76"),
        "select_by": _s("val_video_map", f"{DFDET} run.py:53 monitor='val/mAP_video' (src/metrics.py:60)"),
        "early_stopping_patience": _s(0, f"{DFDET} run.py:51-54 (no EarlyStopping callback)"),
        "precision": _s("bf16-mixed", f"{DFDET} src/config.py:130"),
    },
)

_G_EXP = f"{GEND} src/exp/wacv_rebuttal.py"
_G_CFG = f"{GEND} src/config.py"

GEND_MAIN = Recipe(
    "gend",
    "GenD wacv-LN+L2+UnAl (wacv_rebuttal.py:41-48) over get_common() and run_exp.get_default_train_config()",
    {
        "ce_weight": _s(1.0, f"{_G_EXP}:46 Loss(ce_labels=1.0, ...)"),
        "label_smoothing": _s(0.0, f"{_G_CFG}:81 Loss.label_smoothing default"),
        "uniformity_weight": _s(0.5, f"{_G_EXP}:46 uniformity=0.5"),
        "alignment_weight": _s(0.1, f"{_G_EXP}:46 alignment_labels=0.1"),
        "slerp": _s(False, f"{GEND} src/model/GenD.py:194-205 (no slerp; src/config.py has no such option)"),
        "slerp_range": _s((0.0, 1.0), f"{GEND} unused (slerp off); kept at the deepfake-detection default"),
        "epochs": _s(30, f"{_G_EXP}:213 max_epochs = 30 (over run_exp.py:74)"),
        "batch_size": _s(128, f"{GEND} run_exp.py:69 batch_size = mini_batch_size = 128"),
        "lr": _s(3e-4, f"{GEND} run_exp.py:71"),
        "lr_min": _s(1e-5, f"{GEND} run_exp.py:72 min_lr"),
        "lr_schedule": _s("cosine-restarts", f"{_G_EXP}:210 'cyclic' = CosineAnnealingWarmRestarts, GenD.py:329-333"),
        "warmup_epochs": _s(1.0, f"{GEND} run_exp.py:75; LinearLR from min_lr/lr: GenD.py:336-345"),
        "restart_epochs": _s(10.0, f"{_G_EXP}:211 num_epochs_in_cycle = 10 (T_mult=1)"),
        "weight_decay": _s(0.0, f"{GEND} run_exp.py:73"),
        "betas": _s((0.9, 0.999), f"{_G_CFG}:183"),
        "seed": _s(0, f"{_G_EXP}:270,279 seeds 0-4 (the first)"),
        "augment": _s(True, f"{_G_CFG}:171 augmentations = Augmentations()"),
        "flip_p": _s(0.5, f"{_G_CFG}:108"),
        "affine_degrees": _s(10.0, f"{_G_CFG}:109"),
        "affine_translate": _s((0.1, 0.1), f"{_G_CFG}:110"),
        "affine_scale": _s((0.9, 1.1), f"{_G_CFG}:111"),
        "blur_p": _s(0.1, f"{_G_CFG}:112 gaussian_blur_prob; RandomApply: src/dataset/augmentations.py:29-37"),
        "blur_kernel": _s((7, 7), f"{_G_CFG}:113 gaussian_blur_kernel_size = 7"),
        "blur_sigma": _s((0.1, 2.0), f"{_G_CFG}:114"),
        "jitter_brightness": _s(0.1, f"{_G_CFG}:115"),
        "jitter_contrast": _s(0.1, f"{_G_CFG}:116"),
        "jpeg_quality": _s((40, 100), f"{_G_CFG}:117"),
        "select_by": _s("val_video_map", f"{_G_CFG}:202 monitor_metric = 'val/mAP_video'"),
        "early_stopping_patience": _s(30, f"{_G_EXP}:212; EarlyStopping: {GEND} run.py:92-100"),
        "precision": _s("bf16-mixed", f"{_G_CFG}:192"),
    },
)

RECIPES: dict[str, Recipe] = {r.name: r for r in (PAPER, GEND_MAIN)}
DEFAULT_RECIPE = "paper"


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}") from None


# -- released checkpoints' own hyper-parameters ----------------------------------------------------------

_SCHEDULES = {"cosine": "cosine", "cyclic": "cosine-restarts", None: "constant"}
_MONITORS = {"val/mAP_video": "val_video_map", "val/auroc_video": "val_video_auroc"}
_PRECISIONS = {"bf16-mixed": "bf16-mixed", "32": "32", "32-true": "32", 32: "32"}


def _pair(v: Any) -> tuple[Any, Any]:
    """A reference range ([a, b] or a scalar k meaning (k, k))."""
    if isinstance(v, list | tuple):
        return (v[0], v[1])
    return (v, v)


def settings_from_hparams(hp: Mapping[str, Any]) -> dict[str, Any]:
    """dfmod hyper-parameters from a reference ``Config`` dump; only the keys the dump holds.

    Field names: deepfake-detection src/config.py:44-145 and GenD src/config.py:78-212. Raises on a value
    dfmod cannot reproduce (an unknown scheduler, optimizer or monitored metric) rather than guessing.
    """
    out: dict[str, Any] = {}
    direct = {
        "seed": "seed",
        "lr": "lr",
        "min_lr": "lr_min",
        "weight_decay": "weight_decay",
        "max_epochs": "epochs",
        "batch_size": "batch_size",
        "warmup_epochs": "warmup_epochs",
        "num_epochs_in_cycle": "restart_epochs",
        "early_stopping_patience": "early_stopping_patience",
        "slerp_feature_augmentation": "slerp",
    }
    for ref, ours in direct.items():
        if ref in hp:
            out[ours] = hp[ref]
    if "betas" in hp:
        out["betas"] = _pair(hp["betas"])
    if "slerp_feature_augmentation_range" in hp:
        out["slerp_range"] = _pair(hp["slerp_feature_augmentation_range"])
    if "lr_scheduler" in hp:
        if hp["lr_scheduler"] not in _SCHEDULES:
            raise ValueError(f"hyper_parameters: lr_scheduler {hp['lr_scheduler']!r} has no dfmod equivalent")
        out["lr_schedule"] = _SCHEDULES[hp["lr_scheduler"]]
    if hp.get("optimizer", "AdamW") != "AdamW":
        raise ValueError(f"hyper_parameters: optimizer {hp['optimizer']!r} is not supported (AdamW only)")
    if "monitor_metric" in hp:
        if hp["monitor_metric"] not in _MONITORS or hp.get("monitor_metric_mode", "max") != "max":
            raise ValueError(f"hyper_parameters: monitor_metric {hp['monitor_metric']!r} is not supported")
        out["select_by"] = _MONITORS[hp["monitor_metric"]]
    if "precision" in hp and hp["precision"] in _PRECISIONS:
        out["precision"] = _PRECISIONS[hp["precision"]]
    loss = hp.get("loss")
    if isinstance(loss, Mapping):
        for ref, ours in (
            ("ce_labels", "ce_weight"),
            ("label_smoothing", "label_smoothing"),
            ("uniformity", "uniformity_weight"),
            ("alignment_labels", "alignment_weight"),
        ):
            if ref in loss:
                out[ours] = float(loss[ref])
    if "augmentations" in hp:  # GenD: configurable augmentations (None = off)
        aug = hp["augmentations"]
        out["augment"] = aug is not None
        if isinstance(aug, Mapping):
            for ref, ours in (
                ("random_horizontal_flip", "flip_p"),
                ("random_affine_degrees", "affine_degrees"),
                ("gaussian_blur_prob", "blur_p"),
                ("color_jitter_brightness", "jitter_brightness"),
                ("color_jitter_contrast", "jitter_contrast"),
            ):
                if ref in aug:
                    out[ours] = aug[ref]
            if aug.get("random_affine_translate") is not None:
                out["affine_translate"] = _pair(aug["random_affine_translate"])
            if aug.get("random_affine_scale") is not None:
                out["affine_scale"] = _pair(aug["random_affine_scale"])
            if "gaussian_blur_kernel_size" in aug:
                out["blur_kernel"] = _pair(aug["gaussian_blur_kernel_size"])
            if "gaussian_blur_sigma" in aug:
                out["blur_sigma"] = _pair(aug["gaussian_blur_sigma"])
            if "jpeg_quality" in aug:
                out["jpeg_quality"] = _pair(aug["jpeg_quality"])
    return out


def recipe_from_hparams(hp: Mapping[str, Any], origin: str) -> Recipe:
    """The recipe an imported checkpoint was trained with: its hyper-parameters over the matching base.

    A GenD dump (it has ``augmentations``) starts from ``gend``, a deepfake-detection one from ``paper``,
    whose augmentations are hard-coded rather than recorded; unrecorded values keep the base's source.
    """
    base = GEND_MAIN if "augmentations" in hp else PAPER
    settings = dict(base.settings)
    for key, value in settings_from_hparams(hp).items():
        settings[key] = Setting(value, f"{origin} hyper_parameters")
    return Recipe(f"imported:{base.name}", f"hyper_parameters of {origin} (unrecorded values: {base.name})", settings)


# -- printing ----------------------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if isinstance(v, tuple):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _summary_rows(r: Recipe) -> dict[str, str]:
    """The rows of issue 10's comparison table, from a recipe's values."""
    v = r.values()
    loss = " + ".join(
        f"{name} {v[key]:g}"
        for name, key in (("CE", "ce_weight"), ("uniformity", "uniformity_weight"), ("alignment", "alignment_weight"))
        if v[key]
    )
    slerp = (
        f"on, replaces the batch in place, t ~ U{list(v['slerp_range'])} per row within each class"
        if v["slerp"]
        else "off"
    )
    kw, kh = v["blur_kernel"]
    when = "every image" if v["blur_p"] >= 1 else f"p = {v['blur_p']:g}"
    sched = f"{v['lr']:g} {v['lr_schedule']} -> {v['lr_min']:g}"
    if v["warmup_epochs"]:
        sched += f", warmup {v['warmup_epochs']:g} epoch"
    if v["lr_schedule"] == "cosine-restarts":
        sched += f", restart every {v['restart_epochs']:g} epochs"
    return {
        "loss": loss,
        "slerp feature augmentation": slerp,
        "Gaussian blur": f"{when}, one {kw}-wide x {kh}-high kernel, sigma {tuple(v['blur_sigma'])}",
        "best checkpoint": {"val_video_map": "val video mAP (mean over both classes)"}.get(
            v["select_by"], v["select_by"]
        ),
        "lr / schedule / batch / epochs / seed": f"{sched} / {v['batch_size']} / {v['epochs']} / {v['seed']}",
        "AdamW / wd / betas": f"AdamW / {v['weight_decay']:g} / {tuple(v['betas'])}",
        "flip / affine / jitter / JPEG": " / ".join(
            (
                f"{v['flip_p']:g}",
                f"{v['affine_degrees']:g} deg, {tuple(v['affine_translate'])}, {tuple(v['affine_scale'])}",
                f"{v['jitter_brightness']:g}, {v['jitter_contrast']:g}",
                f"{tuple(v['jpeg_quality'])}",
            )
        ),
        "early stopping": f"patience {v['early_stopping_patience']}" if v["early_stopping_patience"] else "none",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.recipes", description="print the named recipes")
    parser.add_argument("--json", action="store_true", help="JSON instead of a table (default: table)")
    parser.add_argument("--sources", action="store_true", help="print each value's source line (default: off)")
    parser.add_argument("--issue-table", action="store_true", help="issue 10's comparison rows (default: off)")
    args = parser.parse_args(argv)
    if args.issue_table:
        rows = {n: _summary_rows(r) for n, r in RECIPES.items()}
        print("| item | " + " | ".join(f"dfmod now: --recipe {n}" for n in rows) + " |")
        print("| --- |" + " --- |" * len(rows))
        for item in rows[DEFAULT_RECIPE]:
            print(f"| {item} | " + " | ".join(rows[n][item] for n in rows) + " |")
        return 0
    if args.json:
        doc = {
            n: {k: {"value": s.value, "source": s.source} for k, s in r.settings.items()} for n, r in RECIPES.items()
        }
        print(json.dumps(doc, indent=2))
        return 0
    names = list(RECIPES)
    print("| setting | " + " | ".join(names) + " |")
    print("| --- |" + " --- |" * len(names))
    for key in HYPER_PARAMETERS:
        print(f"| {key} | " + " | ".join(_fmt(RECIPES[n].settings[key].value) for n in names) + " |")
    if args.sources:
        for n in names:
            print(f"\n{n}: {RECIPES[n].description}")
            for key in HYPER_PARAMETERS:
                print(f"  {key:24s} {_fmt(RECIPES[n].settings[key].value):14s} {RECIPES[n].settings[key].source}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
