"""Reproducible safetensors bytes: the same tensors and metadata give the same file, byte for byte.

The reference writer serialises ``__metadata__`` from a hash map, so its key order (and
the file's bytes) change from one process to the next. :func:`canonical` rewrites the
header with sorted keys; the data section is left as it is (its layout is already
fixed by the tensors' dtypes and names, and offsets are relative to the data start).
"""
from __future__ import annotations

import json

__all__ = ["canonical"]


def canonical(data: bytes) -> bytes:
    """``data`` (a whole safetensors file) with its JSON header in sorted key order."""
    if len(data) < 8:
        raise ValueError(f"data is not a safetensors file: only {len(data)} bytes")
    n = int.from_bytes(data[:8], "little")
    if n < 2 or 8 + n > len(data):
        raise ValueError(f"data is not a safetensors file: header length {n} does not fit {len(data)} bytes")
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    raw = json.dumps(header, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the reference writer pads to 8 bytes with spaces
    return len(raw).to_bytes(8, "little") + raw + data[8 + n :]
