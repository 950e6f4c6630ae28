"""Creates the operator's ClusterKopfPeering object when it does not exist yet.

kopf pauses an operator started with `--peering NAME` until the peering object NAME
exists, and the object cannot sit next to its CRD in a plain manifest (kubectl cannot map
a kind whose CRD it has not seen yet), so each operator Pod makes sure of it in an init
container. Creating is idempotent (409 is success); 404 means the CRD applied together
with the chart is not served yet, which is retried for a while.
"""

from __future__ import annotations

import os
import sys
import time

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

GROUP, VERSION, PLURAL = "kopf.dev", "v1", "clusterkopfpeerings"
WAIT_FOR_CRD_SECONDS = 120


def main() -> int:
    name = os.environ["TUNEFORGE_PEERING_NAME"]
    config.load_config()  # in-cluster in a Pod, $KUBECONFIG elsewhere
    api = client.CustomObjectsApi()
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
    deadline = time.monotonic() + WAIT_FOR_CRD_SECONDS
    while True:
        try:
            api.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)
            print(f"created ClusterKopfPeering {name}")
            return 0
        except ApiException as exc:
            if exc.status == 409:
                print(f"ClusterKopfPeering {name} exists")
                return 0
            if exc.status == 404 and time.monotonic() < deadline:
                time.sleep(2)
                continue
            print(f"cannot create ClusterKopfPeering {name}: {exc.status} {exc.reason}: {exc.body}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
