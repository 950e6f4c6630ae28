"""A packed row computes exactly what its examples compute alone (fp32, CPU)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from tests.support.trainer_runs import echo_examples
from tuneforge_trainer import data
from tuneforge_trainer import model as modelling
from tuneforge_trainer.objective import token_stats


def _load(model_dir):
    """The model as the trainer runs it: no KV cache (a cache disables packed masks)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.config.use_cache = False
    return model


def _examples(tokenizer):
    return [
        data.tokenize_example(tokenizer, record["messages"], None, 64)[0] for record in echo_examples(4, seed=3)
    ]


def test_packed_row_matches_unpacked_examples_logits_and_loss(tiny_model_dir, tiny_tokenizer):
    torch.manual_seed(0)
    model = _load(tiny_model_dir)
    examples = _examples(tiny_tokenizer)
    (packed,) = data.step_batches(examples, range(4), capacity=512, micro_batch_size=1, pad_id=0, packed=True)
    assert packed.input_ids.shape[0] == 1  # all four share one row

    with torch.no_grad():
        row_logits = model(input_ids=packed.input_ids, position_ids=packed.position_ids).logits[0]
        starts = (packed.position_ids[0] == 0).nonzero().squeeze(-1).tolist()
        for start in starts:
            n = int(packed.position_ids[0, start:].eq(0).cumsum(0).eq(1).sum())  # this example's length
            ids = packed.input_ids[:, start : start + n]
            alone = model(input_ids=ids).logits[0]
            assert torch.allclose(row_logits[start : start + n], alone, atol=1e-4, rtol=0)

            single = data.collate([[data.Tokenized(ids[0].numpy(), packed.targets[0, start : start + n].numpy())]],
                                  0, packed=True)
            packed_part = data.Batch(packed.input_ids, packed.position_ids,
                                     torch.where(torch.arange(packed.targets.shape[1]).sub(start).clamp(min=-1).lt(n)
                                                 & torch.arange(packed.targets.shape[1]).ge(start),
                                                 packed.targets, data.IGNORE), n)
            a = token_stats(model, single, torch.device("cpu"))
            b = token_stats(model, packed_part, torch.device("cpu"))
            assert a.tokens == b.tokens > 0
            assert abs(a.loss_sum.item() - b.loss_sum.item()) / a.tokens < 1e-4

        # Without restarting positions (plain causal over the row) the examples would see
        # each other: the check above is not vacuous.
        contaminated = model(input_ids=packed.input_ids).logits[0]
        second = starts[1]
        assert not torch.allclose(contaminated[second:], row_logits[second:], atol=1e-4, rtol=0)


def test_probe_accepts_the_models_attention(tiny_model_dir):
    model = _load(tiny_model_dir)
    assert modelling.attention_honours_packing(model, model.config.vocab_size)


def test_probe_rejects_attention_that_ignores_segments(tiny_model_dir):
    """A model whose attention ignores position-id segments (position ids dropped before
    the layers, as in architectures without packed-sequence support) must fall back."""
    model = _load(tiny_model_dir)
    forward = model.forward
    model.forward = lambda input_ids, position_ids=None, **kw: forward(input_ids=input_ids, **kw)
    assert not modelling.attention_honours_packing(model, model.config.vocab_size)
