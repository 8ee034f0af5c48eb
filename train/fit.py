"""`dfmod-train fit`: LN-tuning with a named recipe (`train.recipes`; default ``paper``).

Only the visual tower's LayerNorms and the head train. Checkpoints (`save_checkpoint`) hold only those
parameters plus the config: ``RUN_DIR/last.pt`` at every epoch end (and when ``--max-steps`` stops the
run), ``RUN_DIR/best.pt`` for the best validation score named by the recipe's ``select_by`` (the
reference's ``val/mAP_video``: the mean over both classes of the video-level average precision).

The run folder tells the truth (`train.run_folder`): ``run.json`` holds the recipe, every effective value
and its source; ``history.json`` grows as each epoch ends; a used folder is refused unless resumed or
overwritten; ``--resume`` restores the run's own hyper-parameters and refuses flags that contradict them
unless ``--allow-override`` is given (the change is then recorded in ``history.json``).

Resumability: the optimizer moments, scheduler and RNG states are tensors and do not belong in the
deployable checkpoint, so they live in a sidecar ``RUN_DIR/last.state-<step>.pt`` whose name and sha256 are
recorded in ``last.pt``'s ``extra`` (with epoch/step). The batch order of an epoch, the augmentation of a
sample and the slerp draws of a step are pure functions of (seed, epoch, index/step), so a run resumed
from any saved point ends with the same parameters as one that was never interrupted.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from train import metrics, run_folder
from train.augment import AugmentSettings, SeededTransform, eval_transform, sample_seed, train_transform
from train.commands.fit import _HP_FLAGS
from train.commands.fit import register as register  # the parser is defined without torch
from train.data.dataset import CropDataset, collate
from train.evaluate import autocast_for, resolve_device, score_dataset
from train.losses import Objective
from train.model import normalise
from train.recipes import (
    DEFAULT_RECIPE,
    HYPER_PARAMETERS,
    LR_SCHEDULES,
    PAPER,
    PRECISIONS,
    SELECT_BY,
    Recipe,
    get_recipe,
    recipe_from_hparams,
)

STATE_PREFIX = "last.state-"
#: Architectures with published OpenAI weights: `fit` uses them unless told otherwise.
PRETRAINED_ARCHES = ("ViT-L-14", "ViT-B-16", "ViT-B-32")
#: What identifies a run besides its hyper-parameters; a resume may not change these silently either.
IDENTITY = ("data", "arch", "weights", "recipe", "init")
_P = PAPER.values()


@dataclass
class FitConfig:
    """Every knob of a run. Hyper-parameter defaults are the ``paper`` recipe; `from_recipe` picks another."""

    data: Path
    out: Path
    arch: str = "ViT-L-14"
    weights: str | None = None  # None: OpenAI weights for a CLIP arch, random-init for `tiny`
    recipe: str = DEFAULT_RECIPE
    init: Path | None = None  # start from this dfmod checkpoint's trained parameters
    # -- hyper-parameters: one per train.recipes.HYPER_PARAMETERS key
    ce_weight: float = _P["ce_weight"]
    label_smoothing: float = _P["label_smoothing"]
    uniformity_weight: float = _P["uniformity_weight"]
    alignment_weight: float = _P["alignment_weight"]
    slerp: bool = _P["slerp"]
    slerp_range: tuple[float, float] = _P["slerp_range"]
    epochs: int = _P["epochs"]
    batch_size: int = _P["batch_size"]
    lr: float = _P["lr"]
    lr_min: float = _P["lr_min"]
    lr_schedule: str = _P["lr_schedule"]
    warmup_epochs: float = _P["warmup_epochs"]
    restart_epochs: float | None = _P["restart_epochs"]
    weight_decay: float = _P["weight_decay"]  # matrices only (the head's weight); norms and biases never decay
    betas: tuple[float, float] = _P["betas"]
    seed: int = _P["seed"]
    augment: bool = _P["augment"]
    flip_p: float = _P["flip_p"]
    affine_degrees: float = _P["affine_degrees"]
    affine_translate: tuple[float, float] = _P["affine_translate"]
    affine_scale: tuple[float, float] = _P["affine_scale"]
    blur_p: float = _P["blur_p"]
    blur_kernel: tuple[int, int] = _P["blur_kernel"]
    blur_sigma: tuple[float, float] = _P["blur_sigma"]
    jitter_brightness: float = _P["jitter_brightness"]
    jitter_contrast: float = _P["jitter_contrast"]
    jpeg_quality: tuple[int, int] = _P["jpeg_quality"]
    select_by: str = _P["select_by"]
    early_stopping_patience: int = _P["early_stopping_patience"]
    precision: str = _P["precision"]
    # -- run control: how this process runs, never part of the run's identity
    workers: int = 0
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    allow_override: bool = False
    max_steps: int | None = None
    eval_batch_size: int = 256
    progress: bool = True

    def __post_init__(self) -> None:
        self.data, self.out = Path(self.data), Path(self.out)
        self.init = Path(self.init) if self.init is not None else None
        for name in ("slerp_range", "betas", "affine_translate", "affine_scale", "blur_sigma"):
            a, b = getattr(self, name)
            setattr(self, name, (float(a), float(b)))
        for name in ("blur_kernel", "jpeg_quality"):
            a, b = getattr(self, name)
            setattr(self, name, (int(a), int(b)))
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, not {self.lr_schedule!r}")
        if self.lr_schedule == "cosine-restarts" and not self.restart_epochs:
            raise ValueError("lr_schedule 'cosine-restarts' needs restart_epochs > 0")
        if self.select_by not in SELECT_BY:
            raise ValueError(f"select_by must be one of {SELECT_BY}, not {self.select_by!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        if any(k % 2 == 0 or k < 1 for k in self.blur_kernel):
            raise ValueError(f"blur_kernel sizes must be odd and positive, not {self.blur_kernel}")

    @classmethod
    def from_recipe(cls, recipe: Recipe | str, data: Path, out: Path, **overrides: Any) -> FitConfig:
        """The recipe's values, then `overrides` (any field) on top."""
        r = get_recipe(recipe) if isinstance(recipe, str) else recipe
        return cls(data=data, out=out, **{"recipe": r.name, **r.values(), **overrides})

    def hyper_parameters(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in HYPER_PARAMETERS}

    def augment_settings(self) -> AugmentSettings:
        return AugmentSettings(
            **{f.name: getattr(self, f.name) for f in fields(AugmentSettings)}  # same names by design
        )


