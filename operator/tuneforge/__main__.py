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
    from tuneforge.local.controlplane import run_dev

    return run_dev(Path(args.state_dir))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuneforge", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    crds = commands.add_parser("crds", help="generate the CRD YAML from the API types")
    crds.add_argument("--out", default="crds", help="directory for the CRDs")
    crds.add_argument("--chart", action="append", default=[], help="also write into this directory")
    crds.set_defaults(func=_crds)

    dev = commands.add_parser("dev", help="run the platform locally")
    dev.add_argument("--state-dir", default=".dev", help="where the local platform keeps its state")
    dev.set_defaults(func=_dev)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
