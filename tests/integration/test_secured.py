"""Secured transports on real servers (deploy/local, DFMOD_STACK_TLS=1): Kafka SASL_SSL (SCRAM-SHA-512) and
mutual TLS behind ACLs, Redis over TLS as an ACL user, Triton gRPC over TLS.

The secured stack runs beside the session's plaintext one, in a stack dir of its own, with a throwaway CA
that deploy/local makes at start. Every refusal is sent for real: a wrong password, a missing ACL, the
`default` Redis user, a client that does not trust the server's CA, plaintext against a TLS port.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Stack, Topics, collect, create_topics, produce
from pydantic import SecretStr

from worker.core.settings import CacheSettings
from worker.scoring.cache import VerdictCache

from . import media
from .conftest import WorkerFactory
from .test_startup import non_json_lines, run_worker

SECURED_KEYS = ("DFMOD_CACHE__URL", "DFMOD_CACHE__USERNAME", "DFMOD_CACHE__PASSWORD", "DFMOD_CACHE__TLS_CA_FILE",
                "DFMOD_TRITON__URL", "DFMOD_TRITON__TLS", "DFMOD_TRITON__TLS_CA_FILE")
KAFKA_KEYS = ("DFMOD_KAFKA__BOOTSTRAP_SERVERS", "DFMOD_KAFKA__SECURITY_PROTOCOL", "DFMOD_KAFKA__SASL_MECHANISM",
              "DFMOD_KAFKA__SASL_USERNAME", "DFMOD_KAFKA__SASL_PASSWORD", "DFMOD_KAFKA__SSL_CAFILE")
#: The secured stack's own topics and group, which its ACLs grant to the worker's principals.
STACK_TOPICS = {"DFMOD_KAFKA__EVENTS_TOPIC": "media.events", "DFMOD_KAFKA__VERDICTS_TOPIC": "media.verdicts",
                "DFMOD_KAFKA__DLQ_TOPIC": "media.events.dlq", "DFMOD_KAFKA__RETRY_TOPIC": "media.events.retry",
                "DFMOD_KAFKA__GROUP_ID": "dfmod-worker"}


@pytest.fixture(scope="module")
def secured(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    stack = Stack(stack_dir=tmp_path_factory.mktemp("secured_stack"), model_repo=model_repo,
                  extra_env={"DFMOD_STACK_TLS": "1"})
    try:
        env = stack.up("redis", "triton", "kafka")
        assert env["DFMOD_CACHE__URL"].startswith("rediss://") and env["DFMOD_TRITON__TLS"] == "true"
        assert env["DFMOD_KAFKA__SECURITY_PROTOCOL"] == "SASL_SSL"
        yield {k: env[k] for k in (*SECURED_KEYS, *KAFKA_KEYS, "KAFKA_ADMIN_BOOTSTRAP", "KAFKA_SSL_PORT",
                                   "DFMOD_STACK_TLS_DIR")}
    finally:
        stack.down("redis", "triton", "kafka")


def _worker_env(secured: dict[str, str]) -> dict[str, str]:
    """Everything over the secured stack: Kafka SASL_SSL as dfmod-worker, Redis TLS, Triton TLS."""
    return {**{k: secured[k] for k in (*SECURED_KEYS, *KAFKA_KEYS)}, **STACK_TOPICS}


def _secrets(secured: dict[str, str]) -> list[str]:
    return [secured["DFMOD_CACHE__PASSWORD"], secured["DFMOD_KAFKA__SASL_PASSWORD"]]


def _cache(secured: dict[str, str], **changes: object) -> VerdictCache:
    settings = CacheSettings(url=secured["DFMOD_CACHE__URL"], username=secured["DFMOD_CACHE__USERNAME"],
                             password=SecretStr(secured["DFMOD_CACHE__PASSWORD"]),
                             tls_ca_file=secured["DFMOD_CACHE__TLS_CA_FILE"], retry_after_s=0.0)
    return VerdictCache(settings.model_copy(update=changes))


def test_redis_over_tls_as_an_acl_user_and_each_refusal(secured: dict[str, str]) -> None:
    cache = _cache(secured)
    cache.set("dfmod:verdict:secured-test", {"status": "ok"})
    assert cache.get("dfmod:verdict:secured-test") == {"status": "ok"} and cache.problem is None
    refusals = {
        "wrong password": _cache(secured, password=SecretStr("not-the-password")),
        "default user": _cache(secured, username=""),
        "untrusted CA": _cache(secured, tls_ca_file=""),  # the system's CAs do not know the throwaway one
        "plaintext to the TLS port": _cache(secured, url=secured["DFMOD_CACHE__URL"].replace("rediss:", "redis:"),
                                            tls_ca_file=""),
    }
    for case, refused in refusals.items():
        assert refused.get("dfmod:verdict:secured-test") is None, case  # never raises, never a wrong answer
        assert refused.errors == 1 and refused.problem, case
    assert "invalid username-password" in (refusals["wrong password"].problem or "")
    assert "certificate verify failed" in (refusals["untrusted CA"].problem or "").lower()


def test_the_demo_events_over_sasl_ssl_with_acls_and_tls_everywhere(
    secured: dict[str, str], start_worker: WorkerFactory
) -> None:
    worker = start_worker(**_worker_env(secured))
    admin = secured["KAFKA_ADMIN_BOOTSTRAP"]  # the stack's own listener: the test produces and reads there
    png, _ = media.unique_still()
    sent = [media.event(png, content_type="image/png"), media.event(media.video_mp4(), content_type="video/mp4"),
            media.event(b"not an image at all", content_type="image/png")]
    produce(admin, "media.events", [s[1:] for s in sent])
    first = {v["id"]: v["data"] for v in collect(admin, "media.verdicts", {s[0] for s in sent}, timeout_s=120)}
    again = media.event(png)
    produce(admin, "media.events", [again[1:]])
    repeat = {v["id"]: v["data"] for v in collect(admin, "media.verdicts", {again[0]}, timeout_s=60)}[again[0]]
    assert [first[s[0]]["status"] for s in sent] == ["ok", "ok", "rejected"]
    assert first[sent[0][0]]["cached"] is False and repeat["cached"] is True, "the TLS Redis serves the repeat"
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.http_port}/readyz", timeout=5) as r:
        assert r.read().decode() == "ready"
    log = worker.log_path.read_text()
    assert not [secret for secret in _secrets(secured) if secret in log]


def test_mutual_tls_listener_with_the_client_certificate(secured: dict[str, str],
                                                        start_worker: WorkerFactory) -> None:
    tls = Path(secured["DFMOD_STACK_TLS_DIR"])
    env = {**_worker_env(secured), "DFMOD_KAFKA__SECURITY_PROTOCOL": "SSL",
           "DFMOD_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{secured['KAFKA_SSL_PORT']}",
           "DFMOD_KAFKA__SSL_CERTFILE": str(tls / "client.crt"), "DFMOD_KAFKA__SSL_KEYFILE": str(tls / "client.key")}
    start_worker(**env)
    admin = secured["KAFKA_ADMIN_BOOTSTRAP"]
    event = media.event(media.unique_still()[0])
    produce(admin, "media.events", [event[1:]])
    verdict = {v["id"]: v["data"] for v in collect(admin, "media.verdicts", {event[0]}, timeout_s=60)}[event[0]]
    assert verdict["status"] == "ok"


def _unsigned_jwt(path: Path, subject: str) -> Path:
    """A token the stack's broker accepts (Kafka's unsecured-JWS validator: alg none, principal = sub)."""
    def part(claims: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")

    now = int(time.time())
    path.write_text(f"{part({'alg': 'none'})}.{part({'sub': subject, 'iat': now, 'exp': now + 3600})}.")
    return path


def test_oauthbearer_with_a_token_file(secured: dict[str, str], start_worker: WorkerFactory, tmp_path: Path) -> None:
    env = {k: v for k, v in _worker_env(secured).items() if not k.startswith("DFMOD_KAFKA__SASL_")}
    env |= {"DFMOD_KAFKA__SASL_MECHANISM": "OAUTHBEARER",
            "DFMOD_KAFKA__SASL_OAUTH_TOKEN_FILE": str(_unsigned_jwt(tmp_path / "token", "dfmod-worker"))}
    start_worker(**env)
    admin = secured["KAFKA_ADMIN_BOOTSTRAP"]
    event = media.event(media.unique_still()[0])
    produce(admin, "media.events", [event[1:]])
    verdict = {v["id"]: v["data"] for v in collect(admin, "media.verdicts", {event[0]}, timeout_s=60)}[event[0]]
    assert verdict["status"] == "ok"

    stranger = {**env, "DFMOD_KAFKA__SASL_OAUTH_TOKEN_FILE": str(_unsigned_jwt(tmp_path / "other", "stranger")),
                "DFMOD_KAFKA__READY_TIMEOUT_S": "8"}
    done = run_worker(stranger)
    line = done.stderr.splitlines()[-1]
    assert done.returncode == 16 and "(SASL_SSL, User:stranger (the token's subject)) is not allowed" in line, line


KAFKA_REFUSALS = {
    # case: (environment changes, exit code, words of the one line)
    "wrong password": ({"DFMOD_KAFKA__SASL_PASSWORD": "not-the-password"}, 16,
                       "(SASL_SSL, User:dfmod-worker) was refused"),
    "no ACL on the verdict topic": ({"DFMOD_KAFKA__VERDICTS_TOPIC": "media.verdicts.unlisted"}, 16,
                                    "is not allowed WRITE (and DESCRIBE) on topic media.verdicts.unlisted"),
    "no ACL on the group": ({"DFMOD_KAFKA__GROUP_ID": "another-group"}, 16,
                            "is not allowed READ on group another-group"),
    "untrusted broker certificate": ({"DFMOD_KAFKA__SSL_CAFILE": ""}, 16, "CERTIFICATE_VERIFY_FAILED"),
}


@pytest.mark.parametrize("case", list(KAFKA_REFUSALS))
def test_a_kafka_refusal_ends_start_up_with_one_line_naming_listener_and_principal(
    case: str, secured: dict[str, str], conn: dict[str, str]
) -> None:
    changes, code, words = KAFKA_REFUSALS[case]
    if case == "no ACL on the verdict topic":
        create_topics(secured["KAFKA_ADMIN_BOOTSTRAP"], {"media.verdicts.unlisted": 1})
    env = {**conn, **_worker_env(secured), "DFMOD_KAFKA__READY_TIMEOUT_S": "8", **changes}
    done = run_worker(env)
    line = done.stderr.splitlines()[-1] if done.stderr else ""
    assert done.returncode == code, done.stderr[-3000:]
    assert non_json_lines(done.stderr) == [line], done.stderr[-3000:]
    assert line.startswith("dfmod worker: error: Kafka at ") and words in line, line
    assert "Traceback" not in done.stderr
    assert not [secret for secret in _secrets(secured) if secret in done.stderr + done.stdout]


def test_a_redis_that_refuses_the_password_is_reported_and_the_worker_scores_uncached(
    secured: dict[str, str], bootstrap: str, topics: Topics, start_worker: WorkerFactory
) -> None:
    wrong = "wrong-" + secured["DFMOD_CACHE__PASSWORD"][:8]
    worker = start_worker(**{**{k: secured[k] for k in SECURED_KEYS}, "DFMOD_CACHE__PASSWORD": wrong})
    log = worker.log_path.read_text()
    assert "Redis refused or did not answer" in log and "invalid username-password" in log, log[-2000:]
    png, _ = media.unique_still()
    sent = [media.event(png), media.event(png)]
    produce(bootstrap, topics.events, [s[1:] for s in sent[:1]])
    collect(bootstrap, topics.verdicts, {sent[0][0]}, timeout_s=60)
    produce(bootstrap, topics.events, [s[1:] for s in sent[1:]])
    verdicts = {v["id"]: v["data"] for v in collect(bootstrap, topics.verdicts, {s[0] for s in sent}, timeout_s=60)}
    assert [verdicts[s[0]]["status"] for s in sent] == ["ok", "ok"], "a refused cache never replaces a verdict"
    assert [verdicts[s[0]]["cached"] for s in sent] == [False, False]
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.http_port}/readyz", timeout=5) as r:
        body = r.read().decode()
    assert r.status == 200 and body.startswith("ready; degraded: cache: ") and "AuthenticationError" in body, body
    assert "dfmod_cache_available 0.0" in worker.metrics()
    assert wrong not in worker.log_path.read_text() and wrong not in body


@pytest.mark.parametrize(("drop", "words"), [
    ("DFMOD_TRITON__TLS_CA_FILE", "CERTIFICATE_VERIFY_FAILED"),
    ("DFMOD_TRITON__TLS", "DFMOD_TRITON__TLS=true"),
], ids=["untrusted-certificate", "plaintext-client"])
def test_a_triton_tls_mismatch_ends_start_up_with_exit_12_and_the_reason(
    secured: dict[str, str], conn: dict[str, str], topics: Topics, drop: str, words: str
) -> None:
    env = {**conn, **topics.env(), **{k: secured[k] for k in SECURED_KEYS}, "DFMOD_TRITON__READY_TIMEOUT_S": "3"}
    env.pop("DFMOD_TRITON__TLS_CA_FILE")  # both cases: no CA for the client (plaintext cannot take one)
    if drop == "DFMOD_TRITON__TLS":
        env.pop(drop)
    started = time.monotonic()
    done = run_worker(env)
    assert done.returncode == 12, done.stderr[-3000:]
    line = done.stderr.splitlines()[-1]
    assert non_json_lines(done.stderr) == [line], done.stderr[-3000:]
    assert line.startswith("dfmod worker: error: Triton at ") and words in line, line
    assert "Traceback" not in done.stderr and time.monotonic() - started < 60
