"""The operator's Kubernetes API access: one shared client and idempotent verbs.

Handlers run in kopf's thread pool, so the synchronous `kubernetes` client is used from
several threads; its urllib3 pool is sized for that. A verb leaves the API server's
answer unparsed unless its caller needs it. Every create tolerates 409 (the object
exists: a previous run, or the other replica, made it) and every delete tolerates 404,
which is what makes a reconcile safe to repeat.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tuneforge.api.v1alpha1 import GROUP, VERSION
from tuneforge.api.v1alpha1.labels import OPERATOR_NAME, Label
from tuneforge.serving_auth import PLATFORM_KEY_FIELD, PLATFORM_KEY_SECRET, new_platform_key

_api: client.ApiClient | None = None


def api() -> client.ApiClient:
    """The shared ApiClient (in-cluster config in a Pod, else KUBECONFIG)."""
    global _api
    if _api is None:
        try:
            config.load_incluster_config()
            configuration = client.Configuration.get_default_copy()
        except config.ConfigException:
            configuration = client.Configuration()
            config.load_kube_config(client_configuration=configuration)
        configuration.connection_pool_maxsize = 32
        _api = client.ApiClient(configuration)
    return _api


def core() -> client.CoreV1Api:
    return client.CoreV1Api(api())


def batch() -> client.BatchV1Api:
    return client.BatchV1Api(api())


def apps() -> client.AppsV1Api:
    return client.AppsV1Api(api())


def custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api())


def create(body: dict[str, Any]) -> bool:
    """Creates a namespaced object; False when it already existed."""
    namespace = body["metadata"]["namespace"]
    kind = body["kind"]
    unread = {"_preload_content": False}
    try:
        if kind == "ConfigMap":
            response = core().create_namespaced_config_map(namespace, body, **unread)
        elif kind == "Secret":
            response = core().create_namespaced_secret(namespace, body, **unread)
        elif kind == "Service":
            response = core().create_namespaced_service(namespace, body, **unread)
        elif kind == "Job":
            response = batch().create_namespaced_job(namespace, body, **unread)
        elif kind == "Deployment":
            response = apps().create_namespaced_deployment(namespace, body, **unread)
        else:
            group, version = body["apiVersion"].split("/")
            response = custom().create_namespaced_custom_object(group, version, namespace, plural(kind), body, **unread)
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise
    _discard(response)
    return True


def apply(body: dict[str, Any]) -> None:
    """Server-side apply as field manager `tuneforge`: create or bring up to date in one
    call, without clobbering fields other managers (HPA, kubectl scale) own."""
    namespace = body["metadata"]["namespace"]
    name = body["metadata"]["name"]
    kind = body["kind"]
    common = {"field_manager": "tuneforge", "force": True, "_content_type": "application/apply-patch+yaml",
              "_preload_content": False}
    if kind == "ConfigMap":
        response = core().patch_namespaced_config_map(name, namespace, body, **common)
    elif kind == "Service":
        response = core().patch_namespaced_service(name, namespace, body, **common)
    elif kind == "Secret":
        response = core().patch_namespaced_secret(name, namespace, body, **common)
    elif kind == "Deployment":
        response = apps().patch_namespaced_deployment(name, namespace, body, **common)
    else:
        group, version = body["apiVersion"].split("/")
        response = custom().patch_namespaced_custom_object(group, version, namespace, plural(kind), name, body, **common)
    _discard(response)


def delete_job(namespace: str, name: str) -> None:
    """Deletes a Job in the foreground: the Job object stays until its Pods are gone, so
    a Job with the same name is only created again once no old Pod can still write."""
    try:
        batch().delete_namespaced_job(
            name, namespace, body=client.V1DeleteOptions(propagation_policy="Foreground")
        )
    except ApiException as exc:
        if exc.status != 404:
            raise


def job_exists(namespace: str, name: str) -> bool:
    """Whether the Job is in the API server, whatever the operator's index has seen yet."""
    try:
        response = batch().read_namespaced_job(name, namespace, _preload_content=False)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    _discard(response)
    return True


def job_going(namespace: str, name: str) -> bool:
    """Whether the Job is gone from the API server or being deleted, whatever the operator's
    index shows: a delete issued on an earlier tick that the index has not seen yet."""
    try:
        job = batch().read_namespaced_job(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return job.metadata.deletion_timestamp is not None


def events_of(namespace: str, uid: str) -> list[dict[str, Any]]:
    """The Events whose involved object has this uid (a Job's, say), as plain JSON: by uid,
    so the Events of an earlier Job of the same name do not count."""
    response = core().list_namespaced_event(
        namespace, field_selector=f"involvedObject.uid={uid}", _preload_content=False
    )
    return json.loads(response.data)["items"]


def delete_secret(namespace: str, name: str) -> None:
    try:
        core().delete_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise


def read_secret(namespace: str, name: str) -> client.V1Secret | None:
    try:
        return core().read_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def read_custom(namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    try:
        return custom().get_namespaced_custom_object(GROUP, VERSION, namespace, plural(kind), name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def delete_custom(namespace: str, kind: str, name: str) -> None:
    try:
        custom().delete_namespaced_custom_object(GROUP, VERSION, namespace, plural(kind), name)
    except ApiException as exc:
        if exc.status != 404:
            raise


def _discard(response: urllib3.HTTPResponse) -> None:
    """Drops a response whose body the caller does not need, unparsed (turning a Job the
    API server echoes back into the client's models costs more CPU than sending it), and
    returns its connection to the pool, which urllib3 does only once the body is read."""
    response.drain_conn()
    response.release_conn()


def plural(kind: str) -> str:
    return kind.lower() + "s"


def platform_serving_key(namespace: str) -> str:
    """The platform key serving tokens derive from (tuneforge.serving_auth), created on
    first use; of two replicas racing to create it, the loser reads the winner's."""
    secret = read_secret(namespace, PLATFORM_KEY_SECRET)
    if secret is None:
        create({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": PLATFORM_KEY_SECRET, "namespace": namespace,
                             "labels": {Label.MANAGED_BY: OPERATOR_NAME}},
                "stringData": {PLATFORM_KEY_FIELD: new_platform_key()}})
        secret = read_secret(namespace, PLATFORM_KEY_SECRET)
    return base64.b64decode(secret.data[PLATFORM_KEY_FIELD]).decode()


def scale_deployment(namespace: str, name: str, replicas: int) -> None:
    """Sets a Deployment's replicas through its scale subresource, as the Horizontal Pod
    Autoscaler does: the rest of the spec stays the `tuneforge` apply's."""
    apps().patch_namespaced_deployment_scale(name, namespace, {"spec": {"replicas": replicas}})


def patch_custom_status(namespace: str | None, kind: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
    """Merges `status` into a tuneforge object's status (a cluster-scoped one's when
    `namespace` is None); returns the object as written."""
    if namespace is None:
        return custom().patch_cluster_custom_object_status(GROUP, VERSION, plural(kind), name, {"status": status})
    return custom().patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, plural(kind), name, {"status": status})
