"""Alerts and dashboard select what the chart's own scrape configuration produces, in both scraping modes.

The labels a scraped series carries are derived from the rendered manifests, the way Prometheus derives them:
- annotation-based (default values): the usual `kubernetes-pods` job keeps pods annotated
  `prometheus.io/scrape: "true"`, maps every pod label with `labelmap: __meta_kubernetes_pod_label_(.+)` and sets
  `namespace` and `pod` (its `job` is the Prometheus job's name, which the chart cannot know);
- ServiceMonitor (production values): the operator sets `job` to the Service name, `namespace`, `service`,
  `endpoint`, `pod`, and copies each of the ServiceMonitor's `podTargetLabels` from the pod.
Every label matcher of every alert expression and dashboard query that is not a label of the metric itself
must then be satisfied by the targets of the component it is about.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import worker.obs.metrics  # noqa: F401  (registers the worker's metrics)

from .conftest import Tools
from .test_chart import CHART, NAMESPACE, PRODUCTION, RELEASE, REPO, Manifest, one, parse, run, template

#: Labels a series has of its own (not from the target): the worker registry's, Triton's and PromQL's `le`.
OWN_LABELS = {label for m in REGISTRY.collect() for s in m.samples for label in s.labels} | {
    "le", "model", "version", "gpu_uuid", "status", "label", "code", "stage", "result", "topic", "partition",
    "weights", "model_version", "threshold", "preprocessing_version", "pipeline_version",
}
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
SELECTOR = re.compile(r"\b([a-z_:][a-z0-9_:]*)\s*\{([^{}]*)\}")


def sanitize(label: str) -> str:
    """Prometheus' label-name sanitising for Kubernetes labels (app.kubernetes.io/name -> app_kubernetes_io_name)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


def component_of(labels: dict[str, str]) -> str:
    return labels.get("app.kubernetes.io/component", "")


