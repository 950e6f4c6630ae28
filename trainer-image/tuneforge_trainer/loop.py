"""The training loop: a `TrainingRun` in, a published LoRA adapter out.

Runs under accelerate, so the same code trains in one CPU process (`tuneforge-train`) and
on several GPUs (`accelerate launch -m tuneforge_trainer ...` with a DDP or FSDP config):
each process takes every world_size-th packed row of a step, and gradients are averaged
by accelerate. Gradient accumulation over micro-batches is explicit: gradients are
synchronised only on the last micro-batch of a step, and every loss term is divided by the
target-token count of the whole step (across all processes), which makes the update that
of one batch of `batch_size` examples however the rows were split.

Determinism: the seed fixes the LoRA initialisation, dropout and the per-epoch example
order; on CPU (fp32, deterministic kernels) two runs with the same seed produce the same
adapter, and a resumed run continues exactly where the checkpoint left off.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from peft import set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import get_scheduler

from tuneforge.contracts import TrainingProgress, TrainingResult, TrainingRun
from tuneforge.storage import ArtifactStore

from tuneforge_trainer import checkpoint, data, hparams
from tuneforge_trainer import model as modelling
from tuneforge_trainer.objective import token_stats
from tuneforge_trainer.report import Reporter

MIN_TRAINING_EXAMPLES = 10
SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
EVALS_PER_RUN = 10


class Trainer:
    """One run. Construction loads data and model; `run()` trains and publishes."""

    def __init__(self, run: TrainingRun, *, progress_interval_s: float = 2.0) -> None:
        self.run_spec = run
        hp = run.hyperparameters
        self.store = ArtifactStore(run.output_uri)
        self.reporter = Reporter(self.store, min_interval_s=progress_interval_s)
        self.accelerator = Accelerator(mixed_precision=modelling.choose_precision().mixed_precision)
        self.is_main = self.accelerator.is_main_process
        if self.is_main:
            self.reporter.progress(TrainingProgress(status="validating_files"), force=True)
        if run.lora.quantize_4bit:
            modelling.quantization_config()  # fail before spending time on data and weights

        model_dir = modelling.materialize(run.base_model_uri)
        self.tokenizer = modelling.load_tokenizer(model_dir)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.train_set = data.load_tokenized(run.training_file, self.tokenizer, hp.max_seq_length,
                                             min_examples=MIN_TRAINING_EXAMPLES, param="training_file")
        self.valid_set = (
            data.load_tokenized(run.validation_file, self.tokenizer, hp.max_seq_length, min_examples=1,
                                param="validation_file")
            if run.validation_file
            else None
        )
        self.hp = hparams.resolve(hp, len(self.train_set.examples))
        self.micro_batch_size = hp.micro_batch_size or 1

        set_seed(self.hp.seed, deterministic=self.accelerator.device.type == "cpu")
        precision = modelling.choose_precision()
        base = modelling.load_base(model_dir, run.lora, precision, device=self.accelerator.device)
        if not run.lora.quantize_4bit:
            base.to(self.accelerator.device)
        base.eval()
        self.packed = modelling.attention_honours_packing(base, base.config.vocab_size)
        model = modelling.attach_lora(base, run.lora, gradient_checkpointing=hp.gradient_checkpointing)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                      lr=self.hp.learning_rate, weight_decay=0.0)
        self.scheduler = get_scheduler(SCHEDULERS[self.hp.lr_scheduler], optimizer,
                                       num_warmup_steps=self.hp.warmup_steps, num_training_steps=self.hp.total_steps)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.state = checkpoint.TrainState(step=0, epoch=0, step_in_epoch=0, trained_tokens=0)

    # -- helpers -----------------------------------------------------------------------

    def _unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    def _sum(self, *values: float) -> list[float]:
        """Sums values over all processes."""
        tensor = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.reduce(tensor, reduction="sum").tolist()

    def _batches(self, examples, indices) -> list[data.Batch]:
        return data.step_batches(
            examples, indices, capacity=self.hp.max_seq_length, micro_batch_size=self.micro_batch_size,
            pad_id=self.pad_id, packed=self.packed,
            rank=self.accelerator.process_index, world_size=self.accelerator.num_processes,
        )

    @torch.no_grad()
    def _evaluate(self, indices) -> tuple[float, float]:
        """Mean token loss and accuracy of the validation examples at `indices`."""
        self.model.eval()
        loss = correct = tokens = 0.0
        for batch in self._batches(self.valid_set.examples, indices):
            stats = token_stats(self.model, batch, self.accelerator.device)
            loss += stats.loss_sum.item()
            correct += stats.correct
            tokens += stats.tokens
        self.model.train()
        loss, correct, tokens = self._sum(loss, correct, tokens)
        return loss / max(tokens, 1), correct / max(tokens, 1)

    # -- resume ------------------------------------------------------------------------

    def restore(self, scratch: Path) -> bool:
        """Loads the newest complete checkpoint, if any; returns whether it did."""
        restored = checkpoint.latest_checkpoint(self.store, scratch)
        if restored is None:
            return False
        set_peft_model_state_dict(self._unwrapped(), load_file(restored.directory / "adapter_model.safetensors"))
        self.optimizer.load_state_dict(torch.load(restored.directory / "optimizer.pt", weights_only=False))
        self.scheduler.load_state_dict(torch.load(restored.directory / "scheduler.pt", weights_only=False))
        rank = self.accelerator.process_index
        if len(restored.rng_states) == self.accelerator.num_processes:
            checkpoint.set_rng_state(restored.rng_states[rank])
        else:  # a different world size: RNG streams cannot be continued, reseed per rank
            set_seed(self.hp.seed + restored.state.step + rank)
        self.state = restored.state
        if self.is_main:
            self.reporter.forget_after(restored.state.step)
            self.reporter.event(f"Resumed from checkpoint step-{restored.state.step}",
                                data={"step": restored.state.step})
        return True

    def _checkpoint(self) -> None:
        rng_states = gather_object([checkpoint.rng_state()])
        if self.is_main:
            checkpoint.save_checkpoint(self.store, self.state, model=self._unwrapped(), optimizer=self.optimizer,
                                       scheduler=self.scheduler, rng_states=rng_states)
            checkpoint.prune(self.store, self.run_spec.checkpoints.keep_last)
            self.reporter.event(f"Checkpoint saved at step {self.state.step}", data={"step": self.state.step})
        self.accelerator.wait_for_everyone()

    # -- training ----------------------------------------------------------------------

    def _train_step(self, indices: list[int]) -> dict:
        batches = self._batches(self.train_set.examples, indices)
        (step_targets,) = self._sum(sum(b.label_tokens for b in batches))
        scale = self.accelerator.num_processes / max(step_targets, 1.0)
        loss = correct = 0.0
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1
            with nullcontext() if sync else self.accelerator.no_sync(self.model):
                stats = token_stats(self.model, batch, self.accelerator.device)
                self.accelerator.backward(stats.loss_sum * scale)
            loss += stats.loss_sum.item()
            correct += stats.correct
        self.accelerator.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss, correct = self._sum(loss, correct)
        real, processed = self._sum(sum(b.real_tokens for b in batches), sum(b.processed_tokens for b in batches))
        return {
            "train_loss": loss / max(step_targets, 1.0),
            "train_mean_token_accuracy": correct / max(step_targets, 1.0),
            "packing_efficiency": real / max(processed, 1.0),
        }

    def run(self) -> TrainingResult:
        with tempfile.TemporaryDirectory(prefix="tuneforge-resume-") as scratch:
            resumed = self.restore(Path(scratch))
        hp = self.hp
        if self.is_main and not resumed:
            self.reporter.event(
                f"Training started: {len(self.train_set.examples)} examples "
                f"({self.train_set.n_truncated} truncated to {hp.max_seq_length} tokens), "
                f"{hp.n_epochs} epochs, batch size {hp.batch_size}, {hp.total_steps} steps, "
                f"{'packed rows' if self.packed else 'padded rows (attention cannot honour packing)'}",
                data={"hyperparameters": hp.as_dict(), "truncated_examples": self.train_set.n_truncated},
            )
            if self.train_set.n_truncated:
                self.reporter.event(f"{self.train_set.n_truncated} examples exceeded {hp.max_seq_length} "
                                    "tokens and were truncated", level="warn")
        eval_every = max(1, hp.total_steps // EVALS_PER_RUN)
        started, start_step, start_tokens = time.monotonic(), self.state.step, self.state.trained_tokens
        self.model.train()
        n = len(self.train_set.examples)
        order, order_epoch = None, -1
        valid_loss = None
        while self.state.step < hp.total_steps:
            epoch, in_epoch = divmod(self.state.step, hp.steps_per_epoch)
            if order_epoch != epoch:
                order, order_epoch = data.epoch_order(n, hp.seed, epoch), epoch
            indices = order[in_epoch * hp.batch_size : (in_epoch + 1) * hp.batch_size]
            record = self._train_step(indices)
            step = self.state.step + 1
            epoch_end = step % hp.steps_per_epoch == 0
            next_epoch, next_in = divmod(step, hp.steps_per_epoch)
            self.state = checkpoint.TrainState(step, next_epoch, next_in,
                                               self.state.trained_tokens + sum(len(self.train_set.examples[i]) for i in indices))
            record = {"step": step, **record, "trained_tokens": self.state.trained_tokens,
                      "learning_rate": self.scheduler.get_last_lr()[0], "epoch": step / hp.steps_per_epoch}
            if self.valid_set is not None:
                if step % eval_every == 0 or step == hp.total_steps:
                    nv = len(self.valid_set.examples)
                    start = (step // eval_every - 1) * hp.batch_size
                    window = [(start + k) % nv for k in range(min(hp.batch_size, nv))]
                    record["valid_loss"], record["valid_mean_token_accuracy"] = self._evaluate(window)
                    valid_loss = record["valid_loss"]
                if epoch_end:
                    full = self._evaluate(range(len(self.valid_set.examples)))
                    record["full_valid_loss"], record["full_valid_mean_token_accuracy"] = full
            elapsed = time.monotonic() - started
            tokens_per_s = (self.state.trained_tokens - start_tokens) / max(elapsed, 1e-9)
            if self.is_main:
                self.reporter.metrics(record, hp.total_steps)
                remaining = elapsed / (step - start_step) * (hp.total_steps - step)
                self.reporter.progress(TrainingProgress(
                    step=step, total_steps=hp.total_steps, epoch=step / hp.steps_per_epoch,
                    trained_tokens=self.state.trained_tokens, train_loss=record["train_loss"], valid_loss=valid_loss,
                    tokens_per_second=tokens_per_s, estimated_finish=datetime.now(UTC) + timedelta(seconds=remaining),
                ))
            if epoch_end or step % self.run_spec.checkpoints.every_n_steps == 0:
                self._checkpoint()
        return self._finish()

    def _finish(self) -> TrainingResult:
        result = None
        if self.is_main:
            model = self._unwrapped()
            adapter_uri = checkpoint.save_final_adapter(self.store, model=model, tokenizer=self.tokenizer)
            merged_uri = (checkpoint.save_merged_model(self.store, model=model, tokenizer=self.tokenizer)
                          if self.run_spec.merge_adapter else None)
            result = TrainingResult(
                fine_tuned_model=self.run_spec.fine_tuned_model,
                adapter_uri=adapter_uri,
                trained_tokens=self.state.trained_tokens,
                steps=self.state.step,
                epochs=self.hp.n_epochs,
                hyperparameters=self.hp.as_dict(),
                result_files=[self.reporter.write_results_csv()],
                merged_model_uri=merged_uri,
            )
            self.reporter.event(f"The job has successfully completed; the model is {result.fine_tuned_model}",
                                data={"trained_tokens": result.trained_tokens})
            self.reporter.write_result(result)
            self.reporter.progress(TrainingProgress(
                status="succeeded", step=self.state.step, total_steps=self.hp.total_steps,
                epoch=float(self.hp.n_epochs), trained_tokens=self.state.trained_tokens,
            ), force=True)
        self.accelerator.wait_for_everyone()
        return result


def train(run: TrainingRun, *, progress_interval_s: float = 2.0) -> TrainingResult:
    return Trainer(run, progress_interval_s=progress_interval_s).run()
