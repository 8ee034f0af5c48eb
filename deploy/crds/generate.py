"""Generate the JSON schemas that kubeconform validates the Helm chart against, from upstream sources.

Why this exists: kubeconform fetches schemas from GitHub (yannh/kubernetes-json-schema) by default, and this
project may only reach package registries. The Go module proxy is one, and it serves the upstream sources:

* ``k8s.io/kubernetes`` ships ``api/openapi-spec/swagger.json`` (the API server's own OpenAPI document) ->
  ``kubernetes/<version>-standalone-strict/<kind>-<group>-<version>.json``, the layout kubeconform expects
  for ``-schema-location deploy/crds/kubernetes -kubernetes-version <version>``.
* KEDA and prometheus-operator ship their CustomResourceDefinition YAMLs -> ``<group>/<kind>_<version>.json``,
  for ``-schema-location 'deploy/crds/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json'``.

Every object schema that lists ``properties`` gets ``additionalProperties: false`` (unless it says otherwise
or preserves unknown fields): the API server silently prunes or rejects unknown fields, so a typo in a
template must fail here instead. Descriptions are dropped (they do not validate anything).

Usage: ``python deploy/crds/generate.py`` rewrites the vendored files; ``--check`` regenerates into memory
and fails when the vendored files differ (CI: proves they are what upstream says, not hand edits).
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent

#: Upstream sources, pinned. kubernetes: the oldest minor still supported upstream in 2026-11, so a template
#: that uses a newer field fails here. prometheus-operator: v0.85.0 is the newest version of the root module
#: on the Go proxy (later ones are published only as the Go-types sub-module, without CRD YAMLs).
K8S = ("k8s.io/kubernetes", "v1.35.4")
CRD_SOURCES: list[tuple[str, str, list[str]]] = [
    ("github.com/kedacore/keda/v2", "v2.21.0", [
        "config/crd/bases/keda.sh_scaledobjects.yaml",
        "config/crd/bases/keda.sh_triggerauthentications.yaml",
    ]),
    ("github.com/prometheus-operator/prometheus-operator", "v0.85.0", [
        "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
        "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml",
    ]),
]
#: Core kinds the chart renders or may render (group "" is the core API group). A kind the chart starts to
#: render without a schema here makes kubeconform fail with "could not find schema": add it and regenerate.
CORE_KINDS: list[tuple[str, str, str]] = [
    ("", "v1", "ConfigMap"),
    ("", "v1", "PersistentVolumeClaim"),
    ("", "v1", "Secret"),
    ("", "v1", "Service"),
    ("", "v1", "ServiceAccount"),
    ("apps", "v1", "Deployment"),
    ("autoscaling", "v2", "HorizontalPodAutoscaler"),
    ("batch", "v1", "Job"),
    ("networking.k8s.io", "v1", "NetworkPolicy"),
    ("policy", "v1", "PodDisruptionBudget"),
]
_QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "definitions")
_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
_SUBSCHEMA_SINGLE = ("items", "additionalProperties", "not")


def module_dir(module: str, version: str) -> Path:
    """Unpacked module from the Go module cache, downloading it through the proxy when missing."""
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        capture_output=True, text=True, timeout=600, check=False, cwd=HERE,
    )
    info = json.loads(out.stdout or "{}")
    if out.returncode != 0 or "Dir" not in info:
        raise RuntimeError(f"go mod download {module}@{version} failed: {info.get('Error') or out.stderr}")
    return Path(info["Dir"])


def tighten(schema: dict[str, Any]) -> dict[str, Any]:
    """Copy of a schema, walked by keyword (so a field named `description` is not mistaken for one):
    no descriptions, int-or-string as a union, unknown properties refused."""
    node = {k: v for k, v in schema.items() if k != "description"}
    if node.get("format") == "int-or-string":
        node = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
    for key in _SUBSCHEMA_MAPS:
        if isinstance(node.get(key), dict):
            node[key] = {name: tighten(sub) for name, sub in node[key].items()}
    for key in _SUBSCHEMA_LISTS:
        if isinstance(node.get(key), list):
            node[key] = [tighten(sub) for sub in node[key]]
    for key in _SUBSCHEMA_SINGLE:
        if isinstance(node.get(key), dict):
            node[key] = tighten(node[key])
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        node["additionalProperties"] = False
    return node


def crd_schemas(crd: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(relative path, schema) for every served version of one CustomResourceDefinition."""
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    for version in crd["spec"]["versions"]:
        if not version.get("served", True):
            continue
        schema = tighten(version["schema"]["openAPIV3Schema"])
        schema["properties"]["apiVersion"] = {"type": "string", "enum": [f"{group}/{version['name']}"]}
        schema["properties"]["kind"] = {"type": "string", "enum": [kind]}
        yield f"{group}/{kind.lower()}_{version['name']}.json", schema


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield ref.removeprefix("#/definitions/")
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def core_schema(definitions: dict[str, Any], group: str, version: str, kind: str) -> dict[str, Any]:
    """A standalone schema for one built-in kind: the kind's definition plus every definition it reaches
    (kept as local `$ref`s, so recursive types stay finite)."""
    matches = [
        name for name, d in definitions.items()
        if {"group": group, "version": version, "kind": kind} in d.get("x-kubernetes-group-version-kind", [])
    ]
    if len(matches) != 1:
        raise KeyError(f"{group}/{version} {kind}: {len(matches)} definitions in swagger.json")
    root = matches[0]
    needed: set[str] = set()
    todo = [root]
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(_refs(definitions[name]))
    closure = {name: tighten(definitions[name]) for name in sorted(needed)}
    # Quantity is a string on the wire, but the API server's JSON decoder also takes a number (`cpu: 1`).
    if _QUANTITY in closure:
        closure[_QUANTITY] = {"oneOf": [{"type": "string"}, {"type": "number"}]}
    schema = copy.deepcopy(closure[root])
    api_version = f"{group}/{version}" if group else version
    schema["properties"]["apiVersion"] = {"type": "string", "enum": [api_version]}
    schema["properties"]["kind"] = {"type": "string", "enum": [kind]}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind"})
    schema["definitions"] = closure
    return schema


