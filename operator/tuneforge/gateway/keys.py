"""`tuneforge keys create | revoke | list`: API keys as Secrets in the system namespace.

The key itself is printed once by `create` and never stored; only its hash is (see
tuneforge.apikeys). Revoking deletes the Secret; gateways stop accepting the key within
their key cache time.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable

from kubernetes import client
from kubernetes.client.rest import ApiException

from tuneforge import apikeys
from tuneforge.api.v1alpha1.labels import Label
from tuneforge.config import settings


def create_key(api: client.ApiClient, *, namespace: str, scopes: Iterable[str], description: str = "") -> str:
    """Registers a new key for `namespace` and returns it (the only time it is visible)."""
    core = client.CoreV1Api(api)
    core.read_namespace(namespace)  # a key for a namespace that does not exist is a typo
    key = apikeys.generate_key()
    body = apikeys.key_secret(key, tenant=namespace, scopes=scopes, description=description)
    core.create_namespaced_secret(settings().system_namespace, body)
    return key


def revoke_key(api: client.ApiClient, key_or_name: str) -> str:
    """Deletes the Secret of a key, given the key or its Secret name; returns the name."""
    name = key_or_name if key_or_name.startswith(apikeys.SECRET_PREFIX) else apikeys.secret_name(key_or_name)
    client.CoreV1Api(api).delete_namespaced_secret(name, settings().system_namespace)
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


def main(api: client.ApiClient, action: str, *, namespace: str | None = None, scopes: str = "",
         description: str = "", key: str | None = None) -> int:
    """The CLI body: prints the result, returns the exit code."""
    if action == "create" and not namespace:
        print("error: keys create needs --namespace")
        return 2
    if action == "revoke" and not key:
        print("error: keys revoke needs --key")
        return 2
    try:
        if action == "create":
            print(create_key(api, namespace=namespace, scopes=scopes.split(","), description=description))
            return 0
        if action == "revoke":
            print(f"revoked {revoke_key(api, key)}")
            return 0
        for entry in list_keys(api, namespace):
            print(f"{entry['name']}  {entry['tenant']}  {entry['scopes']}  {entry['description']}")
        return 0
    except apikeys.ApiKeyError as exc:
        print(f"error: {exc}")
        return 2
    except ApiException as exc:
        print(f"error: {exc.status} {exc.reason}: {exc.body}")
        return 1
