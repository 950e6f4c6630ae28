"""An S3-compatible server on loopback (moto's), so artifact-store code paths that only
object stores take (uploads that publish on close, rewritten appends, downloads of
checkpoint directories) run against real HTTP through s3fs, exactly as in a cluster
configured with `s3://` storage."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import fsspec
from moto.server import ThreadedMotoServer


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def s3_server() -> Iterator[str]:
    """Runs the server and points the AWS SDK (and so s3fs) at it through the standard
    environment variables; yields the endpoint URL."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "tuneforge", "AWS_SECRET_ACCESS_KEY": "tuneforge-secret",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    # An S3 filesystem a test made before (say, to see a bad URI refused) has no
    # credentials and would be handed out again by fsspec's instance cache.
    fsspec.filesystem("s3").clear_instance_cache()
    try:
        yield endpoint
    finally:
        fsspec.filesystem("s3").clear_instance_cache()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


def new_bucket(name: str) -> str:
    """Creates a bucket on the current endpoint; returns its `s3://` URI."""
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir(name)
    return f"s3://{name}"
