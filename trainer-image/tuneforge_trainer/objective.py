"""Token-level loss and accuracy of one micro-batch.

The output head runs only at positions that carry a target (`logits_to_keep` with the
union of those positions across the rows): prompts and system text, often most of a chat
example, never pay for the vocabulary projection, which on a small model is a large part
of the compute. The loss is a *sum* over target tokens; the loop divides by the number of
target tokens in the whole optimizer step, so packing, micro-batching and gradient
accumulation all give the gradient of one big batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tuneforge_trainer.data import IGNORE, Batch


@dataclass
class TokenStats:
    """Sums over a micro-batch, left on the device: reading them back would stall the
    GPU queue once per micro-batch, so the loop adds them up and reads once per step."""

    loss_sum: torch.Tensor  # scalar, differentiable when computed with grad
    correct: torch.Tensor  # scalar count of correctly predicted targets
    tokens: int  # target tokens, counted on the host from the batch itself


def token_stats(model, batch: Batch, device: torch.device) -> TokenStats:
    # Which positions carry targets is decided on the host, where the batch was built, so
    # no device-to-host copy is needed to size the output head's input.
    keep = (batch.targets != IGNORE).any(dim=0).nonzero().squeeze(-1)
    if keep.numel() == 0:
        # Every process must run a forward pass each step (DDP synchronises gradients in
        # backward); a step share with no targets contributes an exact zero.
        keep = torch.zeros(1, dtype=torch.long)
    kept = batch.targets[:, keep].to(device, non_blocking=True)
    logits = model(
        input_ids=batch.input_ids.to(device, non_blocking=True),
        position_ids=batch.position_ids.to(device, non_blocking=True),
        logits_to_keep=keep.to(device, non_blocking=True),
        use_cache=False,
    ).logits.float()
    loss_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), kept.reshape(-1),
                               ignore_index=IGNORE, reduction="sum")
    correct = ((logits.argmax(-1) == kept) & (kept != IGNORE)).sum()
    return TokenStats(loss_sum, correct, batch.label_tokens)
