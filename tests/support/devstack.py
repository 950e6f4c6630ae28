"""What the end-to-end tests do to the local platform of `make dev` (tuneforge.local.devstack):
datasets and batch requests for the official openai client, waits on jobs and batches, and
the reach under the stack a user or a failing machine has (kubectl, killing a Pod's process)."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
from kubernetes import client

from tuneforge.local.devstack import TINY_ID, DevStack
from tuneforge.local.podworker import pod_dir_name

T = TypeVar("T")
BATCH_RETRIES_PER_HOUR = 3
"""The e2e platform's `--batch-retries-per-hour`: a 1h batch's runner gets 3 retries, few
enough for the chaos tests to run one out of them; a 24h batch still gets 72."""


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


def start_training_and_batch(openai_client: openai.OpenAI, *, rows: int, epochs: int,
                             requests: int) -> tuple[Any, Any, list[dict]]:
    """A fine-tuning job on the tiny model (batch size 1: `rows` x `epochs` steps) and a
    batch of `requests` against it, started together and both seen running: the moment the
    resilience tests break something. Returns (job, batch, the batch's input lines)."""
    training_file = upload_jsonl(openai_client, "people.jsonl", json_training_rows(rows), "fine-tune")
    job = openai_client.fine_tuning.jobs.create(model=TINY_ID, training_file=training_file,
                                                hyperparameters={"n_epochs": epochs, "batch_size": 1})
    lines = batch_lines(TINY_ID, requests, max_tokens=24)
    batch = openai_client.batches.create(input_file_id=upload_jsonl(openai_client, "in.jsonl", lines, "batch"),
                                         endpoint="/v1/chat/completions", completion_window="24h")
    wait_for("the trainer to report steps", lambda: any(
        m.startswith("Step ") for m in job_events(openai_client, job.id)), every=0.5)
    wait_for("the batch to run", lambda: openai_client.batches.retrieve(batch.id).status == "in_progress", every=0.5)
    return job, batch, lines


def final_job(openai_client: openai.OpenAI, job_id: str, timeout: float = 300.0):
    return wait_for(f"fine-tuning job {job_id} to finish", lambda: (
        job if (job := openai_client.fine_tuning.jobs.retrieve(job_id)).status in ("succeeded", "failed", "cancelled")
        else None), timeout=timeout, every=2.0)


def final_batch(openai_client: openai.OpenAI, batch_id: str, timeout: float = 300.0):
    return wait_for(f"batch {batch_id} to finish", lambda: (
        batch if (batch := openai_client.batches.retrieve(batch_id)).status in
        ("completed", "failed", "expired", "cancelled") else None), timeout=timeout, every=2.0)


def job_events(openai_client: openai.OpenAI, job_id: str) -> list[str]:
    """All the job's event messages, oldest first (the client follows the pages)."""
    return [event.message for event in reversed(list(openai_client.fine_tuning.jobs.list_events(job_id, limit=100)))]


def step_events(openai_client: openai.OpenAI, job_id: str) -> list[int]:
    """The steps of the job's per-step metric events ("Step N/T: ..."), oldest first."""
    return [int(match.group(1)) for message in job_events(openai_client, job_id)
            if (match := re.match(r"Step (\d+)/\d+: ", message))]


def checkpoint_steps(openai_client: openai.OpenAI, job_id: str) -> list[int]:
    """The steps of the job's complete checkpoints as the OpenAI API lists them, newest first."""
    return [c.step_number for c in openai_client.fine_tuning.jobs.checkpoints.list(job_id, limit=100).data]


def management_api(stack: DevStack) -> httpx.Client:
    """The management API (/api/v1/fine-tuning) with the dev key, as a dashboard calls it."""
    return httpx.Client(base_url=f"http://127.0.0.1:{stack.gateway_port}/api/v1/fine-tuning",
                        headers={"X-API-Key": stack.api_key}, timeout=60)


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