def default_weights(arch: str) -> str:
    """OpenAI weights for the CLIP architectures (the method's backbone), random-init for test arches."""
    return "openai" if arch in PRETRAINED_ARCHES else "random-init"


@dataclass
class FitResult:
    run_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    steps: int
    epochs_completed: int
    history: list[dict[str, Any]] = field(default_factory=list)
    final_val: dict[str, float] | None = None

    @property
    def epochs(self) -> list[dict[str, Any]]:
        return [h for h in self.history if h.get("event", "epoch") == "epoch"]


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


def lr_factor(step: int, cfg: FitConfig, steps_per_epoch: int) -> float:
    """Multiplier of the base lr after `step` optimizer steps, as the reference's schedulers give it.

    Optional linear warmup from lr_min to lr over ``warmup_epochs`` (GenD.py:336-345, LinearLR with
    start_factor = min_lr / lr, chained by SequentialLR), then ``cosine`` (CosineAnnealingLR over all
    epochs, dfdet.py:640-641), ``cosine-restarts`` (CosineAnnealingWarmRestarts, T_0 = restart_epochs,
    T_mult = 1, GenD.py:329-333) or ``constant``; every cosine ends at lr_min.
    """
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        start = cfg.lr_min / cfg.lr
        return start + (1.0 - start) * step / warmup
    k = step - warmup
    if cfg.lr_schedule == "constant":
        return 1.0
    if cfg.lr_schedule == "cosine":
        return cosine_factor(k, cfg.epochs * steps_per_epoch, cfg.lr, cfg.lr_min)
    cycle = max(int((cfg.restart_epochs or 0) * steps_per_epoch), 1)
    return cosine_factor(k % cycle, cycle, cfg.lr, cfg.lr_min)


