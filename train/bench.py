"""CPU throughput of the serving model: PyTorch vs ONNX Runtime, same uint8 faces in, same outputs.

    python -m train.bench --arch ViT-L-14 --batches 1 8 --iters 10

Answers "what does a CPU-only `dfmod scan` cost per face" and "does the ONNX graph lose speed".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from train.export import DEFAULT_OPSET, export_onnx
from train.factory import ARCHES, RANDOM_INIT, create_model
from train.model import IMAGE_SIZE, ServingModel
from worker.core.model_config import INPUT_NAME, OUTPUT_NAMES


@dataclass
class BenchRow:
    runtime: str
    batch: int
    iters: int
    faces_per_s: float
    p50_ms: float
    p95_ms: float


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def time_calls(fn: Callable[[], object], iters: int, warmup: int) -> list[float]:
    """Wall-clock seconds of each of `iters` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def row(runtime: str, batch: int, seconds: list[float]) -> BenchRow:
    return BenchRow(
        runtime=runtime,
        batch=batch,
        iters=len(seconds),
        faces_per_s=batch * len(seconds) / sum(seconds),
        p50_ms=1000 * statistics.median(seconds),
        p95_ms=1000 * _percentile(seconds, 95),
    )


def bench(
    arch: str,
    batches: Sequence[int],
    iters: int,
    warmup: int,
    threads: int,
    weights: str = RANDOM_INIT,
    onnx_path: Path | None = None,
) -> list[BenchRow]:
    import onnxruntime as ort

    torch.set_num_threads(threads)
    serving = ServingModel(create_model(arch, weights)).eval()
    with tempfile.TemporaryDirectory(prefix="dfmod-bench-") as tmp:
        if onnx_path is None:
            onnx_path = Path(tmp) / "model.onnx"
            t = time.perf_counter()
            export_onnx(serving.detector, onnx_path, opset=DEFAULT_OPSET)
            print(f"exported ONNX in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
        rows: list[BenchRow] = []
        rng = np.random.default_rng(0)
        for n in batches:
            faces = rng.integers(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
            faces_t = torch.from_numpy(faces)

            def run_torch(x: torch.Tensor = faces_t) -> object:
                with torch.inference_mode():
                    return serving(x)

            def run_onnx(x: np.ndarray = faces) -> object:
                return session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})

            rows.append(row("pytorch", n, time_calls(run_torch, iters, warmup)))
            rows.append(row("onnxruntime", n, time_calls(run_onnx, iters, warmup)))
    return rows


def print_table(arch: str, threads: int, rows: list[BenchRow]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{arch} serving model on CPU ({threads} threads)")
    for col in ("runtime", "batch", "iters", "faces/s", "p50 ms", "p95 ms", "ONNX/PyTorch"):
        table.add_column(col, justify="left" if col == "runtime" else "right")
    torch_fps = {r.batch: r.faces_per_s for r in rows if r.runtime == "pytorch"}
    for r in rows:
        ratio = f"{r.faces_per_s / torch_fps[r.batch]:.2f}" if r.runtime == "onnxruntime" else ""
        table.add_row(
            r.runtime, str(r.batch), str(r.iters), f"{r.faces_per_s:.2f}", f"{r.p50_ms:.1f}", f"{r.p95_ms:.1f}", ratio
        )
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.bench", description=__doc__)
    p.add_argument("--arch", choices=sorted(ARCHES), default="ViT-L-14")
    p.add_argument("--weights", default=RANDOM_INIT)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--onnx", type=Path, help="benchmark this model.onnx instead of exporting one")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = bench(args.arch, args.batches, args.iters, args.warmup, args.threads, args.weights, args.onnx)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        print_table(args.arch, args.threads, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
