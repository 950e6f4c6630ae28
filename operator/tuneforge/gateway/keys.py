"""`tuneforge keys create | revoke | list`: API keys as Secrets in the system namespace.

The key itself is printed once by `create` and never stored; only its hash is (see
tuneforge.apikeys). Revoking deletes the Secret; gateways stop accepting the key within
their key cache time.

The CLI runs with the caller's own credentials, so what goes wrong is usually theirs to
fix: a namespace that does not exist, a key already revoked, RBAC, a cluster out of reach.
Each is said in one line that names the thing, never as the API server's raw answer.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterable

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

from tuneforge import apikeys
from tuneforge.api.v1alpha1.labels import RESTRICTED_NAMESPACE_LABELS, Label
from tuneforge.config import settings
from tuneforge.gateway.kube import load_api_client


class KeyCommandError(Exception):
    """Something the caller can fix, with the one line that says what."""


def tenant_namespace(name: str) -> dict:
    """A new tenant namespace: enforcing Pod Security "restricted", as the operator's Pods
    expect of the namespaces they run in."""
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": dict(RESTRICTED_NAMESPACE_LABELS)}}


def _ensure_tenant(core: client.CoreV1Api, namespace: str, create: bool) -> bool:
    """Checks that the key's namespace exists (one that does not is a typo, or a tenant not
    set up yet) or, with `create`, creates it; returns whether it was created."""
    try:
        core.read_namespace(namespace, _preload_content=False)
        return False
    except ApiException as exc:
        if exc.status != 404:
            raise
    if not create:
        raise KeyCommandError(f'namespace "{namespace}" does not exist; create it (kubectl create namespace '
                              f"{namespace}) or pass --create-namespace")
    try:
        core.create_namespace(tenant_namespace(namespace), _preload_content=False)
    except ApiException as exc:
        if exc.status != 409:  # created meanwhile: there it is
            raise
        return False
    return True


def create_key(api: client.ApiClient, *, namespace: str, scopes: Iterable[str], description: str = "",
               create_namespace: bool = False) -> str:
    """Registers a new key for `namespace` and returns it (the only time it is visible).
    The scopes are checked before anything is written, so a typo creates nothing."""
    core = client.CoreV1Api(api)
    key = apikeys.generate_key()
    body = apikeys.key_secret(key, tenant=namespace, scopes=scopes, description=description)
    if _ensure_tenant(core, namespace, create_namespace):
        print(f'created namespace "{namespace}" (Pod Security "restricted")', file=sys.stderr)
    system = settings().system_namespace
    try:
        core.create_namespaced_secret(system, body, _preload_content=False)
    except ApiException as exc:
        if exc.status == 404:
            raise KeyCommandError(f'the system namespace "{system}" does not exist: install tuneforge first, or set '
                                  "TUNEFORGE_SYSTEM_NAMESPACE to the namespace it runs in") from None
        raise
    return key


def revoke_key(api: client.ApiClient, key_or_name: str) -> str:
    """Deletes the Secret of a key, given the key or its Secret name; returns the name."""
    name = key_or_name if key_or_name.startswith(apikeys.SECRET_PREFIX) else apikeys.secret_name(key_or_name)
    system = settings().system_namespace
    try:
        client.CoreV1Api(api).delete_namespaced_secret(name, system, _preload_content=False)
    except ApiException as exc:
        if exc.status == 404:
            raise KeyCommandError(f'no API key "{name}" in namespace "{system}": revoked already, or not a key of '
                                  "this cluster") from None
        raise
    return name


def list_keys(api: client.ApiClient, namespace: str | None) -> list[dict]:
    """The keys (Secret name, tenant, scopes, description), never the keys themselves."""
    selector = f"{Label.API_KEY}=true"
    if namespace:
        selector += f",{Label.TENANT}={namespace}"
    secrets = client.CoreV1Api(api).list_namespaced_secret(settings().system_namespace, label_selector=selector)
    result = []
    for secret in secrets.items:
        data = {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
        result.append({"name": secret.metadata.name, "tenant": data.get("tenant"), "scopes": data.get("scopes"),
                       "description": data.get("description", ""), "created": data.get("createdAt")})
    return result


def api_error_line(exc: ApiException) -> str:
    """An API server refusal in one line: its status and the message of the Status object it
    answered with (what kubectl shows), not the whole response."""
    try:
        message = json.loads(exc.body)["message"]
    except (TypeError, ValueError, KeyError):
        message = ""
    summary = f"the Kubernetes API server answered {exc.status} {exc.reason}"
    return " ".join(f"{summary}: {message}".split()) if message else summary


def unreachable_line(host: str, exc: HTTPError) -> str:
    """A connection that failed, in one line: where to, and why, without urllib3's wrapping."""
    detail = str(getattr(exc, "reason", None) or exc)
    detail = detail.partition("Failed to establish a new connection: ")[2] or detail
    return f"cannot reach the Kubernetes API server at {host}: {detail}"


def main(action: str, *, namespace: str | None = None, scopes: str = "", description: str = "",
         key: str | None = None, create_namespace: bool = False) -> int:
    """The CLI body: prints the result, returns the exit code (2: a bad command line, 1: it
    could not be done)."""
    if action == "create" and not namespace:
        print("error: keys create needs --namespace", file=sys.stderr)
        return 2
    if action == "revoke" and not key:
        print("error: keys revoke needs --key", file=sys.stderr)
        return 2
    if create_namespace and action != "create":
        print("error: --create-namespace goes with keys create", file=sys.stderr)
        return 2
    try:
        api = load_api_client()
    except config.ConfigException as exc:
        print(f"error: no Kubernetes credentials (set KUBECONFIG, or run in a Pod): {exc}", file=sys.stderr)
        return 1
    try:
        if action == "create":
            print(create_key(api, namespace=namespace, scopes=scopes.split(","), description=description,
                             create_namespace=create_namespace))
        elif action == "revoke":
            print(f"revoked {revoke_key(api, key)}")
        else:
            for entry in list_keys(api, namespace):
                print(f"{entry['name']}  {entry['tenant']}  {entry['scopes']}  {entry['description']}")
        return 0
    except apikeys.ApiKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyCommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ApiException as exc:
        print(f"error: {api_error_line(exc)}", file=sys.stderr)
        return 1
    except HTTPError as exc:
        print(f"error: {unreachable_line(api.configuration.host, exc)}", file=sys.stderr)
        return 1
    finally:
        api.close()
