"""The rendered chart, applied with a server-side dry run to a real Kubernetes API server.

kubeconform checks each object against a schema; the API server also defaults, runs the cross-field validation
of each built-in kind (a `Recreate` Deployment must not carry `rollingUpdate`), strict field validation and the
CRDs' own schemas and CEL rules. That class of defect passed lint and kubeconform before (issue 23's defect 5), so
every rendering users are told to install goes through `kubectl apply --server-side --dry-run=server` here.

The API server, etcd and kubectl are built from the Go module proxy by deploy/kube/apiserver.sh (cached in
.tools/bin) and run on 127.0.0.1 without controllers: objects are validated, never acted on. The CRDs applied are
upstream's own YAMLs at the versions deploy/crds/generate.py pins.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import Tools
from .test_chart import CHART, NAMESPACE, PRODUCTION, REPO, kubeconform, parse, run

# A cold build of kube-apiserver compiles ~1,900 packages (10-20 min on 2 cores); cached runs take seconds.
pytestmark = pytest.mark.timeout(3000)

APISERVER_SH = REPO / "deploy" / "kube" / "apiserver.sh"

DOCS = REPO / "docs" / "deploy.md"


def documented(start: str) -> tuple[str, ...]:
    """The helm arguments of the command in docs/deploy.md that starts with `start`, as a shell would pass them.

    Read from the docs, not copied: a command that does not work as written (a comma in `--set`) fails here."""
    lines = DOCS.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip().startswith(start))
    command = ""
    for line in lines[first:]:
        command += line.strip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            break
    words = shlex.split(command)
    chart = words.index("deploy/helm/dfmod")
    args = [w for w in words[chart + 1:] if w != "--reuse-values"]
    i = args.index("-n")
    del args[i:i + 2]
    return tuple(str(PRODUCTION) if a == "my-values.yaml" else a for a in args)


DOCS_INSTALL = documented("helm install dfmod deploy/helm/dfmod -n dfmod")
SECURED = documented("helm upgrade dfmod deploy/helm/dfmod -n dfmod --reuse-values")  # applied on top of an install
CANARY = documented("helm install dfmod-canary deploy/helm/dfmod")  # its my-values.yaml: the production values
#: Every rendering the docs tell users to install: (id, helm arguments, release name).
VARIANTS: list[tuple[str, tuple[str, ...], str]] = [
    ("default", (), "dfmod"),
    ("chart-readme", ("--set", "kafka.bootstrapServers=kafka:9092", "--set", "cache.url=redis://redis:6379/0",
                      "--set", "triton.modelRepository.s3.url=s3://bucket/triton_models"), "dfmod"),
    ("production", ("-f", str(PRODUCTION)), "dfmod"),
    ("docs-install", DOCS_INSTALL, "dfmod"),
    ("docs-install-secured", (*DOCS_INSTALL, *SECURED), "dfmod"),
    ("production-secured", ("-f", str(PRODUCTION), *SECURED), "dfmod"),
    ("canary", CANARY, "dfmod-canary"),
    ("keda", ("--set", "worker.autoscaling.type=keda"), "dfmod"),
    ("triton-recreate", ("--set", "triton.strategy.type=Recreate"), "dfmod"),
]


@dataclass(frozen=True)
class ApiServer:
    kubectl: Path
    kubeconfig: Path

    def kubectl_run(self, *args: str, stdin: str | None = None,
                    timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.kubectl), *args], input=stdin, capture_output=True, text=True, timeout=timeout, check=False,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
        )

    def dry_run(self, text: str, release: str) -> subprocess.CompletedProcess[str]:
        """What `helm install` would send, refused or accepted by the API server, nothing stored."""
        return self.kubectl_run("apply", "--server-side", "--dry-run=server", "--field-manager", f"helm-{release}",
                                "--validate=strict", "-n", NAMESPACE, "-o", "name", "-f", "-", stdin=text)


def _upstream_crds() -> Iterator[dict[str, Any]]:
    spec = importlib.util.spec_from_file_location("crd_generate", REPO / "deploy" / "crds" / "generate.py")
    assert spec and spec.loader
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    for module, version, paths in generate.CRD_SOURCES:
        root = generate.module_dir(module, version)
        for rel in paths:
            for doc in yaml.safe_load_all((root / rel).read_text()):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    yield doc


@pytest.fixture(scope="module")
def apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    built = subprocess.run([str(APISERVER_SH), "build"], capture_output=True, text=True, timeout=2700, check=False)
    if built.returncode != 0:
        pytest.fail(f"deploy/kube/apiserver.sh build failed ({built.returncode}):\n{built.stderr[-4000:]}")
    kubectl = Path(next(line.split()[1] for line in built.stdout.splitlines() if line.startswith("kubectl ")))
    state = tmp_path_factory.mktemp("kube")
    up = subprocess.run([str(APISERVER_SH), "up", str(state)], capture_output=True, text=True, timeout=300,
                        check=False)
    try:
        if up.returncode != 0:
            pytest.fail(f"deploy/kube/apiserver.sh up failed ({up.returncode}):\n{up.stderr[-4000:]}")
        server = ApiServer(kubectl=kubectl, kubeconfig=state / "kubeconfig")
        crds = yaml.safe_dump_all(list(_upstream_crds()))
        for step in (("apply", "--server-side", "-f", "-"),
                     ("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")):
            out = server.kubectl_run(*step, stdin=crds if step[0] == "apply" else None)
            assert out.returncode == 0, out.stderr
        out = server.kubectl_run("create", "namespace", NAMESPACE)
        assert out.returncode == 0, out.stderr
        yield server
    finally:
        subprocess.run([str(APISERVER_SH), "down", str(state)], capture_output=True, timeout=60, check=False)


def _render(tools: Tools, args: tuple[str, ...], release: str) -> str:
    out = run([tools.helm, "template", release, CHART, "-n", NAMESPACE, *args])
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_api_server_is_the_pinned_release(apiserver: ApiServer) -> None:
    out = apiserver.kubectl_run("version", "-o", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["serverVersion"]["gitVersion"] == "v1.35.4"


@pytest.mark.parametrize(("args", "release"), [(v[1], v[2]) for v in VARIANTS], ids=[v[0] for v in VARIANTS])
def test_documented_renderings_pass_a_server_side_dry_run(tools: Tools, apiserver: ApiServer,
                                                          args: tuple[str, ...], release: str) -> None:
    text = _render(tools, args, release)
    manifests = parse(text)
    out = apiserver.dry_run(text, release)
    assert out.returncode == 0, out.stderr
    applied = [line for line in out.stdout.splitlines() if line.strip()]
    assert len(applied) == len(manifests) > 0, out.stdout
    assert not out.stderr.strip(), out.stderr  # strict validation turns unknown/duplicate fields into errors


def test_the_documented_install_reaches_every_broker(tools: Tools) -> None:
    """`--set a=x,y` sets two keys in helm; the docs' command escapes the comma, so both brokers arrive."""
    assert "kafka-0.example:9093,kafka-1.example:9093" in _render(tools, DOCS_INSTALL, "dfmod")


