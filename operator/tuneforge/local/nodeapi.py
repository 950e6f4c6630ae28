"""The local node agent's calls to the API server, as a kubelet makes them: the Node and
its Lease, Pod bindings and status, Events, and the ConfigMaps, Secrets and claims a Pod
reads. Objects travel as plain dicts (`_preload_content=False`): the agent only copies
fields around, and the client's model classes would drop the ones they do not know.
"""

from __future__ import annotations

import json
import logging
import platform
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from tuneforge.local.pods import PodSources, decode_secret, encode_config_map
from tuneforge.local.podstatus import timestamp

log = logging.getLogger("tuneforge.local.node")
LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40
MERGE_PATCH = "application/merge-patch+json"


def _json(response: Any) -> dict:
    return json.loads(response.data)


def _micro(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def referenced_names(pod: Mapping[str, Any]) -> tuple[set[str], set[str], set[str]]:
    """The ConfigMaps, Secrets and PersistentVolumeClaims a Pod's containers read."""
    spec = pod.get("spec") or {}
    maps, secrets, claims = set(), set(), set()
    for volume in spec.get("volumes") or []:
        if "configMap" in volume:
            maps.add(volume["configMap"].get("name", ""))
        if "secret" in volume:
            secrets.add(volume["secret"].get("secretName", ""))
        if "persistentVolumeClaim" in volume:
            claims.add(volume["persistentVolumeClaim"]["claimName"])
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        for source in container.get("envFrom") or []:
            if "configMapRef" in source:
                maps.add(source["configMapRef"].get("name", ""))
            if "secretRef" in source:
                secrets.add(source["secretRef"].get("name", ""))
        for entry in container.get("env") or []:
            value_from = entry.get("valueFrom") or {}
            if "configMapKeyRef" in value_from:
                maps.add(value_from["configMapKeyRef"].get("name", ""))
            if "secretKeyRef" in value_from:
                secrets.add(value_from["secretKeyRef"].get("name", ""))
    for volume in spec.get("volumes") or []:
        for source in (volume.get("projected") or {}).get("sources") or []:
            if "configMap" in source:
                maps.add(source["configMap"].get("name", ""))
            if "secret" in source:
                secrets.add(source["secret"].get("name", ""))
    return maps - {""}, secrets - {""}, claims


def node_addresses(host_ip: str) -> list[dict[str, str]]:
    """The Node's addresses: the API server dials the kubelet at the InternalIP (see
    controlplane.KUBELET_ADDRESS_TYPES), and the serving certificate names them all."""
    return [{"type": "InternalIP", "address": host_ip},
            {"type": "Hostname", "address": platform.node() or "localhost"}]


def wants_token(pod: Mapping[str, Any]) -> int | None:
    """The expiry a projected service-account token asks for, or None when none is mounted."""
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        for source in (volume.get("projected") or {}).get("sources") or []:
            if "serviceAccountToken" in source:
                return int(source["serviceAccountToken"].get("expirationSeconds", 3600))
    return None


class NodeApi:
    def __init__(self, api_client: client.ApiClient, node_name: str, host_ip: str) -> None:
        self.core = client.CoreV1Api(api_client)
        self.coordination = client.CoordinationV1Api(api_client)
        self.node_name = node_name
        self.host_ip = host_ip
        self.reporting_since: str | None = None
        """When this agent first reported the node Ready: its conditions' transition time."""

    # -- node --------------------------------------------------------------------------

    def register_node(self, labels: Mapping[str, str], capacity: Mapping[str, str], kubelet_port: int) -> None:
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.node_name, "labels": dict(labels)}}
        try:
            self.core.create_node(body, _preload_content=False)
        except ApiException as exc:
            if exc.status != 409:
                raise
            self.core.patch_node(self.node_name, {"metadata": {"labels": dict(labels)}, "spec": {"unschedulable": None}},
                                 _preload_content=False)
        self.report_node(capacity, kubelet_port)

    def report_node(self, capacity: Mapping[str, str], kubelet_port: int) -> None:
        """Node status with a Ready condition, what marks a node usable for everyone reading
        it, and where its kubelet endpoint listens (0: nowhere)."""
        at = timestamp(datetime.now(timezone.utc))
        since = self.reporting_since = self.reporting_since or at
        conditions = [
            {"type": kind, "status": "False", "reason": f"KubeletHas{reason}", "message": message,
             "lastHeartbeatTime": at, "lastTransitionTime": since}
            for kind, reason, message in (
                ("MemoryPressure", "SufficientMemory", "kubelet has sufficient memory available"),
                ("DiskPressure", "NoDiskPressure", "kubelet has no disk pressure"),
                ("PIDPressure", "SufficientPID", "kubelet has sufficient PID available"),
            )
        ]
        conditions.append({"type": "Ready", "status": "True", "reason": "KubeletReady",
                           "message": "tuneforge local node agent is posting ready status",
                           "lastHeartbeatTime": at, "lastTransitionTime": since})
        status = {
            "capacity": dict(capacity),
            "allocatable": dict(capacity),
            "conditions": conditions,
            "addresses": node_addresses(self.host_ip),
            "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": platform.release(),
                "osImage": platform.platform(), "containerRuntimeVersion": "tuneforge-local://processes",
                "kubeletVersion": "tuneforge-local", "kubeProxyVersion": "", "operatingSystem": "linux",
                "architecture": platform.machine(),
            },
        }
        self.core.patch_node_status(self.node_name, {"status": status}, _preload_content=False,
                                    _content_type=MERGE_PATCH)

    def renew_lease(self) -> None:
        """The node heartbeat the node-lifecycle controller watches."""
        spec = {"holderIdentity": self.node_name, "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": _micro(datetime.now(timezone.utc))}
        try:
            self.coordination.patch_namespaced_lease(self.node_name, LEASE_NAMESPACE, {"spec": spec},
                                                     _preload_content=False)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.node_name, "namespace": LEASE_NAMESPACE}, "spec": spec}
            self.coordination.create_namespaced_lease(LEASE_NAMESPACE, body, _preload_content=False)

    # -- pods --------------------------------------------------------------------------

    def read_pod(self, namespace: str, name: str) -> dict | None:
        return self._read(self.core.read_namespaced_pod, name, namespace)

    def list_pods(self) -> tuple[list[dict], str]:
        listing = _json(self.core.list_pod_for_all_namespaces(_preload_content=False))
        return listing["items"], listing["metadata"]["resourceVersion"]

    def bind(self, pod: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": meta["name"], "uid": meta["uid"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name}}
        self.core.create_namespaced_pod_binding(meta["name"], meta["namespace"], body, _preload_content=False)

    def patch_status(self, pod: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        self.core.patch_namespaced_pod_status(meta["name"], meta["namespace"], {"status": dict(status)},
                                              _preload_content=False, _content_type=MERGE_PATCH)

    def delete_now(self, pod: Mapping[str, Any]) -> None:
        """Finishes a deletion whose processes are gone, as a kubelet does: grace 0, and only
        this incarnation of the name (a Pod recreated under it stays)."""
        meta = pod["metadata"]
        try:
            # Both in the body: the API server reads DeleteOptions from a body over the query.
            self.core.delete_namespaced_pod(
                meta["name"], meta["namespace"],
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}}, _preload_content=False,
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def event(self, pod: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        """A core/v1 Event about the Pod, from the `kubelet` component like a kubelet's own."""
        meta = pod["metadata"]
        at = datetime.now(timezone.utc)
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"]},
            "reason": reason,
            "message": message[:1024],
            "type": kind,
            "source": {"component": "kubelet", "host": self.node_name},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node_name,
            "firstTimestamp": timestamp(at),
            "lastTimestamp": timestamp(at),
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], body, _preload_content=False)
        except ApiException as exc:  # an Event is best effort: a terminating namespace refuses it
            log.warning("event %s on %s/%s not recorded: %s", reason, meta["namespace"], meta["name"], exc.reason)

    # -- what a pod reads --------------------------------------------------------------

    def _read(self, reader, name: str, namespace: str) -> dict | None:
        try:
            return _json(reader(name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def pod_sources(self, pod: Mapping[str, Any]) -> PodSources:
        namespace = pod["metadata"]["namespace"]
        maps, secrets, _ = referenced_names(pod)
        config_maps = {}
        for name in maps:
            body = self._read(self.core.read_namespaced_config_map, name, namespace)
            if body is not None:
                config_maps[name] = encode_config_map(body.get("data"), body.get("binaryData"))
        secret_data = {}
        for name in secrets:
            body = self._read(self.core.read_namespaced_secret, name, namespace)
            if body is not None:
                secret_data[name] = decode_secret(body.get("data"))
        return PodSources(config_maps=config_maps, secrets=secret_data, service_account_token=self._token(pod))

    def _token(self, pod: Mapping[str, Any]) -> str | None:
        """A token bound to the Pod, from the TokenRequest API, as a kubelet mounts it."""
        expiry = wants_token(pod)
        if expiry is None:
            return None
        meta = pod["metadata"]
        account = (pod.get("spec") or {}).get("serviceAccountName") or "default"
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"expirationSeconds": max(expiry, 600),
                         "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                                            "uid": meta["uid"]}}}
        try:
            response = self.core.create_namespaced_service_account_token(account, meta["namespace"], body,
                                                                         _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return _json(response)["status"]["token"]

    def claim_dirs(self, pod: Mapping[str, Any], root: Path) -> dict[str, Path]:
        """The local directories of the Pod's claims that exist (one per namespace and claim,
        shared by every Pod mounting it, as a ReadWriteMany volume would be)."""
        namespace = pod["metadata"]["namespace"]
        _, _, claims = referenced_names(pod)
        dirs = {}
        for claim in claims:
            if self._read(self.core.read_namespaced_persistent_volume_claim, claim, namespace) is not None:
                dirs[claim] = root / namespace / claim
        return dirs