def _config_dict(cfg: FitConfig) -> dict[str, Any]:
    d: dict[str, Any] = run_folder.json_safe(asdict(cfg))
    return d


def identity_and_hparams(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """The keys a resume must keep: what identifies the run plus its hyper-parameters."""
    return {k: cfg_dict[k] for k in (*IDENTITY, *HYPER_PARAMETERS) if k in cfg_dict}


def imported_hparams(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The released model's own Lightning hparams, when the checkpoint was made by `dfmod-train import`."""
    imported = meta.get("imported")
    if isinstance(imported, dict) and isinstance(imported.get("hyper_parameters"), dict):
        hp: dict[str, Any] = imported["hyper_parameters"]
        return hp
    return None


def resolve_recipe(cfg: FitConfig, init_meta: dict[str, Any] | None) -> Recipe:
    """The Recipe object `cfg.recipe` names (an ``imported:`` one is rebuilt from the init checkpoint)."""
    if cfg.recipe.startswith("imported:"):
        hp = imported_hparams(init_meta or {})
        if hp is None:
            raise ValueError(f"recipe {cfg.recipe!r} needs --init with an imported checkpoint")
        return recipe_from_hparams(hp, str(cfg.init))
    return get_recipe(cfg.recipe)


def split_counts(data: Path) -> dict[str, dict[str, int]]:
    """{split: {"crops", "real", "fake", "videos"}} over the whole manifest (for the start-up block)."""
    ds = CropDataset(data)
    out: dict[str, dict[str, int]] = {}
    for split in sorted({r.split for r in ds.records}):
        recs = [r for r in ds.records if r.split == split]
        labels = Counter(r.label for r in recs)
        out[split] = {
            "crops": len(recs),
            "real": labels.get(0, 0),
            "fake": labels.get(1, 0),
            "videos": len({r.video_id for r in recs}),
        }
    return out


def _weights_identity(arch: str, weights: str) -> str:
    """The backbone weights and a hash of their file, for the start-up block."""
    from train.factory import ARCHES, _openai_weights_file, sha256_file

    if weights == "random-init":
        return "random-init (seeded; NOT pretrained)"
    if weights == "openai":
        try:
            path = _openai_weights_file(ARCHES[arch])
            return f"openai ({path.name}, sha256 {sha256_file(path)[:16]})"
        except Exception:  # the detector was built, so the weights were there; the hash is best-effort
            return "openai"
    if weights.startswith("sha256:"):
        return f"file with {weights}"
    return f"{weights} (sha256 {sha256_file(weights)[:16]})"


class Trainer:
    """One run: builds (or resumes) the detector, optimizer and schedule, then loops."""

    def __init__(self, cfg: FitConfig) -> None:
        from train.checkpoint import load_checkpoint
        from train.factory import create_model, sha256_file

        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        last = cfg.out / "last.pt"
        # Everything that can fail on user input is checked before the run folder is touched.
        self.train_set = CropDataset(cfg.data, split="train", transform=eval_transform)
        if len(self.train_set) == 0:
            raise ValueError(f"{self.train_set.manifest_path}: no training crops (split 'train')")
        val = CropDataset(cfg.data, split="val", transform=eval_transform)
        self.val_set = val if len(val) else None
        resuming = cfg.resume and last.is_file()
        if cfg.weights is None:
            cfg.weights = default_weights(cfg.arch)
        stored: dict[str, Any] | None = None
        init_meta: dict[str, Any] | None = None
        state: dict[str, Any] | None = None
        self.overrides: dict[str, tuple[Any, Any]] = {}
        from train.checkpoint import read_checkpoint

        if cfg.init is not None:
            init_payload = read_checkpoint(cfg.init)
            init_arch = init_payload["arch"]
            if init_arch != cfg.arch:
                raise ValueError(f"{cfg.init}: checkpoint is for arch {init_arch}, not {cfg.arch}")
            if init_payload.get("head_norm", True) is False:
                # The recipes train the head on the hypersphere (L2-normalised features, slerp, uniformity);
                # a release whose head reads the raw CLS feature would be trained on inputs it never sees.
                raise ValueError(
                    f"{cfg.init}: its head reads the feature without L2 norm (head 'linear'); "
                    "fine-tuning supports only L2-normalised heads ('LinearNorm')"
                )
        if resuming:
            stored = identity_and_hparams(read_checkpoint(last)["config"])
            self.overrides = run_folder.conflicts(stored, identity_and_hparams(_config_dict(cfg)))
            fixed = sorted(set(self.overrides) & {"arch", "weights", "init"})
            if fixed:
                raise run_folder.RunFolderError(
                    f"{last}: a resumed run keeps its {', '.join(fixed)} "
                    f"({'; '.join(f'{k}: {self.overrides[k][0]!r}' for k in fixed)}); start a new run to change them"
                )
            if self.overrides and not cfg.allow_override:
                changes = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in _rows(self.overrides))
                raise run_folder.RunFolderError(
                    f"{last}: --resume would change the run's own settings ({changes}); drop those flags, "
                    "or pass --allow-override to change them (recorded in history.json)"
                )
        previous_run = run_folder.claim(cfg.out, cfg.resume, cfg.overwrite)
        if cfg.resume and not resuming:
            print(f"--resume: no {last} yet, starting a new run", file=sys.stderr)
        if cfg.init is not None and resuming:  # the parameters come from last.pt; only the record is needed
            init_meta = {k: v for k, v in read_checkpoint(cfg.init).items() if k != "state_dict"}
            init_meta["sha256"] = sha256_file(cfg.init)
        elif cfg.init is not None:
            detector, init_meta = load_checkpoint(cfg.init, device="cpu", backbone_weights=_file_or_none(cfg.weights))
            if not _file_or_none(cfg.weights):
                cfg.weights = str(detector.weights)  # the backbone the checkpoint was trained on, as recorded
        self.recipe = resolve_recipe(cfg, init_meta)
        if resuming:
            self.detector, meta = load_checkpoint(last, device=self.device, backbone_weights=_file_or_none(cfg.weights))
            if self.detector.arch != cfg.arch:
                raise ValueError(f"{last}: checkpoint is for arch {self.detector.arch}, not {cfg.arch}")
            state = self._read_state(meta)
        elif cfg.init is not None:
            self.detector = detector.to(self.device)
        else:
            if cfg.weights == "random-init" and cfg.arch in PRETRAINED_ARCHES:
                print(f"warning: {cfg.arch} with random-init weights: the backbone is NOT pretrained", file=sys.stderr)
            self.detector = create_model(cfg.arch, cfg.weights, device=self.device, seed=cfg.seed)
        run_folder.clear(cfg.out, previous_run)  # --overwrite: only now that the new run could be built
        cfg.out.mkdir(parents=True, exist_ok=True)
        _seed_all(cfg.seed)
        self.augment: SeededTransform | None = (
            train_transform(cfg.seed, cfg.augment_settings()) if cfg.augment else None
        )
        self.train_set.transform = self.augment or eval_transform
        self.steps_per_epoch = math.ceil(len(self.train_set) / cfg.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.epochs

        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.best_metric = -math.inf
        self.epochs_since_best = 0
        self.epoch_loss_sum, self.epoch_samples = 0.0, 0  # running mean of the current epoch's loss
        self.history: list[dict[str, Any]] = []
        self.detector.apply_ln_tuning()
        self.optimizer = torch.optim.AdamW(param_groups(self.detector, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, cfg, self.steps_per_epoch)
        )
        self.objective = Objective(
            ce_weight=cfg.ce_weight,
            label_smoothing=cfg.label_smoothing,
            uniformity_weight=cfg.uniformity_weight,
            alignment_weight=cfg.alignment_weight,
            slerp=cfg.slerp,
            slerp_range=cfg.slerp_range,
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
            self.epochs_since_best = int(state.get("epochs_since_best", 0))
            self.epoch_loss_sum, self.epoch_samples = state["epoch_loss_sum"], state["epoch_samples"]
            self.history = list(state["history"])
        self.startup = self._startup_info(init_meta)
        self._write_run_json(resumed=state is not None)
        if self.overrides:
            self.history.append(
                {
                    "event": "override",
                    "epoch": self.epoch,
                    "step": self.step,
                    "changes": {k: {"was": a, "now": b} for k, a, b in _rows(self.overrides)},
                }
            )
            run_folder.write_json(cfg.out / run_folder.HISTORY_JSON, self.history)

    # -- what the run folder says about the run --------------------------------------------------------

    def _sources(self) -> dict[str, str]:
        recipe_values, recipe_sources = self.recipe.values(), self.recipe.sources()
        out: dict[str, str] = {}
        for k, v in self.cfg.hyper_parameters().items():
            same = run_folder.json_safe(v) == run_folder.json_safe(recipe_values[k])
            out[k] = recipe_sources[k] if same else f"set explicitly (recipe {self.recipe.name}: {recipe_values[k]!r})"
        return out

    def _startup_info(self, init_meta: dict[str, Any] | None) -> dict[str, Any]:
        cfg = self.cfg
        on_cuda = self.device.startswith("cuda")
        precision = "bf16 autocast" if on_cuda and cfg.precision == "bf16-mixed" else "fp32"
        if cfg.precision == "bf16-mixed" and not on_cuda:
            precision += " (bf16-mixed applies on CUDA only)"
        differs = {k: v for k, v in self._sources().items() if v.startswith("set explicitly")}
        return {
            "arch": cfg.arch,
            "feature_dim": self.detector.feature_dim,
            "weights": _weights_identity(cfg.arch, str(self.detector.weights)),
            "init": None
            if init_meta is None
            else {"path": str(cfg.init), "sha256": init_meta.get("sha256"), "imported": init_meta.get("imported")},
            "recipe": self.recipe.name,
            "set_explicitly": sorted(differs),
            "device": self.device,
            "precision": precision,
            "crops": split_counts(cfg.data),
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
        }

    def _write_run_json(self, resumed: bool) -> None:
        path = self.cfg.out / run_folder.RUN_JSON
        doc: dict[str, Any] = run_folder.read_json(path) if resumed and path.is_file() else {}
        now = datetime.now(UTC).isoformat(timespec="seconds")
        from worker.core.version import __version__

        doc.setdefault("started", now)
        doc.update(
            {
                "dfmod_version": __version__,
                "recipe": self.recipe.name,
                "recipe_description": self.recipe.description,
                "config": _config_dict(self.cfg),
                "sources": self._sources(),
                "startup": self.startup,
            }
        )
        if resumed:
            doc.setdefault("resumes", []).append(
                {"at": now, "step": self.step, "overrides": {k: [a, b] for k, a, b in _rows(self.overrides)}}
            )
        run_folder.write_json(path, doc)

    def print_startup(self) -> None:
        info, cfg = self.startup, self.cfg
        order = sorted(info["crops"], key=lambda s: ("train", "val", "test", s).index(s))
        crops = "\n            ".join(
            f"{s:5s} {c['crops']} crops ({c['real']} real, {c['fake']} fake) from {c['videos']} videos"
            for s, c in ((s, info["crops"][s]) for s in order)
        )
        lines = [
            f"fit -> {cfg.out}",
            f"  arch      {info['arch']} (feature dim {info['feature_dim']})",
            f"  weights   {info['weights']}",
        ]
        if info["init"]:
            lines.append(f"  init      {info['init']['path']} (sha256 {str(info['init']['sha256'])[:16]})")
        explicit = ", ".join(f"{k}={getattr(cfg, k)!r}" for k in info["set_explicitly"]) or "none"
        lines += [
            f"  recipe    {info['recipe']}; set explicitly: {explicit}",
            f"  device    {info['device']}, {info['precision']}",
            f"  data      {crops}",
            f"  schedule  {cfg.epochs} epochs x {info['steps_per_epoch']} steps, batch {cfg.batch_size}, "
            f"lr {cfg.lr:g} -> {cfg.lr_min:g} ({cfg.lr_schedule}), best by {cfg.select_by}",
        ]
        if self.step:
            lines.append(f"  resuming  at epoch {self.epoch + 1}, step {self.step}")
        print("\n".join(lines), flush=True)

    def _read_state(self, meta: dict[str, Any]) -> dict[str, Any]:
        from train.factory import sha256_file

        extra = meta.get("extra", {})
        path = self.cfg.out / str(extra.get("resume_state", ""))
        if not extra.get("resume_state"):
            raise ValueError(f"{self.cfg.out / 'last.pt'} names no optimizer/RNG state file; cannot resume exactly")
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

        # A new state file per save, named in last.pt: a kill between the two writes leaves last.pt
        # pointing at the state file it was written with, never at one that changed under it.
        state_name = f"{STATE_PREFIX}{self.step:09d}.pt"
        state_path = self.cfg.out / state_name
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
                "epochs_since_best": self.epochs_since_best,
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
            "resume_state": state_name,
            "resume_state_sha256": sha256_file(state_path),
            "recipe": self.recipe.name,
            "val": val,
        }
        save_checkpoint(self.cfg.out / "last.pt", self.detector, _config_dict(self.cfg), extra)
        for old in self.cfg.out.glob(f"{STATE_PREFIX}*.pt"):
            if old.name != state_name:
                old.unlink(missing_ok=True)

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
            precision=self.cfg.precision,
        )
        labels = np.asarray(self.val_set.labels)
        _, v_scores, v_labels = metrics.video_level(scores, labels, self.val_set.video_ids, self.val_set.frame_indices)
        return {
            "frame_auroc": metrics.auroc(scores, labels),
            "frame_map": metrics.mean_average_precision(scores, labels),
            "video_auroc": metrics.auroc(v_scores, v_labels),
            "video_map": metrics.mean_average_precision(v_scores, v_labels),
            "video_ap": metrics.average_precision(v_scores, v_labels),
            "video_eer": metrics.eer(v_scores, v_labels)[0],
            "video_eer_interp": metrics.eer_interpolated(v_scores, v_labels),
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
        with autocast_for(self.device, self.cfg.precision):
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
        stopped = self._reached_max_steps() or self._early_stop()
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
                self.epoch += 1
                self.batch_in_epoch = 0
                if val is not None:
                    self._maybe_save_best(val)
                self.history.append(
                    {
                        "event": "epoch",
                        "epoch": self.epoch,
                        "step": self.step,
                        "loss": self.epoch_loss_sum / max(self.epoch_samples, 1),
                        "lr": self.scheduler.get_last_lr()[0],
                        "faces_per_s": seen / (time.perf_counter() - t0),
                        **(val or {}),
                    }
                )
                stopped = stopped or self._early_stop()
            self._save(val if epoch_done else None)
            if epoch_done:  # after last.pt, so history.json never lists an epoch the checkpoints lack
                run_folder.write_json(cfg.out / run_folder.HISTORY_JSON, self.history)
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

    def _early_stop(self) -> bool:
        patience = self.cfg.early_stopping_patience
        return patience > 0 and self.epochs_since_best >= patience

    def _selection_score(self, val: dict[str, float]) -> tuple[float, str]:
        """The recipe's selection metric; the frame-level one when the video one is undefined."""
        key = {"val_video_map": "map", "val_video_auroc": "auroc"}[self.cfg.select_by]
        if not math.isnan(val[f"video_{key}"]):
            return val[f"video_{key}"], f"val video {key}"
        return val[f"frame_{key}"], f"val frame {key} (video {key} undefined)"

    def _maybe_save_best(self, val: dict[str, float]) -> None:
        """best.pt by the recipe's `select_by` (reference: val/mAP_video, mode max)."""
        from train.checkpoint import save_checkpoint

        score, name = self._selection_score(val)
        if math.isnan(score) or score <= self.best_metric:
            self.epochs_since_best += 1
            return
        self.best_metric = score
        self.epochs_since_best = 0
        extra = {
            "epoch": self.epoch,
            "step": self.step,
            "val": val,
            "selected_by": name,
            "recipe": self.recipe.name,
        }
        save_checkpoint(self.cfg.out / "best.pt", self.detector, _config_dict(self.cfg), extra)


def _rows(changes: dict[str, tuple[Any, Any]]) -> list[tuple[str, Any, Any]]:
    return [(k, a, b) for k, (a, b) in changes.items()]


def _file_or_none(weights: str | None) -> str | None:
    """The backbone file to pass to `load_checkpoint` (None for the named sources)."""
    return None if weights in (None, "random-init", "openai") or str(weights).startswith("sha256:") else weights


def fit(config: FitConfig, announce: bool = False) -> FitResult:
    """Train (or resume) a run; see the module docstring for what lands in `config.out`."""
    trainer = Trainer(config)
    if announce:
        trainer.print_startup()
    return trainer.run()


def print_summary(result: FitResult) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"fit {result.run_dir}")
    cols = ("epoch", "step", "loss", "lr", "faces/s", "val frame AUROC", "val video AUROC", "val video mAP")
    for col in cols:
        table.add_column(col, justify="right")
    for h in result.epochs:

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
            pct("video_map"),
        )
    Console().print(table)
    print(f"last: {result.last_checkpoint}" + (f"  best: {result.best_checkpoint}" if result.best_checkpoint else ""))


