"""`tuneforge-serve --run serving.json` as the Pod runs it: a separate process that binds
to TUNEFORGE_BIND_HOST, and a one-line JSON termination message when it cannot start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tuneforge.contracts import AdapterSource, ServingSpec

from tests.support.inference_servers import RunningServer, free_port, wait_until_healthy


def run_serve(spec_path: Path, tmp_path: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "TUNEFORGE_BIND_HOST": "127.0.0.1", "TUNEFORGE_CACHE_DIR": str(tmp_path / "cache"),
           "TUNEFORGE_TERMINATION_LOG": str(tmp_path / "termination-log")}
    return subprocess.Popen([sys.executable, "-m", "tuneforge_inference", "--run", str(spec_path)], env=env, **popen)


def test_serves_the_spec_with_the_cpu_engine(tiny_model_dir: Path, adapter_dirs, tmp_path: Path):
    spec = ServingSpec(deployment="d", namespace="ns", served_model_name="base", base_model_uri=str(tiny_model_dir),
                       adapters=[AdapterSource(name="alpha", uri=f"file://{adapter_dirs['alpha']}")], port=free_port())
    (tmp_path / "serving.json").write_text(spec.dump())
    process = run_serve(tmp_path / "serving.json", tmp_path)
    try:
        server = RunningServer(f"http://127.0.0.1:{spec.port}", spec)
        wait_until_healthy(server.base_url)
        client = server.client()
        assert {m.id for m in client.models.list()} == {"base", "alpha"}
        reply = client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert reply.usage.completion_tokens >= 1
    finally:
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)


def test_missing_adapter_fails_the_start_with_a_termination_message(tiny_model_dir: Path, tmp_path: Path):
    spec = ServingSpec(deployment="d", namespace="ns", served_model_name="base", base_model_uri=str(tiny_model_dir),
                       adapters=[AdapterSource(name="lost", uri=str(tmp_path / "no-such-adapter"))], port=free_port())
    (tmp_path / "serving.json").write_text(spec.dump())
    process = run_serve(tmp_path / "serving.json", tmp_path, stderr=subprocess.PIPE, text=True)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    error = json.loads((tmp_path / "termination-log").read_text())
    assert error["code"] == "model_fetch_failed"
    assert "lost" in error["message"] and "no-such-adapter" in error["message"]
    assert "no-such-adapter" in stderr
