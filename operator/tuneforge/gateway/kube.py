"""The gateway's only door to Kubernetes: the official (blocking) client, run in a
threadpool so a slow API server never stalls the event loop.

Objects come back as plain dicts (the custom resources are dicts anyway), and API server
errors become OpenAIErrors: 404 stays 404, an object refused by the CRD schema is the
caller's bad input (400), anything else is the platform's fault. An API server that
cannot be reached or fails itself (5xx) is `ApiServerUnavailable`: it said nothing about
the object asked for, so the caches keep serving what they read last (see `caching`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from starlette.concurrency import run_in_threadpool
from urllib3.exceptions import HTTPError

from tuneforge.api.v1alpha1 import GROUP, VERSION
from tuneforge.gateway.errors import OpenAIError

T = TypeVar("T")


def load_api_client() -> client.ApiClient:
    """In-cluster credentials when running in a Pod, else $KUBECONFIG / ~/.kube/config."""
    try:
        config.load_incluster_config()
        return client.ApiClient()
    except config.ConfigException:
        return config.new_client_from_config()


class AlreadyExists(Exception):
    """A create hit an existing name (an idempotent retry)."""


class WatchExpired(Exception):
    """The API server no longer has the history a watch asked to resume from (410 Gone):
    the watcher must list again."""


class ApiServerUnavailable(OpenAIError):
    """No answer from the API server: down, restarting, or failing (5xx)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message, code="upstream_error", type="server_error")


def _json(response: Any) -> dict:
    return json.loads(response.data)


WriteObserver = Callable[[str, str, dict], None]
"""Told (verb: create, patch or delete; plural; the object as the API server returned it)
after each custom-resource write."""


