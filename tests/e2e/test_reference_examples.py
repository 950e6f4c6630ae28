"""The reference documents' examples, run as written against the local platform.

tuneforge follows a hosted fine-tuning service's guide and API reference and a platform's
fine-tuning REST API (docs/api.md, docs/management-api.md). A user who copies one of
their examples must succeed with only the base URL, the key, the model id and the ids of
objects the example names changed. So the examples below are the documents' own text,
Python for the official openai client and curl; `run_python` and `run_curl` make exactly
those substitutions (each must apply, so a reworded example cannot slip by untested) and
run them: the Python with `exec`, the curl with the real curl binary. The management API's
document gives request bodies rather than code; they are sent as given, with its
`X-API-Key` header. Where tuneforge differs on purpose, docs/api.md says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tuneforge.local.devstack import DevStack

from tests.support.devstack import final_batch, final_job, upload_jsonl, wait_for

pytestmark = pytest.mark.e2e

DOCUMENTED_BASE_URLS = ("https://api.kluster.ai/v1", "http://api.kluster.ai/v1")
DOCUMENTED_MODELS = ("klusterai/Meta-Llama-3.1-8B-Instruct-Turbo", "meta-llama/Meta-Llama-3.1-8B-Instruct")

# -- the guide: data, upload, create, monitor, use ---------------------------------------------

GUIDE_EXAMPLE_ROW = {
    "messages": [
        {"role": "system", "content": "You are a JSON Generation Specialist. Convert user requests into properly formatted JSON."},  # noqa: E501
        {"role": "user", "content": "Create a configuration for a web application with name 'TaskMaster', version 1.2.0, and environment set to development."},  # noqa: E501
        {"role": "assistant", "content": "{\n  \"application\": {\n    \"name\": \"TaskMaster\",\n    \"version\": \"1.2.0\",\n    \"environment\": \"development\"\n  }\n}"},  # noqa: E501
    ]
}

GUIDE_UPLOAD = """
# Upload fine-tuning file
with open('training_data.jsonl', 'rb') as file:
    upload_response = client.files.create(
        file=file,
        purpose="fine-tune"
    )
    
    # Get the file ID
    file_id = upload_response.id
"""

GUIDE_CREATE = """
# Create fine-tune job
fine_tuning_job = client.fine_tuning.jobs.create(
    training_file=file_id,
    model="klusterai/Meta-Llama-3.1-8B-Instruct-Turbo",
    # Optional hyperparameters
    # hyperparameters={
    #   "batch_size": 3,
    #   "n_epochs": 2,
    #   "learning_rate_multiplier": 0.08
    # }
)
"""

GUIDE_MONITOR = """
# Retrieve job status
job_status = client.fine_tuning.jobs.retrieve(fine_tuning_job.id)
print(f"Job status: {job_status.status}")
"""

GUIDE_USE = """
# Get the fine-tuned model name
finished_job = client.fine_tuning.jobs.retrieve(fine_tuning_job.id)
fine_tuned_model = finished_job.fine_tuned_model

# Use the fine-tuned model for inference
response = client.chat.completions.create(
    model=fine_tuned_model,
    messages=[
        {"role": "system", "content": "You are a JSON Generation Specialist. Convert user requests into properly formatted JSON."},
        {"role": "user", "content": "Create a configuration for a web application with name 'TaskMaster', version 1.2.0, and environment set to development."}
    ]
)
"""

# -- the API reference -------------------------------------------------------------------------

CHAT_PYTHON = """
from openai import OpenAI

# Configure OpenAI client
client = OpenAI(
    base_url="https://api.kluster.ai/v1", 
    api_key="INSERT_API_KEY" # Replace with your actual API key
)

chat_completion = client.chat.completions.create(
    model="klusterai/Meta-Llama-3.1-8B-Instruct-Turbo",
    messages=[
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of Argentina?"},
    ],
)

print(chat_completion.to_dict())
"""

CHAT_CURL = """
curl -s https://api.kluster.ai/v1/chat/completions \\
    -H "Authorization: $API_KEY" \\
    -H "Content-Type: application/json" \\
    -d '{
        "model": "klusterai/Meta-Llama-3.1-8B-Instruct-Turbo",
        "messages": [
            {
                "role": "system",
                "content": "You are a helpful assistant."
            },
            {
                "role": "user",
                "content": "What is the capital of Argentina?"
            }
        ]
    }'
