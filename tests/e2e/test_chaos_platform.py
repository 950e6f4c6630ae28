"""Chaos on the local platform: the gateway dies in the middle of a 100 MB upload, and the
API server and etcd go away in the middle of a training run and a batch. Nothing the
interruption touched may come back half done or twice: no File claims bytes it does not
have, no upload leaves bytes behind for good, no request runs twice, no second trainer
or runner Job appears."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import threading
import time
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from tuneforge.local.devstack import TINY_ID, DevStack
from tuneforge.local.node import LEASE_RENEW_SECONDS
from tuneforge.local.podworker import pod_dir_name

from tests.support.devstack import (
    final_batch,
    final_job,
    kubectl_json,
    pods_of,
    start_training_and_batch,
    wait_for,
)

pytestmark = pytest.mark.e2e

MB = 1024 * 1024
UPLOAD_BYTES = 100 * MB
BODY_KILL_AT = 40 * MB
ABANDONED_AGE_S = 2 * 3600
"""How old the test makes an abandoned upload look: older than the gateway's sweep waits
(tuneforge.gateway.files.ABANDONED_UPLOAD_SECONDS), as it would be after hours."""
TRAINING_STEPS = 12 * 8
NEAR_THE_END = 30
"""Steps before the end at which the control plane goes down: the trainer runs on and
exits during the outage, so the node agent must report a finished Pod it could not."""
BATCH_SHARE_BEFORE = 0.75
"""Or the share of the batch done at which it goes down, if the batch gets there first
(the two race each other on the machine's cores): the outage must find both running."""


def batch_file_of(size: int) -> bytes:
    """A valid batch input file of at least `size` bytes: few enough lines for the batch
    limit (50,000 requests), each carrying a long prompt."""
    filler = "lorem ipsum dolor sit amet " * 90
    line_bytes = len(json.dumps(request_line(0, filler))) + 1
    return "".join(json.dumps(request_line(i, filler)) + "\n" for i in range(size // line_bytes + 1)).encode()


def request_line(i: int, filler: str) -> dict:
    return {"custom_id": f"chaos-{i:05d}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": TINY_ID, "max_tokens": 8, "messages": [{"role": "user", "content": f"{i}: {filler}"}]}}


class HeldBody(io.BytesIO):
    """An upload body that stops handing bytes to the client's socket once `hold_at` of
    them are out, until released: the gateway is then surely killed with the body part
    received, however fast the loopback is. (The openai client passes a file object on to
    httpx, which streams it in 64 KB reads with a Content-Length: nothing is buffered.)"""

    def __init__(self, data: bytes, hold_at: int) -> None:
        super().__init__(data)
        self.hold_at = hold_at
        self.held = threading.Event()
        self.released = threading.Event()

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() >= self.hold_at and not self.released.is_set():
            self.held.set()
            self.released.wait()
        return super().read(size)


def gateway_healthy(stack: DevStack) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.gateway_port}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def ensure_gateway(stack: DevStack) -> None:
    if not stack.gateway.alive:
        stack.gateway.start()
    wait_for("the gateway's /healthz", lambda: gateway_healthy(stack), timeout=60, every=0.2)


def unpublished_uploads(files_dir: Path) -> dict[str, int]:
    """The file directories without meta.json (an upload under way or abandoned), with
    the bytes they hold."""
    if not files_dir.exists():
        return {}
    return {d.name: bytes_in(d) for d in files_dir.iterdir() if not (d / "meta.json").exists()}


def bytes_in(directory: Path) -> int:
    """What a directory holds; 0 while the gateway renames or deletes under it."""
    try:
        return sum(f.stat().st_size for f in directory.iterdir())
    except FileNotFoundError:
        return 0


def kill_gateway_in_the_store(stack: DevStack, attempt: Future, files_dir: Path, known: set[str]) -> str:
    """SIGKILLs the gateway as soon as the upload's bytes land in the store (copied to a
    temporary object, or published as content and being validated); returns the upload's
    directory name."""
    def landed() -> str | None:
        assert not attempt.done(), "the upload finished before it reached the store"
        return next((name for name, size in unpublished_uploads(files_dir).items() if size and name not in known),
                    None)

    name = wait_for("the upload to land in the store", landed, timeout=120, every=0.01)
    stack.gateway.kill()
    with pytest.raises(openai.APIConnectionError):
        attempt.result(timeout=60)
    return name


def leftovers(directory: Path) -> str:
    return ", ".join(f"{re.sub(r'[.]tmp-[0-9a-f]+$', '.tmp', f.name)} {f.stat().st_size / MB:.1f} MB"
                     for f in sorted(directory.iterdir()))


def uploads(openai_client) -> dict:
    """The Files the tenant uploaded, by id: the list without the results Files of
    succeeded jobs, which live in the jobs' directories, not among the uploads."""
    return {f.id: f for f in openai_client.files.list().data if f.purpose != "fine-tune-results"}


def test_a_gateway_killed_mid_upload_publishes_no_partial_file_and_leaves_nothing(dev_stack, openai_client):
    """Three kills: with the body part sent, and twice with the content landing in the
    store, once under the Idempotency-Key the client retries with (the openai client sends
    none of its own; a careful one does) and once without, never retried."""
    data = batch_file_of(UPLOAD_BYTES)
    digest = hashlib.sha256(data).hexdigest()
    files_dir = dev_stack.store_dir / dev_stack.tenant / "files"
    key = f"chaos-upload-{time.time_ns()}"
    listed_before = set(uploads(openai_client))
    unpublished_before = set(unpublished_uploads(files_dir))
    started = time.monotonic()

    def upload(body: io.BytesIO, idempotency_key: str | None) -> openai.types.FileObject:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return openai_client.files.create(file=("chaos.jsonl", body), purpose="batch", extra_headers=headers)

    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            body = HeldBody(data, BODY_KILL_AT)
            attempt = pool.submit(upload, body, key)
            try:
                assert body.held.wait(60), f"the client never sent {BODY_KILL_AT // MB} MB"
                dev_stack.gateway.kill()
            finally:
                body.released.set()
            with pytest.raises(openai.APIConnectionError):
                attempt.result(timeout=60)
            assert set(unpublished_uploads(files_dir)) == unpublished_before, "a body never received reached the store"
            ensure_gateway(dev_stack)

            retried = kill_gateway_in_the_store(dev_stack, pool.submit(upload, io.BytesIO(data), key), files_dir,
                                                unpublished_before)
            retried_left = leftovers(files_dir / retried)
            ensure_gateway(dev_stack)
            abandoned = kill_gateway_in_the_store(dev_stack, pool.submit(upload, io.BytesIO(data), None), files_dir,
                                                  unpublished_before | {retried})
            abandoned_left = leftovers(files_dir / abandoned)
            aged = time.time() - ABANDONED_AGE_S
            for leftover in (files_dir / abandoned).iterdir():
                os.utime(leftover, (aged, aged))
    finally:
        ensure_gateway(dev_stack)
    wait_for("the restarted gateway to sweep the abandoned upload", lambda: not (files_dir / abandoned).exists(),
             timeout=30, every=0.2)
    assert unpublished_uploads(files_dir)[retried] > 0, "the sweep took an upload that was not abandoned"

    stored = upload(io.BytesIO(data), key)
    elapsed = time.monotonic() - started

    assert (stored.id, stored.bytes, stored.status) == (retried, len(data), "processed")
    assert sorted(p.name for p in (files_dir / retried).iterdir()) == ["content", "meta.json"]
    content = openai_client.files.content(stored.id).read()
    assert (len(content), hashlib.sha256(content).hexdigest()) == (len(data), digest)
    listed = uploads(openai_client)
    assert set(listed) - listed_before == {stored.id} and listed_before <= set(listed)
    published = {d.name: json.loads((d / "meta.json").read_text()) for d in files_dir.iterdir()
                 if (d / "meta.json").exists()}
    assert set(published) == set(listed)
    for file_id, meta in published.items():
        assert meta["bytes"] == listed[file_id].bytes == (files_dir / file_id / "content").stat().st_size, meta
    assert set(unpublished_uploads(files_dir)) == unpublished_before
    print(f"\nchaos: upload of {len(data) / MB:.1f} MB ({len(data.splitlines())} requests), 3 gateway SIGKILLs: "
          f"body held at {BODY_KILL_AT // MB} MB sent (store untouched); in the store with Idempotency-Key "
          f"({retried_left}); in the store without ({abandoned_left}, aged {ABANDONED_AGE_S // 3600} h, swept "
          f"at restart); retry stored {stored.bytes / MB:.1f} MB, sha256 {digest[:12]} round-trips; "
          f"partial Files listed: 0, leftovers: 0; {elapsed:.1f} s")


def store_progress(stack: DevStack, *parts: str) -> dict:
    """A progress.json as the trainer or the runner wrote it: what the store knows while
    the API server, and so the gateway's view of jobs, is gone."""
    path = stack.store_dir.joinpath(stack.tenant, *parts, "progress.json")
    return json.loads(path.read_text()) if path.exists() else {}


def container_running(stack: DevStack, pod: dict, container: str) -> bool:
    """Whether the container's process is alive, seen from the machine (not the API server)."""
    pid_file = stack.state_dir / "node" / "pods" / pod_dir_name(pod) / f"{container}.pid"
    try:
        os.kill(int(pid_file.read_text().split()[0]), 0)
    except (FileNotFoundError, ProcessLookupError):
        return False
    return True


def jobs_of(stack: DevStack, selector: str) -> list[dict]:
    return kubectl_json(stack, "get", "jobs", "-n", stack.tenant, "-l", selector)["items"]


def test_training_and_a_batch_ride_out_an_api_server_and_etcd_outage(dev_stack, openai_client):
    started = time.monotonic()
    job, batch, lines = start_training_and_batch(openai_client, rows=12, epochs=8, requests=60)
    trainer_selector = f"tuneforge.io/fine-tuning-job={job.id}"
    (trainer_pod,) = pods_of(dev_stack, dev_stack.tenant, trainer_selector)
    plane, agent_threads = dev_stack.plane, list(dev_stack.agent.threads)
    survivors = {"operator": dev_stack.operator.process, "gateway": dev_stack.gateway.process,
                 "kube-controller-manager": plane.processes["kube-controller-manager"]}
    ports = (plane.etcd_port, plane.api_port)

    def requests_done() -> int:
        return store_progress(dev_stack, "batches", batch.id).get("request_counts", {}).get("completed", 0)

    def trainer_step() -> int:
        return store_progress(dev_stack, "fine-tuning", job.id).get("step", 0)

    wait_for("the trainer to near its end or the batch to near its end", lambda: (
        trainer_step() >= TRAINING_STEPS - NEAR_THE_END or requests_done() >= BATCH_SHARE_BEFORE * len(lines)),
        every=0.1)
    step_before = trainer_step()
    done_before = requests_done()
    assert done_before < len(lines), "the batch ended before the outage"
    down_at = time.monotonic()
    try:
        plane.kill("etcd", "kube-apiserver")
        assert container_running(dev_stack, trainer_pod, "trainer"), "the trainer ended before the outage"
        wait_for("the trainer to exit during the outage", lambda: not container_running(
            dev_stack, trainer_pod, "trainer"), timeout=180, every=0.2)
        trainer_exit_s = time.monotonic() - down_at
        time.sleep(max(0.0, down_at + LEASE_RENEW_SECONDS + 1 - time.monotonic()))  # a node heartbeat falls inside
        done_down = requests_done()
    finally:
        plane.resume()
    outage_s = time.monotonic() - down_at
    assert (plane.etcd_port, plane.api_port) == ports

    job = final_job(openai_client, job.id)
    assert job.status == "succeeded", job.error
    batch = final_batch(openai_client, batch.id)
    assert batch.status == "completed", batch.errors

    ftjob = kubectl_json(dev_stack, "get", "ftjob", job.id, "-n", dev_stack.tenant)
    assert ftjob["status"]["progress"]["step"] == ftjob["status"]["progress"]["totalSteps"] == TRAINING_STEPS
    (trainer_job,) = jobs_of(dev_stack, trainer_selector)
    assert (trainer_job["status"].get("succeeded"), trainer_job["status"].get("failed")) == (1, None)
    (trainer_pod_after,) = pods_of(dev_stack, dev_stack.tenant, trainer_selector)
    assert trainer_pod_after["metadata"]["uid"] == trainer_pod["metadata"]["uid"]
    assert trainer_pod_after["status"]["phase"] == "Succeeded"

    output = [json.loads(line) for line in openai_client.files.content(batch.output_file_id).text.splitlines()]
    custom_ids = [row["custom_id"] for row in output]
    assert sorted(custom_ids) == sorted(line["custom_id"] for line in lines)
    assert batch.error_file_id is None and batch.request_counts.failed == 0
    runner_selector = f"tuneforge.io/batch-job={batch.id},app.kubernetes.io/component=batch-runner"
    (runner_job,) = jobs_of(dev_stack, runner_selector)
    assert (runner_job["status"].get("succeeded"), runner_job["status"].get("failed")) == (1, None)
    assert [pod["status"]["phase"] for pod in pods_of(dev_stack, dev_stack.tenant, runner_selector)] == ["Succeeded"]

    assert [name for name, process in survivors.items() if process.poll() is not None] == []
    assert (dev_stack.operator.process, dev_stack.gateway.process) == (survivors["operator"], survivors["gateway"])
    assert plane.processes["kube-controller-manager"] is survivors["kube-controller-manager"]
    assert [t.name for t in agent_threads if not t.is_alive()] == []
    print(f"\nchaos: etcd and kube-apiserver SIGKILLed at training step {step_before}/{TRAINING_STEPS} and "
          f"{done_before}/{len(lines)} batch requests; the trainer exited {trainer_exit_s:.1f} s into the outage, "
          f"the runner got to {done_down} requests; API back after {outage_s:.1f} s on the same ports {ports}; "
          f"after: job succeeded with 1 trainer Job and 1 Pod (the same), batch {len(custom_ids)} outputs, "
          f"{len(custom_ids) - len(set(custom_ids))} duplicates, {len(lines) - len(set(custom_ids))} lost, "
          f"1 runner Job and Pod; operator, gateway, kube-controller-manager and the node agent's threads alive; "
          f"{time.monotonic() - started:.1f} s")
