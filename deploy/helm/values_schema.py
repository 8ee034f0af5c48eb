"""Generate deploy/helm/dfmod/values.schema.json, the schema Helm checks every values file against.

Why generated: `worker.settings` mirrors `worker.core.settings.WorkerSettings` field by field, and a schema
written by hand would drift from it. Every object of ours is closed (`additionalProperties: false`), so a
typo such as `worker.setings` or `worker.settings.decode.frame` fails `helm install` instead of being
silently ignored. Kubernetes objects passed through verbatim (affinity, volumes, env) are only typed
here; kubeconform validates them after rendering.

Settings the chart derives from other values (connections, ports, the weights path) and every secret
(`SecretStr`: secrets are referenced, never inlined) are left out of `worker.settings`.

Usage: ``PYTHONPATH=. python deploy/helm/values_schema.py`` rewrites the file; ``--check`` fails when it is stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr, TypeAdapter

from worker.core.settings import WorkerSettings

SCHEMA_PATH = Path(__file__).resolve().parent / "dfmod" / "values.schema.json"

#: Settings set by the chart from other values (dotted field paths of WorkerSettings).
CHART_OWNED: frozenset[str] = frozenset({
    "kafka.bootstrap_servers", "kafka.events_topic", "kafka.verdicts_topic", "kafka.dlq_topic",
    "kafka.retry_topic", "kafka.group_id", "kafka.group_instance_id", "kafka.security_protocol",
    "kafka.sasl_mechanism", "kafka.sasl_username", "kafka.sasl_oauth_token_file",
    "kafka.ssl_cafile", "kafka.ssl_certfile", "kafka.ssl_keyfile",
    "cache.enabled", "cache.url", "cache.username", "cache.tls_ca_file", "cache.tls_cert_file", "cache.tls_key_file",
    "triton.tls", "triton.tls_ca_file", "triton.tls_cert_file", "triton.tls_key_file",
    "triton.url",
    "faces.weights_dir",
    "http_host", "http_port",
})

#: Keys of `kafka.topics`, each rendered to DFMOD_KAFKA__<KEY>_TOPIC.
TOPICS: tuple[str, ...] = ("events", "verdicts", "dlq", "retry")

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
BOOL: Schema = {"type": "boolean"}
K8S_OBJECT: Schema = {"type": "object"}  # a Kubernetes object passed through; kubeconform checks it
K8S_LIST: Schema = {"type": "array", "items": {"type": "object"}}
STRING_MAP: Schema = {"type": "object", "additionalProperties": {"type": "string"}}
QUANTITY: Schema = {"oneOf": [{"type": "string"}, {"type": "number"}]}
INT_OR_PERCENT: Schema = {"oneOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": "^[0-9]+%$"}]}
DURATION: Schema = {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"}
SECRET_NAME: Schema = {"type": "string", "pattern": "^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$", "maxLength": 253}
SECRET_KEY: Schema = {"type": "string", "pattern": "^[-._a-zA-Z0-9]+$"}


def obj(properties: dict[str, Schema], required: tuple[str, ...] = ()) -> Schema:
    """A closed object: unknown keys are errors."""
    schema: Schema = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


def integer(minimum: int | None = None, maximum: int | None = None) -> Schema:
    schema: Schema = {"type": "integer"}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def enum(*values: str) -> Schema:
    return {"type": "string", "enum": list(values)}


def image() -> Schema:
    return obj({
        "repository": {"type": "string", "minLength": 1},
        "tag": {"type": "string", "pattern": "^([\\w][\\w.-]{0,127})?$"},
        "digest": {"type": "string", "pattern": "^(sha256:[a-f0-9]{64})?$"},
        "pullPolicy": enum("Always", "IfNotPresent", "Never"),
    }, ("repository", "tag", "pullPolicy"))


def resources() -> Schema:
    quantities: Schema = {"type": "object", "additionalProperties": QUANTITY}
    return obj({"requests": quantities, "limits": quantities})


def pod_placement() -> dict[str, Schema]:
    """Scheduling and pod metadata keys shared by the worker and Triton."""
    return {
        "podAnnotations": STRING_MAP,
        "podLabels": STRING_MAP,
        "podSecurityContext": K8S_OBJECT,
        "securityContext": K8S_OBJECT,
        "nodeSelector": STRING_MAP,
        "tolerations": K8S_LIST,
        "affinity": K8S_OBJECT,
        "topologySpreadConstraints": K8S_LIST,
        "priorityClassName": STRING,
    }


def tls_files() -> Schema:
    key = {"type": "string", "pattern": "^[-._a-zA-Z0-9]*$"}
    return obj({"existingSecret": SECRET_NAME, "caKey": key, "certKey": key, "keyKey": key})


def service_account() -> Schema:
    return obj({"create": BOOL, "name": STRING, "annotations": STRING_MAP, "automountToken": BOOL})


def pdb() -> Schema:
    return obj({"enabled": BOOL, "maxUnavailable": INT_OR_PERCENT}, ("enabled", "maxUnavailable"))


def _leaf(annotation: Any, default: Any) -> Schema:
    schema = _strip_titles(TypeAdapter(annotation).json_schema())
    if default is not None:
        schema["default"] = json.loads(json.dumps(default, default=str))
    return schema


def _strip_titles(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_titles(v) for k, v in node.items() if k != "title"}
    if isinstance(node, list):
        return [_strip_titles(v) for v in node]
    return node


def _is_secret(annotation: Any) -> bool:
    return SecretStr in (annotation, *getattr(annotation, "__args__", ()))


def settings_schema(model: type[BaseModel], prefix: str = "") -> Schema:
    """Closed schema of a settings model, minus chart-owned fields and secrets."""
    properties: dict[str, Schema] = {}
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = field.annotation
        if path in CHART_OWNED or _is_secret(annotation):
            continue
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            properties[name] = settings_schema(annotation, f"{path}.")
            continue
        properties[name] = _leaf(annotation, field.get_default(call_default_factory=True))
    return obj(properties)


def values_schema() -> Schema:
    secret_ref = {"existingSecret": SECRET_NAME}
    worker = obj({
        "image": image(),
        "replicas": integer(0),
        "httpPort": integer(1024, 65535),
        "settings": settings_schema(WorkerSettings),
        "faceWeights": obj({"volume": K8S_OBJECT, "mountPath": {"type": "string", "pattern": "^/"}},
                           ("volume", "mountPath")),
        "resources": resources(),
        "terminationGracePeriodSeconds": integer(0),
        "startupSeconds": integer(10),
        **pod_placement(),
        "extraEnv": K8S_LIST,
        "extraVolumes": K8S_LIST,
        "extraVolumeMounts": K8S_LIST,
        "service": obj({"annotations": STRING_MAP}),
        "serviceAccount": service_account(),
        "pdb": pdb(),
        "autoscaling": obj({
            "type": enum("none", "hpa", "keda"),
            "minReplicas": integer(0),
            "maxReplicas": integer(1),
            "hpa": obj({"targetCPUUtilizationPercentage": integer(1, 100)}),
            "keda": obj({
                "lagThreshold": integer(1),
                "activationLagThreshold": integer(0),
                "pollingInterval": integer(1),
                "cooldownPeriod": integer(0),
                "limitToPartitionsWithLag": BOOL,
                "fallback": obj({"failureThreshold": integer(1), "replicas": integer(1)}),
            }),
            "scaleDownStabilizationSeconds": integer(0, 3600),
        }, ("type", "minReplicas", "maxReplicas")),
    }, ("image", "settings", "autoscaling"))

    triton = obj({
        "enabled": BOOL,
        "externalUrl": {"type": "string", "pattern": "^((dns:///)?[^/:]+:[0-9]+)?$"},
        "tls": obj({"enabled": BOOL, "serverSecret": SECRET_NAME, **tls_files()["properties"]}),
        "image": image(),
        "replicas": integer(0),
        "gpus": integer(0),
        "resources": resources(),
        "modelRepository": obj({
            "type": enum("s3", "pvc", "emptyDir"),
            "s3": obj({
                "url": {"type": "string", "pattern": "^(s3://.+)?$"},
                "region": STRING,
                **secret_ref,
                "accessKeyIdKey": SECRET_KEY,
                "secretAccessKeyKey": SECRET_KEY,
            }),
            "pvc": obj({"claimName": STRING, "subPath": STRING}),
            "emptyDir": obj({"sizeLimit": QUANTITY}),
            "init": obj({
                "enabled": BOOL,
                "image": image(),
                "command": {"type": "array", "items": STRING},
                "args": {"type": "array", "items": STRING},
                "env": K8S_LIST,
                "resources": resources(),
            }),
        }, ("type",)),
        "modelControlMode": enum("none", "explicit", "poll"),
        "models": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "pollSeconds": integer(1),
        "shmSize": QUANTITY,
        "tmpSizeLimit": QUANTITY,
        "startupSeconds": integer(10),
        "scheduleSeconds": integer(0),
        "extraArgs": {"type": "array", "items": {"type": "string", "pattern": "^--"}},
        "extraEnv": K8S_LIST,
        **pod_placement(),
        "terminationGracePeriodSeconds": integer(0),
        "strategy": obj({
            "type": enum("RollingUpdate", "Recreate"),
            "rollingUpdate": obj({"maxSurge": INT_OR_PERCENT, "maxUnavailable": INT_OR_PERCENT}),
        }, ("type",)),
        "serviceAccount": service_account(),
        "service": obj({"type": enum("ClusterIP", "NodePort", "LoadBalancer"), "annotations": STRING_MAP}),
        "pdb": pdb(),
    }, ("enabled",))

    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "dfmod Helm chart values (generated by deploy/helm/values_schema.py)",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "global": {"type": "object"},  # set by a parent chart when this one is a dependency
            "nameOverride": STRING,
            "fullnameOverride": STRING,
            "commonLabels": STRING_MAP,
            "imagePullSecrets": K8S_LIST,
            "rolloutOnSecretChange": BOOL,
            "kafka": obj({
                "bootstrapServers": {"type": "string", "minLength": 1},
                "topics": obj({t: {"type": "string", "pattern": "^[a-zA-Z0-9._-]+$"}
                               for t in TOPICS}, TOPICS),
                "eventsPartitions": integer(0),
                "consumerGroup": {"type": "string", "minLength": 1},
                "staticMembership": BOOL,
                "securityProtocol": enum("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
                "sasl": obj({
                    "mechanism": enum("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "AWS_MSK_IAM"),
                    "oauthTokenFile": {"type": "string", "pattern": "^(/.*)?$"},
                    **secret_ref,
                    "usernameKey": SECRET_KEY,
                    "passwordKey": SECRET_KEY,
                }),
                "tls": obj({
                    **secret_ref,
                    "caKey": {"type": "string", "pattern": "^[-._a-zA-Z0-9]*$"},
                    "certKey": {"type": "string", "pattern": "^[-._a-zA-Z0-9]*$"},
                    "keyKey": {"type": "string", "pattern": "^[-._a-zA-Z0-9]*$"},
                }),
            }, ("bootstrapServers", "topics", "consumerGroup", "securityProtocol")),
            "cache": obj({
                "enabled": BOOL,
                "url": {"type": "string", "pattern": "^rediss?://"},
                **secret_ref,
                "passwordKey": SECRET_KEY,
                "username": STRING,
                "tls": tls_files(),
            }, ("enabled", "url")),
            "worker": worker,
            "triton": triton,
            "metrics": obj({
                "podAnnotations": BOOL,
                "serviceMonitor": obj({
                    "enabled": BOOL, "interval": DURATION, "scrapeTimeout": DURATION, "labels": STRING_MAP,
                }),
                "prometheusRule": obj({
                    "enabled": BOOL,
                    "labels": STRING_MAP,
                    "errorRatio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                    "stageP95Seconds": {"type": "number", "exclusiveMinimum": 0},
                    "saturation": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                    "lagRecords": integer(1),
                    "runbookBaseUrl": {"type": "string", "pattern": "^(https?://[^#]+)?$"},
                    "workerSelector": STRING,
                    "tritonSelector": STRING,
                }),
                "grafanaDashboard": obj({
                    "enabled": BOOL, "labels": STRING_MAP, "annotations": STRING_MAP,
                }),
            }),
            "networkPolicy": obj({
                "enabled": BOOL,
                "metricsFrom": K8S_LIST,
                "tritonFrom": K8S_LIST,
                "egress": obj({"enabled": BOOL, "extraRules": K8S_LIST}),
            }),
        },
    }


def render() -> str:
    return json.dumps(values_schema(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed schema is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not SCHEMA_PATH.is_file() or SCHEMA_PATH.read_text() != text:
            print(f"{SCHEMA_PATH} is stale: run PYTHONPATH=. python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    SCHEMA_PATH.write_text(text)
    print(SCHEMA_PATH)
    return 0


if __name__ == "__main__":
    sys.exit(main())
