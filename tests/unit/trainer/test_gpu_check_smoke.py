"""The GPU check's own code (tests/gpu), run here on a tiny model and a CPU.

A GPU machine is lent for one prepared run at a time, so a bug in the script must show up
here, not there: smoke mode runs every phase that a CPU can (GPU-only ones are recorded
as skipped with their reason), through the trainer's real entry point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tests.gpu import gpu_check, synthetic

REPO = Path(__file__).resolve().parents[3]
PHASES = [
    "environment", "matmul_peak", "model", "dataset", "packing_equivalence", "lora_bf16",
    "lora_bf16_gradient_checkpointing", "qlora_merge", "merged_model", "ddp_2_processes", "fsdp_launcher",
]


def test_smoke_run_measures_every_cpu_phase(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    # One thread per process: on the shared two-core machine more spin-wait against each other.
    done = subprocess.run(
        [sys.executable, "-m", "tests.gpu.gpu_check", "--smoke", "--out", str(out),
         "--tokenizer", str(tiny_model_dir), "--budget-s", "240"],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((out / "gpu-check.json").read_text())
    phases = report["phases"]
    assert list(phases) == PHASES
    assert report["finished"] and report["summary"] == {"ok": 6, "failed": 0, "skipped": 5}

    run = phases["lora_bf16_gradient_checkpointing"]
    assert run["tokens_per_s"] > 0 and run["flops_per_token"] > 0
    assert run["steps"] == gpu_check.SMOKE_PROFILE.steps and run["trained_tokens"] == phases["dataset"]["tokens"]
    packing = phases["packing_equivalence"]
    assert packing["packed_rows"] < packing["examples"]  # the examples really shared rows
    assert packing["relative_difference"] < 0.01
    assert phases["merged_model"]["logits_finite"]
    for name in ("matmul_peak", "lora_bf16", "qlora_merge", "ddp_2_processes", "fsdp_launcher"):
        assert phases[name]["status"] == "skipped" and phases[name]["reason"]
    assert "phase merged_model: ok" in (out / "gpu-check.log").read_text()


def test_phases_after_the_budget_are_recorded_as_skipped(tmp_path):
    assert gpu_check.main(["--smoke", "--out", str(tmp_path), "--budget-s", "0"]) == 0
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert list(report["phases"]) == PHASES
    assert all("time budget" in phase["reason"] for phase in report["phases"].values())


def test_parameter_counts_match_the_model_and_peft(tiny_tokenizer):
    """The FLOPs formula's inputs, checked on Llama-3.2-1B's shape (meta device: no memory)."""
    config = synthetic.model_config(synthetic.LLAMA_3_2_1B, tiny_tokenizer)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    counts = synthetic.parameter_count(config)
    assert counts["total"] == sum(p.numel() for p in model.parameters()) == 1_235_814_400
    assert counts["blocks"] == sum(p.numel() for p in model.model.layers.parameters())
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    lora = sum(p.numel() for name, p in peft_model.named_parameters() if "lora_" in name)
    assert synthetic.lora_parameter_count(config, 8) == lora
