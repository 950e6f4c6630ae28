"""Training data: stream the JSONL, render chat templates, mask, truncate, pack.

One example becomes two int32 arrays of equal length: `input_ids` and `targets`, where
`targets[t]` is the token the model must predict *at* position t (the next token) or -100
when position t carries no loss. Targets are shifted here, per example, rather than inside
the model: that way a packed row can never ask the last token of one example to predict
the first token of the next.

Only assistant messages with `weight` 1 carry loss (their content and the end-of-turn
marker the template puts after it, so the model learns to stop). Examples longer than
`max_seq_length` are cut from the end, as OpenAI does, and counted.

An optimizer step takes `batch_size` examples (OpenAI's meaning of batch size) in a
seeded per-epoch order. The step's examples are packed first-fit-decreasing into rows of
at most `max_seq_length` tokens; position ids restart at 0 for every example, which is how
the model's attention (block-diagonal causal mask for sdpa/eager, varlen kernels for flash
attention) keeps examples from seeing each other. When the attention implementation cannot
honour that (see `model.attention_honours_packing`), every example gets its own row.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tuneforge import datasets, storage

from tuneforge_trainer.errors import TrainerError

IGNORE = -100


@dataclass(frozen=True)
class Tokenized:
    input_ids: np.ndarray  # int32, shape (n,)
    targets: np.ndarray  # int32, shape (n,); IGNORE where no loss

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class TokenizedSet:
    examples: list[Tokenized]
    n_truncated: int

    @property
    def n_tokens(self) -> int:
        return sum(len(e) for e in self.examples)


@dataclass(frozen=True)
class Batch:
    """One forward pass worth of rows (already padded to a common length)."""

    input_ids: torch.Tensor  # (rows, length) int64
    position_ids: torch.Tensor  # (rows, length) int64
    targets: torch.Tensor  # (rows, length) int64
    real_tokens: int  # tokens of examples (the rest is padding)

    @property
    def label_tokens(self) -> int:
        return int((self.targets != IGNORE).sum())

    @property
    def processed_tokens(self) -> int:
        return self.input_ids.numel()


def iter_lines(uri: str) -> Iterator[bytes]:
    """Streams a JSONL object from the store line by line."""
    fs, path = storage.filesystem(uri)
    try:
        handle = fs.open(path, "rb")
    except FileNotFoundError as exc:
        raise TrainerError("file_not_found", f"no file at {uri}", param="training_file") from exc
    with handle:
        yield from handle


def _render(tokenizer, messages: list[dict], tools, **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, **kwargs)


def assistant_spans(tokenizer, messages: list[dict], tools=None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans that carry loss.

    The span of assistant message i runs from the end of the conversation rendered up to
    message i with the generation prompt to the end of the conversation rendered up to and
    including message i; that covers the content and the template's end-of-turn marker.
    """
    clean = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
    full = _render(tokenizer, clean, tools)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        prefix = _render(tokenizer, clean[:i], tools, add_generation_prompt=True)
        upto = _render(tokenizer, clean[: i + 1], tools)
        if not (full.startswith(upto) and upto.startswith(prefix)):
            raise TrainerError(
                "unsupported_chat_template",
                "the base model's chat template does not render conversations incrementally "
                "(an earlier turn changes when a later one is added), so assistant tokens "
                "cannot be located for loss masking",
                param="base_model",
            )
        spans.append((len(prefix), len(upto)))
    return full, spans


def tokenize_example(tokenizer, messages: list[dict], tools, max_seq_length: int) -> tuple[Tokenized, bool]:
    """Tokenizes one conversation; returns it and whether it was truncated."""
    text, spans = assistant_spans(tokenizer, messages, tools)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(encoded["input_ids"], dtype=np.int32)
    starts = np.asarray([start for start, _ in encoded["offset_mapping"]], dtype=np.int64)
    in_loss = np.zeros(len(ids), dtype=bool)
    for lo, hi in spans:
        in_loss |= (starts >= lo) & (starts < hi)
    truncated = len(ids) > max_seq_length
    ids, in_loss = ids[:max_seq_length], in_loss[:max_seq_length]
    targets = np.full(len(ids), IGNORE, dtype=np.int32)
    targets[:-1] = np.where(in_loss[1:], ids[1:], IGNORE)
    return Tokenized(ids, targets), truncated


