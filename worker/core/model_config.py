"""The model contract and its `config.pbtxt`, written and read through Triton's own protobuf schema.

The contract's names and shapes (DESIGN.md section 2) are defined here once: export writes them, the
benchmark and the worker's backends use them, and a test reads them back with `model_config_pb2`.

Training writes the threshold, the uncertain band, the weights provenance (source and sha256) and the
preprocessing version into the `parameters` of the exported `config.pbtxt`; Triton serves them back through its
model-config API and `dfmod scan` reads the file itself. Both paths end in `model_info_from_parameters`, so a
model means the same thing whichever way it is served. Text is parsed with protobuf's `text_format` into
tritonclient's `ModelConfig`, tolerating fields a newer Triton added (`allow_unknown_field`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from worker.core.contracts import ModelInfo
from worker.core.version import PREPROCESSING_VERSION

#: The contract (DESIGN.md section 2), the one place these names are spelled.
MODEL_NAME = "deepfake_clip"
INPUT_NAME = "faces"
OUTPUT_FAKE_PROB = "fake_prob"
OUTPUT_EMBEDDING = "embedding"
OUTPUT_NAMES = (OUTPUT_FAKE_PROB, OUTPUT_EMBEDDING)
CROP_SIZE = 224
CROP_SHAPE = (CROP_SIZE, CROP_SIZE, 3)  # per face, HWC RGB uint8


def _pb() -> Any:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def parse_config(pbtxt_text: str) -> Any:
    """A `config.pbtxt` as Triton's `ModelConfig` message; ValueError on text Triton would not accept."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(pbtxt_text, _pb().ModelConfig(), allow_unknown_field=True)
    except text_format.ParseError as e:
        raise ValueError(f"config.pbtxt: {e}") from None


def config_from_json(config: Mapping[str, Any]) -> Any:
    """Triton's `get_model_config(..., as_json=True)` answer (`config` wrapper optional) as a `ModelConfig`."""
    from google.protobuf import json_format

    body = config.get("config", config)
    try:
        return json_format.ParseDict(body, _pb().ModelConfig(), ignore_unknown_fields=True)
    except json_format.ParseError as e:
        raise ValueError(f"model config: {e}") from None


def config_text(config: Any) -> str:
    """`ModelConfig` -> the text format Triton reads."""
    from google.protobuf import text_format

    return str(text_format.MessageToString(config))


def parse_parameters(pbtxt_text: str) -> dict[str, str]:
    """The `parameters` string values of a Triton `config.pbtxt` (a map: a later entry with a key wins)."""
    return {k: v.string_value for k, v in parse_config(pbtxt_text).parameters.items()}


def parse_model_name(pbtxt_text: str) -> str | None:
    """The top-level `name:` of a `config.pbtxt`, if it has one (Triton falls back to the folder name)."""
    return parse_config(pbtxt_text).name or None


def parameters_from_config_json(config: Mapping[str, Any]) -> dict[str, str]:
    """Parameters of Triton's `get_model_config(..., as_json=True)` answer (`config` wrapper optional)."""
    body = config.get("config", config)
    raw = body.get("parameters") or {}
    return {
        str(k): str(v["string_value"])
        for k, v in raw.items()
        if isinstance(v, Mapping) and v.get("string_value") is not None
    }


def _float(params: Mapping[str, str], key: str, default: float) -> float:
    raw = params.get(key)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"model parameter {key!r} is not a number: {raw!r}") from exc
    if not math.isfinite(value):
        raise ValueError(f"model parameter {key!r} is not finite: {raw!r}")
    return value


def model_info_from_parameters(name: str, version: str, params: Mapping[str, str]) -> ModelInfo:
    """The `ModelInfo` a model's parameters describe.

    Missing threshold -> 0.5, uncertain_band -> 0, weights -> "unknown", hashes and preprocessing_version -> "".
    A malformed or out-of-range number raises ValueError: a wrong threshold is worse than not starting.
    """
    threshold = _float(params, "threshold", 0.5)
    band = _float(params, "uncertain_band", 0.0)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"model parameter 'threshold' must be within [0, 1], got {threshold}")
    if band < 0.0:
        raise ValueError(f"model parameter 'uncertain_band' must be >= 0, got {band}")
    return ModelInfo(
        name=name,
        version=str(version),
        weights=params.get("weights") or "unknown",
        threshold=threshold,
        uncertain_band=band,
        preprocessing_version=params.get("preprocessing_version", ""),
        weights_sha256=params.get("weights_sha256", ""),
        checkpoint_sha256=params.get("checkpoint_sha256", ""),
    )


def check_preprocessing(model: ModelInfo, expected: str = PREPROCESSING_VERSION) -> None:
    """Refuse a model trained on other crops than this worker makes, or one that does not say (raise ValueError).

    Not called by the backends themselves: the start-up checks and the engine call it before any work.
    """
    if not model.preprocessing_version:
        raise ValueError(f"model {model.name}/{model.version} does not declare its preprocessing_version")
    if model.preprocessing_version != expected:
        raise ValueError(
            f"model {model.name}/{model.version} was trained on preprocessing "
            f"{model.preprocessing_version!r}, this worker makes {expected!r}"
        )
