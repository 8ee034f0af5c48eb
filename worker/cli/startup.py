"""Start-up checks of `dfmod worker`: fail fast, fail closed, before the worker joins its consumer group.

A worker that cannot score must never consume: it would answer every event with an error verdict and commit
the offsets, silently throwing a topic's worth of events away. So, in this order, each bounded by a timeout
and announced by a log line saying what it waits for and where:

1. settings parse (`load_settings`; a bad value names its variable, e.g. ``DFMOD_DECODE__FRAMES='abc'``);
2. the face detector loads and runs once on a blank frame;
3. Triton answers, the model is ready, and it honours the contract (I/O names, types and shapes, and the
   preprocessing version this worker's crops follow);
4. Kafka answers and the events, verdicts, retry and DLQ topics exist.

A failure raises `StartupError`, whose `exit_code` is distinct per failure class (`Failure`, documented in
docs/deploy.md "Start-up checks and exit codes"); `dfmod worker` prints its message as one line and exits.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from enum import IntEnum
from typing import Any, get_origin
from urllib.parse import urlsplit

import numpy as np
from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError

from worker.core.contracts import ModelInfo
from worker.core.model_config import check_preprocessing
from worker.core.settings import CacheSettings, FaceSettings, KafkaSettings, TritonSettings, WorkerSettings
from worker.infer.base import CROP_SHAPE, INPUT_NAME, OUTPUT_EMBEDDING, OUTPUT_FAKE_PROB, InferenceBackend
from worker.infer.triton import CONTROL_TIMEOUT_S, TritonBackend, index_models
from worker.scoring.cache import redis_client

log = logging.getLogger(__name__)

ENV_PREFIX = "DFMOD_"
_BLANK_FRAME = np.zeros((240, 320, 3), dtype=np.uint8)


class Failure(IntEnum):
    """Exit codes of `dfmod worker` per start-up failure class (1 and 2 stay with Python and argparse)."""

    SETTINGS = 10
    DETECTOR = 11
    TRITON_UNREACHABLE = 12
    MODEL_NOT_READY = 13
    MODEL_INCOMPATIBLE = 14
    KAFKA_UNREACHABLE = 15
    KAFKA_REFUSED = 16


class StartupError(Exception):
    """A check failed; `str(self)` is the one line a person reads."""

    def __init__(self, failure: Failure, message: str) -> None:
        super().__init__(message)
        self.failure = failure

    @property
    def exit_code(self) -> int:
        return int(self.failure)


Beat = Callable[[], None]


def _no_beat() -> None:
    return None


# -- 1. settings --------------------------------------------------------------------------------------------
def load_settings(environ: Mapping[str, str] | None = None) -> WorkerSettings:
    """`WorkerSettings()` from the environment, or a StartupError naming the offending variable."""
    env = os.environ if environ is None else environ
    try:
        return WorkerSettings()
    except ValidationError as exc:
        raise StartupError(Failure.SETTINGS, validation_error_line(exc, env)) from exc
    except SettingsError as exc:
        raise StartupError(Failure.SETTINGS, settings_error_line(exc, env)) from exc


def env_name(loc: tuple[int | str, ...]) -> str:
    """The variable a field is read from: ("decode", "frames") -> DFMOD_DECODE__FRAMES."""
    return ENV_PREFIX + "__".join(str(part) for part in loc if not isinstance(part, int)).upper()


def validation_error_line(exc: ValidationError, env: Mapping[str, str]) -> str:
    errors = exc.errors()
    first = errors[0]
    name = env_name(tuple(first.get("loc", ())))
    value = env.get(name, first.get("input"))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"invalid setting {name}={value!r}: {first.get('msg')}{more}"


def _complex_fields(model: type[BaseModel], prefix: str) -> dict[str, type[BaseModel] | None]:
    """Env names of list/dict/nested-model fields (those pydantic-settings parses as JSON)."""
    out: dict[str, type[BaseModel] | None] = {}
    for field_name, field in model.model_fields.items():
        name = f"{prefix}{field_name.upper()}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out[name] = annotation
            out.update(_complex_fields(annotation, name + "__"))
        elif get_origin(annotation) in (list, dict, set, tuple):
            out[name] = None
    return out


def settings_error_line(exc: SettingsError, env: Mapping[str, str]) -> str:
    """pydantic-settings only says which top-level field failed; find the variable whose JSON is broken."""
    for name in _complex_fields(WorkerSettings, ENV_PREFIX):
        if name in env:
            try:
                json.loads(env[name])
            except ValueError:
                return (f"invalid setting {name}={env[name]!r}: not valid JSON "
                        "(lists and nested settings are JSON, e.g. '[\"10.0.0.0/8\"]')")
    return f"invalid settings: {exc}"


# -- 2. face detector ---------------------------------------------------------------------------------------
def check_detector(settings: FaceSettings) -> None:
    """Load the configured detector once and run it on a blank frame (missing or broken weights fail here)."""
    from worker.faces.factory import create_detector, weights_dir

    where = weights_dir(settings)
    log.info("loading the face detector", extra={"check": "detector", "backend": settings.backend,
                                                  "weights_dir": str(where)})
    try:
        detector = create_detector(settings)
        found = detector.detect(_BLANK_FRAME)
    except Exception as exc:  # missing file, unloadable model, absent optional package: all mean "cannot score"
        raise StartupError(Failure.DETECTOR, f"face detector {settings.backend!r} cannot run: {exc}") from exc
    if not isinstance(found, list):
        raise StartupError(Failure.DETECTOR, f"face detector {settings.backend!r} returned {type(found).__name__}")


# -- 3. Triton ----------------------------------------------------------------------------------------------
def contract_problems(metadata: Mapping[str, Any]) -> list[str]:
    """What in Triton's model metadata breaks the contract (DESIGN.md section 2); empty when it holds."""

    def by_name(key: str) -> dict[str, Mapping[str, Any]]:
        return {str(t.get("name")): t for t in metadata.get(key) or []}

    def dims(tensor: Mapping[str, Any]) -> list[int]:
        return [int(d) for d in tensor.get("shape") or []]

    problems: list[str] = []
    inputs, outputs = by_name("inputs"), by_name("outputs")
    faces = inputs.get(INPUT_NAME)
    if faces is None:
        problems.append(f"no input {INPUT_NAME!r} (inputs: {sorted(inputs) or 'none'})")
    else:
        if faces.get("datatype") != "UINT8":
            problems.append(f"input {INPUT_NAME!r} is {faces.get('datatype')}, not UINT8")
        if tuple(dims(faces)[-3:]) != CROP_SHAPE:
            problems.append(f"input {INPUT_NAME!r} has shape {dims(faces)}, not [-1, 224, 224, 3]")
    for name in (OUTPUT_FAKE_PROB, OUTPUT_EMBEDDING):
        tensor = outputs.get(name)
        if tensor is None:
            problems.append(f"no output {name!r} (outputs: {sorted(outputs) or 'none'})")
        elif tensor.get("datatype") != "FP32":
            problems.append(f"output {name!r} is {tensor.get('datatype')}, not FP32")
    return problems


