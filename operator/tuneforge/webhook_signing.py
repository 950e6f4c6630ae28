"""How a receiver knows a FineTuningJob's webhook came from this platform.

Each delivery carries `X-Tuneforge-Signature: sha256=<hex HMAC-SHA256 of the raw body>`.
The key is either a Secret the job names (set in the resource by whoever manages it) or,
for jobs created through the HTTP APIs, a secret derived from the platform key for the
job: the gateway hands it to the caller at creation and the operator derives it again to
sign, so no Secret is ever written into the tenant's namespace and the gateway needs no
permission to create one. A job deleted and created again under the same name gets the
same secret; job names carry a random part, so that needs a deliberate reuse.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

SIGNATURE_HEADER = "X-Tuneforge-Signature"
SECRET_PREFIX = "whsec_"
"""Marks a webhook signing secret, as other platforms' webhook secrets are marked."""


def job_signing_secret(platform_key: str, namespace: str, job: str) -> str:
    """The signing secret of the job `namespace/job` whose webhook the platform signs."""
    digest = hmac.new(platform_key.encode(), f"webhook/{namespace}/{job}".encode(), hashlib.sha256).digest()
    return SECRET_PREFIX + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def sign(secret: bytes, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of the raw body>`, the value of SIGNATURE_HEADER."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
