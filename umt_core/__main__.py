"""Command line: ``python -m umt_core <command> ...``.

Each command lives in the module that does the work; that module exposes
``register_cli(subparsers)``, which adds its sub-parser(s) with ``func`` set.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import exit_status

# Modules that provide commands, in the order `--help` lists them.
COMMAND_MODULES = [
    "umt_core.data.prepare",    # prep
    "umt_core.train",           # train
    "umt_core.reference",       # convert-reference
    "umt_core.generate.api",    # translate
    "umt_core.analysis",        # analyze-log
    "umt_core.evaluate",        # evaluate
    "umt_core.recordings",      # evaluate-recording
    "umt_core.study.pipeline",  # study
    "umt_core.study.goal",      # goal
    "umt_core.study.round_trip",  # round-trip
    "umt_core.study.seeds",       # seeds
    "umt_core.study.generalisation",  # generalisation
    "umt_core.latent_pitch",    # latent-pitch
    "umt_core.bench",           # bench train|generate|loader
]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's help ends with its default, unless the option is required or its
    help already says what None means ("(None: ...)")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required or (action.default is None and "(None:" in text):
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Every command's --help shows each option's default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m umt_core",
        description="Universal Music Translation Network study: data, training, analysis.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; exit code 0, 2 for a usage error, 1 for a failure (see
    `umt_core.errors`). Option values are checked by the parser, before any work."""
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except Exception as e:
        status = exit_status(e)
        if status is None:
            raise
        print(f"error: {status[1]}", file=sys.stderr)
        return status[0]
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