# -- command line --------------------------------------------------------------------------------------


def config_from_args(args: argparse.Namespace) -> FitConfig:
    """Flags over (the resumed run's settings | the --init checkpoint's hyper_parameters | the recipe)."""
    from train.checkpoint import read_checkpoint

    explicit: dict[str, Any] = {key: getattr(args, key) for _, key, _ in _HP_FLAGS if getattr(args, key) is not None}
    for key in ("arch", "weights", "recipe", "init"):
        if getattr(args, key) is not None:
            explicit[key] = getattr(args, key)
    control = {
        "workers": args.workers,
        "device": args.device,
        "resume": args.resume,
        "overwrite": args.overwrite,
        "allow_override": args.allow_override,
        "max_steps": args.max_steps,
        "eval_batch_size": args.eval_batch_size,
        "progress": args.progress,
    }
    last = args.out / "last.pt"
    if args.resume and last.is_file():
        stored = identity_and_hparams(read_checkpoint(last)["config"])
        return FitConfig(**{**stored, "data": args.data, "out": args.out, **explicit, **control})
    recipe = get_recipe(args.recipe or DEFAULT_RECIPE)
    base: dict[str, Any] = {}
    if args.init is not None:
        payload = read_checkpoint(args.init)
        base["arch"], base["weights"] = payload["arch"], payload["weights"]
        hp = imported_hparams(payload)
        if hp is not None and args.recipe is None:  # the released model's own settings are the default
            recipe = recipe_from_hparams(hp, str(args.init))
    base |= {"recipe": recipe.name, **recipe.values()}
    return FitConfig(data=args.data, out=args.out, **{**base, **explicit, **control})


def run(args: argparse.Namespace) -> int:
    result = fit(config_from_args(args), announce=True)
    print_summary(result)
    return 0
