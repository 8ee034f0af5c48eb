"""The Helm chart, the compose file and the Dockerfiles, checked by real tools.

helm, kubeconform and docker-compose are the released tools; dockerfile-check is BuildKit's own Dockerfile
frontend (parse, convert to the build graph, `docker build --check` rules) run without an engine.

Why real tools: a chart is only as good as what `helm` renders and the API server accepts. The tools are built
by deploy/tools.sh (pinned, cached in .tools/bin); a missing tool is built here, never skipped. Rendered
objects are validated with `kubeconform -strict` against the schemas vendored in deploy/crds/, whose
strictness is itself tested (a typo must fail), and the worker's environment is parsed by the worker's own
settings class, so chart and worker cannot drift apart.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from pydantic import BaseModel

import worker.obs.metrics  # noqa: F401  (registers the worker's metrics in REGISTRY)
from worker.core.settings import WorkerSettings

from .conftest import Tools

# Cold tool builds take minutes (helm compiles half of Kubernetes); everything else takes seconds.
pytestmark = pytest.mark.timeout(1800)

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "dfmod"
PRODUCTION = CHART / "values-production.yaml"
CRDS = REPO / "deploy" / "crds"
COMPOSE_DIR = REPO / "deploy" / "docker"
K8S_VERSION = "1.35.4"  # the Kubernetes schemas vendored in deploy/crds/kubernetes
CRD_SCHEMAS = str(CRDS) + "/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json"  # kubeconform template
RELEASE, NAMESPACE = "dfmod", "dfmod"
WORKER, TRITON = f"{RELEASE}-worker", f"{RELEASE}-triton"

Manifest = dict[str, Any]


def run(args: list[str | Path], stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], input=stdin, capture_output=True, text=True, timeout=timeout, check=False,
        env={**os.environ, "HELM_CACHE_HOME": "/tmp/dfmod-helm", "HELM_CONFIG_HOME": "/tmp/dfmod-helm",
             "HELM_DATA_HOME": "/tmp/dfmod-helm"},
    )


def values_args(production: bool, sets: tuple[str, ...] = (), set_strings: tuple[str, ...] = ()) -> list[str]:
    args = ["-f", str(PRODUCTION)] if production else []
    for s in sets:
        args += ["--set", s]
    for s in set_strings:
        args += ["--set-string", s]
    return args


def template(tools: Tools, production: bool = False, *sets: str, set_strings: tuple[str, ...] = ()) -> str:
    out = run([tools.helm, "template", RELEASE, CHART, "-n", NAMESPACE,
               *values_args(production, sets, set_strings)])
    assert out.returncode == 0, out.stderr
    return out.stdout


def template_fails(tools: Tools, *sets: str) -> str:
    out = run([tools.helm, "template", RELEASE, CHART, "-n", NAMESPACE, *values_args(False, sets)])
    assert out.returncode != 0, f"helm template accepted {sets}"
    return out.stderr


def parse(text: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def kinds(manifests: list[Manifest]) -> list[tuple[str, str]]:
    return sorted((m["kind"], m["metadata"]["name"]) for m in manifests)


def one(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def container(deployment: Manifest, name: str) -> dict[str, Any]:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def kubeconform(tools: Tools, text: str) -> dict[str, Any]:
    out = run([tools.kubeconform, "-strict", "-summary", "-output", "json", "-verbose",
               "-kubernetes-version", K8S_VERSION,
               "-schema-location", CRDS / "kubernetes",
               "-schema-location", CRD_SCHEMAS,
               "-"], stdin=text)
    report: dict[str, Any] = json.loads(out.stdout)
    report["returncode"] = out.returncode
    return report


@pytest.fixture(scope="module")
def default(tools: Tools) -> list[Manifest]:
    return parse(template(tools))


@pytest.fixture(scope="module")
def production(tools: Tools) -> list[Manifest]:
    return parse(template(tools, True))


# --- helm lint and the values schema ---------------------------------------------------------------------


@pytest.mark.parametrize("prod", [False, True], ids=["default", "production"])
def test_helm_lint_strict(tools: Tools, prod: bool) -> None:
    out = run([tools.helm, "lint", "--strict", CHART, *values_args(prod)])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


def _load_values_schema_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("values_schema", REPO / "deploy" / "helm" / "values_schema.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_values_schema_is_generated_from_current_settings() -> None:
    """values.schema.json mirrors WorkerSettings; a new setting without a regenerated schema fails here."""
    module = _load_values_schema_module()
    assert (CHART / "values.schema.json").read_text() == module.render(), (
        "stale: run PYTHONPATH=. .venv/bin/python deploy/helm/values_schema.py")


@pytest.mark.parametrize("bad", [
    "worker.setings.log_level=DEBUG",            # typo in our own object
    "worker.settings.decode.frame=16",           # typo inside the settings mirror
    "worker.settings.kafka.sasl_password=hunter2",  # secrets are never inline values
    "worker.settings.kafka.bootstrap_servers=x:1",  # chart-owned: set kafka.bootstrapServers instead
    "worker.settings.kafka.group_instance_id=pod-0",  # chart-owned: one fixed id would fence all replicas but one
    "kafka.securityProtocol=SSL_SASL",           # not an enum value
    "worker.autoscaling.type=both",              # HPA and KEDA exclude each other by construction
    "triton.gpus=-1",
    "metrics.prometheusRule.runbookBaseUrl=docs/deploy.md",  # alert links must be absolute (Alertmanager, Grafana)
])
def test_values_schema_rejects(tools: Tools, bad: str) -> None:
    stderr = template_fails(tools, bad)
    assert "schema" in stderr.lower(), stderr


@pytest.mark.parametrize(("sets", "message"), [
    (("kafka.securityProtocol=SASL_SSL",), "kafka.sasl.existingSecret"),
    (("kafka.eventsPartitions=4",), "exceeds kafka.eventsPartitions"),
    (("worker.terminationGracePeriodSeconds=20",), "must exceed worker.settings.drain_timeout_s"),
    (("triton.enabled=false",), "triton.externalUrl"),
    (("triton.modelRepository.type=pvc",), "claimName"),
    (("triton.modelRepository.type=emptyDir",), "modelRepository.init"),
    (("kafka.tls.certKey=tls.crt",), "keyKey"),
])
def test_cross_value_checks_fail_with_a_reason(tools: Tools, sets: tuple[str, ...], message: str) -> None:
    assert message in template_fails(tools, *sets)


def _undocumented_keys(text: str) -> list[str]:
    """Keys whose line is not preceded by a comment line; the inside of list items (Kubernetes data such as
    a toleration) is exempt, the item itself is not."""
    lines = text.splitlines()
    item_indent: int | None = None
    missing = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if item_indent is not None and indent > item_indent:
            continue
        item_indent = indent if stripped.startswith("- ") else None
        if re.match(r"^(- )?[A-Za-z_][\w./-]*:", stripped) and not lines[i - 1].strip().startswith("#"):
            missing.append(f"{i + 1}: {stripped}")
    return missing


@pytest.mark.parametrize("path", [CHART / "values.yaml", PRODUCTION], ids=lambda p: p.name)
def test_every_values_key_is_documented(path: Path) -> None:
    """Every key of the values files has a comment right above it (the files are the reference)."""
    assert _undocumented_keys(path.read_text()) == []
    assert _undocumented_keys("a: 1\n# b\nb: 2\n") == ["1: a: 1"]  # the check itself can fail


def test_values_yaml_settings_match_worker_defaults() -> None:
    """values.yaml may show worker settings, but must not silently change the worker's defaults."""
    settings = yaml.safe_load((CHART / "values.yaml").read_text())["worker"]["settings"]
    defaults = WorkerSettings().model_dump(mode="json")
    for key, value in settings.items():
        assert defaults[key] == value, key