"""

UPLOAD_PYTHON = """
from openai import OpenAI

# Configure OpenAI client
client = OpenAI(
    base_url="https://api.kluster.ai/v1", 
    api_key="INSERT_API_KEY" # Replace with your actual API key
)

batch_input_file = client.files.create(
    file=open(file_name, "rb"),
    purpose="batch"
)

print(batch_input_file.to_dict())
"""

UPLOAD_CURL = """
curl -s https://api.kluster.ai/v1/files \\
    -H "Authorization: $API_KEY" \\
    -H "Content-Type: multipart/form-data" \\
    -F "file=@mybatchtest.jsonl" \\
    -F "purpose=batch"
"""

BATCH_CREATE_PYTHON = """
from openai import OpenAI

# Configure OpenAI client
client = OpenAI(
    base_url="https://api.kluster.ai/v1",
    api_key="INSERT_API_KEY",  # Replace with your actual API key
)

batch_request = client.batches.create(
    input_file_id="myfile-123",
    endpoint="/v1/chat/completions",
    completion_window="24h",
)

print(batch_request.to_dict())
"""

BATCH_CREATE_CURL = """
curl -s https://api.kluster.ai/v1/batches \\
    -H "Authorization: Bearer $API_KEY" \\
    -H "Content-Type: application/json" \\
    -d '{
    "input_file_id": "myfile-123",
    "endpoint": "/v1/chat/completions",
    "completion_window": "24h"
    }'
"""

BATCH_RETRIEVE_PYTHON = """
from openai import OpenAI

# Configure OpenAI client
client = OpenAI(
    base_url="https://api.kluster.ai/v1",
    api_key="INSERT_API_KEY",  # Replace with your actual API key
)

client.batches.retrieve("mybatch-123")
"""

BATCH_RETRIEVE_CURL = """
curl -s https://api.kluster.ai/v1/batches/mybatch-123 \\
    -H "Authorization: Bearer $API_KEY" \\
    -H "Content-Type: application/json"
"""

BATCH_LIST_PYTHON = """
from openai import OpenAI

# Configure OpenAI client
client = OpenAI(
    base_url="https://api.kluster.ai/v1", 
    api_key="INSERT_API_KEY" # Replace with your actual API key
)

print(client.batches.list(limit=2).to_dict())
"""

BATCH_LIST_CURL = """
curl -s https://api.kluster.ai/v1/batches \\
    -H "Authorization: Bearer $API_KEY"
"""

BATCH_RESULTS_PYTHON = """
from openai import OpenAI

# Configure OpenAI client
client = OpenAI(
    base_url="https://api.kluster.ai/v1", 
    api_key="INSERT_API_KEY" # Replace with your actual API key
)

# Get the status of the Batch, which returns the output_file_id
batch_status = client.batches.retrieve(batch_request.id)

# Check if the Batch completed successfully
if batch_status.status.lower() == "completed":
    # Retrieve the results
    result_file_id = batch_status.output_file_id
    results = client.files.content(result_file_id).content

    # Save results to a file
    result_file_name = "batch_results.jsonl"
    with open(result_file_name, "wb") as file:
        file.write(results)
    print(f"Results saved to {result_file_name}")
else:
    print(f"Batch failed with status: {batch_status.status}")
"""

BATCH_RESULTS_CURL = """
curl -s https://api.kluster.ai/v1/files/kluster-output-file-123/content \\
    -H "Authorization: Bearer $API_KEY" > batch_output.jsonl
"""

BATCH_CANCEL_PYTHON = """
from openai import OpenAI

# Configure OpenAI client
client = OpenAI(
    base_url="https://api.kluster.ai/v1",  
    api_key="INSERT_API_KEY" # Replace with your actual API key
)

client.batches.cancel("mybatch-123") # Replace with your batch id
"""

BATCH_CANCEL_CURL = """
curl -s https://api.kluster.ai/v1/batches/$BATCH_ID/cancel \\
    -H "Authorization: Bearer $API_KEY" \\
    -H "Content-Type: application/json" \\
    -X POST
"""

MODELS_PYTHON = """
from openai import OpenAI

