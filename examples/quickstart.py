"""The tuneforge walkthrough with the official `openai` client, against `make dev`.

    make dev                       # in one terminal (or `make dev-up`)
    source .dev/env                # OPENAI_BASE_URL, OPENAI_API_KEY, KUBECONFIG, ...
    .venv/bin/python examples/quickstart.py

It teaches SmolLM2-135M-Instruct to answer with a JSON object: uploads a small training
set, fine-tunes with LoRA while printing the job's events, chats with the fine-tuned
model (served at once by the shared deployment, no deploy step), runs a batch against it
and downloads the results. About ten minutes on a laptop CPU. `--model
tuneforge/tiny-smollm2` runs the same steps on the tiny test model in about a minute (its
answers are noise).
"""

from __future__ import annotations

import argparse
import json
import time

from openai import OpenAI

PEOPLE = [("Ada", 36, "London"), ("Grace", 85, "New York"), ("Linus", 54, "Helsinki"), ("Barbara", 84, "Boston"),
          ("Ken", 81, "New Orleans"), ("Margaret", 88, "Paoli"), ("Dennis", 70, "Bronxville"),
          ("Frances", 88, "Boston"), ("Alan", 41, "London"), ("Radia", 73, "Maryland"), ("Edsger", 72, "Rotterdam"),
          ("Donald", 87, "Milwaukee"), ("Leslie", 84, "New York"), ("Guido", 69, "Haarlem"),
          ("Bjarne", 75, "Aarhus"), ("Anita", 60, "Chicago"), ("John", 93, "Oakland"), ("Sophie", 61, "Liverpool"),
          ("Tim", 70, "London"), ("Katherine", 101, "White Sulphur Springs")]
SYSTEM = "Extract the person as a JSON object with keys name, age and city. Answer with JSON only."


def training_rows() -> list[dict]:
    rows = []
    for name, age, city in PEOPLE:
        for sentence in (f"{name} is {age} and lives in {city}.", f"Living in {city}, {name} turned {age} this year."):
            rows.append({"messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": sentence},
                {"role": "assistant", "content": json.dumps({"name": name, "age": age, "city": city})},
            ]})
    return rows


def jsonl(rows: list[dict]) -> bytes:
    return "\n".join(json.dumps(row) for row in rows).encode()


def follow(client: OpenAI, job_id: str) -> object:
    """Prints the job's events as they come, until it finishes."""
    seen: set[str] = set()
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
        for event in reversed(events):
            if event.id not in seen:
                seen.add(event.id)
                print(f"  [{event.level}] {event.message}")
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct", help="catalog model to fine-tune")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    client = OpenAI()  # OPENAI_BASE_URL and OPENAI_API_KEY come from .dev/env

    print("1. Upload the training set")
    training = client.files.create(file=("people.jsonl", jsonl(training_rows())), purpose="fine-tune")
    print(f"  {training.id}: {training.bytes} bytes")

    print(f"2. Fine-tune {args.model} (LoRA), following its events")
    job = client.fine_tuning.jobs.create(model=args.model, training_file=training.id, suffix="people-json",
                                         hyperparameters={"n_epochs": args.epochs, "batch_size": 4})
    job = follow(client, job.id)
    if job.status != "succeeded":
        print(f"  the job ended {job.status}: {job.error}")
        return 1
    model = job.fine_tuned_model
    print(f"  fine-tuned model: {model} ({job.trained_tokens} tokens trained)")

    print("3. Chat with the fine-tuned model")
    question = "Grace is 85 and lives in New York."
    reply = client.chat.completions.create(model=model, max_tokens=40, temperature=0,
                                           messages=[{"role": "system", "content": SYSTEM},
                                                     {"role": "user", "content": question}])
    print(f"  {question!r} -> {reply.choices[0].message.content}")

    print("4. Run a batch against it")
    prompts = [f"{name} is {age} and lives in {city}." for name, age, city in PEOPLE[:8]]
    requests = [{"custom_id": f"person-{i}", "method": "POST", "url": "/v1/chat/completions",
                 "body": {"model": model, "max_tokens": 40, "temperature": 0,
                          "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}]}}
                for i, p in enumerate(prompts)]
    batch_input = client.files.create(file=("requests.jsonl", jsonl(requests)), purpose="batch")
    batch = client.batches.create(input_file_id=batch_input.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(2)
        batch = client.batches.retrieve(batch.id)
        print(f"  {batch.status}: {batch.request_counts.completed}/{batch.request_counts.total}")
    if batch.status != "completed":
        print(f"  the batch ended {batch.status}: {batch.errors}")
        return 1

    print("5. Download the output")
    results = {}
    for line in client.files.content(batch.output_file_id).text.splitlines():
        row = json.loads(line)
        results[row["custom_id"]] = row["response"]["body"]["choices"][0]["message"]["content"]
    for i, prompt in enumerate(prompts):
        print(f"  {prompt!r} -> {results[f'person-{i}']}")
    print("Done. `kubectl get ftjob,bjob,mdep -A` shows the same story.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