def load_tokenized(uri: str, tokenizer, max_seq_length: int, *, min_examples: int, param: str) -> TokenizedSet:
    """Validates and tokenizes a fine-tuning file, streaming it twice (validate, then read).

    Validation runs to the end before any tokenization, so a bad line 10,000 fails the job
    before it spends time on the first 9,999.
    """
    try:
        datasets.validate_fine_tune_file(iter_lines(uri), min_examples=min_examples)
        examples, n_truncated = [], 0
        for example in datasets.iter_fine_tune_examples(iter_lines(uri)):
            tokenized, truncated = tokenize_example(tokenizer, example.messages, example.tools, max_seq_length)
            examples.append(tokenized)
            n_truncated += truncated
    except datasets.DatasetError as exc:
        info = exc.to_error_info()
        # The dataset message already names its line ("line 7: ...").
        raise TrainerError(info.code, info.message, param=info.param or param) from exc
    return TokenizedSet(examples, n_truncated)


# -- batching --------------------------------------------------------------------------


def epoch_order(n_examples: int, seed: int, epoch: int) -> list[int]:
    """The example order of one epoch: a permutation that depends only on (seed, epoch),
    so a resumed run sees exactly the order the interrupted one would have."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_examples, generator=generator).tolist()


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit-decreasing bin packing: indices grouped into rows of <= capacity tokens."""
    rows: list[list[int]] = []
    free: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for row, room in enumerate(free):
            if lengths[index] <= room:
                rows[row].append(index)
                free[row] -= lengths[index]
                break
        else:
            rows.append([index])
            free.append(capacity - lengths[index])
    return rows


def collate(rows: Sequence[Sequence[Tokenized]], pad_id: int, *, packed: bool) -> Batch:
    """Stacks rows of examples into one Batch, right-padding to the longest row.

    Position ids restart at 0 for each example when `packed`; padding forms its own
    segment (positions from 0, no targets) so it never joins an example's segment. Right
    padding needs no attention mask under causal attention: real tokens never look ahead.
    """
    width = max(sum(len(e) for e in row) for row in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    targets = np.full((len(rows), width), IGNORE, dtype=np.int64)
    positions = np.zeros((len(rows), width), dtype=np.int64)
    real = 0
    for r, row in enumerate(rows):
        cursor = 0
        for example in row:
            n = len(example)
            ids[r, cursor : cursor + n] = example.input_ids
            targets[r, cursor : cursor + n] = example.targets
            positions[r, cursor : cursor + n] = np.arange(n)
            cursor += n
        real += cursor
        tail = np.arange(width - cursor)
        positions[r, cursor:] = tail if packed else tail + cursor
    return Batch(torch.from_numpy(ids), torch.from_numpy(positions), torch.from_numpy(targets), real)


def step_batches(
    examples: Sequence[Tokenized],
    indices: Iterable[int],
    *,
    capacity: int,
    micro_batch_size: int,
    pad_id: int,
    packed: bool,
    rank: int = 0,
    world_size: int = 1,
) -> list[Batch]:
    """The micro-batches this process runs for one optimizer step."""
    chosen = [examples[i] for i in indices]
    groups = pack_rows([len(e) for e in chosen], capacity) if packed else [[i] for i in range(len(chosen))]
    mine = [[chosen[i] for i in group] for group in groups[rank::world_size]]
    if not mine:
        # Fewer rows than processes: this one still runs a forward and backward pass (DDP
        # synchronises gradients there), on an example whose targets are all masked.
        first = chosen[0]
        mine = [[Tokenized(first.input_ids, np.full_like(first.targets, IGNORE))]]
    return [
        collate(mine[i : i + micro_batch_size], pad_id, packed=packed) for i in range(0, len(mine), micro_batch_size)
    ]
