"""Inference on a Triton server over gRPC, several requests in flight.

`async_infer` lets the batcher keep the GPU busy while earlier batches travel; a semaphore bounds the
requests in flight (`max_in_flight`) so a slow server pushes back on the batcher instead of piling up
requests, and every request carries a deadline (`timeout_s`) so a stuck server frees its slot.
The model's calibrated parameters are read once, at start-up, from the server's model config.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from worker.core.contracts import ModelInfo
from worker.core.model_config import config_from_json, model_info_from_parameters, parameters_from_config_json
from worker.core.retry import Backoff, GaveUp, retry_call
from worker.core.settings import TritonSettings
from worker.infer.base import (
    INPUT_NAME,
    OUTPUT_EMBEDDING,
    OUTPUT_FAKE_PROB,
    BatchLimits,
    InferenceError,
    ScoresCallback,
    checked_or_delivered,
    deliver,
    deliver_computed,
    limits_from_config,
    scores_from_outputs,
)

log = logging.getLogger(__name__)

#: Polling while Triton starts: quick at first (a local server is up in seconds), then every 2 s.
_READY_BACKOFF = Backoff(initial_s=0.25, factor=2.0, max_s=2.0, jitter=0.0)

#: Deadline of one control call (liveness, readiness, index, metadata, config): never holds /readyz or start-up.
CONTROL_TIMEOUT_S = 2.0


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)


def _once(fn: Callable[[], None]) -> Callable[[], None]:
    """`fn` wrapped to run at most once, whichever thread gets there first."""
    lock = threading.Lock()
    done = False

    def run() -> None:
        nonlocal done
        with lock:
            if done:
                return
            done = True
        fn()

    return run


def index_models(index: Mapping[str, Any] | list[Any] | None) -> list[Mapping[str, Any]]:
    """The entries of a repository index (`get_model_repository_index` JSON: a dict with `models`, or a list)."""
    models = index.get("models", []) if isinstance(index, Mapping) else index
    return [m for m in models or [] if isinstance(m, Mapping)]


def latest_ready_version(index: Mapping[str, Any] | list[Any], model_name: str) -> str | None:
    """Highest READY version of `model_name` in a repository index."""
    versions = [
        str(m.get("version", ""))
        for m in index_models(index)
        if m.get("name") == model_name and m.get("state") == "READY" and m.get("version")
    ]
    return max(versions, key=_version_key) if versions else None


def channel_args(settings: TritonSettings) -> list[tuple[str, Any]] | None:
    """gRPC channel options: tritonclient's own (no message size limit, its keepalive) plus the load-balancing
    policy; None keeps tritonclient's defaults as they are (`pick_first`)."""
    if settings.load_balancing == "pick_first":
        return None
    import tritonclient.grpc as grpcclient

    keepalive = grpcclient.KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.lb_policy_name", settings.load_balancing),
    ]


