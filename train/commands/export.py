"""`dfmod-train export`'s arguments; the work is `train.export.run`, imported when it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from train.arches import ARCHES, RANDOM_INIT
from train.commands import lazy

BACKENDS = ("python", "onnxruntime")
#: --device -> Triton instance kind. KIND_AUTO puts the instances on the GPUs when Triton has them and on
#: the CPU otherwise (ModelInstanceGroup.Kind in Triton's model_config.proto), so one export loads on the
#: CPU-only compose/chart defaults (`triton.gpus: 0`) and on GPU nodes alike.
DEVICES = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}
DEFAULT_OPSET = 18


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("export", help="export a detector to a Triton model repository (deepfake_clip)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="LN-tuning checkpoint from `dfmod-train fit`")
    src.add_argument("--arch", choices=sorted(ARCHES), help="export an untrained detector of this arch")
    p.add_argument("--weights", default=RANDOM_INIT, help="with --arch: random-init | openai | PATH")
    p.add_argument("--seed", type=int, default=0, help="with --arch: init seed")
    p.add_argument("--backbone-weights", help="with --checkpoint: backbone file (or local OpenAI weights)")
    p.add_argument("--out", type=Path, default=Path("triton_models"))
    p.add_argument("--backend", choices=BACKENDS, default="python")
    p.add_argument(
        "--device",
        choices=sorted(DEVICES),
        default="auto",
        help="Triton instance kind: auto = GPU when Triton has one, else CPU (KIND_AUTO); cpu; gpu (default: auto)",
    )
    p.add_argument("--tensorrt", action="store_true", help="onnxruntime backend: TensorRT accelerator on GPU")
    p.add_argument(
        "--execution-env",
        type=Path,
        default=None,
        help="python backend: a conda-pack .tar.gz with numpy + onnxruntime for Triton images whose Python lacks them",
    )
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--max-queue-delay-us", type=int, default=2000)
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--threshold", type=float, help="default: the checkpoint's calibrated threshold, else 0.5")
    p.add_argument("--uncertain-band", type=float, help="default: the checkpoint's, else 0.0")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=lazy("train.export"))
