"""Redis over TLS with an ACL user and Triton gRPC over TLS, on real servers (deploy/local, DFMOD_STACK_TLS=1).

The secured Redis and Triton run beside the session's plaintext stack, in a stack dir of their own, with a
throwaway CA that deploy/local makes at start. Every refusal is sent for real: a wrong password, the
`default` user, a client that does not trust the server's CA, plaintext against a TLS port.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Stack, Topics, collect, produce
from pydantic import SecretStr

from worker.core.settings import CacheSettings
from worker.scoring.cache import VerdictCache

from . import media
from .conftest import WorkerFactory
from .test_startup import non_json_lines, run_worker

SECURED_KEYS = ("DFMOD_CACHE__URL", "DFMOD_CACHE__USERNAME", "DFMOD_CACHE__PASSWORD", "DFMOD_CACHE__TLS_CA_FILE",
                "DFMOD_TRITON__URL", "DFMOD_TRITON__TLS", "DFMOD_TRITON__TLS_CA_FILE")


@pytest.fixture(scope="module")
def secured(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    stack = Stack(stack_dir=tmp_path_factory.mktemp("secured_stack"), model_repo=model_repo,
                  extra_env={"DFMOD_STACK_TLS": "1"})
    try:
        env = stack.up("redis", "triton")
        assert env["DFMOD_CACHE__URL"].startswith("rediss://") and env["DFMOD_TRITON__TLS"] == "true"
        yield {k: env[k] for k in SECURED_KEYS}
    finally:
        stack.down("redis", "triton")


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


def test_a_worker_over_tls_scores_caches_and_never_logs_the_password(
    secured: dict[str, str], bootstrap: str, topics: Topics, start_worker: WorkerFactory
) -> None:
    worker = start_worker(**secured)
    png, _ = media.unique_still()
    first, again = media.event(png), media.event(png)
    produce(bootstrap, topics.events, [first[1:]])
    collect(bootstrap, topics.verdicts, {first[0]}, timeout_s=60)
    produce(bootstrap, topics.events, [again[1:]])
    verdicts = {v["id"]: v["data"] for v in collect(bootstrap, topics.verdicts, {first[0], again[0]}, timeout_s=60)}
    assert verdicts[first[0]]["status"] == "ok" and verdicts[first[0]]["cached"] is False
    assert verdicts[again[0]]["cached"] is True, "the TLS Redis with the ACL user serves the repeat"
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.http_port}/readyz", timeout=5) as r:
        assert r.read().decode() == "ready"
    assert secured["DFMOD_CACHE__PASSWORD"] not in worker.log_path.read_text()


def test_a_redis_that_refuses_the_password_is_reported_and_the_worker_scores_uncached(
    secured: dict[str, str], bootstrap: str, topics: Topics, start_worker: WorkerFactory
) -> None:
    wrong = "wrong-" + secured["DFMOD_CACHE__PASSWORD"][:8]
    worker = start_worker(**{**secured, "DFMOD_CACHE__PASSWORD": wrong})
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
    env = {**conn, **topics.env(), **secured, "DFMOD_TRITON__READY_TIMEOUT_S": "3"}
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
