"""Chaos on the local platform, for batches and the operator: the batch runner SIGKILLed
more and fewer times than its retry budget, and the operator SIGKILLed at random moments
while 100 fine-tuning jobs and 10 batches run. Whatever ends a batch, every request it
finished is delivered, each custom_id in exactly one line; whatever the operator lived
through, every object has exactly one child of each kind and converges.

Each test prints its figures (kills, requests, duplicates, losses) for `pytest -s`."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import pytest

from tuneforge.api.v1alpha1.labels import Label
from tuneforge.controllers.builders import FINALIZER_COMPONENT, RUNNER_COMPONENT, runner_retry_budget
from tuneforge.local.devstack import TINY, TINY_ID

from tests.support.devstack import (
    BATCH_RETRIES_PER_HOUR,
    batch_lines,
    final_batch,
    final_job,
    json_training_rows,
    kill_container_process,
    kubectl_json,
    pods_of,
    store_path,
    upload_jsonl,
    wait_for,
)

pytestmark = pytest.mark.e2e
WINDOW = "1h"
BUDGET = runner_retry_budget(WINDOW, BATCH_RETRIES_PER_HOUR)


def _journal_lines(stack, batch_id: str) -> int:
    journal = store_path(stack, stack.tenant, "batches", batch_id, "journal")
    return sum((journal / name).read_bytes().count(b"\n") for name in ("output.jsonl", "errors.jsonl")
               if (journal / name).exists())


def _kill_runner(stack, batch_id: str, times: int, lines_between: int) -> list[int]:
    """SIGKILLs `times` successive runner Pods, each once it has added `lines_between`
    results to the journal; returns the journal's size at each kill."""
    selector = f"{Label.BATCH_JOB}={batch_id},{Label.COMPONENT}={RUNNER_COMPONENT}"
    killed: set[str] = set()
    at_kill = []
    for attempt in range(times):
        def running_pod():
            return next((pod for pod in pods_of(stack, stack.tenant, selector)
                         if pod["metadata"]["uid"] not in killed and pod["status"].get("phase") == "Running"), None)

        pod = wait_for(f"runner Pod {attempt + 1}", running_pod, timeout=180, every=0.2)
        target = _journal_lines(stack, batch_id) + lines_between
        wait_for(f"{target} journal lines", lambda: _journal_lines(stack, batch_id) >= target, timeout=120, every=0.05)
        kill_container_process(stack, pod, "runner")
        killed.add(pod["metadata"]["uid"])
        at_kill.append(_journal_lines(stack, batch_id))
    return at_kill


def _result_lines(openai_client, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in openai_client.files.content(file_id).text.splitlines()]


def _runner_jobs(stack, batch_id: str, component: str) -> list[dict]:
    selector = f"{Label.BATCH_JOB}={batch_id},{Label.COMPONENT}={component}"
    return kubectl_json(stack, "get", "jobs", "-n", stack.tenant, "-l", selector)["items"]


def _start_batch(openai_client, n: int) -> tuple[Any, list[dict]]:
    lines = batch_lines(TINY_ID, n, max_tokens=16)
    batch = openai_client.batches.create(input_file_id=upload_jsonl(openai_client, "in.jsonl", lines, "batch"),
                                         endpoint="/v1/chat/completions", completion_window=WINDOW)
    return batch, lines


class KilledBatch(NamedTuple):
    batch: Any
    lines: list[dict]
    at_kill: list[int]


@pytest.fixture(scope="module")
def killed_batches(dev_stack, openai_client) -> dict[str, KilledBatch]:
    """Two batches whose runners are SIGKILLed at once, one past its budget and one within
    it: run side by side, the Job backoff waits of the two overlap."""
    plans = {"past": (400, BUDGET + 1), "within": (200, BUDGET - 1)}
    started = {name: _start_batch(openai_client, n) for name, (n, _) in plans.items()}
    with ThreadPoolExecutor(len(plans)) as pool:
        kills = {name: pool.submit(_kill_runner, dev_stack, started[name][0].id, times, 30)
                 for name, (_, times) in plans.items()}
        at_kill = {name: future.result() for name, future in kills.items()}
    return {name: KilledBatch(final_batch(openai_client, batch.id), lines, at_kill[name])
            for name, (batch, lines) in started.items()}


def test_a_runner_killed_past_its_budget_fails_the_batch_with_every_finished_request(
        dev_stack, openai_client, killed_batches):
    batch, lines, at_kill = killed_batches["past"]
    output = _result_lines(openai_client, batch.output_file_id)
    errors = _result_lines(openai_client, batch.error_file_id)
    ids = Counter(row["custom_id"] for row in output + errors)
    duplicates = sum(count - 1 for count in ids.values())
    lost = len({line["custom_id"] for line in lines} - set(ids))
    print(f"\nchaos: runner SIGKILLed {len(at_kill)} times (budget {BUDGET}) at journal sizes {at_kill}; "
          f"{batch.status}: {len(output)} answered, {len(errors)} error lines, {duplicates} duplicates, {lost} lost")
    assert batch.status == "failed"
    assert len(output) >= at_kill[-1], "finished requests are missing from the output file"
    assert duplicates == 0 and lost == 0
    assert {row["error"]["code"] for row in errors} == {"batch_failed"}
    assert all(row["response"] is None and row["error"]["message"] for row in errors)
    assert batch.request_counts.completed == len(output) and batch.request_counts.failed == len(errors)
    assert batch.request_counts.total == len(lines) and batch.failed_at
    assert batch.errors and batch.errors.data[0].code == "batch_runner_failed"
    [runner] = _runner_jobs(dev_stack, batch.id, RUNNER_COMPONENT)
    assert runner["status"].get("failed") == BUDGET + 1
    [finalizer] = _runner_jobs(dev_stack, batch.id, FINALIZER_COMPONENT)
    assert finalizer["status"].get("succeeded") == 1


