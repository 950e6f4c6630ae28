"""The training loop: a `TrainingRun` in, a published LoRA adapter out.

Runs under accelerate, so the same code trains in one CPU process and in every process
torchrun starts (`launch`): DDP, or FSDP2 through accelerate's plugin on GPUs. Each process
takes every world_size-th packed row of a step, and gradients are averaged by accelerate. Gradient accumulation over micro-batches is explicit: gradients are
synchronised only on the last micro-batch of a step, and every loss term is divided by the
target-token count of the whole step (across all processes), which makes the update that
of one batch of `batch_size` examples however the rows were split.

Determinism: the seed fixes the LoRA initialisation, dropout and the per-epoch example
order; on CPU (fp32, deterministic kernels) two runs with the same seed produce the same
adapter, and a resumed run continues exactly where the checkpoint left off. How rows fall
to processes changes only the order of floating-point sums, so any world size trains the
same adapter up to rounding.

SIGTERM (`distributed.StopRequest`) is honoured between optimizer steps: the ranks agree
on it in the step's last reduction, checkpoint, and stop with `Preempted`.
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

from tuneforge.contracts import TrainingPerformance, TrainingProgress, TrainingResult, TrainingRun
from tuneforge.storage import ArtifactStore

from tuneforge_trainer import checkpoint, data, distributed, hparams, perf
from tuneforge_trainer import model as modelling
from tuneforge_trainer.errors import Preempted, TrainerError
from tuneforge_trainer.objective import token_stats
from tuneforge_trainer.report import Reporter

MIN_TRAINING_EXAMPLES = 10
SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
EVALS_PER_RUN = 10


class Trainer:
    """One run. Construction loads data and model; `run()` trains and publishes."""

    def __init__(self, run: TrainingRun, *, stop: distributed.StopRequest | None = None,
                 progress_interval_s: float = 2.0) -> None:
        self.run_spec = run
        self.stop = stop or distributed.StopRequest()
        hp = run.hyperparameters
        shape = run.distributed
        on_gpu = torch.cuda.is_available()
        _check_shape(run, on_gpu=on_gpu)
        self.store = ArtifactStore(run.output_uri)
        self.reporter = Reporter(self.store, min_interval_s=progress_interval_s)
        precision = modelling.choose_precision()
        self.accelerator = Accelerator(
            mixed_precision=precision.mixed_precision,
            cpu=not on_gpu,
            fsdp_plugin=modelling.fsdp_plugin() if shape.strategy == "fsdp" else None,
        )
        distributed.ensure_process_group()
        self.is_main = self.accelerator.is_main_process
        if self.is_main:
            self.reporter.progress(TrainingProgress(status="validating_files"), force=True)
        if run.lora.quantize_4bit:
            modelling.quantization_config()  # fail before spending time on data and weights

        self.model_dir = modelling.materialize(run.base_model_uri)
        self.tokenizer = modelling.load_tokenizer(self.model_dir)
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

        set_seed(self.hp.seed, deterministic=not on_gpu)
        self.attention = modelling.choose_attention(hp.attention)
        base = modelling.load_base(self.model_dir, run.lora, precision, device=self.accelerator.device,
                                   attention=self.attention)
        if not run.lora.quantize_4bit and shape.strategy != "fsdp":
            base.to(self.accelerator.device)
        base.eval()
        self.packed = modelling.attention_honours_packing(base, base.config.vocab_size)
        self.flops_per_token = perf.flops_per_token(
            perf.body_parameters(base), base.config.num_hidden_layers, perf.attention_width(base.config),
            perf.mean_context([len(e) for e in self.train_set.examples]),
        )
        model = modelling.attach_lora(base, run.lora, gradient_checkpointing=hp.gradient_checkpointing)
        self.lora_config = model.peft_config["default"]
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                      lr=self.hp.learning_rate, weight_decay=0.0)
        self.scheduler = get_scheduler(SCHEDULERS[self.hp.lr_scheduler], optimizer,
                                       num_warmup_steps=self.hp.warmup_steps, num_training_steps=self.hp.total_steps)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.state = checkpoint.TrainState(step=0, epoch=0, step_in_epoch=0, trained_tokens=0)
        self.train_seconds = 0.0

    # -- helpers -----------------------------------------------------------------------

    def _unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    def _sum(self, *values: float | torch.Tensor) -> list[float]:
        """Sums values (numbers or device scalars) over all processes: one reduction and
        one read back to the host."""
        device = self.accelerator.device
        tensor = torch.stack([torch.as_tensor(v, device=device).detach().to(torch.float64) for v in values])
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
            loss += stats.loss_sum
            correct += stats.correct
            tokens += stats.tokens
        self.model.train()
        loss, correct, tokens = self._sum(loss, correct, tokens)
        return loss / max(tokens, 1), correct / max(tokens, 1)

    # -- resume ------------------------------------------------------------------------

    def restore(self, scratch: Path) -> bool:
        """Loads the newest complete checkpoint, if any; returns whether it did. Every rank
        reads the full state and keeps what it holds (all of it under DDP, its shard under
        FSDP), so a checkpoint of any world size resumes under any other."""
        restored = checkpoint.latest_checkpoint(self.store, scratch)
        if restored is None:
            return False
        model = self._unwrapped()
        optimizer_state = torch.load(restored.directory / "optimizer.pt", weights_only=False)
        trainable = restored.directory / checkpoint.TRAINABLE_FILE
        if trainable.exists():
            distributed.load_trainable_state(model, load_file(trainable))
            distributed.load_optimizer_state(model, self.optimizer, optimizer_state)
        else:  # written by a trainer before full-state checkpoints: one process, positional state
            set_peft_model_state_dict(model, load_file(restored.directory / "adapter_model.safetensors"))
            self.optimizer.load_state_dict(optimizer_state)
        self.scheduler.load_state_dict(torch.load(restored.directory / "scheduler.pt", weights_only=False))
        rank = self.accelerator.process_index
        if len(restored.rng_states) == self.accelerator.num_processes:
            checkpoint.set_rng_state(restored.rng_states[rank])
        else:  # a different world size: RNG streams cannot be continued, reseed per rank
            set_seed(self.hp.seed + restored.state.step + rank)
        self.state = restored.state
        if self.is_main:
            self.reporter.forget_after(restored.state.step)
            self.reporter.event(f"Resumed from checkpoint step-{restored.state.step} on "
                                f"{self.accelerator.num_processes} process(es)",
                                data={"step": restored.state.step, "world_size": self.accelerator.num_processes})
        return True

    def _checkpoint(self) -> None:
        model = self._unwrapped()
        trainable = distributed.trainable_state(model)
        optimizer_state = distributed.optimizer_state(model, self.optimizer)
        rng_states = gather_object([checkpoint.rng_state()])
        if self.is_main:
            self.reporter.flush()  # metrics up to this step are durable before the checkpoint counts
            checkpoint.save_checkpoint(self.store, self.state, model=model, trainable=trainable,
                                       optimizer_state=optimizer_state, scheduler=self.scheduler,
                                       rng_states=rng_states)
            checkpoint.prune(self.store, self.run_spec.checkpoints.keep_last)
            self.reporter.event(f"Checkpoint saved at step {self.state.step}", data={"step": self.state.step})
            self.reporter.flush()
        self.accelerator.wait_for_everyone()

    # -- training ----------------------------------------------------------------------

    def _train_step(self, indices: list[int]) -> tuple[dict, bool]:
        """One optimizer step; returns its metrics and whether any rank was asked to stop."""
        started = time.perf_counter()
        batches = self._batches(self.train_set.examples, indices)
        (step_targets,) = self._sum(sum(b.label_tokens for b in batches))
        scale = self.accelerator.num_processes / max(step_targets, 1.0)
        loss = correct = 0.0
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1
            with nullcontext() if sync else self.accelerator.no_sync(self.model):
                stats = token_stats(self.model, batch, self.accelerator.device)
                self.accelerator.backward(stats.loss_sum * scale)
            loss += stats.loss_sum.detach()
            correct += stats.correct
        self.accelerator.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss, correct, real, processed, stops = self._sum(
            loss, correct, sum(b.real_tokens for b in batches), sum(b.processed_tokens for b in batches),
            float(self.stop.requested),
        )
        self.train_seconds += time.perf_counter() - started
        return {
            "train_loss": loss / max(step_targets, 1.0),
            "train_mean_token_accuracy": correct / max(step_targets, 1.0),
            "packing_efficiency": real / max(processed, 1.0),
        }, stops > 0

    def _mfu(self, tokens_per_second: float) -> float | None:
        peak = perf.gpu_peak_flops()
        if peak is None:
            return None
        return tokens_per_second * self.flops_per_token / (peak * self.accelerator.num_processes)

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
        self.stop.defer()
        self.model.train()
        n = len(self.train_set.examples)
        order, order_epoch = None, -1
        valid_loss = None
        while self.state.step < hp.total_steps:
            epoch, in_epoch = divmod(self.state.step, hp.steps_per_epoch)
            if order_epoch != epoch:
                order, order_epoch = data.epoch_order(n, hp.seed, epoch), epoch
            indices = order[in_epoch * hp.batch_size : (in_epoch + 1) * hp.batch_size]
            record, stopping = self._train_step(indices)
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
            tokens_per_s = (self.state.trained_tokens - start_tokens) / max(self.train_seconds, 1e-9)
            record["tokens_per_second"] = tokens_per_s
            mfu = self._mfu(tokens_per_s)
            if mfu is not None:
                record["mfu"] = mfu
            if self.is_main:
                self.reporter.metrics(record, hp.total_steps)
                remaining = elapsed / (step - start_step) * (hp.total_steps - step)
                self.reporter.progress(TrainingProgress(
                    step=step, total_steps=hp.total_steps, epoch=step / hp.steps_per_epoch,
                    trained_tokens=self.state.trained_tokens, train_loss=record["train_loss"], valid_loss=valid_loss,
                    tokens_per_second=tokens_per_s, estimated_finish=datetime.now(UTC) + timedelta(seconds=remaining),
                ))
            if stopping or epoch_end or step % self.run_spec.checkpoints.every_n_steps == 0:
                self._checkpoint()
            if stopping:
                if self.is_main:
                    self.reporter.event(f"Stopped after step {step} on request; resuming continues from it",
                                        data={"step": step})
                    self.reporter.close()
                raise Preempted(f"stopped by SIGTERM after step {step}, checkpoint saved")
        return self._finish(tokens_per_s=(self.state.trained_tokens - start_tokens) / max(self.train_seconds, 1e-9))

    def _finish(self, *, tokens_per_s: float) -> TrainingResult:
        model = self._unwrapped()
        trainable = distributed.trainable_state(model)
        result = None
        if self.is_main:
            adapter_uri = checkpoint.save_final_adapter(self.store, model=model, trainable=trainable,
                                                        tokenizer=self.tokenizer)
            merged_uri = (checkpoint.save_merged_model(self.store, base_dir=self.model_dir,
                                                       lora_config=self.lora_config, trainable=trainable,
                                                       tokenizer=self.tokenizer)
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
                performance=self._performance(tokens_per_s),
            )
            self.reporter.event(f"The job has successfully completed; the model is {result.fine_tuned_model}",
                                data={"trained_tokens": result.trained_tokens})
            self.reporter.write_result(result)
            self.reporter.progress(TrainingProgress(
                status="succeeded", step=self.state.step, total_steps=self.hp.total_steps,
                epoch=float(self.hp.n_epochs), trained_tokens=self.state.trained_tokens,
            ), force=True)
            self.reporter.close()
        self.accelerator.wait_for_everyone()
        return result

    def _performance(self, tokens_per_s: float) -> TrainingPerformance:
        return TrainingPerformance(
            tokens_per_second=tokens_per_s,
            flops_per_token=self.flops_per_token,
            mfu=self._mfu(tokens_per_s),
            peak_memory_bytes=torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
            attention=self.attention,
            packed=self.packed,
            world_size=self.accelerator.num_processes,
            strategy=self.run_spec.distributed.strategy,
        )


def _check_shape(run: TrainingRun, *, on_gpu: bool) -> None:
    """The run's distribution must be one this machine and method can do."""
    if run.distributed.strategy != "fsdp":
        return
    if not on_gpu:
        raise TrainerError("unsupported_hardware", "FSDP shards the model across GPUs and needs CUDA; "
                           "on CPUs use distributed.strategy ddp", param="distributed.strategy")
    if run.lora.quantize_4bit:
        raise TrainerError("unsupported_distributed_strategy", "FSDP cannot shard QLoRA's 4-bit base model; "
                           "use ddp (QLoRA already fits large models on one GPU)", param="distributed.strategy")


def train(run: TrainingRun, *, stop: distributed.StopRequest | None = None,
          progress_interval_s: float = 2.0) -> TrainingResult:
    return Trainer(run, stop=stop, progress_interval_s=progress_interval_s).run()
