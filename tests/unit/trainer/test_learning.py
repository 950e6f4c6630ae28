"""The real SmolLM2-135M-Instruct learns a format it cannot produce before training."""

from __future__ import annotations

import random

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.support.trainer_runs import make_run, write_jsonl
from tuneforge_trainer.loop import train

GOOD = "wonderful great delightful superb charming brilliant lovely excellent".split()
BAD = "awful boring terrible dreadful clumsy tedious horrible dull".split()
THINGS = "film soup hotel concert book phone chair lesson".split()
INSTRUCTION = "Classify the sentiment of this review."


def _examples(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        positive = rng.random() < 0.5
        word = rng.choice(GOOD if positive else BAD)
        review = f"The {rng.choice(THINGS)} was {word}."
        out.append((f"{INSTRUCTION}\n{review}", "#POS#" if positive else "#NEG#"))
    return out


def _chat(prompt, answer=None):
    messages = [{"role": "user", "content": prompt}]
    return messages + ([{"role": "assistant", "content": answer}] if answer is not None else [])


@torch.no_grad()
def _exact_match(model, tokenizer, examples) -> float:
    hits = 0
    for prompt, label in examples:
        ids = tokenizer.apply_chat_template(_chat(prompt), add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        out = model.generate(ids, max_new_tokens=6, do_sample=False)
        hits += tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip() == label
    return hits / len(examples)


@pytest.mark.slow
def test_fine_tuning_teaches_a_fixed_label_format(tmp_path, smollm2_dir):
    train_set = _examples(48, seed=1)
    held_out = _examples(16, seed=2)
    training = write_jsonl(tmp_path / "train.jsonl", [{"messages": _chat(p, a)} for p, a in train_set])
    run = make_run(tmp_path, smollm2_dir, training,
                   hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 5.0,
                                    "max_seq_length": 128})

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    before = _exact_match(base, tokenizer, held_out)

    result = train(run)
    tuned = PeftModel.from_pretrained(base, result.adapter_uri).eval()
    after = _exact_match(tuned, tokenizer, held_out)
    assert before <= 0.1
    assert after >= 0.9, (before, after)
