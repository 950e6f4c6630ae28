"""`tuneforge-serve --run serving.json`: serve one base model and its LoRA adapters.

The spec's engine decides how: `vllm` fetches the adapters into the local cache and
execs `vllm serve` (GPU); `cpu` runs tuneforge's own engine in this process. Either way
the server listens on `settings().bind_host` and `ServingSpec.port`. A failure to start
is written as one JSON line to the termination log, where the controller reads it into
the ModelDeployment's status.

`tuneforge-serve --adapter-loader --run serving.json` runs the serving Pod's adapter-loader
sidecar instead (see adapter_loader.py), on `ServingSpec.adapter_loader_port`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from tuneforge.config import settings
from tuneforge.contracts import RUN_FILE, Engine, ErrorInfo, ServingSpec
from tuneforge.serving_auth import pod_token

from tuneforge_inference.fetch import FetchError
from tuneforge_inference.launcher import LaunchError


def _serve_vllm(spec: ServingSpec) -> None:
    from tuneforge_inference.fetch import fetch_adapter, fetch_base_model
    from tuneforge_inference.launcher import api_key_env, exec_vllm, vllm_command

    auth = api_key_env(pod_token())
    model = fetch_base_model(spec.base_model_uri)
    adapters = {a.name: fetch_adapter(a.name, a.uri) for a in spec.adapters}
    argv, env = vllm_command(spec, model, adapters, settings().bind_host)
    exec_vllm(argv, {**env, **auth})


def _serve_cpu(spec: ServingSpec) -> None:
    from tuneforge_inference.cpu.server import build_app, uvicorn_server

    uvicorn_server(build_app(spec, token=pod_token()), settings().bind_host, spec.port).run()


def _serve_adapter_loader(run_file: str) -> None:
    from tuneforge_inference.adapter_loader import serve

    serve(run_file, settings().bind_host)


def _report(code: str, message: str) -> None:
    print(f"tuneforge-serve: {message}", file=sys.stderr)
    try:
        settings().termination_log.write_text(ErrorInfo(code=code, message=message).model_dump_json() + "\n")
    except OSError:
        pass  # no termination log outside a Pod; stderr has it


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tuneforge-serve", description=__doc__)
    parser.add_argument("--run", default=RUN_FILE, help="the ServingSpec JSON file")
    parser.add_argument("--adapter-loader", action="store_true",
                        help="run the adapter-loader sidecar of the spec's engine instead of the engine")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        spec = ServingSpec.load(args.run)
        if args.adapter_loader:
            _serve_adapter_loader(args.run)
        elif spec.engine is Engine.vllm:
            _serve_vllm(spec)
        else:
            _serve_cpu(spec)
    except FetchError as exc:
        _report("model_fetch_failed", str(exc))
        return 1
    except LaunchError as exc:
        _report("invalid_serving_spec", str(exc))
        return 1
    except (OSError, ValueError) as exc:
        _report("serving_failed", f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