class Kube:
    """Custom resources, Pods, Deployments and Secrets as dicts.

    Every custom-resource write is reported to the `write_observers`, so a cache of what
    the API server holds (the listing cache) can serve a client's next read with its own
    write in it."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.write_observers: list[WriteObserver] = []

    def _wrote(self, verb: str, plural: str, resource: dict) -> dict:
        for observer in self.write_observers:
            observer(verb, plural, resource)
        return resource

    async def _call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> dict:
        """Runs one client call in the threadpool, returning the raw JSON as a dict
        (`_preload_content=False` skips the client's slow model deserialisation)."""
        try:
            response = await run_in_threadpool(func, *args, _preload_content=False, **kwargs)
        except ApiException as exc:
            raise _translate(exc) from exc
        except HTTPError as exc:
            raise _unreachable(exc) from exc
        return _json(response)

    # -- custom resources --------------------------------------------------------------

    async def get(self, plural: str, namespace: str, name: str) -> dict | None:
        try:
            return await self._call(self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, plural, name)
        except OpenAIError as exc:
            if exc.status == 404:
                return None
            raise

    async def get_cluster(self, plural: str, name: str) -> dict | None:
        try:
            return await self._call(self.custom.get_cluster_custom_object, GROUP, VERSION, plural, name)
        except OpenAIError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, plural: str, namespace: str, label_selector: str | None = None) -> list[dict]:
        kwargs = {"label_selector": label_selector} if label_selector else {}
        result = await self._call(self.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, plural, **kwargs)
        return result.get("items", [])

    async def list_cluster(self, plural: str) -> list[dict]:
        result = await self._call(self.custom.list_cluster_custom_object, GROUP, VERSION, plural)
        return result.get("items", [])

    async def create(self, plural: str, namespace: str, body: dict) -> dict:
        try:
            created = await self._call(self.custom.create_namespaced_custom_object, GROUP, VERSION, namespace, plural,
                                       body)
        except OpenAIError as exc:
            if exc.status == 409:
                raise AlreadyExists(body["metadata"]["name"]) from exc
            raise
        return self._wrote("create", plural, created)

    async def patch(self, plural: str, namespace: str, name: str, patch: dict) -> dict:
        """A JSON merge patch (the client sends a dict body as merge-patch+json)."""
        patched = await self._call(self.custom.patch_namespaced_custom_object, GROUP, VERSION, namespace, plural, name,
                                   patch)
        return self._wrote("patch", plural, patched)

    async def delete(self, plural: str, namespace: str, name: str) -> bool:
        """Deletes a custom resource (its children go with it, by ownerReference); False
        when it was already gone."""
        try:
            deleted = await self._call(self.custom.delete_namespaced_custom_object, GROUP, VERSION, namespace, plural,
                                       name)
        except OpenAIError as exc:
            if exc.status == 404:
                return False
            raise
        if deleted.get("kind") == "Status":  # gone at once (else: the object, marked for deletion)
            deleted = {"metadata": {"name": name, "namespace": namespace}}
        self._wrote("delete", plural, deleted)
        return True

    # -- watching (blocking: for threads of their own, never the event loop) ----------

    def list_snapshot(self, plural: str, namespace: str, *, page_size: int = 500) -> tuple[list[dict], str]:
        """Every object of `plural` in `namespace`, read in pages of one consistent
        snapshot, and that snapshot's resourceVersion (where a watch resumes)."""
        items: list[dict] = []
        token = None
        while True:
            kwargs = {"limit": page_size, **({"_continue": token} if token else {})}
            try:
                response = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural,
                                                                     _preload_content=False, **kwargs)
            except ApiException as exc:
                if exc.status == 410:  # the snapshot went out of etcd's history mid-way
                    raise WatchExpired() from exc
                raise
            page = _json(response)
            items.extend(page.get("items", []))
            token = page["metadata"].get("continue")
            if not token:
                return items, page["metadata"]["resourceVersion"]

    def watch(self, plural: str, namespace: str, resource_version: str, *, timeout_seconds: int) -> WatchStream:
        """The changes to `plural` in `namespace` after `resource_version`, with bookmarks."""
        return WatchStream(self.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, plural,
                           resource_version=resource_version, allow_watch_bookmarks=True,
                           timeout_seconds=timeout_seconds, _request_timeout=(10, timeout_seconds + 30))

    # -- core objects ------------------------------------------------------------------

    async def get_secret(self, namespace: str, name: str) -> dict | None:
        try:
            return await self._call(self.core.read_namespaced_secret, name, namespace)
        except OpenAIError as exc:
            if exc.status == 404:
                return None
            raise

    async def get_deployment(self, namespace: str, name: str) -> dict | None:
        try:
            return await self._call(self.apps.read_namespaced_deployment, name, namespace)
        except OpenAIError as exc:
            if exc.status == 404:
                return None
            raise

    async def list_pods(self, namespace: str, label_selector: str) -> list[dict]:
        result = await self._call(self.core.list_namespaced_pod, namespace, label_selector=label_selector)
        return result.get("items", [])

    async def pod_log(self, namespace: str, name: str, container: str, *, tail_lines: int | None = None,
                      since_time: str | None = None) -> str | None:
        """A container's log with RFC 3339 timestamps, through the API server (which asks
        the node's kubelet); None when there is no log to read: no such Pod, its container
        has not started, or it is on no node (the API server answers 204). `since_time`
        (RFC 3339) is sent as the API's sinceTime, which the generated client lacks."""
        query: list[tuple[str, str]] = [("container", container), ("timestamps", "true")]
        if tail_lines is not None:
            query.append(("tailLines", str(tail_lines)))
        if since_time is not None:
            query.append(("sinceTime", since_time))
        try:
            response = await run_in_threadpool(
                self.api_client.call_api,
                "/api/v1/namespaces/{namespace}/pods/{name}/log", "GET",
                path_params={"namespace": namespace, "name": name},
                query_params=query,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
            )
        except ApiException as exc:
            if exc.status in (400, 404):
                return None  # no such Pod, or its container has not started or was removed
            raise _translate(exc) from exc
        except HTTPError as exc:
            raise _unreachable(exc) from exc
        if response.status == 204:
            return None
        return response.data.decode("utf-8", errors="replace")


class WatchStream:
    """One watch request's events, as dicts with `type` (ADDED, MODIFIED, DELETED,
    BOOKMARK) and `object`, until the server ends it (its timeout) or `stop()` is called
    from another thread, which unblocks the read at once. Raises WatchExpired on 410 Gone."""

    def __init__(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._watch = watch.Watch()
        self._call = (func, args, kwargs)

    def __iter__(self) -> Iterator[dict]:
        func, args, kwargs = self._call
        try:
            yield from self._watch.stream(func, *args, **kwargs)
        except ApiException as exc:
            if exc.status == 410:
                raise WatchExpired() from exc
            raise

    def stop(self) -> None:
        self._watch.stop()


def _translate(exc: ApiException) -> OpenAIError:
    try:
        message = json.loads(exc.body or "{}").get("message") or exc.reason
    except ValueError:
        message = exc.reason
    if exc.status == 404:
        return OpenAIError(404, message, code="not_found")
    if exc.status == 409:
        return OpenAIError(409, message, code="conflict")
    if exc.status in (400, 422):
        return OpenAIError(400, f"rejected by the API server: {message}", code="invalid_request")
    if exc.status >= 500:
        return ApiServerUnavailable(502, f"the Kubernetes API server failed: {message}")
    return OpenAIError(502, f"the Kubernetes API server failed: {message}", code="upstream_error", type="server_error")


def _unreachable(exc: HTTPError) -> ApiServerUnavailable:
    return ApiServerUnavailable(503, f"the Kubernetes API server is unreachable: {type(exc).__name__}")
