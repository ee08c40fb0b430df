"""The ``cityseg-zoo`` command line: ``list | info | download | convert | predict | eval | benchmark``.

Each command lives in the module of its job (``hub``, ``predict``, ``evaluate``, ``benchmark``); a module exposes
``register(subparsers)``, which adds its sub-command(s) with ``set_defaults(run=function)``.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import CitysegZooError
from . import benchmark, evaluate, hub, predict

COMMAND_MODULES = (hub, predict, evaluate, benchmark)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cityseg-zoo", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except CitysegZooError as err:  # a user-facing problem: one clear line, no traceback
        print(f"cityseg-zoo {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
