"""Generates the chart's values.schema.json and the Argo CD health-check ConfigMap.

`make crds` runs it after the CRDs. The values schema comes from pydantic models of the
chart's values, which reuse the types the code itself validates with: a hardware profile
is `tuneforge.config.HardwareProfile` (what the operator and gateway parse from
TUNEFORGE_HARDWARE_PROFILES) and a catalog entry's spec is the BaseModel spec of the CRD.
So `helm install` rejects a malformed profile or catalog entry with the same rules the
platform would, before anything reaches the cluster. tests/unit/chart/test_values_schema.py
fails when either generated file is stale or when values.yaml disagrees with the models.

Usage: python hack/chartgen.py [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from tuneforge.api.v1alpha1.basemodel import BaseModelSpec
from tuneforge.api.v1alpha1.common import DNS_LABEL_PATTERN
from tuneforge.config import HardwareProfile

CPU_PROFILE = HardwareProfile(name="cpu", display_name="CPU only (no GPU)", gpu_count=0, cost_per_hour=0)
"""What a default install offers, so GET /hardware and cost estimates work out of the box:
Pods without GPUs, which is also what a job naming no profile got before profiles existed."""

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "tuneforge"
VALUES_SCHEMA = CHART / "values.schema.json"
ARGOCD = REPO / "deploy" / "argocd"
HEALTH_DIR = ARGOCD / "health"
ARGOCD_CM = ARGOCD / "argocd-cm-health.yaml"
KINDS = ("BaseModel", "FineTuningJob", "ModelDeployment", "BatchJob")

QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|Pi|Ei|M|G|T|P|E)?$"
DURATION = r"^[0-9]+(ms|s|m|h)$"
PORT = {"ge": 1, "le": 65535}
K8sObject = dict[str, Any]


class Values(BaseModel):
    """Base of every values section: camelCase keys, unknown keys rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, use_attribute_docstrings=True, extra="forbid"
    )


class Image(Values):
    repository: str = Field(min_length=1)
    """Image repository."""
    tag: str = ""
    """Image tag; empty uses the chart's appVersion."""


class TuneforgeImage(Image):
    repository: str = Field(default="ghcr.io/tuneforge/tuneforge", min_length=1)
    """Image repository."""
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """imagePullPolicy of the operator and gateway containers."""


class Images(Values):
    tuneforge: TuneforgeImage = Field(default_factory=TuneforgeImage)
    """The image running `tuneforge operator` and `tuneforge gateway`."""
    trainer: Image = Field(default_factory=lambda: Image(repository="ghcr.io/tuneforge/trainer"))
    """The trainer image of FineTuningJobs."""
    inference: Image = Field(default_factory=lambda: Image(repository="ghcr.io/tuneforge/inference"))
    """The inference image of ModelDeployments and batch runners."""
    pull_secrets: list[str] = Field(default_factory=list)
    """Names of imagePullSecrets for every Pod: operator, gateway, and the trainer, serving
    and batch runner Pods (in the system and tenant namespaces, which must hold them)."""
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """imagePullPolicy of the trainer, serving and batch runner containers."""


class Peering(Values):
    enabled: bool = True
    """kopf peering between operator replicas; false runs one standalone replica."""
    name: str = Field(default="tuneforge", pattern=DNS_LABEL_PATTERN, max_length=63)
    """Name of the ClusterKopfPeering object the replicas share."""


class OperatorPdb(Values):
    enabled: bool = True
    """Render a PodDisruptionBudget (only with more than one replica)."""
    max_unavailable: int = Field(default=1, ge=1)
    """Replicas a voluntary disruption may take down at once."""


class GatewayPdb(Values):
    enabled: bool = True
    """Render a PodDisruptionBudget (only with more than one replica)."""
    min_available: int = Field(default=1, ge=1)
    """Gateway Pods kept through voluntary disruptions."""


def _resources() -> K8sObject:
    return {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}


