"""Rendering, loss masking, truncation and packing of training examples."""

from __future__ import annotations

import numpy as np
import torch

from tuneforge_trainer import data
from tuneforge_trainer.data import IGNORE


def _labelled_text(tokenizer, tokenized: data.Tokenized) -> str:
    """The text of the tokens that are prediction targets (targets are shifted by one)."""
    ids = tokenized.input_ids
    targeted = [ids[t + 1] for t in range(len(ids) - 1) if tokenized.targets[t] != IGNORE]
    return tokenizer.decode(targeted)


def test_only_weighted_assistant_tokens_are_targets_token_by_token(tiny_tokenizer):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say one."},
        {"role": "assistant", "content": "ONE", "weight": 0},
        {"role": "user", "content": "Say two."},
        {"role": "assistant", "content": "TWO"},
    ]
    tokenized, truncated = data.tokenize_example(tiny_tokenizer, messages, None, 512)
    assert not truncated
    # Every target is exactly the next token, and the targeted text is the weighted
    # assistant reply plus the template's end-of-turn marker, nothing else.
    ids, targets = tokenized.input_ids, tokenized.targets
    for t in range(len(ids) - 1):
        assert targets[t] in (IGNORE, ids[t + 1])
    assert targets[-1] == IGNORE
    assert _labelled_text(tiny_tokenizer, tokenized) == "TWO<|im_end|>\n"
    # Token by token: a token is a target iff it lies inside the last assistant turn.
    text = tiny_tokenizer.apply_chat_template(
        [{k: v for k, v in m.items() if k != "weight"} for m in messages], tokenize=False
    )
    start = text.rindex("TWO")
    offsets = tiny_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    expected = [offsets[t + 1][0] >= start for t in range(len(ids) - 1)] + [False]
    assert [bool(x != IGNORE) for x in targets] == expected


def test_weight_one_on_every_assistant_turn_trains_them_all(tiny_tokenizer):
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "B"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "D"},
    ]
    tokenized, _ = data.tokenize_example(tiny_tokenizer, messages, None, 512)
    assert _labelled_text(tiny_tokenizer, tokenized) == "B<|im_end|>\nD<|im_end|>\n"


def test_truncation_keeps_the_beginning_and_is_reported(tiny_tokenizer):
    messages = [{"role": "user", "content": "x " * 50}, {"role": "assistant", "content": "y " * 50}]
    full, truncated_full = data.tokenize_example(tiny_tokenizer, messages, None, 4096)
    cut, truncated = data.tokenize_example(tiny_tokenizer, messages, None, 40)
    assert not truncated_full and truncated
    assert len(cut) == 40
    assert np.array_equal(cut.input_ids, full.input_ids[:40])
    assert cut.targets[-1] == IGNORE


def test_first_fit_decreasing_respects_capacity_and_places_every_example():
    lengths = [50, 10, 30, 60, 20, 40, 5]
    rows = data.pack_rows(lengths, 64)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    assert len(rows) == 4  # 215 tokens need at least ceil(215/64) = 4 rows


def test_packed_rows_restart_positions_and_never_target_across_examples(tiny_tokenizer):
    examples = [
        data.tokenize_example(tiny_tokenizer, [{"role": "user", "content": u}, {"role": "assistant", "content": a}],
                              None, 64)[0]
        for u, a in [("hi", "HELLO"), ("one two", "ONE TWO"), ("x", "Y")]
    ]
    batches = data.step_batches(examples, [0, 1, 2], capacity=256, micro_batch_size=1, pad_id=0, packed=True)
    assert len(batches) == 1
    batch = batches[0]
    assert batch.real_tokens == sum(len(e) for e in examples) == batch.processed_tokens
    positions = batch.position_ids[0]
    starts = (positions == 0).nonzero().squeeze(-1).tolist()
    assert len(starts) == 3
    for start in starts[1:]:
        assert batch.targets[0, start - 1] == IGNORE  # the last token of an example predicts nothing


def test_epoch_order_depends_only_on_seed_and_epoch():
    assert data.epoch_order(50, 7, 2) == data.epoch_order(50, 7, 2)
    assert data.epoch_order(50, 7, 2) != data.epoch_order(50, 7, 3)
    assert sorted(data.epoch_order(50, 7, 0)) == list(range(50))


def test_padding_fallback_gives_every_example_its_own_row(tiny_tokenizer):
    examples = [data.Tokenized(np.arange(n, dtype=np.int32), np.full(n, IGNORE, dtype=np.int32)) for n in (3, 5)]
    (batch,) = data.step_batches(examples, [0, 1], capacity=64, micro_batch_size=2, pad_id=9, packed=False)
    assert batch.input_ids.shape == (2, 5)
    assert batch.input_ids[0, 3:].tolist() == [9, 9]
    assert torch.equal(batch.position_ids[0], torch.arange(5))
    assert batch.real_tokens == 8 and batch.processed_tokens == 10
