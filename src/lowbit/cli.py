"""The ``lowbit`` command line: one subcommand per module of :mod:`lowbit.commands`.

Each subcommand module exposes

- ``HELP``: a one-line description,
- ``add_arguments(parser: argparse.ArgumentParser) -> None``,
- ``run(args: argparse.Namespace) -> int``,
- optionally ``REQUIRES`` (import names of optional packages) and ``requires(args)`` (more, depending on
  the options), checked before any work starts, and ``RESUMES = True`` when a rerun continues an
  interrupted run.

A user's mistake (a missing or foreign file, a bad spec, a dataset that does not fit the model, a
missing package, Ctrl-C) is one line ``lowbit <cmd>: error: <message>`` on stderr and exit code 2
(130 for Ctrl-C); ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from typing import NoReturn, Sequence

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
    "sensitivity": "lowbit.commands.sensitivity",
}
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block): ``lowbit <cmd>: error: <message>``."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("lowbit")
    except Exception:  # noqa: BLE001 - running from a source tree that is not installed
        from . import __version__

        return __version__


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
    parser = _Parser(prog="lowbit", description="Low-bit quantization for PyTorch networks.")
    parser.add_argument("--version", action="version", version=f"lowbit {_version()}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, mod_name in _available().items():
        mod = importlib.import_module(mod_name)
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        # SUPPRESS: a subcommand without --debug must not reset the global one given before it
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error")
        p.set_defaults(_run=mod.run, _module=mod)
    return parser


def _needed(mod: object, args: argparse.Namespace) -> list[str]:
    need = list(getattr(mod, "REQUIRES", ()))
    extra = getattr(mod, "requires", None)
    if callable(extra):
        need += list(extra(args))
    return need


def _message(e: BaseException) -> str | None:
    """The one-line message for a user's mistake, or None for an internal error (a bug: traceback)."""
    from .commands._common import PACKAGES, missing_message

    if isinstance(e, ModuleNotFoundError):
        root = (e.name or "").split(".")[0]
        return missing_message(root) if root in PACKAGES else None
    if isinstance(e, ImportError):
        return str(e) if "pip install" in str(e) else None  # lowbit's own "needs X: pip install ..." errors
    if isinstance(e, (ValueError, TypeError, OSError)):
        text = str(e) or type(e).__name__
        if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
            text = f"{e.filename}: {text}"
        return " ".join(text.split("\n")).strip()
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lowbit`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    debug = bool(getattr(args, "debug", False))
    mod = args._module
    prog = f"lowbit {args.command}"
    from .commands._common import missing_message, missing_packages

    missing = missing_packages(_needed(mod, args))
    if missing:
        print(f"{prog}: error: {missing_message(missing[0])}", file=sys.stderr)
        return EXIT_USAGE
    from .progress import get_mode, set_mode

    mode = get_mode()  # --progress is for this command only (main() may be called again in one process)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        hint = "; rerun the same command to resume" if getattr(mod, "RESUMES", False) else ""
        print(f"{prog}: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - sorted into a user's mistake (one line) or a bug (traceback)
        msg = _message(e)
        if debug or msg is None:
            raise
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        set_mode(mode)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
