"""Measure imports of released-format stand-ins: parity per stage, and a stand-in to time `dfmod-train import`.

    python -m train.released.bench parity [--arch tiny] [--triton]   # format x stage max |p(fake) diff| table
    python -m train.released.bench standin --arch ViT-L-14 --format gend --out /tmp/GenD_L14
    /usr/bin/time -v dfmod-train import /tmp/GenD_L14 --out /tmp/gend.pt      # import time and peak memory

Every row compares with the authors' forward (`standins.reference_logits`) on the same uint8 crops: the imported
dfmod model in PyTorch, its ONNX export in ONNX Runtime, and (with --triton) that export served by a private
Triton of the local stack (deploy/local, python backend), read through the worker's own Triton client.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from train.released import standins

REPO = Path(__file__).resolve().parents[2]
NAMES = {
    "tiny": "dfmod/clip-vit-tiny",
    "ViT-B-16": "openai/clip-vit-base-patch16",
    "ViT-L-14": "openai/clip-vit-large-patch14",
}


def make_standin(fmt: str, arch: str, out: Path, seed: int = 0) -> tuple[Path, nn.Module]:
    """A stand-in release of `fmt` (lightning, torchscript, gend-linear, gend-LinearNorm) under `out`."""
    name = NAMES[arch]
    if fmt == "lightning":
        module = standins.lightning_module(arch, head_norm=True, seed=seed)
        return standins.save_lightning_ckpt(module, out / "model.ckpt", name, head_norm=True), module
    if fmt == "torchscript":
        module = standins.lightning_module(arch, head_norm=True, seed=seed)
        return standins.save_torchscript(module, out / "model.torchscript"), module
    if fmt in ("gend-linear", "gend-LinearNorm", "gend"):
        norm = fmt == "gend-LinearNorm" or fmt == "gend"  # the released GenD_CLIP_L_14 says LinearNorm
        module = standins.gend_module(arch, head_norm=norm, seed=seed)
        return standins.save_gend_folder(module, out, name, head_norm=norm), module
    raise ValueError(f"unknown format {fmt!r}")


def _triton_stage(repo: Path, faces: np.ndarray, work: Path) -> np.ndarray:
    sys.path.insert(0, str(REPO / "deploy" / "local"))
    from harness import Stack  # type: ignore[import-not-found]

    from worker.core.settings import TritonSettings
    from worker.infer.base import infer_blocking
    from worker.infer.triton import TritonBackend

    stack = Stack(stack_dir=work / "stack", model_repo=repo)
    try:
        url = stack.up("triton")["DFMOD_TRITON__URL"]
        backend = TritonBackend(TritonSettings(url=url))
        try:
            backend.wait_ready(120)
            return np.asarray(infer_blocking(backend, faces, timeout_s=120).fake_prob)
        finally:
            backend.close()
    finally:
        stack.down("triton")


def parity_rows(arch: str, triton: bool, formats: list[str]) -> list[tuple[str, str, float]]:
    import onnxruntime as ort

    from train.checkpoint import load_checkpoint
    from train.export import export_repository
    from train.model import normalise
    from train.released.command import import_release

    faces = np.random.default_rng(0).integers(0, 256, (8, 224, 224, 3), dtype=np.uint8)
    rows: list[tuple[str, str, float]] = []
    for fmt in formats:
        with tempfile.TemporaryDirectory(prefix="dfmod-parity-") as tmp:
            work = Path(tmp)
            source, module = make_standin(fmt, arch, work / "release")
            reference = torch.softmax(standins.reference_logits(module, normalise(torch.from_numpy(faces))), -1)
            ref = reference[:, 1].numpy()
            import_release(str(source), work / "imported.pt")
            detector, meta = load_checkpoint(work / "imported.pt")
            with torch.no_grad():
                got = detector.fake_prob(normalise(torch.from_numpy(faces))).numpy()
            rows.append((fmt, "torch", float(np.abs(got - ref).max())))
            report = export_repository(detector, work / "repo", backend="python", checkpoint_sha256=meta["sha256"])
            session = ort.InferenceSession(report.onnx_path, providers=["CPUExecutionProvider"])
            (prob,) = session.run(["fake_prob"], {"faces": faces})
            rows.append((fmt, "onnx", float(np.abs(prob - ref).max())))
            if triton:
                rows.append((fmt, "triton", float(np.abs(_triton_stage(work / "repo", faces, work) - ref).max())))
    return rows


def print_table(rows: list[tuple[str, str, float]], arch: str) -> None:
    from rich.console import Console
    from rich.table import Table

    stages = [s for s in ("torch", "onnx", "triton") if any(r[1] == s for r in rows)]
    table = Table(title=f"max |p(fake) - authors' forward| on 8 crops ({arch} stand-ins)")
    table.add_column("format")
    for stage in stages:
        table.add_column(stage, justify="right")
    for fmt in dict.fromkeys(r[0] for r in rows):
        cells = {s: d for f, s, d in rows if f == fmt}
        table.add_row(fmt, *(f"{cells[s]:.2e}" for s in stages))
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.released.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("parity", help="format x stage parity table")
    p.add_argument("--arch", choices=sorted(NAMES), default="tiny")
    p.add_argument("--triton", action="store_true", help="also serve each export on a private local Triton")
    p.add_argument("--formats", nargs="+", default=["lightning", "torchscript", "gend-linear", "gend-LinearNorm"])
    s = sub.add_parser("standin", help="write one stand-in release (to time `dfmod-train import` on it)")
    s.add_argument("--arch", choices=sorted(NAMES), default="ViT-L-14")
    s.add_argument("--format", default="gend")
    s.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.cmd == "parity":
        print_table(parity_rows(args.arch, args.triton, args.formats), args.arch)
        return 0
    path, _ = make_standin(args.format, args.arch, args.out)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
