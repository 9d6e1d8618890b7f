"""Command line: ``python -m umt_core <command> ...``.

Each command lives in the module that does the work; that module exposes
``register_cli(subparsers)``, which adds its sub-parser(s) with ``func`` set.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that provide commands, in the order `--help` lists them.
COMMAND_MODULES = [
    "umt_core.data.prepare",    # prep
    "umt_core.train",           # train
    "umt_core.reference",       # convert-reference
    "umt_core.generate.api",    # translate
    "umt_core.analysis",        # analyze-log
    "umt_core.evaluate",        # evaluate
    "umt_core.study.pipeline",  # study
    "umt_core.study.goal",      # goal
    "umt_core.bench",           # bench train|generate|loader
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m umt_core",
        description="Universal Music Translation Network study: data, training, analysis.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError) as e:
        # Errors meant for the user: one clear line, no traceback.
        print(f"error: {e}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
