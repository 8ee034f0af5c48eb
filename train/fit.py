"""`dfmod-train fit`: LN-tuning with the published recipe (DESIGN.md section 3) as defaults.

Only the visual tower's LayerNorms and the head train. Checkpoints (`save_checkpoint`) hold only those
parameters plus the config: ``RUN_DIR/last.pt`` at every epoch end (and when ``--max-steps`` stops the
run), ``RUN_DIR/best.pt`` for the best validation video AUROC when a ``val`` split exists.

Resumability: the optimizer moments, scheduler and RNG states are tensors and do not belong in the
deployable checkpoint, so they live in a sidecar ``RUN_DIR/last.state.pt`` whose name and sha256 are
recorded in ``last.pt``'s ``extra`` (with epoch/step). The batch order of an epoch, the augmentation of a
sample and the slerp draws of a step are pure functions of (seed, epoch, index/step), so a run resumed
from any saved point ends with the same parameters as one that was never interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from train import metrics
from train.augment import SeededTransform, eval_transform, sample_seed, train_transform
from train.data.dataset import CropDataset, collate
from train.evaluate import autocast_for, resolve_device, score_dataset
from train.losses import Objective
from train.model import normalise

STATE_NAME = "last.state.pt"


@dataclass
class FitConfig:
    """Every knob of a run; the defaults are the published recipe."""

    data: Path
    out: Path
    arch: str = "ViT-L-14"
    weights: str = "random-init"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 8e-5
    lr_min: float = 5e-5
    weight_decay: float = 0.0  # applies to the head's weight only; norms and biases never decay
    betas: tuple[float, float] = (0.9, 0.999)
    seed: int = 42
    label_smoothing: float = 0.0
    uniformity_weight: float = 0.5
    alignment_weight: float = 0.1
    slerp: bool = True
    augment: bool = True
    workers: int = 0
    device: str = "auto"
    resume: bool = False
    max_steps: int | None = None
    eval_batch_size: int = 256
    progress: bool = True

    def __post_init__(self) -> None:
        self.data, self.out = Path(self.data), Path(self.out)
        self.betas = (float(self.betas[0]), float(self.betas[1]))


@dataclass
class FitResult:
    run_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    steps: int
    epochs_completed: int
    history: list[dict[str, Any]] = field(default_factory=list)
    final_val: dict[str, float] | None = None


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def param_groups(detector: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: matrices decay, vectors (LayerNorm weights/biases, all biases) never do."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, p in detector.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def cosine_factor(step: int, total: int, lr: float, lr_min: float) -> float:
    """Multiplier of the base lr at `step`: cosine from lr to lr_min over `total` steps, then flat."""
    t = min(step, total) / max(total, 1)
    return (lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * t))) / lr


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch: a permutation seeded by (seed, epoch), cut into batches."""
    g = torch.Generator().manual_seed(sample_seed(seed, epoch, -1))
    perm = torch.randperm(n, generator=g).tolist()
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def _rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain numbers only, so the state file loads with weights_only=True."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [
            str(np_name),
            torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            int(np_pos),
            int(np_has_gauss),
            float(np_gauss),
        ],
        "python": [int(py_version), list(py_internal), py_gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, py_gauss = state["python"]
    random.setstate((version, tuple(internal), py_gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _config_dict(cfg: FitConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["data"], d["out"] = str(cfg.data), str(cfg.out)
    d["betas"] = list(cfg.betas)
    return d


class Trainer:
    """One run: builds (or resumes) the detector, optimizer and schedule, then loops."""

    def __init__(self, cfg: FitConfig) -> None:
        from train.checkpoint import load_checkpoint
        from train.factory import create_detector

        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        cfg.out.mkdir(parents=True, exist_ok=True)
        _seed_all(cfg.seed)
        self.augment: SeededTransform | None = train_transform(cfg.seed) if cfg.augment else None
        self.train_set = CropDataset(cfg.data, split="train", transform=self.augment or eval_transform)
        if len(self.train_set) == 0:
            raise ValueError(f"no training crops (split 'train') in {cfg.data}")
        val = CropDataset(cfg.data, split="val", transform=eval_transform)
        self.val_set = val if len(val) else None
        self.steps_per_epoch = math.ceil(len(self.train_set) / cfg.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.epochs

        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.best_metric = -math.inf
        self.epoch_loss_sum, self.epoch_samples = 0.0, 0  # running mean of the current epoch's loss
        self.history: list[dict[str, Any]] = []
        state: dict[str, Any] | None = None
        last = cfg.out / "last.pt"
        backbone = None if cfg.weights in ("random-init", "openai") else cfg.weights
        if cfg.resume and last.is_file():
            self.detector, meta = load_checkpoint(last, device=self.device, backbone_weights=backbone)
            state = self._read_state(meta)
        else:
            if cfg.resume:
                print(f"--resume: no {last}, starting a new run")
            self.detector = create_detector(cfg.arch, cfg.weights, device=self.device, seed=cfg.seed)
        self.detector.apply_ln_tuning()
        self.optimizer = torch.optim.AdamW(param_groups(self.detector, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: cosine_factor(s, self.total_steps, cfg.lr, cfg.lr_min)
        )
        self.objective = Objective(
            label_smoothing=cfg.label_smoothing,
            uniformity_weight=cfg.uniformity_weight,
            alignment_weight=cfg.alignment_weight,
            slerp=cfg.slerp,
        )
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            _set_rng_state(state["rng"])
            self.epoch, self.batch_in_epoch, self.step = (
                state["epoch"],
                state["batch_in_epoch"],
                state["step"],
            )
            self.best_metric = state["best_metric"]
            self.epoch_loss_sum, self.epoch_samples = state["epoch_loss_sum"], state["epoch_samples"]
            self.history = list(state["history"])

    def _read_state(self, meta: dict[str, Any]) -> dict[str, Any]:
        from train.factory import sha256_file

        extra = meta.get("extra", {})
        path = self.cfg.out / extra.get("resume_state", STATE_NAME)
        if not path.is_file():
            raise FileNotFoundError(f"{path} (optimizer/RNG state of last.pt) is missing; cannot resume exactly")
        if extra.get("resume_state_sha256") and sha256_file(path) != extra["resume_state_sha256"]:
            raise ValueError(f"{path} does not belong to {self.cfg.out / 'last.pt'} (sha256 mismatch)")
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        return state

    # -- checkpoints -----------------------------------------------------------------------------------

    def _save(self, val: dict[str, float] | None) -> None:
        from train.checkpoint import save_checkpoint
        from train.factory import sha256_file

        state_path = self.cfg.out / STATE_NAME
        tmp = state_path.with_suffix(".tmp")
        torch.save(
            {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": _rng_state(),
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "step": self.step,
                "best_metric": self.best_metric,
                "epoch_loss_sum": self.epoch_loss_sum,
                "epoch_samples": self.epoch_samples,
                "history": self.history,
            },
            tmp,
        )
        tmp.replace(state_path)
        extra = {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "total_steps": self.total_steps,
            "resume_state": STATE_NAME,
            "resume_state_sha256": sha256_file(state_path),
            "val": val,
        }
        save_checkpoint(self.cfg.out / "last.pt", self.detector, _config_dict(self.cfg), extra)

    def _validate(self) -> dict[str, float] | None:
        if self.val_set is None:
            return None
        scores = score_dataset(
            self.detector,
            self.val_set,
            self.device,
            self.cfg.eval_batch_size,
            self.cfg.workers,
            progress=self.cfg.progress,
            desc="val",
        )
        labels = np.asarray(self.val_set.labels)
        _, v_scores, v_labels = metrics.video_level(scores, labels, self.val_set.video_ids)
        return {
            "frame_auroc": metrics.auroc(scores, labels),
            "video_auroc": metrics.auroc(v_scores, v_labels),
            "video_ap": metrics.average_precision(v_scores, v_labels),
            "video_eer": metrics.eer(v_scores, v_labels)[0],
        }

    # -- loop --------------------------------------------------------------------------------------------

    def _loader(self, batches: list[list[int]]) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        loader = DataLoader(
            self.train_set,
            batch_sampler=batches,
            num_workers=self.cfg.workers,
            collate_fn=collate,
            pin_memory=self.device.startswith("cuda"),
        )
        yield from loader

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        x = normalise(images.permute(0, 2, 3, 1).to(self.device, non_blocking=True))
        y = labels.to(self.device)
        gen = torch.Generator().manual_seed(sample_seed(self.cfg.seed, -1, self.step))
        with autocast_for(self.device):
            feats = self.detector.features(x)
        loss, parts = self.objective(self.detector.head, feats.float(), y, generator=gen)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return parts

    def run(self) -> FitResult:
        cfg = self.cfg
        self.detector.train()
        stopped = self._reached_max_steps()
        val: dict[str, float] | None = None
        while self.epoch < cfg.epochs and not stopped:
            if self.augment is not None:
                self.augment.set_epoch(self.epoch)
            batches = epoch_batches(len(self.train_set), cfg.batch_size, cfg.seed, self.epoch)
            todo = batches[self.batch_in_epoch :]
            t0, seen = time.perf_counter(), 0
            if self.batch_in_epoch == 0:
                self.epoch_loss_sum, self.epoch_samples = 0.0, 0
            bar = tqdm(
                self._loader(todo),
                total=len(todo),
                disable=not cfg.progress,
                desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                unit="step",
            )
            for images, labels, _ in bar:
                parts = self._train_step(images, labels)
                self.step += 1
                self.batch_in_epoch += 1
                seen += images.shape[0]
                self.epoch_samples += images.shape[0]
                self.epoch_loss_sum += parts["total"] * images.shape[0]
                bar.set_postfix(loss=f"{parts['total']:.4f}", faces_s=f"{seen / (time.perf_counter() - t0):.1f}")
                if self._reached_max_steps():
                    stopped = True
                    break
            bar.close()
            epoch_done = self.batch_in_epoch >= len(batches)
            if epoch_done:
                val = self._validate()
                self.history.append(
                    {
                        "epoch": self.epoch + 1,
                        "step": self.step,
                        "loss": self.epoch_loss_sum / max(self.epoch_samples, 1),
                        "lr": self.scheduler.get_last_lr()[0],
                        "faces_per_s": seen / (time.perf_counter() - t0),
                        **(val or {}),
                    }
                )
                self.epoch += 1
                self.batch_in_epoch = 0
                if val is not None:
                    self._maybe_save_best(val)
            self._save(val if epoch_done else None)
        best = cfg.out / "best.pt"
        return FitResult(
            cfg.out,
            cfg.out / "last.pt",
            best if best.is_file() else None,
            self.step,
            self.epoch,
            self.history,
            val,
        )

    def _reached_max_steps(self) -> bool:
        return self.cfg.max_steps is not None and self.step >= self.cfg.max_steps

    def _maybe_save_best(self, val: dict[str, float]) -> None:
        """best.pt by validation video AUROC (frame AUROC when the video one is undefined)."""
        from train.checkpoint import save_checkpoint

        score = val["video_auroc"] if not math.isnan(val["video_auroc"]) else val["frame_auroc"]
        if math.isnan(score) or score <= self.best_metric:
            return
        self.best_metric = score
        extra = {"epoch": self.epoch, "step": self.step, "val": val, "selected_by": "val video AUROC"}
        save_checkpoint(self.cfg.out / "best.pt", self.detector, _config_dict(self.cfg), extra)


def fit(config: FitConfig) -> FitResult:
    """Train (or resume) a run; see the module docstring for what lands in `config.out`."""
    return Trainer(config).run()


def print_summary(result: FitResult) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"fit {result.run_dir}")
    for col in ("epoch", "step", "loss", "lr", "faces/s", "val frame AUROC", "val video AUROC"):
        table.add_column(col, justify="right")
    for h in result.history:

        def pct(key: str, row: dict[str, Any] = h) -> str:
            v = row.get(key)
            return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"

        table.add_row(
            str(h["epoch"]),
            str(h["step"]),
            f"{h['loss']:.4f}",
            f"{h['lr']:.2e}",
            f"{h['faces_per_s']:.1f}",
            pct("frame_auroc"),
            pct("video_auroc"),
        )
    Console().print(table)
    print(f"last: {result.last_checkpoint}" + (f"  best: {result.best_checkpoint}" if result.best_checkpoint else ""))


def register(subparsers: Any) -> None:
    d = FitConfig(data=Path("."), out=Path("."))
    p: argparse.ArgumentParser = subparsers.add_parser("fit", help="LN-tune a detector on prepared crops")
    p.add_argument("--data", type=Path, required=True, help="prepared folder (manifest.jsonl) or manifest file")
    p.add_argument("--arch", required=True, help="ViT-L-14 (paper), ViT-B-16, ViT-B-32, tiny")
    p.add_argument("--weights", default=d.weights, help="random-init | openai | PATH to backbone weights")
    p.add_argument("--out", type=Path, required=True, help="run folder (last.pt, best.pt)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lr-min", type=float, default=d.lr_min)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--uniformity-weight", type=float, default=d.uniformity_weight)
    p.add_argument("--alignment-weight", type=float, default=d.alignment_weight)
    p.add_argument("--slerp", action=argparse.BooleanOptionalAction, default=d.slerp)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=d.augment)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda[:N]")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument("--max-steps", type=int, default=None, help="stop (and save) after this many steps in all")
    p.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = FitConfig(
        data=args.data,
        out=args.out,
        arch=args.arch,
        weights=args.weights,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_min=args.lr_min,
        weight_decay=args.weight_decay,
        seed=args.seed,
        label_smoothing=args.label_smoothing,
        uniformity_weight=args.uniformity_weight,
        alignment_weight=args.alignment_weight,
        slerp=args.slerp,
        augment=args.augment,
        workers=args.workers,
        device=args.device,
        resume=args.resume,
        max_steps=args.max_steps,
        eval_batch_size=args.eval_batch_size,
        progress=args.progress,
    )
    result = fit(cfg)
    print_summary(result)
    (cfg.out / "history.json").write_text(json.dumps(result.history, indent=2, default=str) + "\n")
    return 0
