"""The chart on day one: what a platform engineer's review of the rendered manifests found would hurt first.

Each test renders the chart with the released `helm` and checks one defect that `helm lint` and kubeconform
let through (first-install crash loop, an open model-load API, a shared cloud identity, gRPC pinned to one
Triton pod, a strategy the API server rejects, an hpa -> keda switch KEDA refuses, named ports, an outage per
upgrade, unbounded scratch disk, secrets rotated without a restart).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from worker.core.settings import TritonSettings
from worker.infer.triton import channel_args

from .conftest import Tools
from .test_chart import (
    CHART,
    NAMESPACE,
    TRITON,
    WORKER,
    Manifest,
    _env,
    _settings_from,
    container,
    one,
    parse,
    run,
    template,
    values_args,
)

pytestmark = pytest.mark.timeout(600)


def release(tools: Tools, name: str, production: bool = False, *sets: str) -> list[Manifest]:
    out = run([tools.helm, "template", name, CHART, "-n", NAMESPACE, *values_args(production, sets)])
    assert out.returncode == 0, out.stderr
    return parse(out.stdout)


def pod_spec(deployment: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# 1. first install -------------------------------------------------------------------------------------------


def test_workers_wait_for_triton_as_long_as_the_chart_lets_triton_start(tools: Tools,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    rendered = parse(template(tools))
    worker_env = _env(one(rendered, "Deployment", WORKER), "worker")
    settings = _settings_from(worker_env, monkeypatch)
    probe = container(one(rendered, "Deployment", TRITON), "triton")["startupProbe"]
    triton_budget_s = probe["periodSeconds"] * probe["failureThreshold"]
    assert settings.triton.ready_timeout_s >= triton_budget_s + 300, (
        "a worker must outwait Triton's own start (plus scheduling and the image pull), not exit 12 before it")
    assert settings.triton.ready_timeout_s > TritonSettings().ready_timeout_s

    chosen = parse(template(tools, False, "worker.settings.triton.ready_timeout_s=42"))
    env = container(one(chosen, "Deployment", WORKER), "worker")["env"]
    names = [e["name"] for e in env]
    assert names.count("DFMOD_TRITON__READY_TIMEOUT_S") == 1, "the user's value, once"
    assert _settings_from(_env(one(chosen, "Deployment", WORKER), "worker"), monkeypatch).triton.ready_timeout_s == 42


# 2. the model-load API --------------------------------------------------------------------------------------


@pytest.mark.parametrize("prod", [False, True], ids=["default", "production"])
def test_triton_loads_the_repository_at_start_and_refuses_model_loads(tools: Tools, prod: bool) -> None:
    args = container(one(parse(template(tools, prod)), "Deployment", TRITON), "triton")["args"]
    assert "--model-control-mode=none" in args, args
    assert not any(a.startswith("--load-model") for a in args)


# 3. identities ---------------------------------------------------------------------------------------------


def test_worker_and_triton_have_their_own_service_accounts(tools: Tools) -> None:
    rendered = parse(template(tools, True))
    worker_sa = pod_spec(one(rendered, "Deployment", WORKER))["serviceAccountName"]
    triton_sa = pod_spec(one(rendered, "Deployment", TRITON))["serviceAccountName"]
    assert worker_sa != triton_sa
    role = "eks.amazonaws.com/role-arn"
    assert role in one(rendered, "ServiceAccount", triton_sa)["metadata"].get("annotations", {})
    assert role not in (one(rendered, "ServiceAccount", worker_sa)["metadata"].get("annotations") or {}), (
        "Triton's S3 role must not reach the pods that fetch attacker-supplied URLs")
    for sa in (worker_sa, triton_sa):
        assert one(rendered, "ServiceAccount", sa)["automountServiceAccountToken"] is False

    without_triton = release(tools, "dfmod", False, "triton.enabled=false", "triton.externalUrl=t:8001")
    assert [m["metadata"]["name"] for m in without_triton if m["kind"] == "ServiceAccount"] == [WORKER]


# 4. gRPC spread over Triton pods ------------------------------------------------------------------------------


def test_workers_spread_requests_over_every_triton_pod(tools: Tools, monkeypatch: pytest.MonkeyPatch) -> None:
    rendered = parse(template(tools, True))
    settings = _settings_from(_env(one(rendered, "Deployment", WORKER), "worker"), monkeypatch)
    assert settings.triton.load_balancing == "round_robin"
    host = settings.triton.url.removeprefix("dns:///").rsplit(":", 1)[0]
    assert settings.triton.url.startswith("dns:///"), "round_robin needs the name resolved to every pod"
    headless = one(rendered, "Service", host)
    assert headless["spec"]["clusterIP"] == "None", "a ClusterIP name resolves to one virtual IP: one pod per worker"
    triton_labels = one(rendered, "Deployment", TRITON)["spec"]["template"]["metadata"]["labels"]
    assert matches(headless["spec"]["selector"], triton_labels)
    assert [p["port"] for p in headless["spec"]["ports"]] == [8001]

    args = dict(channel_args(settings.triton) or [])
    assert args["grpc.lb_policy_name"] == "round_robin"
    assert args["grpc.max_receive_message_length"] == args["grpc.max_send_message_length"] == 2**31 - 1, (
        "tritonclient's own limits kept: a batch of 32 crops is over gRPC's 4 MB default")
    assert channel_args(TritonSettings()) is None

    rules = parse(template(tools, True, "metrics.prometheusRule.enabled=true"))
    alerts = {r["alert"]: r for g in one(rules, "PrometheusRule", "dfmod")["spec"]["groups"] for r in g["rules"]}
    assert alerts["DfmodTritonQueueing"]["expr"].count("sum by (pod)") == 2, "one hot pod must not be averaged away"


# 5. strategy ---------------------------------------------------------------------------------------------


def test_a_recreate_strategy_renders_without_rolling_update_limits(tools: Tools) -> None:
    rendered = parse(template(tools, False, "triton.strategy.type=Recreate"))
    assert one(rendered, "Deployment", TRITON)["spec"]["strategy"] == {"type": "Recreate"}


# 6. autoscaling -----------------------------------------------------------------------------------------------


def test_keda_takes_over_the_hpa_and_watches_every_topic_the_workers_consume(tools: Tools) -> None:
    hpa = one(parse(template(tools)), "HorizontalPodAutoscaler", WORKER)
    rendered = parse(template(tools, True))
    scaled = one(rendered, "ScaledObject", WORKER)
    assert scaled["metadata"]["annotations"]["scaledobject.keda.sh/transfer-hpa-ownership"] == "true"
    assert scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["name"] == hpa["metadata"]["name"], (
        "KEDA adopts the chart's HPA only under its own name")
    env = _env(one(rendered, "Deployment", WORKER), "worker")
    consumed = {env["DFMOD_KAFKA__EVENTS_TOPIC"]["value"], env["DFMOD_KAFKA__RETRY_TOPIC"]["value"]}
    assert {t["metadata"]["topic"] for t in scaled["spec"]["triggers"]} == consumed, (
        "lag on the retry topic must keep workers up")
    assert scaled["spec"]["fallback"]["replicas"] >= 1


# 7. network policies and a canary beside the main release ------------------------------------------------------


def test_network_policies_use_port_numbers_and_let_a_canary_reach_the_main_triton(tools: Tools) -> None:
    main = release(tools, "dfmod", False, "networkPolicy.enabled=true", "networkPolicy.egress.enabled=true",
                   "metrics.grafanaDashboard.enabled=true")
    canary = release(tools, "dfmod-canary", False, "networkPolicy.enabled=true", "networkPolicy.egress.enabled=true",
                     "metrics.grafanaDashboard.enabled=true", "triton.enabled=false",
                     "triton.externalUrl=dns:///dfmod-triton-pods:8001")
    for policy in (m for m in main + canary if m["kind"] == "NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []) + policy["spec"].get("egress", []):
            assert all(isinstance(p["port"], int) for p in rule.get("ports", [])), (policy["metadata"]["name"], rule)

    canary_worker = one(canary, "Deployment", "dfmod-canary-worker")["spec"]["template"]["metadata"]["labels"]
    main_triton = one(main, "Deployment", TRITON)["spec"]["template"]["metadata"]["labels"]
    inbound = one(main, "NetworkPolicy", TRITON)["spec"]["ingress"]
    assert any(8001 in [p["port"] for p in r["ports"]] and
               any(matches(f["podSelector"]["matchLabels"], canary_worker) for f in r.get("from", []))
               for r in inbound), "the main Triton admits the canary's workers"
    outbound = one(canary, "NetworkPolicy", "dfmod-canary-worker")["spec"]["egress"]
    assert any(8001 in [p["port"] for p in r["ports"]] and
               any(matches(t["podSelector"]["matchLabels"], main_triton) for t in r.get("to", []))
               for r in outbound), "the canary's workers may call the main Triton"

    boards = [next(m for m in rendered if m["kind"] == "ConfigMap" and m["metadata"]["name"].endswith("-dashboard"))
              for rendered in (main, canary)]
    keys = [next(iter(b["data"])) for b in boards]
    assert keys[0] != keys[1], "the sidecar writes each key as a file: the same key overwrites"
    uids = [json.loads(b["data"][k])["uid"] for b, k in zip(boards, keys, strict=True)]
    assert uids[0] == "dfmod-workers" and uids[0] != uids[1] and len(uids[1]) <= 40


# 8. upgrades, disk, rotation ------------------------------------------------------------------------------------


def test_a_triton_upgrade_keeps_a_pod_serving(tools: Tools) -> None:
    deployment = one(parse(template(tools)), "Deployment", TRITON)
    assert deployment["spec"]["replicas"] == 1
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1, "one replica and maxUnavailable 1 is an outage"


EMPTY_DIR_REPOSITORY = ("triton.modelRepository.type=emptyDir", "triton.modelRepository.init.enabled=true",
                        "triton.modelRepository.init.command={cp,-r,/repo/.,/models/}")


@pytest.mark.parametrize("sets", [(), EMPTY_DIR_REPOSITORY], ids=["s3", "emptyDir"])
def test_triton_scratch_disk_is_bounded_and_requested(tools: Tools, sets: tuple[str, ...]) -> None:
    deployment = one(parse(template(tools, True, *sets)), "Deployment", TRITON)
    spec = pod_spec(deployment)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["tmp"]["emptyDir"].get("sizeLimit"), "the S3 copy lands in /tmp"
    requests = container(deployment, "triton")["resources"]["requests"]
    assert requests.get("ephemeral-storage"), "the scheduler must place Triton where its repository copy fits"
    for init in spec.get("initContainers", []):
        assert init.get("resources", {}).get("limits", {}).get("memory"), "the init container has resources"


def test_deployments_restart_when_a_referenced_secret_rotates(tools: Tools) -> None:
    rendered = parse(template(tools, True, "triton.modelRepository.s3.existingSecret=dfmod-s3"))
    reload = "secret.reloader.stakater.com/reload"
    worker = one(rendered, "Deployment", WORKER)["metadata"]["annotations"][reload].split(",")
    referenced = {e["valueFrom"]["secretKeyRef"]["name"]
                  for e in container(one(rendered, "Deployment", WORKER), "worker")["env"] if "valueFrom" in e}
    mounted = {v["secret"]["secretName"] for v in pod_spec(one(rendered, "Deployment", WORKER))["volumes"]
               if "secret" in v}
    assert referenced | mounted <= set(worker)
    assert one(rendered, "Deployment", TRITON)["metadata"]["annotations"][reload] == "dfmod-s3"
    off = parse(template(tools, True, "rolloutOnSecretChange=false"))
    assert reload not in (one(off, "Deployment", WORKER)["metadata"].get("annotations") or {})