# Configure OpenAI client
client = OpenAI(
    base_url="http://api.kluster.ai/v1",
    api_key="INSERT_API_KEY" # Replace with your actual API key
)

print(client.models.list().to_dict())
"""

MODELS_CURL = """
curl https://api.kluster.ai/v1/models \\
    -H "Authorization: Bearer $API_KEY" 
"""

JOB_CREATE_PYTHON = """
from openai import OpenAI

# Configure OpenAI client
client = OpenAI(
    base_url="https://api.kluster.ai/v1",
    api_key="INSERT_API_KEY"  # Replace with your actual API key
)

job = client.fine_tuning.jobs.create(
    training_file="INSERT_TRAINING_FILE_ID",  # ID from uploaded training file
    model="meta-llama/Meta-Llama-3.1-8B-Instruct",
    hyperparameters={
        "batch_size": 4,
        "learning_rate_multiplier": 1,
        "n_epochs": 3
    }
)
print(job.to_dict())
"""

JOB_CREATE_CURL = """
curl -X POST https://api.kluster.ai/v1/fine_tuning/jobs \\
    -H "Authorization: Bearer INSERT_API_KEY" \\
    -H "Content-Type: application/json" \\
    -d '{
        "training_file": "INSERT_TRAINING_FILE_ID",
        "model": "meta-llama/Meta-Llama-3.1-8B-Instruct",
        "hyperparameters": {
            "batch_size": 4,
            "learning_rate_multiplier": 1,
            "n_epochs": 3
        }
    }'
"""

JOB_RETRIEVE_PYTHON = """
from openai import OpenAI
client = OpenAI(
    base_url="https://api.kluster.ai/v1",
    api_key="INSERT_API_KEY"
)
job_details = client.fine_tuning.jobs.retrieve("INSERT_JOB_ID")
print(job_details.to_dict())
"""

JOB_RETRIEVE_CURL = """
curl -s https://api.kluster.ai/v1/fine_tuning/jobs/INSERT_JOB_ID \\
    -H "Authorization: Bearer INSERT_API_KEY"
"""

JOB_LIST_PYTHON = """
from openai import OpenAI

client = OpenAI(
    base_url="https://api.kluster.ai/v1",
    api_key="INSERT_API_KEY"
)

jobs = client.fine_tuning.jobs.list(limit=3)
print(jobs.to_dict())
"""

JOB_LIST_CURL = """
curl -s https://api.kluster.ai/v1/fine_tuning/jobs \\
    -H "Authorization: Bearer $API_KEY"
"""

JOB_CANCEL_PYTHON = """
from openai import OpenAI
client = OpenAI(
    base_url="https://api.kluster.ai/v1",
    api_key="INSERT_API_KEY"
)
cancelled_job = client.fine_tuning.jobs.cancel("67ae7f7d965c187d5cda039f")
print(cancelled_job.to_dict())
"""

JOB_CANCEL_CURL = """
curl -X POST https://api.kluster.ai/v1/fine_tuning/jobs/67ae7f7d965c187d5cda039f/cancel \\
    -H "Authorization: Bearer INSERT_API_KEY" \\
    -H "Content-Type: application/json"