class Operator(Values):
    replicas: int = Field(default=2, ge=0, le=16)
    """Operator replicas; more than one needs peering."""
    peering: Peering = Field(default_factory=Peering)
    """kopf peering."""
    poll_interval: float = Field(default=2, gt=0)
    """Seconds between reconciles of an active object."""
    status_interval: float = Field(default=5, ge=0)
    """Minimum seconds between progress-only status writes of one object."""
    workers: int = Field(default=32, ge=1, le=512)
    """Threads running reconciles."""
    metrics_port: int = Field(default=9090, **PORT)
    """Port of the Prometheus /metrics endpoint."""
    health_port: int = Field(default=8080, **PORT)
    """Port of kopf's /healthz endpoint."""
    resources: K8sObject = Field(default_factory=_resources)
    """Container resources (core/v1 ResourceRequirements)."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node selector."""
    tolerations: list[K8sObject] = Field(default_factory=list)
    """Tolerations (core/v1 Toleration objects)."""
    affinity: K8sObject = Field(default_factory=dict)
    """Affinity; empty spreads the replicas over nodes."""
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    """Extra Pod annotations."""
    extra_env: list[K8sObject] = Field(default_factory=list)
    """Extra environment variables (core/v1 EnvVar objects)."""
    pod_disruption_budget: OperatorPdb = Field(default_factory=OperatorPdb)
    """PodDisruptionBudget."""
    pod_admission_timeout: float = Field(default=600, gt=0)
    """Seconds a trainer or batch runner Job may fail to create its Pods before the job fails."""
    batch_retries_per_hour: int = Field(default=10, ge=1)
    """Batch runner crashes retried per hour of a batch's completion window."""
    webhook_attempts: int = Field(default=8, ge=1)
    """Deliveries of a FineTuningJob's webhook tried before it counts as failed."""
    webhook_retry_delay: float = Field(default=10, ge=0)
    """Seconds before a webhook's second delivery; later waits double, up to ten minutes."""


class Service(Values):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    """Service type."""
    port: int = Field(default=8000, **PORT)
    """Service port."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Service annotations."""


class Tls(Values):
    enabled: bool = False
    """Serve TLS."""
    secret_name: str = ""
    """Secret holding the certificate."""


class Ingress(Values):
    enabled: bool = False
    """Render an Ingress for the gateway."""
    class_name: str = ""
    """IngressClass name."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Ingress annotations."""
    host: str = Field(default="tuneforge.example.com", min_length=1)
    """Host name."""
    tls: Tls = Field(default_factory=Tls)
    """TLS."""


class Gateway(Values):
    replicas: int = Field(default=2, ge=0, le=256)
    """Gateway replicas."""
    port: int = Field(default=8000, **PORT)
    """Container port."""
    metrics_port: int = Field(default=9091, **PORT)
    """Port of the Prometheus /metrics endpoint."""
    max_upload_bytes: int = Field(default=6 * 1024**3, ge=1)
    """Largest file accepted by POST /v1/files (batch input files)."""
    max_fine_tune_upload_bytes: int = Field(default=512 * 1024**2, ge=1)
    """Largest training or validation file accepted by POST /v1/files."""
    key_cache_seconds: float = Field(default=5, ge=0)
    """Seconds an API-key lookup is reused; up to twice this while it is reloaded in the background."""
    route_cache_seconds: float = Field(default=2, ge=0)
    """Seconds a deployment's ready Pods are reused for routing; up to twice this while reloaded."""
    catalog_cache_seconds: float = Field(default=5, ge=0)
    """Seconds the model catalog is reused to resolve model ids; an id it lacks is looked up afresh."""
    list_cache_max_objects: int = Field(default=50_000, ge=0)
    """Most FineTuningJobs and BatchJobs a replica keeps from its watches to serve lists; 0 turns the cache off."""
    upstream_timeout_seconds: float = Field(default=600, gt=0)
    """Read timeout towards the serving Pods."""
    service: Service = Field(default_factory=Service)
    """The gateway Service."""
    ingress: Ingress = Field(default_factory=Ingress)
    """An optional Ingress."""
    resources: K8sObject = Field(default_factory=_resources)
    """Container resources (core/v1 ResourceRequirements)."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node selector."""
    tolerations: list[K8sObject] = Field(default_factory=list)
    """Tolerations (core/v1 Toleration objects)."""
    affinity: K8sObject = Field(default_factory=dict)
    """Affinity; empty spreads the replicas over nodes."""
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    """Extra Pod annotations."""
    extra_env: list[K8sObject] = Field(default_factory=list)
    """Extra environment variables (core/v1 EnvVar objects)."""
    pod_disruption_budget: GatewayPdb = Field(default_factory=GatewayPdb)
    """PodDisruptionBudget."""


