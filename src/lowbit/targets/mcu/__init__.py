"""Microcontroller target: integer-only C export that matches the NumPy reference bit for bit.

- :func:`export` (model -> C files), :func:`lower` (model -> :class:`IntProgram`),
- :mod:`~lowbit.targets.mcu.reference` (``run``, ``predict``, ``accuracy``: NumPy integers),
- :func:`memory_report` (flash and RAM bytes, checked against budgets).

The integer pipeline is described in :mod:`lowbit.targets.mcu.lower`.
"""
from . import reference
from .export import ExportResult, export, export_program, render
from .lower import AddOp, ComputeOp, IntProgram, PoolOp, lower
from .report import MemoryReport, memory_report, parse_bytes

__all__ = [
    "AddOp",
    "ComputeOp",
    "ExportResult",
    "IntProgram",
    "MemoryReport",
    "PoolOp",
    "export",
    "export_program",
    "lower",
    "memory_report",
    "parse_bytes",
    "reference",
    "render",
]