# --- what is rendered ------------------------------------------------------------------------------------


def test_default_renders_hpa_and_no_optional_crds(default: list[Manifest]) -> None:
    assert kinds(default) == sorted([
        ("Deployment", WORKER), ("Deployment", TRITON), ("Service", WORKER), ("Service", TRITON),
        ("Service", f"{TRITON}-pods"), ("ServiceAccount", WORKER), ("ServiceAccount", TRITON),
        ("PodDisruptionBudget", WORKER), ("PodDisruptionBudget", TRITON),
        ("HorizontalPodAutoscaler", WORKER),
    ])
    assert "replicas" not in one(default, "Deployment", WORKER)["spec"], "the HPA owns the replica count"


def test_production_renders_keda_monitoring_and_policies(production: list[Manifest]) -> None:
    assert kinds(production) == sorted([
        ("Deployment", WORKER), ("Deployment", TRITON), ("Service", WORKER), ("Service", TRITON),
        ("Service", f"{TRITON}-pods"), ("ServiceAccount", WORKER), ("ServiceAccount", TRITON),
        ("PodDisruptionBudget", WORKER), ("PodDisruptionBudget", TRITON),
        ("ScaledObject", WORKER), ("TriggerAuthentication", f"{WORKER}-kafka"),
        ("ServiceMonitor", WORKER), ("ServiceMonitor", TRITON), ("PrometheusRule", RELEASE),
        ("ConfigMap", f"{RELEASE}-dashboard"), ("NetworkPolicy", WORKER), ("NetworkPolicy", TRITON),
    ])
    scaled = one(production, "ScaledObject", WORKER)["spec"]
    trigger = scaled["triggers"][0]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == "dfmod-worker"
    assert trigger["metadata"]["topic"] == "media.events"
    assert trigger["metadata"]["sasl"] == "scram_sha512" and trigger["metadata"]["tls"] == "enable"
    assert scaled["maxReplicaCount"] <= 24, "at most one worker per partition"
    auth = one(production, "TriggerAuthentication", f"{WORKER}-kafka")["spec"]
    assert {r["parameter"] for r in auth["secretTargetRef"]} == {"username", "password", "ca"}