def test_a_runner_killed_within_its_budget_completes_the_batch_exactly_once(
        dev_stack, openai_client, killed_batches):
    batch, lines, at_kill = killed_batches["within"]
    output = _result_lines(openai_client, batch.output_file_id)
    ids = Counter(row["custom_id"] for row in output)
    duplicates = sum(count - 1 for count in ids.values())
    print(f"\nchaos: runner SIGKILLed {len(at_kill)} times (budget {BUDGET}) at journal sizes {at_kill}; "
          f"{batch.status}: {len(output)} answered of {len(lines)}, {duplicates} duplicates")
    assert batch.status == "completed" and batch.error_file_id is None
    assert ids == Counter(line["custom_id"] for line in lines)
    assert batch.request_counts.completed == len(lines)
    [runner] = _runner_jobs(dev_stack, batch.id, RUNNER_COMPONENT)
    assert (runner["status"].get("failed"), runner["status"].get("succeeded")) == (BUDGET - 1, 1)
    assert _runner_jobs(dev_stack, batch.id, FINALIZER_COMPONENT) == []


QUEUED_JOBS = 97
TRAINED_JOBS = 3
BATCHES = 10
OPERATOR_KILLS = 20


def test_the_operator_killed_twenty_times_leaves_one_child_each_and_everything_converges(dev_stack, openai_client):
    """100 FineTuningJobs: 3 train on the local node while 97 wait in a Kueue queue (their
    trainer Jobs suspended, as on a cluster whose quota is spent: the local node could not
    train 100 at once), and 10 batches run, while the operator is SIGKILLed at random
    moments and started again."""
    seed = time.time_ns() % 2**32
    rng = random.Random(seed)
    training_file = upload_jsonl(openai_client, "people.jsonl", json_training_rows(10), "fine-tune")
    batches = [_start_batch(openai_client, 20) for _ in range(BATCHES)]
    trained = [openai_client.fine_tuning.jobs.create(model=TINY_ID, training_file=training_file,
                                                     hyperparameters={"n_epochs": 1, "batch_size": 5}).id
               for _ in range(TRAINED_JOBS)]
    queued = _create_queued_jobs(dev_stack, training_file)

    started = time.monotonic()
    for _ in range(OPERATOR_KILLS):
        time.sleep(rng.uniform(0.2, 3.0))
        dev_stack.operator.kill()
        dev_stack.operator.start()
    chaos_s = time.monotonic() - started

    finished = [final_job(openai_client, job_id, timeout=600) for job_id in trained]
    ended = [final_batch(openai_client, batch.id, timeout=600) for batch, _ in batches]
    wait_for("the queued jobs to show Queued", lambda: all(
        (job.get("status") or {}).get("phase") == "Queued" for job in _ftjobs(dev_stack, queued)), timeout=180)

    trainer_jobs = kubectl_json(dev_stack, "get", "jobs", "-n", dev_stack.tenant,
                                "-l", f"{Label.COMPONENT}=trainer")["items"]
    owners = Counter(job["metadata"]["labels"][Label.FINE_TUNING_JOB] for job in trainer_jobs)
    mine = {name: owners[name] for name in [*trained, *queued]}
    runner_owners = Counter(job["metadata"]["labels"][Label.BATCH_JOB] for job in kubectl_json(
        dev_stack, "get", "jobs", "-n", dev_stack.tenant, "-l", f"{Label.COMPONENT}={RUNNER_COMPONENT}")["items"])
    duplicates = 0
    for (batch, lines), end in zip(batches, ended, strict=True):
        output = Counter(row["custom_id"] for row in _result_lines(openai_client, end.output_file_id))
        duplicates += sum(count - 1 for count in output.values())
        assert end.status == "completed" and output == Counter(line["custom_id"] for line in lines), batch.id
    print(f"\nchaos: operator SIGKILLed {OPERATOR_KILLS} times over {chaos_s:.0f}s (seed {seed}); "
          f"{len(mine)} jobs with {sum(mine.values())} trainer Jobs, {BATCHES} batches with "
          f"{sum(runner_owners[b.id] for b, _ in batches)} runner Jobs, {duplicates} duplicate lines")
    assert set(mine.values()) == {1}, {name: n for name, n in mine.items() if n != 1}
    assert all(runner_owners[batch.id] == 1 for batch, _ in batches)
    assert [job.status for job in finished] == ["succeeded"] * TRAINED_JOBS, [job.error for job in finished]
    suspended = {job["metadata"]["labels"][Label.FINE_TUNING_JOB] for job in trainer_jobs if job["spec"].get("suspend")}
    assert set(queued) <= suspended

    dev_stack.plane.kubectl("delete", "ftjob", "-n", dev_stack.tenant, "--wait=false", *queued)


def _create_queued_jobs(stack, training_file: str) -> list[str]:
    names = [f"chaos-{i:03d}-{time.time_ns() % 10**6:06d}" for i in range(QUEUED_JOBS)]
    manifests = [{"apiVersion": "tuneforge.io/v1alpha1", "kind": "FineTuningJob",
                  "metadata": {"name": name, "namespace": stack.tenant},
                  "spec": {"baseModel": TINY, "trainingFile": training_file, "queueName": "team-gpus"}}
                 for name in names]
    stack.plane.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}))
    return names


def _ftjobs(stack, names: list[str]) -> list[dict]:
    wanted = set(names)
    items = kubectl_json(stack, "get", "ftjob", "-n", stack.tenant)["items"]
    return [item for item in items if item["metadata"]["name"] in wanted]
