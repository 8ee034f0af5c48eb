"""The chart maps the secured transports: Redis ACL user + TLS, Triton gRPC TLS on both ends, from Secrets."""

from __future__ import annotations

from typing import Any

from worker.core.settings import WorkerSettings

from .conftest import Tools
from .test_chart import TRITON, WORKER, _env, _field_exists, container, one, parse, template, template_fails

SECURED = ("cache.url=rediss://redis:6380/0", "cache.username=dfmod", "cache.tls.existingSecret=redis-tls",
           "cache.tls.certKey=tls.crt", "cache.tls.keyKey=tls.key", "triton.tls.enabled=true",
           "triton.tls.serverSecret=triton-server-tls", "triton.tls.existingSecret=triton-ca")


def _mounts(deployment: dict[str, Any], name: str) -> dict[str, str]:
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    return {m["mountPath"]: volumes[m["name"]].get("secret", {}).get("secretName", "")
            for m in container(deployment, name)["volumeMounts"]}


def test_secured_redis_and_triton_are_mapped_from_secrets(tools: Tools) -> None:
    rendered = parse(template(tools, False, *SECURED))
    worker = one(rendered, "Deployment", WORKER)
    env = {k: v.get("value") for k, v in _env(worker, "worker").items()}
    for name in env:
        if name.startswith("DFMOD_"):
            assert _field_exists(WorkerSettings, name.removeprefix("DFMOD_").split("__")), name
    assert env["DFMOD_CACHE__URL"].startswith("rediss://") and env["DFMOD_CACHE__USERNAME"] == "dfmod"
    assert (env["DFMOD_CACHE__TLS_CA_FILE"], env["DFMOD_CACHE__TLS_CERT_FILE"], env["DFMOD_CACHE__TLS_KEY_FILE"]) == (
        "/etc/dfmod/redis-tls/ca.crt", "/etc/dfmod/redis-tls/tls.crt", "/etc/dfmod/redis-tls/tls.key")
    assert env["DFMOD_TRITON__TLS"] == "true" and env["DFMOD_TRITON__TLS_CA_FILE"] == "/etc/dfmod/triton-tls/ca.crt"
    mounts = _mounts(worker, "worker")
    assert mounts["/etc/dfmod/redis-tls"] == "redis-tls" and mounts["/etc/dfmod/triton-tls"] == "triton-ca"

    triton = one(rendered, "Deployment", TRITON)
    args = container(triton, "triton")["args"]
    assert "--grpc-use-ssl=true" in args
    assert "--grpc-server-cert=/etc/dfmod/triton-server-tls/tls.crt" in args
    assert _mounts(triton, "triton")["/etc/dfmod/triton-server-tls"] == "triton-server-tls"


def test_plaintext_renders_no_tls_settings(tools: Tools) -> None:
    env = _env(one(parse(template(tools)), "Deployment", WORKER), "worker")
    assert not [n for n in env if "TLS" in n or n == "DFMOD_CACHE__USERNAME"]


def test_secured_misconfigurations_fail_with_a_reason(tools: Tools) -> None:
    assert "set triton.tls.serverSecret" in template_fails(tools, "triton.tls.enabled=true")
    assert "set cache.tls.keyKey too" in template_fails(tools, "cache.tls.certKey=tls.crt")


def test_oauthbearer_takes_a_token_file_and_no_password(tools: Tools) -> None:
    sets = ("kafka.securityProtocol=SASL_SSL", "kafka.sasl.mechanism=OAUTHBEARER",
            "kafka.sasl.oauthTokenFile=/var/run/secrets/kafka/token")
    env = _env(one(parse(template(tools, False, *sets)), "Deployment", WORKER), "worker")
    assert env["DFMOD_KAFKA__SASL_MECHANISM"]["value"] == "OAUTHBEARER"
    assert env["DFMOD_KAFKA__SASL_OAUTH_TOKEN_FILE"]["value"] == "/var/run/secrets/kafka/token"
    assert "DFMOD_KAFKA__SASL_PASSWORD" not in env and "DFMOD_KAFKA__SASL_USERNAME" not in env
    assert "needs kafka.sasl.oauthTokenFile" in template_fails(tools, *sets[:2])
