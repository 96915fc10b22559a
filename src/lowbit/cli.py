"""The ``lowbit`` command line: one subcommand per module, discovered by name.

Each subcommand lives in its own module exposing

- ``HELP``: a one-line description,
- ``add_arguments(parser: argparse.ArgumentParser) -> None``,
- ``run(args: argparse.Namespace) -> int``.

A command whose module is not installed is simply not listed.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from typing import Sequence

# subcommand -> module implementing it
COMMANDS: dict[str, str] = {
    "demo": "lowbit.commands.demo",
    "tour": "lowbit.commands.tour",
    "quantize": "lowbit.commands.quantize",
    "train": "lowbit.commands.train",
    "eval": "lowbit.commands.eval",
    "snn": "lowbit.commands.snn",
    "export-c": "lowbit.commands.export_c",
    "export-onnx": "lowbit.commands.export_onnx",
    "cim": "lowbit.commands.cim",
    "share": "lowbit.commands.share",
    "quantize-checkpoint": "lowbit.commands.quantize_checkpoint",
}


def _available() -> dict[str, str]:
    out = {}
    for name, mod in COMMANDS.items():
        try:
            if importlib.util.find_spec(mod) is not None:
                out[name] = mod
        except ModuleNotFoundError:
            pass
    return out


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available subcommand."""
    parser = argparse.ArgumentParser(prog="lowbit", description="Low-bit quantization for PyTorch networks.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod_name in _available().items():
        mod = importlib.import_module(mod_name)
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lowbit`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"lowbit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