class Pvc(Values):
    create: bool = True
    """Create the claim; false uses an existing one."""
    claim_name: str = Field(default="tuneforge-store", pattern=DNS_LABEL_PATTERN, max_length=63)
    """Claim name, part of every stored URI (pvc://<claimName>/...)."""
    path: str = Field(default="store", pattern=r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
    """Directory on the claim that holds the store."""
    storage_class_name: str = ""
    """StorageClass; empty uses the cluster default."""
    access_modes: list[Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod", "ReadOnlyMany"]] = Field(
        default_factory=lambda: ["ReadWriteMany"], min_length=1
    )
    """Access modes of the claim."""
    size: str = Field(default="100Gi", pattern=QUANTITY)
    """Requested size (a Kubernetes quantity)."""
    mount_root: str = Field(default="/mnt/pvc", pattern=r"^/")
    """Where Pods mount claims named in pvc:// URIs."""


class S3Credentials(Values):
    create: bool = False
    """Render the Secret tuneforge-store-credentials."""
    access_key_id: str = ""
    """AWS_ACCESS_KEY_ID."""
    secret_access_key: str = ""
    """AWS_SECRET_ACCESS_KEY."""
    namespaces: list[str] = Field(default_factory=list)
    """Tenant namespaces that also get the Secret."""


class S3(Values):
    bucket: str = Field(default="", pattern=r"^([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])?$")
    """Bucket name (required with type s3)."""
    prefix: str = "tuneforge"
    """Key prefix inside the bucket."""
    endpoint: str = Field(default="", pattern=r"^(https?://.+)?$")
    """Endpoint URL of an S3-compatible store; empty uses AWS."""
    region: str = ""
    """Region."""
    credentials: S3Credentials = Field(default_factory=S3Credentials)
    """Static credentials."""


class Storage(Values):
    type: Literal["pvc", "s3"] = "pvc"
    """pvc (a PersistentVolumeClaim) or s3 (an S3-compatible object store)."""
    pvc: Pvc = Field(default_factory=Pvc)
    """The claim, with type pvc."""
    s3: S3 = Field(default_factory=S3)
    """The bucket, with type s3."""


class CatalogEntry(Values):
    """A BaseModel the chart creates."""

    name: str = Field(pattern=DNS_LABEL_PATTERN, max_length=63)
    """BaseModel name: what FineTuningJobs and the openai client call the model."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Extra labels."""
    spec: BaseModelSpec
    """The BaseModel spec."""


class NetworkPolicy(Values):
    enabled: bool = False
    """Render ingress NetworkPolicies for the system namespace's Pods."""
    gateway_from: list[K8sObject] = Field(default_factory=list)
    """NetworkPolicyPeers allowed to reach the gateway; empty allows all."""
    metrics_from: list[K8sObject] = Field(default_factory=list)
    """NetworkPolicyPeers allowed to scrape metrics; empty allows all."""


class ServiceMonitor(Values):
    enabled: bool = False
    """Render ServiceMonitors (needs the Prometheus Operator CRDs)."""
    interval: str = Field(default="30s", pattern=DURATION)
    """Scrape interval."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Extra labels on the ServiceMonitors."""


class Monitoring(Values):
    service_monitor: ServiceMonitor = Field(default_factory=ServiceMonitor)
    """Prometheus Operator ServiceMonitors."""


def _pod_security_context() -> K8sObject:
    return {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _security_context() -> K8sObject:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]}}