def _index_entry(client: Any, name: str) -> Mapping[str, Any] | None:
    """The model's repository-index entry (state and reason), when the server lets us read the index."""
    try:
        index = client.get_model_repository_index(as_json=True, client_timeout=CONTROL_TIMEOUT_S)
    except Exception:
        return None
    models = index_models(index)
    entries = [m for m in models if m.get("name") == name]
    return entries[-1] if entries else {"state": "ABSENT", "names": sorted({str(m.get("name")) for m in models})}


def _not_ready_reason(client: Any, settings: TritonSettings) -> str:
    entry = _index_entry(client, settings.model_name)
    if entry is None:
        return "not ready"
    if entry.get("state") == "ABSENT":
        return f"not in the model repository (it serves: {', '.join(entry['names']) or 'nothing'})"
    reason = entry.get("reason")
    return f"state {entry.get('state', 'unknown')}" + (f": {reason}" if reason else "")


def _triton_hint(settings: TritonSettings, last: str) -> str:
    """Which settings to check for an unreachable Triton: its URL, and the TLS ones when TLS is in the way."""
    text = last.lower()
    if "handshake" in text or "certificate" in text or "ssl" in text:
        return ("check DFMOD_TRITON__TLS_CA_FILE: it must hold the CA that signed Triton's certificate, "
                "and DFMOD_TRITON__TLS_CERT_FILE/_KEY_FILE where Triton wants a client certificate")
    if not settings.tls and "socket closed" in text:
        return "check DFMOD_TRITON__URL; a Triton that speaks TLS needs DFMOD_TRITON__TLS=true"
    return "check DFMOD_TRITON__URL"


