"""`dfmod-train export`: a detector -> Triton model repository `deepfake_clip` (DESIGN.md section 2).

The ONNX graph takes the uint8 crops and normalises inside (`train.model.normalise`), so serving and
training share one preprocessing. Nothing is written unless ONNX Runtime reproduces PyTorch within the
tolerance: the repository is staged in a temporary directory and moved into place only after the check.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from train.checkpoint import load_checkpoint
from train.commands.export import BACKENDS, DEFAULT_OPSET, DEVICES
from train.commands.export import register as register  # the parser is defined without torch
from train.factory import create_model
from train.model import IMAGE_SIZE, DeepfakeDetector, ServingModel, parameter_breakdown
from worker.core.model_config import (
    CROP_SHAPE,
    INPUT_NAME,
    MODEL_NAME,
    OUTPUT_EMBEDDING,
    OUTPUT_FAKE_PROB,
    OUTPUT_NAMES,
    config_text,
)
from worker.core.version import PREPROCESSING_VERSION

__all__ = ["MODEL_NAME", "ExportReport", "ParityError", "export_onnx", "export_repository", "render_config"]

TEMPLATE = Path(__file__).parent / "templates" / "python_backend_model.py"


class ParityError(RuntimeError):
    """ONNX Runtime disagrees with PyTorch beyond the tolerance; nothing was written."""


@dataclass
class ExportReport:
    model_dir: str
    config_path: str
    onnx_path: str
    python_model_path: str | None
    backend: str
    version: int
    arch: str
    weights: str
    params: int
    feature_dim: int
    onnx_bytes: int
    max_abs_diff: float
    max_abs_diff_fake_prob: float
    max_abs_diff_embedding: float
    parity_batches: list[int]
    seconds: float
    parameters: dict[str, str] = field(default_factory=dict)


def export_onnx(detector: DeepfakeDetector, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """torch.onnx (dynamo) export of `ServingModel` with a dynamic batch axis; uint8 in, fp32 out."""
    serving = ServingModel(detector).eval()
    example = torch.randint(0, 256, (2, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.onnx.export(
            serving,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={INPUT_NAME: {0: batch}},
            opset_version=opset,
            optimize=True,
            verbose=False,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(path))


def parity(
    detector: DeepfakeDetector, onnx_path: Path, batches: Sequence[int] = (1, 4), seed: int = 0
) -> tuple[float, float]:
    """Max abs difference (fake_prob, embedding) between ONNX Runtime (CPU) and PyTorch on random faces."""
    import onnxruntime as ort

    serving = ServingModel(detector).eval()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    worst_prob = worst_emb = 0.0
    for n in batches:
        faces = torch.randint(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=torch.uint8, generator=gen)
        with torch.no_grad():
            prob, emb = serving(faces)
        prob_ort, emb_ort = session.run(list(OUTPUT_NAMES), {INPUT_NAME: faces.numpy()})
        if prob_ort.shape != (n,) or emb_ort.shape != (n, detector.feature_dim):
            raise ParityError(f"ONNX output shapes {prob_ort.shape}, {emb_ort.shape} at batch {n}")
        worst_prob = max(worst_prob, float(np.abs(prob_ort - prob.numpy()).max()))
        worst_emb = max(worst_emb, float(np.abs(emb_ort - emb.numpy()).max()))
    return worst_prob, worst_emb


#: Batch sizes the exported model prefers (`dynamic_batching.preferred_batch_size`): GPU kernels (and
#: TensorRT profiles) are most efficient at these; the worker sends them as soon as it has that many crops.
PREFERRED_BATCH_SIZES = (8, 16, 32)


def render_config(
    *,
    backend: str,
    feature_dim: int,
    max_batch: int,
    parameters: dict[str, str],
    max_queue_delay_us: int = 2000,
    instances: int = 1,
    tensorrt: bool = False,
    device: str = "auto",
    preferred_batch_sizes: Sequence[int] = PREFERRED_BATCH_SIZES,
) -> str:
    """config.pbtxt text, built as Triton's `ModelConfig` message and printed by protobuf's text_format.

    `fake_prob` is one value per face: dims [1] with `reshape: { shape: [ ] }` because the ONNX output is
    [N]; Triton clients receive it as [N, 1] (flatten it).
    """
    from tritonclient.grpc import model_config_pb2 as pb

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}")
    if max_batch < 1:
        raise ValueError("max_batch must be >= 1 (the contract batches on the first axis)")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {sorted(DEVICES)}")
    if tensorrt and backend != "onnxruntime":
        raise ValueError("--tensorrt needs --backend onnxruntime")
    if tensorrt and device == "cpu":
        raise ValueError("--tensorrt needs a GPU instance (--device gpu or auto)")
    config = pb.ModelConfig(name=MODEL_NAME, max_batch_size=max_batch)
    if backend == "python":
        config.backend = "python"
    else:
        config.platform = "onnxruntime_onnx"
    config.input.add(name=INPUT_NAME, data_type=pb.TYPE_UINT8, dims=list(CROP_SHAPE))
    prob = config.output.add(name=OUTPUT_FAKE_PROB, data_type=pb.TYPE_FP32, dims=[1])
    prob.reshape.SetInParent()  # shape [ ]: one scalar per batch item
    config.output.add(name=OUTPUT_EMBEDDING, data_type=pb.TYPE_FP32, dims=[feature_dim])
    config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    # Triton's batcher aims for these sizes, and the worker's micro-batcher sends them without waiting
    config.dynamic_batching.preferred_batch_size.extend(sorted({b for b in preferred_batch_sizes if b <= max_batch}))
    config.instance_group.add(count=instances, kind=pb.ModelInstanceGroup.Kind.Value(DEVICES[device]))
    if tensorrt:
        accel = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        accel.parameters["precision_mode"] = "FP16"
        accel.parameters["max_workspace_size_bytes"] = "4294967296"
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    # text_format leaves proto3 defaults out, and KIND_AUTO is the enum's default: say so for the reader
    header = f"# Written by dfmod-train export as Triton's ModelConfig. Instance kind: {DEVICES[device]}"
    header += " (the default, so not printed below).\n" if device == "auto" else ".\n"
    return header + config_text(config)


def python_requirements() -> str:
    """What model.py imports besides Triton's own module, pinned to the versions the parity check ran with."""
    import onnxruntime

    return (
        "# Python packages the deepfake_clip python-backend model (1/model.py) imports; torch is not needed.\n"
        f"numpy=={np.__version__}\nonnxruntime=={onnxruntime.__version__}\n"
    )


