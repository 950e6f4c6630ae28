"""The README's walkthrough, examples/quickstart.py, run as the README tells a user to run
it: in a shell that has sourced the dev stack's env file. A change that breaks the example
(or the API it shows) fails here instead of on a reader's laptop.

It fine-tunes the tiny catalog model for one epoch, the example's own fast path, so the run
costs about as much as test_walkthrough's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tuneforge.local.devstack import TINY_ID

pytestmark = pytest.mark.e2e

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.py"
STEPS = ["1. Upload the training set", f"2. Fine-tune {TINY_ID} (LoRA)", "3. Chat with the fine-tuned model",
         "4. Run a batch against it", "5. Download the output", "Done."]


def test_the_readme_walkthrough_runs_against_the_dev_stack(dev_stack, openai_client):
    script = f'source "{dev_stack.env_file}" && exec "{sys.executable}" "{QUICKSTART}" --model {TINY_ID} --epochs 1'
    run = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"

    positions = [run.stdout.find(step) for step in STEPS]
    assert -1 not in positions and positions == sorted(positions), run.stdout
    trained = re.search(r"fine-tuned model: (ft:\S+) \((\d+) tokens trained\)", run.stdout)
    assert trained, run.stdout
    model, tokens = trained.group(1), int(trained.group(2))
    job_id = model.rpartition(":")[2]
    assert model == f"ft:{TINY_ID}:{dev_stack.tenant}:people-json:{job_id}"
    assert tokens > 0
    assert openai_client.fine_tuning.jobs.retrieve(job_id).status == "succeeded"
    assert model in {m.id for m in openai_client.models.list().data}

    assert re.search(r"'Grace is 85 and lives in New York\.' -> ", run.stdout), run.stdout
    downloads = re.findall(r"^  '\w+ is \d+ and lives in [\w ]+\.' -> ", run.stdout, re.M)
    assert len(downloads) == 1 + 8, run.stdout