def _edited(manifests: list[dict[str, Any]], kind: str, name_suffix: str, edit: Any) -> str:
    copy = json.loads(json.dumps(manifests))
    found = [m for m in copy if m["kind"] == kind and m["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"{kind} *{name_suffix}: {len(found)} rendered"
    edit(found[0])
    return yaml.safe_dump_all(copy)


def test_the_dry_run_catches_what_kubeconform_passes(tools: Tools, apiserver: ApiServer) -> None:
    """Each mistake is schema-valid, so kubeconform passes it, and the API server refuses it: the check above can
    fail, and for the class lint and kubeconform cannot see."""
    manifests = parse(_render(tools, ("-f", str(PRODUCTION)), "dfmod"))

    def recreate_with_rolling_update(d: dict[str, Any]) -> None:  # issue 23's defect 5, as the chart rendered it
        d["spec"]["strategy"] = {"type": "Recreate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}

    def duplicate_port(s: dict[str, Any]) -> None:
        s["spec"]["ports"].append(dict(s["spec"]["ports"][0]))

    def selector_misses_labels(d: dict[str, Any]) -> None:
        d["spec"]["selector"]["matchLabels"] = {"app.kubernetes.io/name": "something-else"}

    mistakes = [  # (mistake, rendering, what the API server says)
        ("Recreate with rollingUpdate", _edited(manifests, "Deployment", "triton", recreate_with_rolling_update),
         "may not be specified when strategy `type` is 'Recreate'"),
        ("duplicate Service port", _edited(manifests, "Service", "-triton", duplicate_port), "duplicate entries"),
        ("selector does not match the pod labels",
         _edited(manifests, "Deployment", "worker", selector_misses_labels), "does not match template `labels`"),
    ]
    for mistake, text, said in mistakes:
        assert kubeconform(tools, text)["returncode"] == 0, f"kubeconform already rejects: {mistake}"
        out = apiserver.dry_run(text, "dfmod")
        assert out.returncode != 0, f"the API server accepted: {mistake}"
        assert said in out.stderr, out.stderr