def placement_problem(config_text: str, gpus: int) -> str | None:
    """Why Triton with `gpus` GPUs could not load this config.pbtxt, or None when it can.

    KIND_GPU instances and the TensorRT accelerator need a GPU; KIND_CPU and KIND_AUTO load anywhere.
    The chart (`triton.gpus`) and compose (with or without the GPU override) are checked against it.
    """
    from tritonclient.grpc import model_config_pb2 as pb

    from worker.core.model_config import parse_config

    config = parse_config(config_text)
    if gpus > 0:
        return None
    if any(g.kind == pb.ModelInstanceGroup.KIND_GPU for g in config.instance_group):
        return "instance_group kind KIND_GPU needs a GPU (export with --device auto or cpu)"
    if config.optimization.execution_accelerators.gpu_execution_accelerator:
        return "the TensorRT accelerator needs a GPU (export without --tensorrt)"
    return None


def _install(staged_model: Path, out_dir: Path, version: int) -> None:
    """Move a staged model directory into `out_dir`, replacing only its config and this version."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / MODEL_NAME
    if not target.exists():
        os.replace(staged_model, target)
        return
    version_dir = target / str(version)
    if version_dir.exists():
        shutil.rmtree(version_dir)
    os.replace(staged_model / str(version), version_dir)
    for extra in staged_model.iterdir():  # config.pbtxt, requirements.txt, a packed environment
        if extra.is_file():
            os.replace(extra, target / extra.name)


def export_repository(
    detector: DeepfakeDetector,
    out_dir: str | Path,
    *,
    backend: str = "python",
    version: int = 1,
    threshold: float = 0.5,
    uncertain_band: float = 0.0,
    opset: int = DEFAULT_OPSET,
    max_batch: int = 64,
    tolerance: float = 1e-4,
    tensorrt: bool = False,
    checkpoint_sha256: str = "",
    max_queue_delay_us: int = 2000,
    instances: int = 1,
    parity_batches: Sequence[int] = (1, 4),
    device: str = "auto",
    execution_env: Path | None = None,
) -> ExportReport:
    """Write `<out_dir>/deepfake_clip/{config.pbtxt,<version>/model.onnx[,model.py]}`; raise ParityError
    (writing nothing) when ONNX Runtime and PyTorch differ by more than `tolerance`.

    The detector is moved to CPU and put in eval mode.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}")
    if version < 1:
        raise ValueError("Triton model versions start at 1")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold {threshold!r} is not a probability in [0, 1]; recalibrate the checkpoint")
    start = time.perf_counter()
    detector = detector.cpu().eval()
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    parameters = {
        "threshold": repr(float(threshold)),
        "uncertain_band": repr(float(uncertain_band)),
        "weights": detector.weights,
        "preprocessing_version": PREPROCESSING_VERSION,
        "arch": detector.arch,
        "feature_dim": str(detector.feature_dim),
        "checkpoint_sha256": checkpoint_sha256,
        # the file the weights came from: the released file of an import, else the exported checkpoint
        "weights_sha256": detector.weights_sha256 or checkpoint_sha256,
        "head_norm": "true" if detector.head_norm else "false",
    }
    if execution_env is not None:
        if backend != "python":
            raise ValueError("--execution-env applies to --backend python")
        if not execution_env.is_file() or not execution_env.name.endswith(".tar.gz"):
            raise ValueError(f"--execution-env must be a conda-pack .tar.gz file, not {execution_env}")
        # python backend: a packed environment beside config.pbtxt, unpacked by Triton before model.py runs
        parameters["EXECUTION_ENV_PATH"] = f"$$TRITON_MODEL_DIRECTORY/{execution_env.name}"
    if detector.imported:
        parameters["weights_format"] = str(detector.imported.get("format", ""))
        parameters["weights_revision"] = str(detector.imported.get("revision", ""))
    rendered = render_config(
        backend=backend,
        feature_dim=detector.feature_dim,
        max_batch=max_batch,
        parameters=parameters,
        max_queue_delay_us=max_queue_delay_us,
        instances=instances,
        tensorrt=tensorrt,
        device=device,
    )
    # staged beside out_dir, not in it: a polling Triton must never see a half-written model
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}-export-", dir=out_dir.parent) as tmp:
        staged = Path(tmp) / MODEL_NAME
        version_dir = staged / str(version)
        version_dir.mkdir(parents=True)
        onnx_path = version_dir / "model.onnx"
        export_onnx(detector, onnx_path, opset=opset)
        diff_prob, diff_emb = parity(detector, onnx_path, parity_batches)
        worst = max(diff_prob, diff_emb)
        if not worst <= tolerance:
            raise ParityError(
                f"ONNX Runtime vs PyTorch max abs diff {worst:.3g} (fake_prob {diff_prob:.3g}, "
                f"embedding {diff_emb:.3g}) exceeds tolerance {tolerance:g}; repository not written"
            )
        if backend == "python":
            shutil.copyfile(TEMPLATE, version_dir / "model.py")
            (staged / "requirements.txt").write_text(python_requirements())
            if execution_env is not None:
                shutil.copyfile(execution_env, staged / execution_env.name)
        (staged / "config.pbtxt").write_text(rendered)
        onnx_bytes = sum(p.stat().st_size for p in version_dir.glob("model.onnx*"))
        _install(staged, out_dir, version)
    model_dir = out_dir / MODEL_NAME
    final_version = model_dir / str(version)
    return ExportReport(
        model_dir=str(model_dir),
        config_path=str(model_dir / "config.pbtxt"),
        onnx_path=str(final_version / "model.onnx"),
        python_model_path=str(final_version / "model.py") if backend == "python" else None,
        backend=backend,
        version=version,
        arch=detector.arch,
        weights=detector.weights,
        params=parameter_breakdown(detector)["total"],
        feature_dim=detector.feature_dim,
        onnx_bytes=onnx_bytes,
        max_abs_diff=worst,
        max_abs_diff_fake_prob=diff_prob,
        max_abs_diff_embedding=diff_emb,
        parity_batches=list(parity_batches),
        seconds=time.perf_counter() - start,
        parameters=parameters,
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    checkpoint_sha = ""
    extra: dict[str, Any] = {}
    with console.status("building the detector"):
        if args.checkpoint is not None:
            detector, meta = load_checkpoint(args.checkpoint, backbone_weights=args.backbone_weights)
            checkpoint_sha = str(meta["sha256"])
            extra = dict(meta.get("extra") or {})
        else:
            detector = create_model(args.arch, args.weights, seed=args.seed)
    threshold = args.threshold if args.threshold is not None else float(extra.get("threshold", 0.5))
    band = args.uncertain_band if args.uncertain_band is not None else float(extra.get("uncertain_band", 0.0))
    try:
        with console.status(f"exporting {detector.arch} to ONNX and checking parity"):
            report = export_repository(
                detector,
                args.out,
                backend=args.backend,
                version=args.version,
                threshold=threshold,
                uncertain_band=band,
                opset=args.opset,
                max_batch=args.max_batch,
                tolerance=args.tolerance,
                tensorrt=args.tensorrt,
                checkpoint_sha256=checkpoint_sha,
                max_queue_delay_us=args.max_queue_delay_us,
                instances=args.instances,
                device=args.device,
                execution_env=args.execution_env,
            )
    except (ParityError, ValueError) as e:
        console.print(f"[red]refused:[/red] {e}")
        return 2
    if args.json:
        import json

        print(json.dumps(asdict(report), indent=2))
    else:
        print_report(report)
    return 0


def print_report(report: ExportReport) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"exported {MODEL_NAME} v{report.version} ({report.backend} backend)")
    for col in ("arch", "weights", "params", "onnx MB", "max abs diff", "seconds"):
        table.add_column(col, justify="right" if col not in ("arch", "weights") else "left")
    table.add_row(
        report.arch,
        report.weights,
        f"{report.params:,}",
        f"{report.onnx_bytes / 1e6:.1f}",
        f"{report.max_abs_diff:.2e}",
        f"{report.seconds:.1f}",
    )
    console = Console()
    console.print(table)
    console.print(f"repository: {report.model_dir}")
