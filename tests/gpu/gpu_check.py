"""`python -m tests.gpu.gpu_check --out DIR`: what the trainer does on a real GPU.

Builds a randomly initialised Llama-3.2-1B-shaped model and a synthetic chat dataset (no
network), then trains through the trainer's own entry point (`python -m
tuneforge_trainer --run run.json`, one subprocess per run, file:// URIs): bf16 LoRA at
sequence length 2048, the same with gradient checkpointing, QLoRA with a merged model,
and two processes when there are two GPUs. Beside the runs it measures the device's
bf16 matmul peak (for MFU), checks in-process that packing examples into shared rows
gives the loss of each example alone, and that the merged model loads and gives finite
logits.

Device time is scarce and a run may be cut short, so every phase is recorded as it ends
(`gpu-check.json` is rewritten after each), a failing phase is recorded with its error
and the next one runs, and phases that would start after the time budget are recorded as
skipped. `--smoke` runs the same code on a tiny model on CPU (GPU-only phases skipped
with their reason), which is how the unit tests keep this script working.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.gpu import measure, synthetic
from tests.gpu.bundle import tree_bytes

REPORT_FILE = "gpu-check.json"
LOG_FILE = "gpu-check.log"
MIN_PHASE_S = 5.0
PACKING_TOLERANCE = 0.01
PACKAGES = ("torch", "transformers", "accelerate", "peft", "bitsandbytes", "pydantic", "safetensors", "tokenizers")


@dataclass(frozen=True)
class Profile:
    """The sizes of one mode: the model's shape, the sequence length and how much data."""

    name: str
    shape: dict
    max_seq_length: int
    batch_size: int
    steps: int
    min_words: int
    max_words: int
    packing_examples: int
    gpu: bool


GPU_PROFILE = Profile("gpu", synthetic.LLAMA_3_2_1B, max_seq_length=2048, batch_size=32, steps=40,
                      min_words=60, max_words=1300, packing_examples=16, gpu=True)
"""40 steps of 32 examples (100 to 1,500 tokens, about 16k tokens in 8 packed 2048-token
rows a step): long enough that the first step's warm-up hardly moves tokens/s, short
enough for three runs in a few minutes."""

SMOKE_PROFILE = Profile("smoke", synthetic.SMOKE_SHAPE, max_seq_length=128, batch_size=8, steps=4,
                        min_words=8, max_words=80, packing_examples=8, gpu=False)


class Skipped(Exception):
    """A phase that cannot run here; the message is the reason."""