def wait_for_triton(settings: TritonSettings, client: Any, beat: Beat = _no_beat) -> None:
    """Until the server is live and the model ready, within `settings.ready_timeout_s`; else StartupError."""
    timeout = settings.ready_timeout_s
    model = f"{settings.model_name}/{settings.model_version or 'latest'}"
    log.info("waiting for Triton", extra={"check": "triton", "url": settings.url, "model": model,
                                          "timeout_s": timeout})
    deadline = time.monotonic() + timeout
    live, last = False, "no answer"
    while True:
        beat()
        try:
            live = bool(client.is_server_live(client_timeout=CONTROL_TIMEOUT_S))
            if live and client.is_model_ready(settings.model_name, settings.model_version,
                                              client_timeout=CONTROL_TIMEOUT_S):
                return
            last = "server not live" if not live else _not_ready_reason(client, settings)
        except Exception as exc:
            last = _short(exc)
        if time.monotonic() >= deadline:
            break
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    if not live:
        raise StartupError(Failure.TRITON_UNREACHABLE,
                           f"Triton at {settings.url} did not answer within {timeout:g} s: {last} "
                           f"({_triton_hint(settings, last)})")
    raise StartupError(Failure.MODEL_NOT_READY,
                       f"model {model} on Triton at {settings.url} not ready within {timeout:g} s: {last} "
                       "(check DFMOD_TRITON__MODEL_NAME and the model repository)")


def check_model(settings: TritonSettings, client: Any, backend: InferenceBackend) -> ModelInfo:
    """The served model honours the contract and was trained on this worker's crops."""
    try:
        metadata = client.get_model_metadata(settings.model_name, settings.model_version, as_json=True,
                                             client_timeout=CONTROL_TIMEOUT_S)
    except Exception as exc:
        raise StartupError(Failure.MODEL_NOT_READY,
                           f"cannot read the metadata of model {settings.model_name}: {_short(exc)}") from exc
    problems = contract_problems(metadata or {})
    if problems:
        raise StartupError(Failure.MODEL_INCOMPATIBLE,
                           f"model {settings.model_name} breaks the contract: {'; '.join(problems)}")
    try:
        model = backend.model_info()
        check_preprocessing(model)
    except ValueError as exc:
        raise StartupError(Failure.MODEL_INCOMPATIBLE, f"model {settings.model_name} is incompatible: {exc}") from exc
    except Exception as exc:
        raise StartupError(Failure.MODEL_NOT_READY, f"model {settings.model_name}: {_short(exc)}") from exc
    return model


def check_triton(settings: TritonSettings, backend: TritonBackend, beat: Beat = _no_beat) -> ModelInfo:
    """Triton live, the model ready and honouring the contract, asked through the backend's own client."""
    wait_for_triton(settings, backend.client, beat)
    return check_model(settings, backend.client, backend)