def annotation_targets(manifests: list[Manifest]) -> list[dict[str, str]]:
    targets = []
    for d in (m for m in manifests if m["kind"] == "Deployment"):
        pod = d["spec"]["template"]["metadata"]
        annotations = pod.get("annotations") or {}
        if annotations.get("prometheus.io/scrape") != "true":
            continue
        ports = {p["containerPort"] for c in d["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        assert int(annotations["prometheus.io/port"]) in ports, f"{d['metadata']['name']}: annotated port not exposed"
        labels = {sanitize(k): v for k, v in pod["labels"].items()}
        targets.append({**labels, "namespace": NAMESPACE, "pod": "x", "job": "kubernetes-pods",
                        "_component": component_of(pod["labels"])})
    return targets


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) applied to `labels`."""
    tests = {"In": lambda k, vs: labels.get(k) in vs, "NotIn": lambda k, vs: labels.get(k) not in vs,
             "Exists": lambda k, _vs: k in labels, "DoesNotExist": lambda k, _vs: k not in labels}
    return (selector.get("matchLabels", {}).items() <= labels.items() and
            all(tests[e["operator"]](e["key"], e.get("values", [])) for e in selector.get("matchExpressions", [])))


def service_monitor_targets(manifests: list[Manifest]) -> list[dict[str, str]]:
    targets = []
    services = [m for m in manifests if m["kind"] == "Service"]
    deployments = [m for m in manifests if m["kind"] == "Deployment"]
    for sm in (m for m in manifests if m["kind"] == "ServiceMonitor"):
        for svc in (s for s in services if selects(sm["spec"]["selector"], s["metadata"]["labels"])):
            pods = [d["spec"]["template"]["metadata"]["labels"] for d in deployments
                    if svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
            assert pods, f"Service {svc['metadata']['name']} selects no pods"
            port_names = {p["name"] for p in svc["spec"]["ports"]}
            for endpoint in sm["spec"]["endpoints"]:
                assert endpoint["port"] in port_names, f"{sm['metadata']['name']}: no port {endpoint['port']}"
                for pod in pods:
                    copied = {sanitize(k): pod[k] for k in sm["spec"].get("podTargetLabels", []) if k in pod}
                    targets.append({**copied, "namespace": NAMESPACE, "job": svc["metadata"]["name"],
                                    "service": svc["metadata"]["name"], "endpoint": endpoint["port"], "pod": "x",
                                    "_component": component_of(pod)})
    return targets


def target_matchers(expr: str) -> list[list[tuple[str, str, str]]]:
    """Per selector `metric{...}` of `expr`: its matchers on target labels (not on the metric's own labels)."""
    found = []
    for _metric, body in SELECTOR.findall(expr):
        found.append([m for m in MATCHER.findall(body) if m[0] not in OWN_LABELS])
    return found


def satisfied(matchers: list[tuple[str, str, str]], labels: dict[str, str]) -> bool:
    for name, op, value in matchers:
        have = labels.get(name, "")
        ok = {"=": have == value, "!=": have != value, "=~": re.fullmatch(value, have) is not None,
              "!~": re.fullmatch(value, have) is None}[op]
        if not ok:
            return False
    return True


def check_selectors(exprs: list[tuple[str, str]], targets: list[dict[str, str]]) -> None:
    """Each (component, expr): every selector matches at least one target of that component, and none of another."""
    assert targets, "nothing is scraped"
    for component, expr in exprs:
        for matchers in target_matchers(expr):
            assert matchers, f"selects no target at all (would match every job): {expr}"
            hits = {t["_component"] for t in targets if satisfied(matchers, t)}
            assert hits == {component}, f"{expr!r} matches {hits or 'nothing'}, wanted {component}"


def rules(manifests: list[Manifest]) -> list[dict[str, Any]]:
    return [r for g in one(manifests, "PrometheusRule", RELEASE)["spec"]["groups"] for r in g["rules"]]


def rule_exprs(manifests: list[Manifest]) -> list[tuple[str, str]]:
    return [("triton" if r["alert"].startswith("DfmodTriton") else "worker", r["expr"]) for r in rules(manifests)]


@pytest.fixture(scope="module")
def annotation_mode(tools: Tools) -> list[Manifest]:
    return parse(template(tools, False, "metrics.prometheusRule.enabled=true", "metrics.grafanaDashboard.enabled=true"))


@pytest.fixture(scope="module")
def operator_mode(tools: Tools) -> list[Manifest]:
    return parse(template(tools, True))


def test_alerts_select_annotation_scraped_targets(annotation_mode: list[Manifest]) -> None:
    targets = annotation_targets(annotation_mode)
    assert {t["_component"] for t in targets} == {"worker", "triton"}
    check_selectors(rule_exprs(annotation_mode), targets)


def test_alerts_select_service_monitor_targets(operator_mode: list[Manifest]) -> None:
    assert not annotation_targets(operator_mode), "production scrapes through ServiceMonitors only"
    targets = service_monitor_targets(operator_mode)
    assert {t["_component"] for t in targets} == {"worker", "triton"}
    check_selectors(rule_exprs(operator_mode), targets)


def test_the_check_catches_a_job_selector(annotation_mode: list[Manifest]) -> None:
    """The bug this test exists for: job="dfmod-worker" matches nothing when scraping by annotations."""
    with pytest.raises(AssertionError, match="matches nothing"):
        check_selectors([("worker", 'sum(up{job="dfmod-worker", namespace="dfmod"}) == 0')],
                        annotation_targets(annotation_mode))


def dashboard(manifests: list[Manifest]) -> dict[str, Any]:
    cm = one(manifests, "ConfigMap", f"{RELEASE}-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    board: dict[str, Any] = json.loads(cm["data"]["dfmod.json"])
    assert board == json.loads((CHART / "dashboards" / "dfmod.json").read_text())
    return board


def dashboard_exprs(board: dict[str, Any]) -> list[str]:
    """Panel queries with the dashboard variables filled in as Grafana would for this release."""
    fill = {"$namespace": NAMESPACE, "$release": RELEASE, "$__rate_interval": "1m"}
    out = []
    for panel in board["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for var, value in fill.items():
                expr = expr.replace(var, value)
            out.append(expr)
    return out


@pytest.mark.parametrize("mode", ["annotation_mode", "operator_mode"])
def test_dashboard_queries_select_the_workers(mode: str, request: pytest.FixtureRequest) -> None:
    manifests = request.getfixturevalue(mode)
    targets = annotation_targets(manifests) or service_monitor_targets(manifests)
    board = dashboard(manifests)
    assert len(board["panels"]) >= 12 and len({p["id"] for p in board["panels"]}) == len(board["panels"])
    check_selectors([("worker", e) for e in dashboard_exprs(board)], targets)


def test_dashboard_queries_parse_and_use_exported_metrics(tools: Tools, annotation_mode: list[Manifest]) -> None:
    exprs = dashboard_exprs(dashboard(annotation_mode))
    out = run([tools.promql_check], stdin=json.dumps(exprs))
    assert out.returncode == 0, out.stdout
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    exported = {m.name + s for m in REGISTRY.collect() for s in suffixes.get(m.type, ("",))}
    used = set(re.findall(r"\bdfmod_[a-z_]+", " ".join(exprs)))
    assert used <= exported, sorted(used - exported)
    for needed in ("dfmod_verdicts_total", "dfmod_media_score_bucket", "dfmod_consumer_lag", "dfmod_model_info"):
        assert needed in used


def github_anchor(heading: str) -> str:
    """GitHub's heading anchor: lower-case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_has_a_runbook_section(operator_mode: list[Manifest]) -> None:
    """With runbookBaseUrl set (production values), each alert links to its own section of docs/deploy.md."""
    docs = (REPO / "docs" / "deploy.md").read_text()
    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", docs, re.M)}
    values = yaml.safe_load(PRODUCTION.read_text())["metrics"]["prometheusRule"]
    assert rules(operator_mode)
    for rule in rules(operator_mode):
        url = rule["annotations"]["runbook_url"]
        base, _, anchor = url.partition("#")
        assert base == values["runbookBaseUrl"] and base.endswith("docs/deploy.md"), url
        assert anchor == f"runbook-{rule['alert'].lower()}" and anchor in anchors, f"{rule['alert']}: {url}"


def test_the_alert_table_lists_every_alert_the_chart_ships(operator_mode: list[Manifest]) -> None:
    """docs/deploy.md's alert table names each shipped alert once, in the chart's order."""
    docs = (REPO / "docs" / "deploy.md").read_text()
    table = re.findall(r"^\| \[(Dfmod\w+)\]\(#runbook-", docs, re.M)
    assert table == [rule["alert"] for rule in rules(operator_mode)]


def test_no_runbook_link_without_a_runbook_base_url(annotation_mode: list[Manifest]) -> None:
    """The chart does not invent where the runbooks live: unset, the alerts carry no runbook_url."""
    assert yaml.safe_load((CHART / "values.yaml").read_text())["metrics"]["prometheusRule"]["runbookBaseUrl"] == ""
    assert rules(annotation_mode)
    assert all("runbook_url" not in rule["annotations"] and rule["annotations"]["summary"]
               for rule in rules(annotation_mode))


def test_saturation_and_lag_alerts_are_shipped(operator_mode: list[Manifest]) -> None:
    by_name = {r["alert"]: r["expr"] for r in rules(operator_mode)}
    assert "dfmod_in_flight_limit" in by_name["DfmodWorkersSaturated"]
    assert "dfmod_consumer_lag" in by_name["DfmodConsumerLagHigh"]
    assert not any("job=" in e for e in by_name.values())


def test_documented_dashboard_file_is_what_the_chart_ships() -> None:
    assert (CHART / "dashboards" / "dfmod.json").is_file()
    assert "dashboards/" not in Path(CHART / ".helmignore").read_text()