@pytest.mark.parametrize(("kind", "present"), [("none", None), ("hpa", "HorizontalPodAutoscaler"),
                                               ("keda", "ScaledObject")])
def test_autoscalers_exclude_each_other(tools: Tools, kind: str, present: str | None) -> None:
    rendered = parse(template(tools, False, f"worker.autoscaling.type={kind}"))
    scalers = {m["kind"] for m in rendered} & {"HorizontalPodAutoscaler", "ScaledObject"}
    assert scalers == ({present} if present else set())
    spec = one(rendered, "Deployment", WORKER)["spec"]
    assert ("replicas" in spec) == (kind == "none")


def _env(deployment: Manifest, name: str) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(deployment, name).get("env", [])}


@pytest.mark.parametrize("prod", [False, True], ids=["default", "production"])
def test_secrets_are_references_never_values(tools: Tools, prod: bool) -> None:
    rendered = parse(template(tools, prod))
    assert "Secret" not in {m["kind"] for m in rendered}, "the chart must not create Secrets"
    for deployment in (m for m in rendered if m["kind"] == "Deployment"):
        for c in deployment["spec"]["template"]["spec"]["containers"]:
            for env in c.get("env", []):
                if re.search(r"PASSWORD|SECRET|TOKEN|_KEY$|USERNAME", env["name"]):
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], env


