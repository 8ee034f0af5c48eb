"""Each named recipe on a small learnable task (tiny ViT, CPU): the AUROC it reaches on held-out videos.

The task is the one of tests/train/test_fit.py: 224x224 crops of one image at random offsets plus noise,
"fake" crops carrying a planted 2-pixel checkerboard (amplitude ±20). Without ``--image`` the base
image is a procedural texture, so the command needs nothing outside the repository. It says whether a
recipe's optimisation trains at all on a toy model; it is not a deepfake benchmark.

    python -m train.recipes_bench                       # every recipe as published (arch tiny)
    python -m train.recipes_bench --lr 3e-2 --lr-min 3e-3 --no-augment   # the unit test's settings
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from train.data.manifest import CropRecord, write_manifest
from train.recipes import RECIPES

ARTEFACT_AMPLITUDE = 20


def base_image(path: Path | None, seed: int = 0) -> np.ndarray:
    """512x512 RGB: the given image, or a smooth procedural texture."""
    if path is not None:
        bgr = cv2.imread(str(path))
        if bgr is None:
            raise ValueError(f"{path}: not a readable image")
        return cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (512, 512))
    rng = np.random.default_rng(seed)
    layers = [cv2.resize(rng.integers(0, 256, (s, s, 3), dtype=np.uint8), (512, 512)) for s in (4, 16, 64)]
    return np.clip(sum(w * x.astype(np.float32) for w, x in zip((0.5, 0.3, 0.2), layers, strict=True)), 0, 255).astype(
        np.uint8
    )


def build_task(root: Path, base: np.ndarray, n_videos: int = 40, frames: int = 3, seed: int = 0) -> Path:
    """Even videos real, odd fake; 60 % train, 20 % val, 20 % test by video id (as test_fit.build_task)."""
    rng = np.random.default_rng(seed)
    grid = (((np.indices((224, 224)).sum(0) // 2) % 2 * 2 - 1) * ARTEFACT_AMPLITUDE)[..., None]
    records = []
    for v in range(n_videos):
        label = v % 2
        split = "train" if v < 0.6 * n_videos else "val" if v < 0.8 * n_videos else "test"
        x0, y0 = rng.integers(0, 512 - 224, 2)
        for f in range(frames):
            dx, dy = rng.integers(-8, 9, 2)
            x, y = int(np.clip(x0 + dx, 0, 288)), int(np.clip(y0 + dy, 0, 288))
            crop = base[y : y + 224, x : x + 224].astype(np.int16) + rng.integers(-20, 21, (224, 224, 3))
            if label:
                crop = crop + grid
            rel = f"crops/v{v:03d}/{f}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / rel), cv2.cvtColor(np.clip(crop, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
            records.append(CropRecord(rel, label, f"v{v:03d}", "synthetic", f, split))
    return write_manifest(root, records)


def run_recipe(name: str, data: Path, out: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    from train.evaluate import evaluate
    from train.fit import FitConfig, fit

    cfg = FitConfig.from_recipe(name, data, out, arch="tiny", device="cpu", progress=False, **overrides)
    t0 = time.perf_counter()
    result = fit(cfg)
    elapsed = time.perf_counter() - t0
    ckpt = result.best_checkpoint or result.last_checkpoint
    doc = evaluate(ckpt, data, out / "eval", split="test", device="cpu", plots=False)
    m = doc["metrics"]["all"]
    best_val = max((h.get("video_map") or math.nan for h in result.epochs), default=math.nan)
    return {
        "recipe": name,
        "epochs": cfg.epochs,
        "batch": cfg.batch_size,
        "lr": f"{cfg.lr:g}->{cfg.lr_min:g} {cfg.lr_schedule}",
        "augment": cfg.augment,
        "steps": result.steps,
        "best val video mAP": best_val,
        "test frame AUROC": m["frame"]["auroc"],
        "test video AUROC": m["video"]["auroc"],
        "test video mAP": m["video"]["map"],
        "test video EER(interp)": m["video"]["eer_interp"],
        "fit s": elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.recipes_bench", description=__doc__.splitlines()[0])
    p.add_argument("--recipes", nargs="+", default=sorted(RECIPES), help="recipes to run (default: all)")
    p.add_argument("--batch-size", type=int, default=24, help="the task has 72 training crops (default: 24)")
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    p.add_argument("--lr", type=float, default=None, help="default: the recipe's")
    p.add_argument("--lr-min", type=float, default=None, help="default: the recipe's")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="default: the recipe's (on)")
    p.add_argument("--image", type=Path, default=None, help="base image (default: procedural texture)")
    args = p.parse_args(argv)
    overrides: dict[str, Any] = {"batch_size": args.batch_size}
    for key in ("epochs", "lr", "lr_min"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if not args.augment:
        overrides["augment"] = False
    rows = []
    with tempfile.TemporaryDirectory(prefix="dfmod-recipes-bench-") as tmp:
        data = Path(tmp) / "task"
        build_task(data, base_image(args.image))
        for name in args.recipes:
            rows.append(run_recipe(name, data, Path(tmp) / f"run-{name}", overrides))
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + " --- |" * len(cols))
    for r in rows:
        cells = [f"{v:.4f}" if isinstance(v, float) and k != "fit s" else f"{v:.1f}" if k == "fit s" else str(v)
                 for k, v in r.items()]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