class ChartValues(Values):
    """Values of the tuneforge chart."""

    name_override: str = Field(default="", max_length=40)
    """Overrides the chart name in resource names."""
    fullname_override: str = Field(default="", max_length=40)
    """Overrides the resource-name prefix."""
    create_namespace: bool = False
    """Render a Namespace object for the release namespace."""
    images: Images = Field(default_factory=Images)
    """Images."""
    operator: Operator = Field(default_factory=Operator)
    """The operator (`tuneforge operator`)."""
    gateway: Gateway = Field(default_factory=Gateway)
    """The gateway (`tuneforge gateway`)."""
    pod_security_context: K8sObject = Field(default_factory=_pod_security_context)
    """Pod securityContext of the operator and gateway."""
    security_context: K8sObject = Field(default_factory=_security_context)
    """Container securityContext of the operator and gateway."""
    storage: Storage = Field(default_factory=Storage)
    """The artifact store."""
    workload_cache_size: str = Field(default="100Gi", pattern=QUANTITY)
    """sizeLimit of the cache emptyDir of trainer, serving and batch runner Pods."""
    hardware_profiles: list[HardwareProfile] = Field(default_factory=lambda: [CPU_PROFILE])
    """Hardware profiles on offer (TUNEFORGE_HARDWARE_PROFILES)."""
    default_hardware_profile: str = "cpu"
    """Profile used when neither a job nor its base model names one."""
    base_models: list[CatalogEntry] = Field(default_factory=list)
    """BaseModel catalog entries."""
    network_policy: NetworkPolicy = Field(default_factory=NetworkPolicy)
    """NetworkPolicies."""
    monitoring: Monitoring = Field(default_factory=Monitoring)
    """Monitoring."""


def _tidy(node: Any) -> Any:
    """Drops pydantic's titles and closes objects with known properties, so a typo in any
    key (also inside a catalog entry's spec) is an error instead of being ignored."""
    if isinstance(node, list):
        return [_tidy(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in ("properties", "$defs"):
            out[key] = {name: _tidy(sub) for name, sub in value.items()}
        else:
            out[key] = _tidy(value)
    if "properties" in out:
        out.setdefault("additionalProperties", False)
    return out


def values_schema() -> dict[str, Any]:
    schema = _tidy(ChartValues.model_json_schema(by_alias=True, mode="validation"))
    # Helm injects `global` into every chart's values (shared with subcharts).
    schema["properties"]["global"] = {"type": "object", "description": "Values shared with subcharts (Helm)."}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def render_values_schema() -> str:
    return json.dumps(values_schema(), indent=2) + "\n"


def health_script(kind: str) -> str:
    """A kind's complete Lua health check: the shared opening, then the kind's own part."""
    return (HEALTH_DIR / "common.lua").read_text() + (HEALTH_DIR / f"{kind}.lua").read_text()


def render_argocd_cm() -> str:
    """The argocd-cm keys for the four kinds' Lua health checks, from deploy/argocd/health."""
    data = {f"resource.customizations.health.tuneforge.io_{kind}": health_script(kind) for kind in KINDS}
    document = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "argocd-cm",
            "namespace": "argocd",
            "labels": {"app.kubernetes.io/name": "argocd-cm", "app.kubernetes.io/part-of": "argocd"},
        },
        "data": data,
    }
    header = (
        "# Generated by `make crds` from deploy/argocd/health/*.lua (common.lua + <kind>.lua); do not edit.\n"
        "# Merge into Argo CD's argocd-cm, e.g.:\n"
        "#   kubectl -n argocd patch configmap argocd-cm --type merge --patch-file deploy/argocd/argocd-cm-health.yaml\n"
    )
    return header + yaml.dump(document, Dumper=_LiteralDumper, sort_keys=False, width=120)


class _LiteralDumper(yaml.SafeDumper):
    """Writes multi-line strings (the Lua scripts) as readable `|` blocks."""


def _literal(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _literal)


def outputs() -> dict[Path, str]:
    return {VALUES_SCHEMA: render_values_schema(), ARGOCD_CM: render_argocd_cm()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when a generated file is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
            continue
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)}")
    for path in stale:
        print(f"{path.relative_to(REPO)} is stale: run `make crds`", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