def generate() -> dict[str, dict[str, Any]]:
    """Every schema file, keyed by its path relative to this directory."""
    files: dict[str, dict[str, Any]] = {}
    for module, version, paths in CRD_SOURCES:
        root = module_dir(module, version)
        for rel in paths:
            for doc in yaml.safe_load_all((root / rel).read_text()):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    files.update(crd_schemas(doc))
    module, version = K8S
    swagger = json.loads((module_dir(module, version) / "api/openapi-spec/swagger.json").read_text())
    for group, api_version, kind in CORE_KINDS:
        suffix = "-".join(p for p in (group.split(".")[0], api_version) if p)
        rel = f"kubernetes/{version}-standalone-strict/{kind.lower()}-{suffix}.json"
        files[rel] = core_schema(swagger["definitions"], group, api_version, kind)
    return files


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the vendored files differ from upstream")
    args = parser.parse_args(argv)
    files = generate()
    vendored = {str(p.relative_to(HERE)) for p in HERE.rglob("*.json")}
    if args.check:
        stale = sorted(
            rel for rel, schema in files.items()
            if not (HERE / rel).is_file() or (HERE / rel).read_text() != render(schema)
        )
        extra = sorted(vendored - set(files))
        for rel in stale:
            print(f"stale or missing: {rel}", file=sys.stderr)
        for rel in extra:
            print(f"not generated by this script: {rel}", file=sys.stderr)
        return 1 if stale or extra else 0
    for rel in sorted(vendored - set(files)):
        (HERE / rel).unlink()
    for rel, schema in sorted(files.items()):
        (HERE / rel).parent.mkdir(parents=True, exist_ok=True)
        (HERE / rel).write_text(render(schema))
        print(rel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