# -- 4. Kafka -----------------------------------------------------------------------------------------------
def check_kafka(settings: KafkaSettings, beat: Beat = _no_beat) -> None:
    """Bootstrap within `settings.ready_timeout_s` and find the events, verdicts, retry and DLQ topics."""
    from kafka import KafkaConsumer

    from worker.stream.kafka_config import connection_config

    timeout = settings.ready_timeout_s
    log.info("waiting for Kafka", extra={"check": "kafka", "bootstrap_servers": settings.bootstrap_servers,
                                         "timeout_s": timeout})
    beat()
    refusal = _RefusalSeen()
    kafka_log = logging.getLogger("kafka")
    kafka_log.addHandler(refusal)
    try:
        consumer = KafkaConsumer(group_id=None, enable_auto_commit=False, bootstrap_timeout_ms=int(timeout * 1000),
                                 **connection_config(settings))
    except Exception as exc:
        # kafka-python retries a refused handshake until the bootstrap times out and raises only that; the
        # refusal itself (SASL, certificate) is in its connection log: that is the reason a person needs.
        if refusal.reason:
            raise StartupError(Failure.KAFKA_REFUSED,
                               f"{_kafka_who(settings)} was refused: {refusal.reason} "
                               f"({_credentials_hint(settings)})") from exc
        tls = ("; over TLS, also DFMOD_KAFKA__SSL_CAFILE: a broker certificate the worker does not trust looks "
               "like no answer" if "SSL" in settings.security_protocol else "")
        raise StartupError(Failure.KAFKA_UNREACHABLE,
                           f"Kafka at {settings.bootstrap_servers} did not answer within {timeout:g} s: "
                           f"{_short(exc)} (check DFMOD_KAFKA__BOOTSTRAP_SERVERS{tls})") from exc
    finally:
        kafka_log.removeHandler(refusal)
    try:
        beat()
        available = consumer.topics()
    except Exception as exc:
        raise StartupError(Failure.KAFKA_UNREACHABLE,
                           f"Kafka at {settings.bootstrap_servers}: cannot list topics: {_short(exc)}") from exc
    finally:
        consumer.close()
    # All four are the contract: without the DLQ a poison record cannot be parked, without the retry topic a
    # transient failure cannot wait for its next attempt; either would surface only at the first such event.
    wanted = {"EVENTS_TOPIC": settings.events_topic, "VERDICTS_TOPIC": settings.verdicts_topic,
              "RETRY_TOPIC": settings.retry_topic, "DLQ_TOPIC": settings.dlq_topic}
    missing = {name: topic for name, topic in wanted.items() if topic not in available}
    if missing and settings.security_protocol != "PLAINTEXT":
        check_kafka_grants(settings)  # under ACLs a topic it may not describe looks missing: say which grant lacks
    if missing:
        names = " / ".join(f"DFMOD_KAFKA__{name}" for name in missing)
        raise StartupError(Failure.KAFKA_UNREACHABLE,
                           f"Kafka at {settings.bootstrap_servers} has no topic {', '.join(missing.values())} "
                           f"(create it, or check {names})")
    if settings.security_protocol != "PLAINTEXT":
        check_kafka_grants(settings)


#: Kafka's AclOperation codes (org.apache.kafka.common.acl.AclOperation): ALL grants every one.
_ACL_CODES = {"ALL": 2, "READ": 3, "WRITE": 4, "DESCRIBE": 8}
_TOPIC_AUTHORIZATION_FAILED, _GROUP_AUTHORIZATION_FAILED = 29, 30


def _kafka_who(settings: KafkaSettings) -> str:
    """The listener and principal a refusal concerns, for the one line (never a secret)."""
    if settings.sasl_mechanism == "OAUTHBEARER":
        from worker.stream.kafka_config import token_subject

        principal = f"User:{token_subject(settings.sasl_oauth_token_file) or '?'} (the token's subject)"
    elif settings.sasl_mechanism == "AWS_MSK_IAM":
        principal = "the AWS identity botocore found"
    elif settings.security_protocol.startswith("SASL"):
        principal = f"User:{settings.sasl_username}"
    elif settings.ssl_certfile:
        principal = f"the principal of the client certificate {settings.ssl_certfile}"
    else:
        principal = "User:ANONYMOUS"
    return f"Kafka at {settings.bootstrap_servers} ({settings.security_protocol}, {principal})"


class _RefusalSeen(logging.Handler):
    """Keeps the last SASL or TLS refusal kafka-python logs while it bootstraps (its errors carry no secret)."""

    MARKS = ("SaslAuthenticationFailed", "CERTIFICATE_VERIFY_FAILED", "SSLError", "TLSV1_ALERT", "Handshake failed")

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.reason = ""

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if any(mark in text for mark in self.MARKS):
            self.reason = text.split("Connection lost: ")[-1].split("Connection failed: ")[-1][:300]


def _credentials_hint(settings: KafkaSettings) -> str:
    if settings.sasl_mechanism == "OAUTHBEARER":
        return "check the token in DFMOD_KAFKA__SASL_OAUTH_TOKEN_FILE, and DFMOD_KAFKA__SSL_CAFILE"
    if settings.security_protocol.startswith("SASL"):
        return ("check DFMOD_KAFKA__SASL_USERNAME / _SASL_PASSWORD / _SASL_MECHANISM, and DFMOD_KAFKA__SSL_CAFILE "
                "for the broker's certificate")
    return "check DFMOD_KAFKA__SSL_CAFILE and the client certificate DFMOD_KAFKA__SSL_CERTFILE / _SSL_KEYFILE"


