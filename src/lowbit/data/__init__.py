"""Offline datasets. ``get_dataset(name_or_path)``: ``digits`` (default), ``mnist``, ``mnist1d``, or a path.

Spiking data lives in :mod:`lowbit.data.spiking` (imported directly).
"""
from __future__ import annotations

from pathlib import Path

from .images import Dataset, load_digits, load_files, load_mnist, loader, make_mnist1d, read_idx

__all__ = ["Dataset", "get_dataset", "dataset_names", "load_digits", "load_files", "load_mnist", "loader", "make_mnist1d", "read_idx"]

_NAMED = {"digits": load_digits, "mnist": load_mnist, "mnist1d": make_mnist1d}


def dataset_names() -> list[str]:
    """Names accepted by :func:`get_dataset` (besides a path)."""
    return list(_NAMED)


def get_dataset(name: str, *, seed: int = 0) -> Dataset:
    """A dataset by name (``digits``, ``mnist``, ``mnist1d``) or from your files (a folder or .npz path)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"data must be one of {dataset_names()} or a path, got {name!r}")
    if name in _NAMED:
        return _NAMED[name](seed=seed)
    if "/" in name or "." in name or Path(name).exists():
        return load_files(name)
    raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(dataset_names())}, or a path to your files")