class Failed(Exception):
    """A phase that ran and failed; `details` are recorded beside the message."""

    def __init__(self, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


def release_memory() -> None:
    """Returns cached GPU memory, so the trainer subprocesses (and the device-wide memory
    samples taken while they run) do not share the device with this process's leftovers."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def package_version(name: str) -> str | None:
    """The version of the module Python actually imports (PYTHONPATH may shadow an
    installed distribution), or why it cannot be imported."""
    try:
        return importlib.import_module(name).__version__
    except ImportError:
        return None
    except Exception as exc:  # bitsandbytes, for one, fails on import when its CUDA library does not load
        return f"import failed: {type(exc).__name__}: {exc}"


def output_tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.splitlines()[-lines:])


class GpuCheck:
    """One check: runs the phases in order and keeps the report on disk up to date."""

    def __init__(self, out: Path, profile: Profile, *, tokenizer_dir: Path, budget_s: float, work: Path) -> None:
        self.out, self.profile, self.tokenizer_dir, self.work = out, profile, tokenizer_dir, work
        self.started = time.monotonic()
        self.deadline = self.started + budget_s
        self.log = self._logger()
        self.report: dict = {
            "check": "tuneforge gpu-check",
            "mode": profile.name,
            "started_at": datetime.now(UTC).isoformat(),
            "budget_s": budget_s,
            "finished": False,
            "flops_per_token_formula": measure.FLOPS_PER_TOKEN_FORMULA,
            "phases": {},
        }
        self.tokenizer = None
        self.config = None
        self.model_dir: Path | None = None
        self.train_file: Path | None = None
        self.examples: list | None = None
        self.data_stats: dict | None = None
        self.peak_flops: float | None = None
        self.datasheet_flops: float | None = None
        self.merged_dir: Path | None = None

    # -- bookkeeping -------------------------------------------------------------------

    def _logger(self) -> logging.Logger:
        log = logging.getLogger("gpu_check")
        log.setLevel(logging.INFO)
        for handler in list(log.handlers):  # a previous check in this process (the tests)
            handler.close()
            log.removeHandler(handler)
        formatter = logging.Formatter("%(asctime)s %(message)s")
        for handler in (logging.FileHandler(self.out / LOG_FILE, mode="w"), logging.StreamHandler(sys.stderr)):
            handler.setFormatter(formatter)
            log.addHandler(handler)
        return log

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def write_report(self) -> None:
        """Atomically, so a check killed mid-write still leaves the previous report."""
        self.report["elapsed_s"] = round(time.monotonic() - self.started, 1)
        statuses = [p["status"] for p in self.report["phases"].values()]
        self.report["summary"] = {s: statuses.count(s) for s in ("ok", "failed", "skipped")}
        tmp = self.out / f".{REPORT_FILE}.tmp"
        tmp.write_text(json.dumps(self.report, indent=1, default=str) + "\n")
        os.replace(tmp, self.out / REPORT_FILE)

    def phase(self, name: str, body: Callable[[], dict]) -> None:
        """Runs one phase and records its outcome whatever happens."""
        started = time.monotonic()
        if self.remaining() < MIN_PHASE_S:
            record = {"status": "skipped", "reason": f"time budget of {self.report['budget_s']:.0f} s exhausted"}
        else:
            self.log.info("phase %s: starting (%.0f s of budget left)", name, self.remaining())
            try:
                record = {"status": "ok", **body()}
            except Skipped as exc:
                record = {"status": "skipped", "reason": str(exc)}
            except Failed as exc:
                record = {"status": "failed", "error": str(exc), **exc.details}
            except Exception as exc:
                record = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                          "traceback": output_tail(traceback.format_exc())}
            finally:
                release_memory()
        record["seconds"] = round(time.monotonic() - started, 2)
        self.log.info("phase %s: %s %s", name, record["status"], record.get("reason") or record.get("error") or "")
        self.report["phases"][name] = record
        self.write_report()

    def run(self) -> bool:
        """All phases; True when none failed."""
        for name, body in self.phases():
            self.phase(name, body)
        self.report["finished"] = True
        self.write_report()
        return self.report["summary"]["failed"] == 0

    def phases(self) -> list[tuple[str, Callable[[], dict]]]:
        return [
            ("environment", self.environment),
            ("matmul_peak", self.matmul_peak),
            ("model", self.build_model),
            ("dataset", self.dataset),
            ("packing_equivalence", self.packing_equivalence),
            ("lora_bf16", self.lora),
            ("lora_bf16_gradient_checkpointing", self.lora_checkpointed),
            ("qlora_merge", self.qlora),
            ("merged_model", self.merged_model),
            ("ddp_2_processes", self.two_processes),
            ("fsdp_launcher", self.fsdp),
        ]

    def device(self) -> torch.device:
        return torch.device("cuda" if self.profile.gpu else "cpu")

    def require_gpu(self) -> None:
        if not self.profile.gpu:
            raise Skipped("GPU only: smoke mode runs on CPU")
        if not torch.cuda.is_available():
            raise Skipped("GPU only: no CUDA device")

    def require(self, **prerequisites) -> None:
        missing = [name for name, value in prerequisites.items() if value is None]
        if missing:
            raise Skipped(f"needs the {' and '.join(missing)} of an earlier phase, which did not complete")

    # -- phases ------------------------------------------------------------------------

    def environment(self) -> dict:
        """Versions and the transformers API the trainer relies on: the GPU machine may run
        older packages than the image pins, and a missing method fails a run late."""
        import tuneforge_trainer.__main__  # noqa: F401  (the trainer's whole import path)

        return {
            "python": platform.python_version(),
            "packages": {name: package_version(name) for name in PACKAGES},
            "torch_cuda": torch.version.cuda,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        }

    def matmul_peak(self) -> dict:
        self.require_gpu()
        result = measure.matmul_peak(self.device())
        self.peak_flops = result["peak_flops"]
        name = torch.cuda.get_device_name(0)
        self.datasheet_flops = measure.datasheet_peak(name)
        return {**result, "device": name, "datasheet_peak_flops": self.datasheet_flops}

    def build_model(self) -> dict:
        tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir)
        if tokenizer.chat_template is None:
            raise Failed(f"the tokenizer at {self.tokenizer_dir} has no chat template")
        config = synthetic.model_config(self.profile.shape, tokenizer)
        dtype = torch.bfloat16 if self.profile.gpu else torch.float32
        dest = self.work / "model"
        synthetic.build_model(dest, config, tokenizer, dtype=dtype, device=self.device())
        self.tokenizer, self.config, self.model_dir = tokenizer, config, dest
        return {
            "shape": {k: v for k, v in self.profile.shape.items() if k != "rope_parameters"},
            "vocab_size": config.vocab_size,
            "parameters": synthetic.parameter_count(config),
            "dtype": str(dtype),
            "bytes_on_disk": tree_bytes(dest),
        }

    def dataset(self) -> dict:
        """Writes the JSONL and tokenizes it with the trainer's own code, for the numbers the
        FLOPs formula needs (attention's effective length, the share of target tokens)."""
        self.require(tokenizer=self.tokenizer)
        from tuneforge_trainer import data

        p = self.profile
        path = synthetic.write_chat_jsonl(self.work / "train.jsonl", p.steps * p.batch_size,
                                          min_words=p.min_words, max_words=p.max_words)
        tokenized = data.load_tokenized(path.as_uri(), self.tokenizer, p.max_seq_length, min_examples=1,
                                        param="training_file")
        lengths = [len(e) for e in tokenized.examples]
        targets = sum(int((e.targets != data.IGNORE).sum()) for e in tokenized.examples)
        order = data.epoch_order(len(lengths), 0, 0)
        rows = [len(data.pack_rows([lengths[i] for i in order[s * p.batch_size:(s + 1) * p.batch_size]],
                                   p.max_seq_length)) for s in range(p.steps)]
        self.train_file, self.examples = path, tokenized.examples
        self.data_stats = {"s_eff": sum(n * n for n in lengths) / sum(lengths), "f_target": targets / sum(lengths)}
        return {
            "examples": len(lengths),
            "tokens": sum(lengths),
            "target_tokens": targets,
            "truncated": tokenized.n_truncated,
            "length_min_mean_max": [min(lengths), sum(lengths) / len(lengths), max(lengths)],
            "packed_rows_per_step": sum(rows) / len(rows),
            **self.data_stats,
        }

    def packing_equivalence(self) -> dict:
        """Loss of the same examples packed into shared rows and each in its own row, on the
        model as the trainer loads it; a third pass with positions that do not restart
        (examples attend to each other) shows what a broken mask would change."""
        self.require(model=self.model_dir, dataset=self.examples)
        from tuneforge.contracts import LoraSettings

        from tuneforge_trainer import data
        from tuneforge_trainer import model as modelling

        device = self.device()
        base = modelling.load_base(self.model_dir, LoraSettings(), modelling.choose_precision(), device=device,
                                   attention=modelling.choose_attention("auto"))
        base.to(device).eval()
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        examples = self.examples[: self.profile.packing_examples]

        def batches(packed: bool) -> list:
            return data.step_batches(examples, range(len(examples)), capacity=self.profile.max_seq_length,
                                     micro_batch_size=1, pad_id=pad_id, packed=packed)

        packed_rows = batches(True)
        with torch.no_grad():
            packed = self._mean_loss(base, packed_rows)
            alone = self._mean_loss(base, batches(False))
            leaked = self._mean_loss(base, [self._without_restarts(b) for b in packed_rows])
            probe = modelling.attention_honours_packing(base, base.config.vocab_size)
        relative = abs(packed - alone) / abs(alone)
        record = {
            "examples": len(examples),
            "packed_rows": len(packed_rows),
            "packed_loss": packed,
            "unpacked_loss": alone,
            "relative_difference": relative,
            "tolerance": PACKING_TOLERANCE,
            "leak_control_relative_difference": abs(leaked - alone) / abs(alone),
            "trainer_probe_packs": probe,
            "attention_implementation": getattr(base.config, "_attn_implementation", None),
            "dtype": str(base.dtype),
        }
        if relative >= PACKING_TOLERANCE:
            raise Failed(f"packed loss differs from unpacked by {relative:.2%}", record)
        return record

    def lora(self) -> dict:
        if not self.profile.gpu:
            raise Skipped("smoke mode: the gradient-checkpointing run covers the same code (a trainer "
                          "subprocess costs most of the smoke test's time)")
        return self.train("lora_bf16")

    def lora_checkpointed(self) -> dict:
        """In smoke mode this run also merges its adapter (QLoRA, the merging run on a GPU,
        cannot run on a CPU), so the merged-model phase is exercised there too."""
        return self.train("lora_bf16_gradient_checkpointing", gradient_checkpointing=True,
                          merge=not self.profile.gpu)

    def qlora(self) -> dict:
        self.require_gpu()
        return self.train("qlora_merge", quantize_4bit=True, merge=True)

    def two_processes(self) -> dict:
        self.require_gpu()
        count = torch.cuda.device_count()
        if count < 2:
            raise Skipped(f"needs 2 CUDA devices, found {count}")
        return self.train("ddp_2_processes", processes=2)

    def fsdp(self) -> dict:
        """FSDP2 through torchrun and accelerate's plugin, on every GPU there is (one is
        enough to run the launcher, the sharded load and the collective checkpoint path)."""
        self.require_gpu()
        return self.train("fsdp_launcher", processes=torch.cuda.device_count(), strategy="fsdp")

    def merged_model(self) -> dict:
        """The merged model loads with plain transformers and gives finite logits."""
        self.require(merged_model=self.merged_dir)
        device = self.device()
        model = AutoModelForCausalLM.from_pretrained(self.merged_dir, dtype="auto", device_map={"": device})
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": "Summarise the plan in one line."}],
                                                  tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids.to(device)
        with torch.no_grad():
            logits = model(input_ids=ids).logits.float()
        record = {
            "path": str(self.merged_dir),
            "quantized": getattr(model.config, "quantization_config", None) is not None,
            "weight_dtypes": sorted({str(p.dtype) for p in model.parameters()}),
            "bytes_on_disk": tree_bytes(self.merged_dir),
            "logits_finite": bool(torch.isfinite(logits).all()),
            "logits_abs_max": logits.abs().max().item(),
        }
        if not record["logits_finite"]:
            raise Failed("the merged model gives non-finite logits", record)
        return record

    # -- training runs -----------------------------------------------------------------

    @staticmethod
    def _mean_loss(model, batches) -> float:
        from tuneforge_trainer.objective import token_stats

        device = next(model.parameters()).device
        loss = tokens = 0.0
        for batch in batches:
            stats = token_stats(model, batch, device)
            loss += stats.loss_sum.item()
            tokens += stats.tokens
        return loss / tokens

    @staticmethod
    def _without_restarts(batch):
        from tuneforge_trainer import data

        positions = torch.arange(batch.input_ids.shape[1]).expand_as(batch.input_ids).clone()
        return data.Batch(batch.input_ids, positions, batch.targets, batch.real_tokens)

    def train(self, name: str, *, gradient_checkpointing: bool = False, quantize_4bit: bool = False,
              merge: bool = False, processes: int = 1, strategy: str = "ddp") -> dict:
        """One trainer run through its command line; performance from its result.json."""
        self.require(model=self.model_dir, dataset=self.train_file)
        run_dir = self.work / "runs" / name
        shutil.rmtree(run_dir, ignore_errors=True)  # a reused --work must not resume an old run
        run_dir.mkdir(parents=True)
        spec = self._run_spec(name, run_dir / "out", gradient_checkpointing=gradient_checkpointing,
                              quantize_4bit=quantize_4bit, merge=merge, processes=processes, strategy=strategy)
        (run_dir / "run.json").write_text(spec.dump())
        returncode, wall_s, monitor = self._spawn_trainer(name, run_dir)
        if returncode != 0:
            metrics = self._metrics(run_dir / "out")
            raise Failed(self._failure_message(returncode), {
                "returncode": returncode,
                "wall_s": round(wall_s, 1),
                "termination_message": self._read(run_dir / "termination.log"),
                "output_tail": output_tail(self._read(run_dir / "trainer.log") or ""),
                # A run that fails after training (publishing, merging) still measured its steps.
                "last_step_metrics": metrics[-1] if metrics else None,
                "device_memory_peak_bytes": monitor.peak_bytes,
            })
        result = json.loads((run_dir / "out" / "result.json").read_text())
        if merge:
            self.merged_dir = run_dir / "out" / "merged"
        return self._performance(result, monitor, wall_s, run_dir / "out", world_size=processes,
                                 lora_rank=spec.lora.rank)

    def _failure_message(self, returncode: int | None) -> str:
        if returncode is None:
            return f"the trainer was stopped at the time budget ({self.report['budget_s']:.0f} s)"
        return f"the trainer exited with status {returncode}"

    @staticmethod
    def _read(path: Path) -> str | None:
        return path.read_text(errors="replace").strip() if path.exists() else None

    def _run_spec(self, name: str, output: Path, *, gradient_checkpointing: bool, quantize_4bit: bool,
                  merge: bool, processes: int, strategy: str = "ddp"):
        """A TrainingRun validated by the contract itself, so a changed contract fails here
        with pydantic's message rather than as an `invalid_run_spec` exit."""
        from tuneforge.contracts import TrainingRun

        p = self.profile
        spec = {
            "job_id": f"ftjob-gpu-check-{name.replace('_', '-')}",
            "namespace": "gpu-check",
            "base_model": "llama-3.2-1b-shape-random" if p.gpu else "tiny-random",
            "base_model_uri": self.model_dir.as_uri(),
            "training_file": self.train_file.as_uri(),
            "output_uri": output.as_uri(),
            "fine_tuned_model": f"ft:gpu-check:{name}",
            "lora": {"quantize_4bit": quantize_4bit},
            "hyperparameters": {
                "n_epochs": 1, "batch_size": p.batch_size, "learning_rate_multiplier": 1.0,
                "max_seq_length": p.max_seq_length, "seed": 0, "gradient_checkpointing": gradient_checkpointing,
            },
            "checkpoints": {"every_n_steps": 100_000, "keep_last": 1},
            "merge_adapter": merge,
        }
        if processes > 1 or strategy != "ddp":
            spec["distributed"] = {"processes_per_node": processes, "strategy": strategy}
        return TrainingRun.model_validate(spec)

    def _trainer_env(self, run_dir: Path) -> dict[str, str]:
        """The trainer's environment: its termination log and model cache inside the run,
        and the measured peak as its MFU reference (perf.PEAK_ENV) instead of the data sheet."""
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "TUNEFORGE_TERMINATION_LOG": str(run_dir / "termination.log"),
            "TUNEFORGE_CACHE_DIR": str(self.work / "cache"),
        }
        if self.peak_flops:
            env["TUNEFORGE_GPU_PEAK_TFLOPS"] = f"{self.peak_flops / 1e12:.1f}"
        return env

    def _spawn_trainer(self, name: str, run_dir: Path) -> tuple[int | None, float, measure.MemoryMonitor]:
        """Runs the trainer in its own process group (so a budget stop also ends the
        workers it may start); returns its exit status (None when stopped), wall time and
        the device memory it held."""
        command = [sys.executable, "-m", "tuneforge_trainer", "--run", str(run_dir / "run.json")]
        started = time.monotonic()
        with open(run_dir / "trainer.log", "wb") as log, measure.MemoryMonitor() as monitor:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self._trainer_env(run_dir),
                                       start_new_session=True)
            try:
                returncode = process.wait(timeout=max(self.remaining(), 1.0))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                returncode = None
        wall_s = time.monotonic() - started
        self.log.info("trainer output of %s:\n%s", name, self._read(run_dir / "trainer.log"))
        return returncode, wall_s, monitor

    def _performance(self, result: dict, monitor: measure.MemoryMonitor, wall_s: float, output: Path, *,
                     world_size: int, lora_rank: int) -> dict:
        """Tokens/s from the trainer's own report (optimizer steps only) when it has one,
        else from its last step metrics, else trained tokens over the whole wall time."""
        performance = result.get("performance") or {}
        metrics = self._metrics(output)
        if performance:
            tokens_per_s, source = performance["tokens_per_second"], "result.json performance"
        elif metrics and metrics[-1].get("tokens_per_second"):
            tokens_per_s, source = metrics[-1]["tokens_per_second"], "last step metrics"
        else:
            tokens_per_s, source = result["trained_tokens"] / wall_s, "trained tokens / wall time (includes start-up)"
        flops = measure.flops_per_token(
            self.config, n_blocks=synthetic.parameter_count(self.config)["blocks"],
            n_lora=synthetic.lora_parameter_count(self.config, lora_rank), **self.data_stats)
        trainer_peak = performance.get("peak_memory_bytes")
        return {
            "tokens_per_s": tokens_per_s,
            "tokens_per_s_source": source,
            "flops_per_token": flops,
            "mfu": self._mfu(tokens_per_s, flops, world_size, self.peak_flops),
            "mfu_vs_datasheet": self._mfu(tokens_per_s, flops, world_size, self.datasheet_flops),
            "mfu_missing_because": None if self.peak_flops else "no measured peak: matmul_peak did not run",
            "trainer_mfu": performance.get("mfu"),
            "peak_memory_bytes": trainer_peak if trainer_peak is not None else monitor.peak_bytes,
            "peak_memory_source": "result.json performance" if trainer_peak is not None else
            "device-wide samples" if monitor.peak_bytes else None,
            "device_memory_peak_bytes": monitor.peak_bytes,
            "wall_s": round(wall_s, 1),
            "world_size": world_size,
            "steps": result["steps"],
            "trained_tokens": result["trained_tokens"],
            "train_loss_first_last": [metrics[0]["train_loss"], metrics[-1]["train_loss"]] if metrics else None,
            "trainer_performance": performance or None,
        }

    @staticmethod
    def _metrics(output: Path) -> list[dict]:
        """The run's step metrics, through the job directory's own reader."""
        from tuneforge.jobfiles import JobFiles
        from tuneforge.storage import ArtifactStore

        return list(JobFiles(ArtifactStore(output.as_uri())).metrics_by_step().values())

    @staticmethod
    def _mfu(tokens_per_s: float, flops_per_token: float, world_size: int, peak: float | None) -> float | None:
        return tokens_per_s * flops_per_token / (world_size * peak) if peak else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help=f"directory for {REPORT_FILE} and {LOG_FILE}")
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU; GPU-only phases skipped")
    parser.add_argument("--tokenizer", type=Path, default=Path(".gpu-bundle/tokenizer"),
                        help="tokenizer directory with a chat template (make gpu-check-bundle writes one)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="phases that would start later are skipped")
    parser.add_argument("--work", type=Path, help="scratch directory (default: a new temporary one, removed after)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="tuneforge-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    profile = SMOKE_PROFILE if args.smoke else GPU_PROFILE
    try:
        check = GpuCheck(args.out, profile, tokenizer_dir=args.tokenizer, budget_s=args.budget_s, work=work)
        return 0 if check.run() else 1
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