class TritonBackend:
    """`InferenceBackend` on tritonclient.grpc. `client` is injectable for unit tests only."""

    def __init__(self, settings: TritonSettings, client: Any | None = None) -> None:
        if client is None:
            import tritonclient.grpc as grpcclient  # heavy import, kept out of `dfmod --help`

            client = grpcclient.InferenceServerClient(
                url=settings.url, channel_args=channel_args(settings), ssl=settings.tls,
                root_certificates=settings.tls_ca_file or None, private_key=settings.tls_key_file or None,
                certificate_chain=settings.tls_cert_file or None,
            )
        self.settings = settings
        self._client = client
        self._slots = threading.BoundedSemaphore(max(1, settings.max_in_flight))
        self._version: str | None = settings.model_version or None
        self._info: ModelInfo | None = None
        self._limits = BatchLimits(max_in_flight=max(1, settings.max_in_flight))
        self._lock = threading.Lock()
        self._closed = False

    # -- start-up -------------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The gRPC client, which the start-up checks share (one connection to Triton per worker)."""
        return self._client

    def resolve_version(self) -> str:
        """The configured version, or the highest ready one (repository index, else model metadata)."""
        if self._version:
            return self._version
        name = self.settings.model_name
        version: str | None = None
        try:
            index = self._client.get_model_repository_index(as_json=True, client_timeout=CONTROL_TIMEOUT_S)
            version = latest_ready_version(index, name)
        except Exception as exc:  # the index API may be disabled or restricted; metadata is the fallback
            log.debug("repository index unavailable: %s", exc)
        if version is None:
            try:
                meta = self._client.get_model_metadata(
                    name, "", as_json=True, client_timeout=CONTROL_TIMEOUT_S
                )
            except Exception as exc:
                raise InferenceError(f"cannot read the metadata of model {name!r}: {exc}") from exc
            versions = [str(v) for v in (meta or {}).get("versions", [])]
            version = max(versions, key=_version_key) if versions else None
        if version is None:
            raise InferenceError(f"model {name!r} has no ready version on {self.settings.url}")
        self._version = version
        return version

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Block until the server is live and the model ready, then load `model_info`.

        Raises InferenceError on timeout, ValueError at once on malformed model parameters.
        """
        def check() -> None:
            if not self._client.is_server_live(client_timeout=CONTROL_TIMEOUT_S):
                raise InferenceError("server not live")
            version = self.resolve_version()
            if not self._client.is_model_ready(self.settings.model_name, version, client_timeout=CONTROL_TIMEOUT_S):
                raise InferenceError(f"model {self.settings.model_name}/{version} not ready")
            self.model_info()

        try:
            retry_call(
                check,
                retry_on=lambda exc: not isinstance(exc, ValueError),  # malformed parameters: waiting won't fix
                backoff=_READY_BACKOFF,
                deadline_s=self.settings.ready_timeout_s if timeout_s is None else timeout_s,
            )
        except GaveUp as exc:
            raise InferenceError(f"Triton at {self.settings.url} not ready: {exc.last}") from exc

    def model_info(self) -> ModelInfo:
        """Name, version and calibrated parameters; fetched from the server once, then cached."""
        with self._lock:
            if self._info is None:
                version = self.resolve_version()
                try:
                    config = self._client.get_model_config(
                        self.settings.model_name, version, as_json=True, client_timeout=CONTROL_TIMEOUT_S
                    )
                except Exception as exc:
                    raise InferenceError(
                        f"cannot read the config of {self.settings.model_name}/{version}: {exc}"
                    ) from exc
                self._info = model_info_from_parameters(
                    self.settings.model_name, version, parameters_from_config_json(config or {})
                )
                self._limits = limits_from_config(config_from_json(config or {}), self.settings.max_in_flight)
            return self._info

    def batch_limits(self) -> BatchLimits:
        """The served config's max and preferred batch sizes (read with `model_info`) and `max_in_flight`."""
        self.model_info()
        return self._limits

    def is_ready(self) -> bool:
        """For /readyz: server live and the model version we serve ready. Never raises."""
        try:
            version = self._version or self.resolve_version()
            return bool(
                self._client.is_server_live(client_timeout=CONTROL_TIMEOUT_S)
                and self._client.is_model_ready(
                    self.settings.model_name, version, client_timeout=CONTROL_TIMEOUT_S
                )
            )
        except Exception:
            return False

    # -- inference ------------------------------------------------------------------------------------

    def infer_async(self, faces: np.ndarray, callback: ScoresCallback) -> None:
        """Send one request; blocks only while `max_in_flight` requests are out. Errors go to `callback`."""
        batch = checked_or_delivered(faces, callback)
        if batch is None:
            return
        if self._closed:
            deliver(callback, None, InferenceError("Triton backend is closed"))
            return
        if not self._slots.acquire(timeout=self.settings.timeout_s):
            error = InferenceError(f"no free inference slot within {self.settings.timeout_s} s")
            deliver(callback, None, error)
            return
        n = int(batch.shape[0])
        release = _once(self._slots.release)

        def on_done(result: Any = None, error: Any = None) -> None:
            release()
            if error is not None:
                deliver(callback, None, InferenceError(f"Triton inference failed: {error}"))
                return
            deliver_computed(
                callback,
                lambda: scores_from_outputs(result.as_numpy(OUTPUT_FAKE_PROB), result.as_numpy(OUTPUT_EMBEDDING), n),
                "unreadable Triton answer",
            )

        try:
            import tritonclient.grpc as grpcclient

            inp = grpcclient.InferInput(INPUT_NAME, list(batch.shape), "UINT8")
            inp.set_data_from_numpy(batch)
            outputs = [
                grpcclient.InferRequestedOutput(OUTPUT_FAKE_PROB),
                grpcclient.InferRequestedOutput(OUTPUT_EMBEDDING),
            ]
            self._client.async_infer(
                self.settings.model_name,
                [inp],
                callback=on_done,
                model_version=self._version or "",
                outputs=outputs,
                client_timeout=self.settings.timeout_s,
            )
        except Exception as exc:
            release()
            deliver(callback, None, InferenceError(f"could not send to Triton: {exc}"))

    def close(self) -> None:
        self._closed = True
        try:
            self._client.close()
        except Exception as exc:  # closing is best effort
            log.debug("closing the Triton client: %s", exc)

