"""Trainer benchmark: tuneforge's trainer vs TRL's SFTTrainer on the same work.

Same tiny SmolLM2-shaped model, same varied-length chat data, same sequence length,
LoRA settings, examples per optimizer step and thread count; one epoch each. Reports
training tokens per second (real example tokens / wall time of the training call) for
tuneforge, TRL with default settings (padding) and TRL with packing, and tuneforge's
packing efficiency (real tokens / processed tokens, padding included). Writes
bench-results/trainer.json in the shared format (tests/bench/common.py).

    .venv/bin/python -m tests.bench.bench_trainer [--quick]    (or: make bench-trainer; a few minutes)

`--quick` (or TUNEFORGE_BENCH_QUICK=1) trains on 32 examples: a smoke run.
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


def run_tuneforge(model_dir: Path, records: list[dict], work: Path) -> tuple[float, float, int]:
    from tuneforge.contracts import TrainingRun

    from tuneforge_trainer.loop import Trainer

    training = work / "train.jsonl"
    training.write_text("".join(json.dumps(r) + "\n" for r in records))
    run = TrainingRun.model_validate({
        "job_id": "ftjob-bench", "namespace": "bench", "base_model": "tiny", "base_model_uri": str(model_dir),
        "training_file": str(training), "output_uri": str(work / "out"), "fine_tuned_model": "ft:tiny:bench::b",
        "hyperparameters": {"n_epochs": 1, "batch_size": BATCH, "max_seq_length": SEQ},
        "checkpoints": {"every_n_steps": 10_000, "keep_last": 1},
    })
    trainer = Trainer(run)
    start = time.perf_counter()
    result = trainer.run()
    elapsed = time.perf_counter() - start
    metrics = [json.loads(line) for line in (work / "out" / "metrics.jsonl").read_text().splitlines()]
    assert trainer.packed, "packing must be active for this benchmark"
    efficiency = sum(m["packing_efficiency"] for m in metrics) / len(metrics)
    return result.trained_tokens / elapsed, efficiency, result.trained_tokens


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


def main() -> int:
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    import torch

    torch.set_num_threads(THREADS)
    from tuneforge import weights

    cache = Path(os.environ.get("TUNEFORGE_CACHE_DIR", Path.home() / ".cache" / "tuneforge"))
    model_dir = weights.build_tiny_model(cache / "bench-tiny-model")
    records = chat_dataset(EXAMPLES)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ours, efficiency, tokens = run_tuneforge(model_dir, records, work)
        trl_default = run_trl(model_dir, records, work, packing=False, tokens=tokens)
        trl_packed = run_trl(model_dir, records, work, packing=True, tokens=tokens)

    results = [
        common.result("train_tokens_per_second_vs_trl_default", ours, "tokens/s", "trl SFTTrainer (padding)",
                      trl_default, "ratio >= 1.3", ours >= 1.3 * trl_default),
        common.result("train_tokens_per_second_vs_trl_packed", ours, "tokens/s", "trl SFTTrainer (packing=True)",
                      trl_packed, "ratio >= 1.0", ours >= trl_packed),
        common.result("packing_efficiency", efficiency, "real/processed tokens", "ideal", 1.0, "value >= 0.95",
                      efficiency >= 0.95),
    ]
    common.write("trainer", results, torch=torch.__version__, threads=THREADS, device="cpu",
                 model="tiny SmolLM2-shaped (weights.build_tiny_model)", examples=EXAMPLES, max_seq_length=SEQ,
                 examples_per_step=BATCH)
    return 0


if __name__ == "__main__":
    sys.exit(main())
