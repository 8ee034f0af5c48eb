"""The model's calibrated parameters, read from Triton's `config.pbtxt` (text) or its model-config JSON.

Training writes the threshold, the uncertain band, the weights provenance and the preprocessing version into
the `parameters` of the exported `config.pbtxt`; Triton serves them back through its model-config API and
`dfmod scan` reads the file itself. Both paths end in `model_info_from_parameters`, so a model means the same
thing whichever way it is served.

The text parser is a small tokenizer for protobuf text format rather than the ModelConfig protobuf: it only
has to find `parameters` entries and `name`, and must not fail on fields that a newer Triton added.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from worker.contracts import ModelInfo
from worker.version import PREPROCESSING_VERSION

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|\#[^\n]*)
    | (?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    | (?P<punct>[{}\[\]<>:,;])
    | (?P<word>[^\s{}\[\]<>:,;"'\#]+)
    """,
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "'": "'", "\\": "\\"}
_CLOSERS = {"{": "}", "<": ">"}

Field = tuple[str, Any]  # (name, scalar str | list[Field] for a message)


def _unquote(tok: str) -> str:
    body = tok[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), body)


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:  # a lone quote: unterminated string
            raise ValueError(f"config.pbtxt: cannot tokenize at offset {pos}: {text[pos:pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind == "ws":
            continue
        if kind == "str" and tokens and tokens[-1][0] == "str":  # "a" "b" is one string in text format
            tokens[-1] = ("str", tokens[-1][1] + _unquote(m.group()))
            continue
        tokens.append((kind, _unquote(m.group()) if kind == "str" else m.group()))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.i = 0

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _next(self) -> tuple[str, str]:
        tok = self._peek()
        if tok is None:
            raise ValueError("config.pbtxt: unexpected end of text")
        self.i += 1
        return tok

    def _expect(self, value: str) -> None:
        tok = self._next()
        if tok[1] != value or tok[0] != "punct":
            raise ValueError(f"config.pbtxt: expected {value!r}, got {tok[1]!r}")

    def fields(self, closer: str | None) -> list[Field]:
        out: list[Field] = []
        while True:
            tok = self._peek()
            if tok is None:
                if closer is not None:
                    raise ValueError(f"config.pbtxt: missing {closer!r}")
                return out
            if tok == ("punct", closer):
                self.i += 1
                return out
            if tok[0] == "punct" and tok[1] in ",;":
                self.i += 1
                continue
            kind, name = self._next()
            if kind != "word":
                raise ValueError(f"config.pbtxt: expected a field name, got {name!r}")
            if self._peek() == ("punct", ":"):
                self.i += 1
            for value in self._values():
                out.append((name, value))

    def _values(self) -> list[Any]:
        tok = self._peek()
        if tok == ("punct", "["):  # repeated field written as a list
            self.i += 1
            values: list[Any] = []
            while True:
                if self._peek() == ("punct", "]"):
                    self.i += 1
                    return values
                if self._peek() == ("punct", ","):
                    self.i += 1
                    continue
                values.append(self._value())
        return [self._value()]

    def _value(self) -> Any:
        kind, tok = self._next()
        if kind == "punct" and tok in _CLOSERS:
            return self.fields(_CLOSERS[tok])
        if kind in ("str", "word"):
            return tok
        raise ValueError(f"config.pbtxt: unexpected {tok!r}")


def parse_pbtxt(pbtxt_text: str) -> list[Field]:
    """The top-level fields of a protobuf text message, in order; messages are nested field lists."""
    return _Parser(pbtxt_text).fields(None)


def parse_parameters(pbtxt_text: str) -> dict[str, str]:
    """`parameters { key: "k" value { string_value: "v" } }` entries of a Triton `config.pbtxt`.

    Tolerant of whitespace, newlines, comments, `:` before a message, `[...]` lists and field order.
    A later entry with the same key wins, as protobuf map semantics say.
    """
    params: dict[str, str] = {}
    for name, value in parse_pbtxt(pbtxt_text):
        if name != "parameters" or not isinstance(value, list):
            continue
        key = next((v for n, v in value if n == "key" and isinstance(v, str)), None)
        body = next((v for n, v in value if n == "value" and isinstance(v, list)), None)
        if key is None or body is None:
            continue
        string_value = next((v for n, v in body if n == "string_value" and isinstance(v, str)), None)
        if string_value is not None:
            params[key] = string_value
    return params


def parse_model_name(pbtxt_text: str) -> str | None:
    """The top-level `name:` of a `config.pbtxt`, if it has one (Triton falls back to the folder name)."""
    return next((v for n, v in parse_pbtxt(pbtxt_text) if n == "name" and isinstance(v, str)), None)


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

    Missing threshold -> 0.5, uncertain_band -> 0, weights -> "unknown", preprocessing_version -> "".
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
    )


def check_preprocessing(
    model: ModelInfo, expected: str = PREPROCESSING_VERSION, allow_missing: bool = False
) -> None:
    """Refuse a model trained on other crops than this worker makes (raise ValueError).

    Not called by the backends themselves: the service decides, at start-up, whether a model without the
    parameter (`allow_missing`) is acceptable.
    """
    if not model.preprocessing_version:
        if allow_missing:
            return
        raise ValueError(f"model {model.name}/{model.version} does not declare its preprocessing_version")
    if model.preprocessing_version != expected:
        raise ValueError(
            f"model {model.name}/{model.version} was trained on preprocessing "
            f"{model.preprocessing_version!r}, this worker makes {expected!r}"
        )
