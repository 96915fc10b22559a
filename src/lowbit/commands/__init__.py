"""The ``lowbit`` subcommands, one module per command (``lowbit.cli`` dispatches to them).

Each module exposes ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; it may
declare ``REQUIRES`` (optional packages checked before any work starts). Commands are the
only place that trains, loads data and plots for a command line run; libraries never
import this package.
"""