"""


class Runner:
    """Runs examples against one platform from one working directory, substituting only
    the base URL, the key, the model id and the ids an example names."""

    def __init__(self, stack: DevStack, model: str, workdir: Path) -> None:
        self.stack, self.model, self.workdir = stack, model, workdir
        self.scope: dict[str, Any] = {}

    def _substitute(self, example: str, ids: dict[str, str]) -> str:
        replacements = {**dict.fromkeys(DOCUMENTED_BASE_URLS, self.stack.base_url),
                        **dict.fromkeys(DOCUMENTED_MODELS, self.model), "INSERT_API_KEY": self.stack.api_key, **ids}
        for documented, ours in replacements.items():
            example = example.replace(documented, ours)
        for documented in ids:
            assert documented not in example
        return example

    def python(self, example: str, **ids: str) -> str:
        """Executes the example (sharing variables across examples, as a user's session
        does); returns what it printed."""
        for documented in ids:
            assert documented in example, f"{documented} is not in the example"
        printed = io.StringIO()
        cwd = os.getcwd()
        os.chdir(self.workdir)
        try:
            with contextlib.redirect_stdout(printed):
                exec(compile(self._substitute(example, ids), "<example>", "exec"), self.scope)  # noqa: S102
        finally:
            os.chdir(cwd)
        return printed.getvalue()

    def curl(self, example: str, env: dict[str, str] | None = None, **ids: str) -> Any:
        """Runs the example with bash and the real curl; its output as JSON when it has any."""
        for documented in ids:
            assert documented in example, f"{documented} is not in the example"
        done = subprocess.run(["bash", "-c", self._substitute(example, ids)], cwd=self.workdir, check=True,
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "API_KEY": self.stack.api_key, **(env or {})})
        return json.loads(done.stdout) if done.stdout.strip() else None


@pytest.fixture
def run(dev_stack: DevStack, model_id: str, tmp_path: Path) -> Runner:
    return Runner(dev_stack, model_id, tmp_path)


def _batch_file(workdir: Path, name: str, model: str, n: int = 3) -> Path:
    path = workdir / name
    path.write_text("\n".join(json.dumps({
        "custom_id": f"request-{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": model, "max_completion_tokens": 8, "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": f"What is {i} + {i}?"}]},
    }) for i in range(n)) + "\n")
    return path


def test_the_guide_uploads_fine_tunes_monitors_and_chats(run: Runner, openai_client: openai.OpenAI) -> None:
    (run.workdir / "training_data.jsonl").write_text("\n".join(json.dumps(GUIDE_EXAMPLE_ROW) for _ in range(10)))
    run.scope["client"] = openai.OpenAI(base_url=run.stack.base_url, api_key=run.stack.api_key)
    run.python(GUIDE_UPLOAD)
    run.python(GUIDE_CREATE)
    job = run.scope["fine_tuning_job"]
    assert job.model == run.model and job.status in ("validating_files", "queued", "running")
    assert run.python(GUIDE_MONITOR).startswith("Job status: ")
    assert final_job(openai_client, job.id).status == "succeeded"
    run.python(GUIDE_USE)
    response = run.scope["response"]
    assert response.model == run.scope["fine_tuned_model"] and response.choices[0].message.content

    results = openai_client.files.content(run.scope["finished_job"].result_files[0]).text
    assert results.splitlines()[0].startswith("step,")


def test_chat_completions(run: Runner) -> None:
    printed = run.python(CHAT_PYTHON)
    completion = run.scope["chat_completion"]
    assert completion.object == "chat.completion" and completion.model == run.model
    assert completion.choices[0].message.role == "assistant" and completion.usage.total_tokens > 0
    assert "'choices'" in printed
    answer = run.curl(CHAT_CURL)
    assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["content"]


def test_files_and_batches(run: Runner, openai_client: openai.OpenAI) -> None:
    file_name = str(_batch_file(run.workdir, "mybatchtest.jsonl", run.model))
    run.scope["file_name"] = file_name
    run.python(UPLOAD_PYTHON)
    uploaded = run.scope["batch_input_file"]
    assert (uploaded.object, uploaded.purpose, uploaded.filename) == ("file", "batch", "mybatchtest.jsonl")
    by_curl = run.curl(UPLOAD_CURL)
    assert by_curl["object"] == "file" and by_curl["purpose"] == "batch" and by_curl["bytes"] == uploaded.bytes

    run.python(BATCH_CREATE_PYTHON, **{"myfile-123": uploaded.id})
    batch = run.scope["batch_request"]
    assert (batch.object, batch.endpoint, batch.completion_window) == ("batch", "/v1/chat/completions", "24h")
    second = run.curl(BATCH_CREATE_CURL, **{"myfile-123": by_curl["id"]})
    assert second["object"] == "batch" and second["input_file_id"] == by_curl["id"]

    run.python("retrieved = " + BATCH_RETRIEVE_PYTHON.strip().splitlines()[-1], **{"mybatch-123": batch.id})
    assert run.scope["retrieved"].id == batch.id
    run.python(BATCH_RETRIEVE_PYTHON, **{"mybatch-123": batch.id})
    assert run.curl(BATCH_RETRIEVE_CURL, **{"mybatch-123": batch.id})["id"] == batch.id
    assert "'has_more'" in run.python(BATCH_LIST_PYTHON)
    listed = run.curl(BATCH_LIST_CURL)
    assert listed["object"] == "list" and {batch.id, second["id"]} <= {b["id"] for b in listed["data"]}

    # Each cancel example gets a batch of its own: the operator acts on the first cancel at
    # once, and cancelling a batch that is already cancelled is refused (invalid_batch_state).
    run.python(BATCH_CANCEL_PYTHON, **{"mybatch-123": second["id"]})
    third = run.curl(BATCH_CREATE_CURL, **{"myfile-123": by_curl["id"]})
    cancelled = run.curl(BATCH_CANCEL_CURL, env={"BATCH_ID": third["id"]})
    assert cancelled["id"] == third["id"] and cancelled["status"] in ("cancelling", "cancelled")
    assert openai_client.batches.retrieve(second["id"]).status in ("cancelling", "cancelled")

    done = final_batch(openai_client, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 3
    assert run.python(BATCH_RESULTS_PYTHON) == "Results saved to batch_results.jsonl\n"
    lines = [json.loads(line) for line in (run.workdir / "batch_results.jsonl").read_text().splitlines()]
    assert sorted(line["custom_id"] for line in lines) == ["request-0", "request-1", "request-2"]
    assert all(line["response"]["status_code"] == 200 for line in lines)
    run.curl(BATCH_RESULTS_CURL, **{"kluster-output-file-123": done.output_file_id})
    assert (run.workdir / "batch_output.jsonl").read_bytes() == (run.workdir / "batch_results.jsonl").read_bytes()


def test_models(run: Runner) -> None:
    printed = run.python(MODELS_PYTHON)
    assert f"'id': '{run.model}'" in printed
    listed = run.curl(MODELS_CURL)
    assert run.model in {model["id"] for model in listed["data"]} and listed["object"] == "list"


def test_fine_tuning_jobs(run: Runner, openai_client: openai.OpenAI) -> None:
    training = upload_jsonl(openai_client, "training_data.jsonl", [GUIDE_EXAMPLE_ROW] * 10, "fine-tune")
    run.python(JOB_CREATE_PYTHON, INSERT_TRAINING_FILE_ID=training)
    job = run.scope["job"]
    assert (job.model, job.training_file, job.hyperparameters.n_epochs) == (run.model, training, 3)
    assert (job.hyperparameters.batch_size, job.hyperparameters.learning_rate_multiplier) == (4, 1)
    by_curl = run.curl(JOB_CREATE_CURL, INSERT_TRAINING_FILE_ID=training)
    assert by_curl["object"] == "fine_tuning.job" and by_curl["model"] == run.model

    assert f"'id': '{job.id}'" in run.python(JOB_RETRIEVE_PYTHON, INSERT_JOB_ID=job.id)
    assert run.curl(JOB_RETRIEVE_CURL, INSERT_JOB_ID=job.id)["id"] == job.id
    run.python(JOB_LIST_PYTHON)
    assert len(run.scope["jobs"].data) <= 3 and run.scope["jobs"].object == "list"
    assert {job.id, by_curl["id"]} <= {j["id"] for j in run.curl(JOB_LIST_CURL)["data"]}

    run.python(JOB_CANCEL_PYTHON, **{"67ae7f7d965c187d5cda039f": by_curl["id"]})
    assert run.scope["cancelled_job"].status in ("cancelled", "running", "queued", "validating_files")
    assert run.curl(JOB_CANCEL_CURL, **{"67ae7f7d965c187d5cda039f": job.id})["id"] == job.id
    assert final_job(openai_client, job.id).status == "cancelled"
    assert final_job(openai_client, by_curl["id"]).status == "cancelled"


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[dict, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        _Receiver.received.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_management_api_as_documented(dev_stack: DevStack, model_id: str, openai_client: openai.OpenAI) -> None:
    """The platform REST API's documented bodies, sent as given (ids and model changed),
    with the platform overview's webhook for training.completed."""
    training = upload_jsonl(openai_client, "support_tickets.jsonl", [GUIDE_EXAMPLE_ROW] * 10, "fine-tune")
    upload_jsonl(openai_client, "validation_data.jsonl", [GUIDE_EXAMPLE_ROW] * 10, "fine-tune")
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.received = []
    api = httpx.Client(base_url=f"http://127.0.0.1:{dev_stack.gateway_port}/api/v1/fine-tuning",
                       headers={"X-API-Key": dev_stack.api_key}, timeout=60)
    try:
        created = api.post("/jobs", json={
            "name": "Customer Support Classifier",
            "baseModel": model_id,
            "trainingDataset": training,
            "description": "Fine-tuned on 10k support tickets for intent classification",
            "validationFile": "validation_data.jsonl",
            "hyperparameters": {"epochs": 3, "learningRate": 0.0002, "batchSize": 8, "warmupSteps": 100},
            "suffix": "support-v1",
            "webhookUrl": f"http://127.0.0.1:{server.server_port}/hooks/tuneforge",
        })
        assert created.status_code == 201, created.text
        job = created.json()
        assert {"id", "name", "baseModel", "status", "createdAt"} <= set(job)
        assert (job["name"], job["baseModel"], job["status"]) == ("Customer Support Classifier", model_id, "queued")
        secret = job["webhookSecret"]

        done = wait_for("the job to complete", lambda: (
            body if (body := api.get(f"/jobs/{job['id']}").json())["status"] in ("completed", "failed") else None))
        assert done["status"] == "completed", done["error"]
        assert done["trainingFile"] == "support_tickets.jsonl" and done["validationFile"] == "validation_data.jsonl"
        assert done["hyperparameters"]["epochs"] == 3 and done["resultModel"] and done["trainedTokens"] > 0
        assert set(done["metrics"]) >= {"trainingLoss", "validationLoss", "epoch"}

        listed = api.get("/jobs", params={"status": "completed", "baseModel": model_id, "limit": 20}).json()
        assert (listed["limit"], listed["offset"]) == (20, 0) and job["id"] in {j["id"] for j in listed["jobs"]}
        metrics = api.get(f"/jobs/{job['id']}/metrics").json()
        assert metrics["jobId"] == job["id"] and metrics["metrics"]["totalEpochs"] == 3
        assert {"step", "trainingLoss", "validationLoss", "learningRate"} <= set(metrics["metrics"]["steps"][0])
        logs = api.get(f"/jobs/{job['id']}/logs", params={"lines": 100}).json()
        assert logs["jobId"] == job["id"] and {"timestamp", "level", "message"} <= set(logs["logs"][0])
        stats = api.get("/stats").json()
        assert {"total", "running", "completed", "failed", "queued"} <= set(stats) and stats["completed"] >= 1
        models = api.get("/base-models").json()["models"]
        entry = next(m for m in models if m["id"] == model_id)
        assert isinstance(entry["parameterCount"], str) and entry["maxSequenceLength"] > 0
        hardware = api.get("/hardware").json()["hardware"]
        assert hardware and all({"id", "name", "gpuMemory", "gpuCount", "costPerHour"} <= set(h) for h in hardware)
        assert {h["id"]: h["costPerHour"] for h in hardware}["local-cpu"] == 0
        estimate = api.post("/estimate-cost", json={"baseModel": model_id, "datasetSize": 50000}).json()
        assert set(estimate) >= {"baseModel", "datasetSize", "estimatedCost", "estimatedTimeMinutes", "currency"}
        assert estimate["datasetSize"] == 50000 and estimate["estimatedTimeMinutes"] > 0

        deployed = api.post(f"/jobs/{job['id']}/deploy")
        assert deployed.status_code == 200, deployed.text
        assert deployed.json()["status"] == "deployed" and deployed.json()["message"]
        restarted = api.post(f"/jobs/{job['id']}/restart")
        assert restarted.status_code == 409 and restarted.json()["error"]["param"] == "id"

        headers, body = wait_for("the webhook", lambda: _Receiver.received and _Receiver.received[0])
        event = json.loads(body)
        assert event["type"] == "training.completed" and event["data"]["id"] == job["id"]
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        assert headers["X-Tuneforge-Signature"] == expected

        stopped = api.post(f"/jobs/{job['id']}/stop")
        assert stopped.status_code == 409
        assert api.delete(f"/jobs/{job['id']}").status_code == 204
        assert api.get(f"/jobs/{job['id']}").status_code == 404
    finally:
        server.shutdown()
        api.close()