def _allows(ops: Any, name: str) -> bool:
    """Whether an authorized-operations answer (Metadata, DescribeGroups) grants `name`: a bit field of Kafka's
    AclOperation codes, or the operations' names as kafka-python decodes some of them."""
    if ops is None or (isinstance(ops, int) and ops < 0):  # the broker did not say: the first use will tell
        return True
    if isinstance(ops, int):
        return bool(ops & (1 << _ACL_CODES[name]) or ops & (1 << _ACL_CODES["ALL"]))
    names = {str(getattr(op, "name", op)).upper() for op in ops}
    return name in names or "ALL" in names


def check_kafka_grants(settings: KafkaSettings) -> None:
    """Under ACLs: READ on the topics the worker consumes, WRITE on those it publishes to, READ on its group.

    Asked of the broker (authorized operations in Metadata and DescribeGroups), so a missing grant ends
    start-up with the grant to add instead of surfacing as a stuck consumer or a failed send later."""
    from kafka.admin import KafkaAdminClient

    from worker.stream.kafka_config import connection_config

    needs = {settings.events_topic: ["READ"], settings.retry_topic: ["READ", "WRITE"],
             settings.verdicts_topic: ["WRITE"], settings.dlq_topic: ["WRITE"]}
    from kafka import errors as kafka_errors

    admin = KafkaAdminClient(request_timeout_ms=10_000, **connection_config(settings))
    group: dict[str, Any] | None = {}
    try:
        topics = {t["name"]: t for t in admin.describe_topics(list(needs))}
        deadline = time.monotonic() + 15
        while True:
            try:
                group = admin.describe_groups([settings.group_id], include_authorized_operations=True).get(
                    settings.group_id, {})
                break
            except kafka_errors.GroupAuthorizationFailedError:
                group = None
                break
            except (kafka_errors.CoordinatorNotAvailableError, kafka_errors.NotCoordinatorError):
                # A new cluster creates its offsets topic on the first look-up: ask again, then let the first
                # join tell (the group grant cannot be read without a coordinator).
                if time.monotonic() > deadline:
                    group = {}
                    break
                time.sleep(0.5)
    finally:
        admin.close()
    lacking = []
    for topic, ops in needs.items():
        meta = topics.get(topic, {})
        granted = meta.get("topic_authorized_operations")
        if meta.get("error_code") == _TOPIC_AUTHORIZATION_FAILED:
            lacking += [f"{op} (and DESCRIBE) on topic {topic}" for op in ops]
        else:
            lacking += [f"{op} on topic {topic}" for op in ops if not _allows(granted, op)]
    if group is None or group.get("error_code") == _GROUP_AUTHORIZATION_FAILED or not _allows(
            group.get("authorized_operations"), "READ"):
        lacking.append(f"READ on group {settings.group_id}")
    if lacking:
        raise StartupError(Failure.KAFKA_REFUSED,
                           f"{_kafka_who(settings)} is not allowed {'; '.join(lacking)} "
                           "(grant it with kafka-acls.sh --add --allow-principal ...)")


# -- Redis (optional: a refusal is reported, not fatal) ------------------------------------------------------
def check_cache(settings: CacheSettings) -> str | None:
    """Whether Redis answers with these credentials and certificates. It is an optimisation: a refusal
    (wrong password, untrusted certificate, down) is logged once here, `/readyz` keeps naming it, and
    verdicts are scored uncached until it answers. Returns the problem, or None."""
    if not settings.enabled:
        return None
    parts = urlsplit(settings.url)
    address = f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}"  # never the URL: it may hold a password
    client = redis_client(settings)
    try:
        client.ping()
    except Exception as exc:
        problem = f"{type(exc).__name__}: {_short(exc)}"
        log.warning("Redis refused or did not answer: verdicts are scored uncached until it does",
                    extra={"check": "cache", "address": address, "user": settings.username or "default",
                           "error": problem})
        return problem
    finally:
        client.close()
    return None


# -- all of them --------------------------------------------------------------------------------------------
def run_checks(settings: WorkerSettings, backend: TritonBackend, beat: Beat = _no_beat) -> ModelInfo:
    """Every check, in order; returns the served model's info. Raises StartupError at the first failure."""
    started = time.monotonic()
    check_detector(settings.faces)
    model = check_triton(settings.triton, backend, beat)
    check_kafka(settings.kafka, beat)
    check_cache(settings.cache)
    log.info("start-up checks passed", extra={"seconds": round(time.monotonic() - started, 2),
                                               "model": f"{model.name}/{model.version}"})
    return model


def _short(exc: BaseException) -> str:
    """An exception as one line (gRPC errors carry multi-line debug strings)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]
