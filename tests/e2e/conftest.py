"""The local platform of `make dev` for the end-to-end tests: one per session.

It is the same `DevStack` that `make dev` starts (control plane, operator and gateway
subprocesses, the node agent running Pods as processes), with only the tiny model in the
catalog, a free gateway port and a state directory of its own. The tests drive it
through the official `openai` client and `kubectl`, and reach under it only to do what a
user or a failing machine would: kill the operator, kill a Pod's process.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import openai
import pytest
from kubernetes import client

from tuneforge.local.devstack import TINY, DevStack, free_gateway_port
from tuneforge.local.podworker import pod_dir_name

T = TypeVar("T")
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    stack = DevStack(state_dir=tmp_path_factory.mktemp("dev"), gateway_port=free_gateway_port(), models=(TINY,),
                     poll_interval=1.0, status_interval=2.0)
    with stack:
        yield stack


@pytest.fixture(scope="session")
def openai_client(dev_stack: DevStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=dev_stack.base_url, api_key=dev_stack.api_key, max_retries=0, timeout=120)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 240.0, every: float = 1.0) -> T:
    """Polls `probe` until it returns something truthy; the failure names what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def json_training_rows(n: int) -> list[dict]:
    """A small JSON-generation dataset: extract fields from a sentence as a JSON object."""
    names = ["Ada", "Grace", "Linus", "Barbara", "Ken", "Margaret", "Dennis", "Frances", "Alan", "Radia",
             "Edsger", "Donald", "Leslie", "Guido", "Bjarne", "Anita"]
    rows = []
    for i in range(n):
        name, age = names[i % len(names)], 20 + i
        rows.append({"messages": [
            {"role": "system", "content": "Answer with one JSON object only."},
            {"role": "user", "content": f"{name} is {age} years old. Give name and age as JSON."},
            {"role": "assistant", "content": json.dumps({"name": name, "age": age})},
        ]})
    return rows


def upload_jsonl(openai_client: openai.OpenAI, name: str, rows: list[dict], purpose: str) -> str:
    data = "\n".join(json.dumps(row) for row in rows).encode()
    return openai_client.files.create(file=(name, data), purpose=purpose).id


def batch_lines(model: str, n: int, max_tokens: int) -> list[dict]:
    return [{"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": model, "max_tokens": max_tokens,
                      "messages": [{"role": "user", "content": f"Give item {i} as JSON."}]}}
            for i in range(n)]


def final_job(openai_client: openai.OpenAI, job_id: str, timeout: float = 300.0):
    return wait_for(f"fine-tuning job {job_id} to finish", lambda: (
        job if (job := openai_client.fine_tuning.jobs.retrieve(job_id)).status in ("succeeded", "failed", "cancelled")
        else None), timeout=timeout, every=2.0)


def final_batch(openai_client: openai.OpenAI, batch_id: str, timeout: float = 300.0):
    return wait_for(f"batch {batch_id} to finish", lambda: (
        batch if (batch := openai_client.batches.retrieve(batch_id)).status in
        ("completed", "failed", "expired", "cancelled") else None), timeout=timeout, every=2.0)


def job_events(openai_client: openai.OpenAI, job_id: str) -> list[str]:
    """The job's event messages, oldest first."""
    return [event.message for event in reversed(openai_client.fine_tuning.jobs.list_events(job_id, limit=1000).data)]


def kubectl_json(stack: DevStack, *args: str) -> Any:
    return json.loads(stack.plane.kubectl(*args, "-o", "json").stdout)


def pods_of(stack: DevStack, namespace: str, selector: str) -> list[dict]:
    return kubectl_json(stack, "get", "pods", "-n", namespace, "-l", selector)["items"]


def kill_container_process(stack: DevStack, pod: dict, container: str) -> int:
    """SIGKILLs the process group of a running container, as an OOM kill or a crash would."""
    pid_file = stack.state_dir / "node" / "pods" / pod_dir_name(pod) / f"{container}.pid"
    pid = int(pid_file.read_text().split()[0])
    os.killpg(pid, signal.SIGKILL)
    return pid


def core(stack: DevStack) -> client.CoreV1Api:
    return client.CoreV1Api(stack.api_client)


def store_path(stack: DevStack, *parts: str) -> Path:
    return stack.store_dir.joinpath(*parts)