def test_production_worker_wiring(production: list[Manifest]) -> None:
    worker = one(production, "Deployment", WORKER)
    env = _env(worker, "worker")
    assert env["DFMOD_KAFKA__BOOTSTRAP_SERVERS"]["value"].startswith("kafka-0.")
    assert env["DFMOD_KAFKA__SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "dfmod-kafka", "key": "password"}
    assert env["DFMOD_CACHE__PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "dfmod-redis"
    assert env["DFMOD_KAFKA__SSL_CAFILE"]["value"] == "/etc/dfmod/kafka-tls/ca.crt"
    pod = worker["spec"]["template"]["spec"]
    tls = next(v for v in pod["volumes"] if v["name"] == "kafka-tls")
    assert tls["secret"]["secretName"] == "dfmod-kafka-tls"
    assert pod["terminationGracePeriodSeconds"] == 45 + 30
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container(worker, "worker")["securityContext"]["readOnlyRootFilesystem"] is True
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    assert all(c["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "worker"
               for c in pod["topologySpreadConstraints"])


def test_triton_requests_gpus_only_in_production(default: list[Manifest], production: list[Manifest]) -> None:
    prod = container(one(production, "Deployment", TRITON), "triton")
    assert prod["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert prod["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--model-repository=s3://dfmod-models/triton_models" in prod["args"]
    assert "--model-control-mode=none" in prod["args"] and not any("--load-model" in a for a in prod["args"])
    assert prod["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert prod["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    pod = one(production, "Deployment", TRITON)["spec"]["template"]["spec"]
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    cpu_only = container(one(default, "Deployment", TRITON), "triton")
    assert "nvidia.com/gpu" not in json.dumps(cpu_only["resources"])


def test_triton_repository_from_a_volume_filled_by_an_init_container(tools: Tools) -> None:
    rendered = parse(template(
        tools, False, "triton.modelRepository.type=pvc", "triton.modelRepository.pvc.claimName=models",
        "triton.modelRepository.init.enabled=true", "triton.modelRepository.init.command={cp,-r,/repo/.,/models/}",
        "triton.modelControlMode=poll"))
    pod = one(rendered, "Deployment", TRITON)["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["volumeMounts"][0] == {"name": "models", "mountPath": "/models"}
    assert next(v for v in pod["volumes"] if v["name"] == "models")["persistentVolumeClaim"]["claimName"] == "models"
    args = container(one(rendered, "Deployment", TRITON), "triton")["args"]
    assert "--model-repository=/models" in args and "--repository-poll-secs=30" in args
    assert kubeconform(tools, yaml.safe_dump_all(rendered))["summary"]["invalid"] == 0


# --- the worker's environment parses into the worker's settings --------------------------------------------


def _field_exists(model: type[BaseModel], parts: list[str]) -> bool:
    fields = model.model_fields
    head = parts[0].lower()
    if head not in fields:
        return False
    if len(parts) == 1:
        return True
    annotation = fields[head].annotation
    return isinstance(annotation, type) and issubclass(annotation, BaseModel) and _field_exists(annotation, parts[1:])


def _settings_from(env: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> WorkerSettings:
    for name in [n for n in os.environ if n.startswith("DFMOD_")]:
        monkeypatch.delenv(name)
    for name, entry in env.items():
        if name.startswith("DFMOD_"):
            assert _field_exists(WorkerSettings, name.removeprefix("DFMOD_").split("__")), (
                f"{name} names no setting: pydantic would ignore it silently")
            monkeypatch.setenv(name, entry.get("value", f"from-secret:{name}"))
    return WorkerSettings()


def test_default_env_parses_into_worker_settings(default: list[Manifest], monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings_from(_env(one(default, "Deployment", WORKER), "worker"), monkeypatch)
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.kafka.events_topic == "media.events"
    assert settings.kafka.group_id == "dfmod-worker"
    assert settings.kafka.retry_topic == "media.events.retry"
    assert settings.kafka.group_instance_id is None, "static membership is opt-in"
    assert settings.triton.url == f"dns:///{TRITON}-pods:8001" and settings.triton.load_balancing == "round_robin"
    assert settings.cache.url == "redis://redis:6379/0" and settings.cache.password is None
    assert settings.http_port == 9100


def test_production_env_parses_into_worker_settings(production: list[Manifest],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings_from(_env(one(production, "Deployment", WORKER), "worker"), monkeypatch)
    assert settings.kafka.security_protocol == "SASL_SSL"
    assert settings.kafka.sasl_mechanism == "SCRAM-SHA-512"
    assert settings.kafka.sasl_password is not None
    assert settings.fetch.allow_schemes == ["https", "s3"]
    assert settings.fetch.allow_hosts == ["minio.storage.svc.cluster.local"]
    assert settings.drain_timeout_s == 45 and settings.max_in_flight == 256 and settings.max_faces_in_flight == 512
    assert settings.batch.max_delay_ms == 10.0


def test_topics_and_static_membership_from_kafka_values(tools: Tools, monkeypatch: pytest.MonkeyPatch) -> None:
    """The retry topic follows kafka.topics.retry; static membership names each member after its pod."""
    rendered = parse(template(tools, False, "kafka.topics.retry=events.retry", "kafka.staticMembership=true"))
    env = _env(one(rendered, "Deployment", WORKER), "worker")
    assert env["DFMOD_KAFKA__GROUP_INSTANCE_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    settings = _settings_from(env, monkeypatch)
    assert settings.kafka.retry_topic == "events.retry"
    assert settings.kafka.group_instance_id is not None
    assert kubeconform(tools, yaml.safe_dump_all(rendered))["summary"]["invalid"] == 0


def test_exactly_once_gives_each_pod_its_own_transactional_id(tools: Tools, monkeypatch: pytest.MonkeyPatch) -> None:
    """A transactional.id per pod, from its name: two replicas sharing one would fence each other."""
    env = _env(one(parse(template(tools, False)), "Deployment", WORKER), "worker")
    assert "DFMOD_KAFKA__TRANSACTIONAL_ID" not in env, "at-least-once (the default) needs none"
    rendered = parse(template(tools, False, "worker.settings.kafka.exactly_once=true"))
    env = _env(one(rendered, "Deployment", WORKER), "worker")
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["DFMOD_KAFKA__TRANSACTIONAL_ID"]["value"] == "dfmod-worker-$(POD_NAME)"
    names = [e["name"] for e in container(one(rendered, "Deployment", WORKER), "worker")["env"]]
    assert names.index("POD_NAME") < names.index("DFMOD_KAFKA__TRANSACTIONAL_ID"), "$(VAR) needs VAR defined first"
    settings = _settings_from(env, monkeypatch)
    assert settings.kafka.exactly_once and settings.kafka.transactional_id == "dfmod-worker-$(POD_NAME)"
    assert kubeconform(tools, yaml.safe_dump_all(rendered))["summary"]["invalid"] == 0


def test_string_settings_stay_strings_and_weights_volume_sets_the_path(tools: Tools,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    rendered = parse(template(
        tools, False, "worker.faceWeights.volume.persistentVolumeClaim.claimName=weights",
        set_strings=("worker.settings.triton.model_version=2",)))
    settings = _settings_from(_env(one(rendered, "Deployment", WORKER), "worker"), monkeypatch)
    assert settings.triton.model_version == "2"
    assert str(settings.faces.weights_dir) == "/models/faces"


def test_grace_period_follows_the_worker_default_drain(tools: Tools) -> None:
    """Without drain_timeout_s in values, the chart's fallback must be the worker's own default."""
    rendered = parse(template(tools, False, "worker.settings.drain_timeout_s=null"))
    pod = one(rendered, "Deployment", WORKER)["spec"]["template"]["spec"]
    assert "DFMOD_DRAIN_TIMEOUT_S" not in _env(one(rendered, "Deployment", WORKER), "worker")
    assert pod["terminationGracePeriodSeconds"] == WorkerSettings().drain_timeout_s + 30


# --- kubeconform, strict, against vendored schemas ---------------------------------------------------------


@pytest.mark.parametrize("prod", [False, True], ids=["default", "production"])
def test_kubeconform_strict(tools: Tools, prod: bool) -> None:
    text = template(tools, prod)
    report = kubeconform(tools, text)
    assert report["returncode"] == 0, report
    summary = report["summary"]
    assert summary["valid"] == len(parse(text)) and summary["valid"] > 0
    assert summary["invalid"] == summary["errors"] == summary["skipped"] == 0


def _tamper(manifests: list[Manifest]) -> Iterator[tuple[str, list[Manifest]]]:
    """One mistake per kind a template could make, each of which the API server would reject or drop."""
    def edited(kind: str, edit: Any) -> list[Manifest]:
        copy = json.loads(json.dumps(manifests))
        edit(next(m for m in copy if m["kind"] == kind))
        return copy

    yield "unknown Deployment field", edited("Deployment", lambda m: m["spec"].update(replica=3))
    yield "string where an int belongs", edited(
        "Deployment", lambda m: m["spec"]["template"]["spec"].update(terminationGracePeriodSeconds="60"))
    yield "unknown ScaledObject field", edited("ScaledObject", lambda m: m["spec"].update(maxReplicas=3))
    yield "number in KEDA string metadata", edited(
        "ScaledObject", lambda m: m["spec"]["triggers"][0]["metadata"].update(lagThreshold=100))
    yield "unknown ServiceMonitor endpoint field", edited(
        "ServiceMonitor", lambda m: m["spec"]["endpoints"][0].update(intervall="30s"))
    yield "unknown kind", [*manifests, {"apiVersion": "v1", "kind": "Servce", "metadata": {"name": "x"}}]


def test_kubeconform_schemas_are_strict(tools: Tools, production: list[Manifest]) -> None:
    """The validation above can fail: each single mistake makes kubeconform reject the rendering."""
    for mistake, manifests in _tamper(production):
        report = kubeconform(tools, yaml.safe_dump_all(manifests))
        assert report["returncode"] != 0, mistake
        assert report["summary"]["invalid"] + report["summary"]["errors"] == 1, mistake


def test_vendored_schemas_are_what_upstream_publishes() -> None:
    """deploy/crds/*.json regenerate byte for byte from the upstream modules on the Go module proxy."""
    out = subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), str(CRDS / "generate.py"), "--check"],
        capture_output=True, text=True, timeout=900, check=False,
    )
    assert out.returncode == 0, out.stderr


def _promql_check(tools: Tools, exprs: list[str]) -> subprocess.CompletedProcess[str]:
    return run([tools.promql_check], stdin=json.dumps(exprs))


def test_alert_rules_are_valid_promql(tools: Tools, production: list[Manifest]) -> None:
    rules = [r for g in one(production, "PrometheusRule", RELEASE)["spec"]["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert {"DfmodWorkersDown", "DfmodErrorRatioHigh", "DfmodDeadLetters", "DfmodTritonDown"} <= names
    out = _promql_check(tools, [r["expr"] for r in rules])
    assert out.returncode == 0, out.stdout
    assert _promql_check(tools, ["sum(rate(dfmod_dlq_total[5m])"]).returncode == 1  # the check can fail


def test_documented_queries_are_valid_promql(tools: Tools) -> None:
    """Every inline PromQL snippet of docs/deploy.md parses (operators copy them into dashboards and rules)."""
    docs = (REPO / "docs" / "deploy.md").read_text()
    exprs = [e for e in re.findall(r"`([^`\n]+)`", docs) if re.search(r"\b(dfmod|nv|keda)_\w+|\bup\{", e)]
    assert len(exprs) >= 15
    out = _promql_check(tools, exprs)
    assert out.returncode == 0, out.stdout


def _exported_metric_names() -> set[str]:
    """Sample names the worker's Prometheus registry exports (counters get _total, histograms _bucket...)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {m.name + suffix for m in REGISTRY.collect() for suffix in suffixes.get(m.type, ("",))}


def test_alerts_and_docs_use_metrics_the_worker_exports(production: list[Manifest]) -> None:
    exported = _exported_metric_names()
    rules = yaml.safe_dump(one(production, "PrometheusRule", RELEASE))
    used = set(re.findall(r"\bdfmod_[a-z_]+", rules + (REPO / "docs" / "deploy.md").read_text()))
    assert used and used <= exported, f"not exported by worker/obs/metrics.py: {sorted(used - exported)}"


def test_notes_render(tools: Tools) -> None:
    out = run([tools.helm, "install", RELEASE, CHART, "-n", NAMESPACE, "--dry-run=client",
               *values_args(True)])
    assert out.returncode == 0, out.stderr
    notes = out.stdout.split("NOTES:", 1)[1]
    assert "Autoscaling: keda (3-24 workers)" in notes
    assert f"svc/{WORKER} 9100" in notes


# --- docker-compose ----------------------------------------------------------------------------------------


def _compose(tools: Tools, *files: str) -> subprocess.CompletedProcess[str]:
    args: list[str | Path] = [tools.compose]
    for f in files:
        args += ["-f", f]
    return subprocess.run(
        [str(a) for a in [*args, "config", "--format", "json"]], cwd=COMPOSE_DIR, capture_output=True,
        text=True, timeout=60, check=False,
        env={**os.environ, "DFMOD_FACE_WEIGHTS_DIR": "/weights", "DFMOD_MODEL_REPOSITORY": "/repo"},
    )


def test_compose_config(tools: Tools) -> None:
    out = _compose(tools, "docker-compose.yml")
    assert out.returncode == 0, out.stderr
    config = json.loads(out.stdout)
    services = config["services"]
    assert set(services) == {"kafka", "kafka-init", "redis", "triton", "worker"}
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert services["triton"]["image"].startswith("nvcr.io/nvidia/tritonserver:")
    worker = services["worker"]
    assert worker["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert worker["environment"]["DFMOD_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert worker["read_only"] is True
    assert {v["source"] for v in worker["volumes"]} == {"/weights"}
    assert {v["source"] for v in services["triton"]["volumes"]} == {"/repo"}
    assert "deploy" not in services["triton"], "the base file must run without a GPU"


def test_compose_gpu_override(tools: Tools) -> None:
    out = _compose(tools, "docker-compose.yml", "docker-compose.gpu.yml")
    assert out.returncode == 0, out.stderr
    devices = json.loads(out.stdout)["services"]["triton"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_compose_rejects_a_typo(tools: Tools, tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text((COMPOSE_DIR / "docker-compose.yml").read_text().replace("healthcheck:", "helthcheck:", 1))
    out = subprocess.run([str(tools.compose), "-f", str(broken), "config", "-q"], capture_output=True, text=True,
                         timeout=60, check=False, env={**os.environ, "DFMOD_FACE_WEIGHTS_DIR": "/weights"})
    assert out.returncode != 0 and "helthcheck" in out.stderr


# --- Dockerfiles -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [(), ("-arg", "EXTRAS=s3,scrfd")], ids=["plain", "extras"])
def test_dockerfiles_pass_buildkit_checks(tools: Tools, args: tuple[str, ...]) -> None:
    out = run([tools.dockerfile_check, *args, COMPOSE_DIR / "worker.Dockerfile", COMPOSE_DIR / "train.Dockerfile"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count(": ok") == 2


def test_dockerfile_check_can_fail(tools: Tools, tmp_path: Path) -> None:
    text = (COMPOSE_DIR / "worker.Dockerfile").read_text()
    for mistake, broken in {
        "shell-form entrypoint": text.replace('ENTRYPOINT ["dfmod"]', "ENTRYPOINT dfmod"),
        "unknown instruction": text.replace("EXPOSE 9100", "EXPOSES 9100"),
        "secret in ENV": text.replace("DFMOD_HTTP_PORT=9100", "DFMOD_HTTP_PORT=9100 DFMOD_CACHE__PASSWORD=x"),
    }.items():
        path = tmp_path / "Dockerfile"
        path.write_text(broken)
        assert run([tools.dockerfile_check, path]).returncode == 1, mistake


def test_worker_image_contract() -> None:
    """What the chart and compose rely on: non-root uid 10001, port 9100, dfmod worker, no torch."""
    text = (COMPOSE_DIR / "worker.Dockerfile").read_text()
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\} AS build$", text, re.M)
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert re.search(r"^USER \$\{DFMOD_UID\}:\$\{DFMOD_UID\}$", text, re.M) and "ARG DFMOD_UID=10001" in text
    assert re.search(r"^EXPOSE 9100$", text, re.M) and re.search(r"^HEALTHCHECK ", text, re.M)
    assert 'ENTRYPOINT ["dfmod"]' in text and 'CMD ["worker"]' in text
    assert "[train]" not in text.replace("never the [train] extra", "")
    values = yaml.safe_load((CHART / "values.yaml").read_text())["worker"]
    assert values["podSecurityContext"]["runAsUser"] == 10001 and values["httpPort"] == 9100
    train = (COMPOSE_DIR / "train.Dockerfile").read_text()
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\d+\.\d+\.\d+-runtime-ubuntu\d+\.\d+$", train, re.M)
    assert '".[train]"' in train and 'ENTRYPOINT ["dfmod-train"]' in train


@pytest.mark.parametrize("dockerfile", ["worker.Dockerfile", "train.Dockerfile"])
def test_build_context_allow_list_covers_the_package(dockerfile: str) -> None:
    """The <Dockerfile>.dockerignore allow-list must let through everything the wheel is built from."""
    lines = (COMPOSE_DIR / f"{dockerfile}.dockerignore").read_text().splitlines()
    ignore = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*", "an allow-list: everything else stays out of the build context"
    allowed = {line.removeprefix("!").rstrip("/") for line in ignore if line.startswith("!")}
    assert {"pyproject.toml", "README.md", "worker", "train"} <= allowed
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'readme = "README.md"' in pyproject
    for copied in re.findall(r"^COPY (?!--from)(\S+) ", (COMPOSE_DIR / dockerfile).read_text(), re.M):
        assert copied == "." or copied in allowed, copied


# --- the exported model repository loads where the chart and compose put Triton ---------------------------


def _triton_gpus(manifests: list[Manifest]) -> int:
    resources = container(one(manifests, "Deployment", TRITON), "triton")["resources"]
    return int(resources.get("limits", {}).get("nvidia.com/gpu", 0))


def _exported_config(*args: str) -> str:
    """config.pbtxt exactly as `dfmod-train export ... <args>` writes it (the CLI's own option parsing)."""
    import argparse

    from train import export

    parser = argparse.ArgumentParser()
    export.register(parser.add_subparsers())
    ns = parser.parse_args(["export", "--arch", "tiny", *args])
    return export.render_config(
        backend=ns.backend, feature_dim=64, max_batch=ns.max_batch, parameters={}, tensorrt=ns.tensorrt,
        device=ns.device,
    )


@pytest.mark.parametrize("prod", [False, True], ids=["default", "production"])
def test_exported_config_matches_the_charts_gpu_setting(tools: Tools, prod: bool) -> None:
    from train.export import placement_problem

    gpus = _triton_gpus(parse(template(tools, prod)))
    assert gpus == (1 if prod else 0)
    # the default export (KIND_AUTO) loads on both; the production recipe needs the production GPUs
    assert placement_problem(_exported_config("--backend", "onnxruntime"), gpus) is None
    gpu_recipe = _exported_config("--backend", "onnxruntime", "--device", "gpu", "--tensorrt")
    if prod:
        assert placement_problem(gpu_recipe, gpus) is None
    else:
        assert "KIND_GPU" in (placement_problem(gpu_recipe, gpus) or "")
        assert "TensorRT" in (placement_problem(_exported_config("--backend", "onnxruntime", "--tensorrt"), gpus) or "")


def test_exported_config_matches_compose_with_and_without_the_gpu_override(tools: Tools) -> None:
    from train.export import placement_problem

    for files, gpus in ((("docker-compose.yml",), 0), (("docker-compose.yml", "docker-compose.gpu.yml"), 1)):
        out = _compose(tools, *files)
        assert out.returncode == 0, out.stderr
        triton = json.loads(out.stdout)["services"]["triton"]
        devices = triton.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        assert (1 if any("gpu" in d.get("capabilities", []) for d in devices) else 0) == gpus
        assert placement_problem(_exported_config("--backend", "onnxruntime"), gpus) is None
