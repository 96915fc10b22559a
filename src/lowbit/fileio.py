"""One atomic writer for every file lowbit produces.

A file appears at its path only when it is complete (written to a temporary file
in the same folder, flushed, then renamed over the path), so an interrupted run
never leaves something that looks finished. Outputs are mode 0644 -- readable by
everyone, like any ordinary file -- whatever ``mkstemp``'s private default is.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator

__all__ = ["atomic_path", "atomic_write", "write_bytes", "write_text", "atomic_dir", "FILE_MODE"]

FILE_MODE = 0o644


def _parent(path: Path) -> Path:
    parent = path.parent if str(path.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    return parent


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path`` (0644), else removed.

    For writers that take a file name (safetensors, onnx, matplotlib): write to the
    yielded path, and the result appears at ``path`` only when the block finishes.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=_parent(path))
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file for writing; it replaces ``path`` (0644) only if the block succeeds."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (0644)."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (0644)."""
    with atomic_write(path, "w") as f:
        f.write(text)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` whole, else it is removed.

    For outputs made of several files (a C project, a report folder): readers never
    see a mix of old and new files.
    """
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=_parent(path)))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if path.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_with(path: str | os.PathLike[str], writer: Callable[[Path], object], suffix: str = ".tmp") -> None:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically (0644)."""
    with atomic_path(path, suffix=suffix) as tmp:
        writer(tmp)


__all__.append("save_with")
