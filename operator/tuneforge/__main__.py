"""`tuneforge <command>`: the one place that wires the components together."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _crds(args: argparse.Namespace) -> int:
    from tuneforge.api import crdgen

    for path in crdgen.write(Path(args.out), *(Path(chart) for chart in args.chart)):
        print(f"wrote {path}")
    return 0


def _dev(args: argparse.Namespace) -> int:
    from tuneforge.local import devstack

    state_dir = Path(args.state_dir)
    if args.down:
        return devstack.dev_down(state_dir)
    if args.detach:
        return devstack.dev_up(state_dir, args.port)
    return devstack.run_dev(state_dir, args.port)


def _gateway(args: argparse.Namespace) -> int:
    from tuneforge.config import settings
    from tuneforge.gateway.app import serve
    from tuneforge.gateway.settings import gateway_settings

    serve(args.host or settings().bind_host, args.port or gateway_settings().port)
    return 0


def _keys(args: argparse.Namespace) -> int:
    from tuneforge.gateway import keys

    return keys.main(args.action, namespace=args.namespace, scopes=args.scopes, description=args.description,
                     key=args.key, create_namespace=args.create_namespace)


def _operator(args: argparse.Namespace) -> int:
    from tuneforge.controllers.cli import main

    return main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuneforge", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    crds = commands.add_parser("crds", help="generate the CRD YAML from the API types")
    crds.add_argument("--out", default="crds", help="directory for the CRDs")
    crds.add_argument("--chart", action="append", default=[], help="also write into this directory")
    crds.set_defaults(func=_crds)

    dev = commands.add_parser("dev", help="run the platform locally")
    dev.add_argument("--state-dir", default=".dev", help="where the local platform keeps its state")
    dev.add_argument("--port", type=int, default=8000, help="gateway port on 127.0.0.1 (default: %(default)s)")
    dev_mode = dev.add_mutually_exclusive_group()
    dev_mode.add_argument("--detach", action="store_true", help="start in the background and return once ready")
    dev_mode.add_argument("--down", action="store_true", help="stop a platform started with --detach")
    dev.set_defaults(func=_dev)

    gateway = commands.add_parser("gateway", help="serve the OpenAI-compatible API")
    gateway.add_argument("--host", help="bind address (default: TUNEFORGE_BIND_HOST)")
    gateway.add_argument("--port", type=int, help="port (default: TUNEFORGE_GATEWAY_PORT or 8000)")
    gateway.set_defaults(func=_gateway)

    keys = commands.add_parser("keys", help="create, revoke or list API keys")
    keys.add_argument("action", choices=["create", "revoke", "list"])
    keys.add_argument("--namespace", help="tenant namespace the key acts in (create; filters list)")
    keys.add_argument("--scopes", default="*", help="comma-separated scopes, e.g. files:*,fine-tuning:read,chat")
    keys.add_argument("--description", default="", help="what the key is for")
    keys.add_argument("--key", help="the key, or its Secret name (revoke)")
    keys.add_argument("--create-namespace", action="store_true",
                      help="create the tenant namespace if it does not exist, enforcing Pod Security "
                           '"restricted" (create)')
    keys.set_defaults(func=_keys)
    from tuneforge.controllers.cli import add_arguments

    operator = commands.add_parser("operator", help="run the controllers (kopf)")
    add_arguments(operator)
    operator.set_defaults(func=_operator)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
