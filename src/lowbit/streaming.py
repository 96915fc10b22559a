"""Streaming post-training quantization of a safetensors checkpoint, tensor by tensor.

:func:`quantize_checkpoint` reads a (possibly huge) safetensors file through
``safetensors.safe_open`` (memory-mapped) and writes a lowbit file that
:func:`lowbit.load_qtensors` reads unchanged. Memory stays bounded by a few
chunks, not by the file:

- Every output size is known before any tensor is quantized (packed code
  bytes, scale counts, zero points follow from shape, format and granularity),
  so the whole safetensors header is written first and each tensor's bytes go
  straight to their final offsets. Nothing but the current chunk is held.
- Tensors are read in chunks of whole rows along dim 0 (``get_slice``), with the
  file handle reopened per chunk so that mapped pages do not pile up in the
  resident set. Per-row scales (``group<n>``, ``channel``) are exact per chunk;
  ``tensor`` granularity (one scale from the whole tensor) and ``channel<axis>``
  with ``axis != 0`` read the whole tensor first (peak ~ a few times that tensor).
- The output is written to ``<out>.partial`` (whose header length stays zero,
  an invalid file for every reader, until the last byte is written) with a state file
  ``<out>.partial.json`` that lists finished tensors. After an interruption the
  next run resumes (same source, same options: identical final bytes) or starts
  clean; ``<out>`` itself only appears, complete, by an atomic rename.

Tensors that are not floating point, have fewer than ``min_numel`` elements, are
1-D (unless ``quantize_1d``) or whose shape the granularity cannot split are
copied unquantized (byte for byte).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from .fileio import FILE_MODE, atomic_write, write_text
from .formats import Codebook, Uniform
from .packing import packed_nbytes
from .progress import counter, note
from .qtensor import FILE_VERSION
from .quantizer import Quantizer, parse_spec, quantizer

__all__ = [
    "quantize_checkpoint",
    "read_safetensors_header",
    "write_safetensors_streaming",
    "StreamResult",
    "SafetensorsEntry",
]

_MAGIC = "lowbit"
_STATE_VERSION = 1
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors reader's own limit
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
_TORCH_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
_COPY_CHUNK = 16 * 1024 * 1024
_UNFINISHED = bytes(8)  # header length of a partial output: an invalid (empty) safetensors header


@dataclass(frozen=True)
class SafetensorsEntry:
    """One tensor of a safetensors file: dtype string (``F32``...), shape and absolute byte range."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor's data."""
        return self.end - self.start

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)


@dataclass
class StreamResult:
    """What :func:`quantize_checkpoint` did: counts, bytes, seconds, and why tensors were copied."""

    quantized: list[str] = field(default_factory=list)
    copied: dict[str, str] = field(default_factory=dict)
    resumed: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0

    @property
    def ratio(self) -> float:
        """Input bytes over output bytes."""
        return self.bytes_in / max(1, self.bytes_out)


# --------------------------------------------------------------------------- safetensors headers


def read_safetensors_header(path: str | os.PathLike[str]) -> tuple[list[SafetensorsEntry], dict[str, str], bytes]:
    """Entries (in file order), ``__metadata__`` and the raw header bytes of a safetensors file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such checkpoint: {p}")
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{p} is not a safetensors file: only {len(head)} bytes")
        n = int.from_bytes(head, "little")
        if n < 2 or n > _MAX_HEADER or 8 + n > size:
            raise ValueError(f"{p} is not a safetensors file: header length {n} does not fit a file of {size} bytes")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        meta = header.pop("__metadata__", None) or {}
        entries = []
        for name, d in header.items():
            s, e = (int(v) for v in d["data_offsets"])
            entries.append(SafetensorsEntry(name, str(d["dtype"]), tuple(int(v) for v in d["shape"]), 8 + n + s, 8 + n + e))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{p} is not a safetensors file: unreadable header ({e})") from None
    entries.sort(key=lambda t: (t.start, t.name))
    pos = 8 + n
    for t in entries:
        if t.start != pos or t.end < t.start:
            raise ValueError(f"{p} is not a valid safetensors file: tensor {t.name!r} does not follow the previous one")
        pos = t.end
    if pos != size:
        raise ValueError(f"{p} is truncated or padded: its tensors end at byte {pos}, the file has {size}")
    return entries, {str(k): str(v) for k, v in meta.items()}, raw


def _header_bytes(entries: Sequence[tuple[str, str, Sequence[int], int]], metadata: Mapping[str, str]) -> tuple[bytes, list[int]]:
    """Serialised header (length prefix included) and each entry's data offset, for (key, dtype, shape, nbytes)."""
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offsets, pos = [], 0
    for key, dtype, shape, nbytes in entries:
        header[key] = {"dtype": dtype, "shape": [int(s) for s in shape], "data_offsets": [pos, pos + nbytes]}
        offsets.append(pos)
        pos += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the reference writer pads to 8 bytes with spaces
    return len(raw).to_bytes(8, "little") + raw, offsets


def write_safetensors_streaming(
    path: str | os.PathLike[str],
    layout: Iterable[tuple[str, torch.dtype, Sequence[int]]],
    make: Callable[[str, torch.dtype, tuple[int, ...]], Tensor],
    metadata: Mapping[str, str] | None = None,
) -> int:
    """Write a safetensors file one tensor at a time (``make(name, dtype, shape)``), atomically; return its size."""
    items = [(str(n), d, tuple(int(s) for s in shape)) for n, d, shape in layout]
    for n, d, _ in items:
        if d not in _TORCH_DTYPES:
            raise ValueError(f"tensor {n!r}: dtype {d} is not supported; use one of {sorted(map(str, _TORCH_DTYPES))}")
    sizes = [math.prod(s) * torch.empty(0, dtype=d).element_size() for _, d, s in items]
    head, _ = _header_bytes([(n, _TORCH_DTYPES[d], s, b) for (n, d, s), b in zip(items, sizes)], metadata or {})
    with atomic_write(path, "wb") as f:
        f.write(head)
        for (n, d, s), nb in zip(items, sizes):
            t = make(n, d, s)
            if t.dtype != d or tuple(t.shape) != s:
                raise ValueError(f"make({n!r}) returned {t.dtype} {tuple(t.shape)}, expected {d} {s}")
            f.write(_tensor_bytes(t))
    return len(head) + sum(sizes)


def _tensor_bytes(t: Tensor) -> memoryview:
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    if t.dtype == torch.bool:
        t = t.view(torch.uint8)
    return memoryview(t.numpy()).cast("B")


# --------------------------------------------------------------------------- plan


@dataclass
class _Item:
    src: SafetensorsEntry
    quantize: bool
    reason: str = ""
    keys: list[tuple[str, str, tuple[int, ...], int]] = field(default_factory=list)  # (key, dtype, shape, nbytes)
    meta: dict[str, object] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)


def _plan(entries: list[SafetensorsEntry], q: Quantizer, min_numel: int, quantize_1d: bool) -> list[_Item]:
    fmt, gran = q.fmt, q.granularity
    affine = isinstance(fmt, Uniform) and not fmt.signed
    items = []
    for e in entries:
        if "/" in e.name:
            raise ValueError(f"tensor name {e.name!r} contains '/', which lowbit files reserve")
        reason = ""
        if e.dtype not in _FLOAT_DTYPES:
            reason = f"not floating point ({e.dtype})"
        elif e.numel == 0:
            reason = "empty"
        elif e.numel < min_numel:
            reason = f"{e.numel} elements < min_numel {min_numel}"
        elif len(e.shape) < 2 and not quantize_1d:
            reason = f"{len(e.shape)}-D (pass quantize_1d to quantize it)"
        else:
            try:
                gran.check(torch.Size(e.shape))
            except ValueError as err:
                reason = f"shape does not fit {gran.spec}: {err}"
        if reason:
            items.append(_Item(e, False, reason, [(f"{e.name}/value", e.dtype, e.shape, e.nbytes)], {"kind": "tensor"}))
            continue
        n_scales = gran.n_slices(torch.Size(e.shape))
        keys = [(f"{e.name}/codes", "U8", (packed_nbytes(e.numel, fmt.bits),), packed_nbytes(e.numel, fmt.bits)),
                (f"{e.name}/scale", "F32", (n_scales,), 4 * n_scales)]
        if affine:
            keys.append((f"{e.name}/zero_point", "I32", (n_scales,), 4 * n_scales))
        meta: dict[str, object] = {"kind": "qtensor", "format": fmt.spec, "granularity": gran.spec,
                                   "shape": list(e.shape), "bits": fmt.bits}
        if isinstance(fmt, Codebook):
            keys.append((f"{e.name}/levels", "F32", (fmt.levels.numel(),), 4 * fmt.levels.numel()))
            meta["codebook"] = True
        items.append(_Item(e, True, "", keys, meta))
    return items


# --------------------------------------------------------------------------- quantization of one tensor


def _read_rows(path: str, name: str, a: int, b: int) -> Tensor:
    from safetensors import safe_open

    # A fresh handle per chunk: closing it unmaps the pages just read, so the
    # resident set holds one chunk, not the whole tensor (or file).
    with safe_open(path, framework="pt") as f:
        return f.get_slice(name)[a:b]


def _read_full(path: str, e: SafetensorsEntry, chunk_elems: int) -> Tensor:
    if len(e.shape) == 0:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return f.get_tensor(e.name)
    first = _read_rows(path, e.name, 0, 1)
    out = torch.empty(e.shape, dtype=first.dtype)
    step = max(1, chunk_elems // max(1, e.numel // e.shape[0]))
    for a in range(0, e.shape[0], step):
        out[a : a + step] = _read_rows(path, e.name, a, min(e.shape[0], a + step))
    return out


def _row_step(e: SafetensorsEntry, q: Quantizer, chunk_elems: int) -> int:
    """Rows of dim 0 per chunk: whole scale slices, a multiple of 8 codes (packed bytes then concatenate)."""
    inner = e.numel // e.shape[0]
    need = 8 // math.gcd(8, inner)
    if q.granularity.kind == "group":
        g = q.granularity.size
        need = math.lcm(need, g // math.gcd(g, inner))
    step = max(need, (chunk_elems // max(1, inner)) // need * need)
    return step


def _encode_chunks(
    path: str, e: SafetensorsEntry, spec: str, chunk_elems: int, write: Callable[[int, Tensor], None]
) -> tuple[Tensor, Tensor | None]:
    """Quantize one tensor chunk by chunk; codes go to ``write(byte_offset, packed)``; return scales, zero points."""
    q = quantizer(spec)
    gran, bits = q.granularity, q.fmt.bits
    scales: list[Tensor] = []
    zps: list[Tensor] = []
    by_rows = e.shape and (gran.kind == "group" or (gran.kind == "channel" and gran.axis % len(e.shape) == 0))
    if by_rows:
        inner = e.numel // e.shape[0]
        step = _row_step(e, q, chunk_elems)
        for a in range(0, e.shape[0], step):
            x = _read_rows(path, e.name, a, min(e.shape[0], a + step))
            qt = quantizer(spec).encode(x)  # per-row scales: a chunk of rows is exact
            write(packed_nbytes(a * inner, bits), qt.data)
            scales.append(qt.scale)
            if qt.zero_point is not None:
                zps.append(qt.zero_point)
            del x, qt
    else:
        x = _read_full(path, e, chunk_elems)
        if gran.kind == "tensor":
            q.fit(x)  # one scale from the whole tensor, then encode in chunks with it
            flat = x.reshape(-1)
            step = max(8, chunk_elems // 8 * 8)
            for a in range(0, flat.numel(), step):
                qt = q.encode(flat[a : a + step])
                write(packed_nbytes(a, bits), qt.data)
            scales.append(q.scale.reshape(-1).float())
            if q.zero_point.numel():
                zps.append(q.zero_point.reshape(-1).to(torch.int32))
        else:
            qt = q.encode(x)
            write(0, qt.data)
            scales.append(qt.scale)
            if qt.zero_point is not None:
                zps.append(qt.zero_point)
        del x
    return torch.cat(scales), (torch.cat(zps) if zps else None)


# --------------------------------------------------------------------------- state (resume)


def _source_fingerprint(path: Path, raw_header: bytes) -> dict[str, object]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "header_sha256": hashlib.sha256(raw_header).hexdigest()}


def _load_state(state_path: Path) -> dict[str, object] | None:
    try:
        with open(state_path) as f:
            s = json.load(f)
        return s if isinstance(s, dict) and s.get("version") == _STATE_VERSION else None
    except (OSError, json.JSONDecodeError):
        return None


def _save_state(state_path: Path, state: Mapping[str, object]) -> None:
    write_text(state_path, json.dumps(state))


# --------------------------------------------------------------------------- the verb


def quantize_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    spec: str = "int4:group128",
    *,
    min_numel: int = 1024,
    quantize_1d: bool = False,
    resume: bool = True,
    chunk_mb: float = 8.0,
    progress: bool | None = None,
    on_tensor: Callable[[str], None] | None = None,
) -> StreamResult:
    """Quantize a safetensors checkpoint tensor by tensor into a lowbit file, with bounded memory and resume."""
    src_p, dst_p = Path(src), Path(dst)
    t0 = time.perf_counter()
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a string such as 'int4:group128', got {type(spec).__name__}")
    parsed = parse_spec(spec)  # a clear ValueError for an unknown spec, before touching files
    if parsed.rounding != "nearest":
        raise ValueError(f"spec {spec!r}: quantize-checkpoint needs deterministic rounding ('nearest'), got {parsed.rounding!r}")
    q = quantizer(spec)
    if isinstance(min_numel, bool) or not isinstance(min_numel, int) or min_numel < 0:
        raise ValueError(f"min_numel must be an int >= 0, got {min_numel!r}")
    if not chunk_mb > 0:
        raise ValueError(f"chunk_mb must be > 0, got {chunk_mb}")
    entries, src_meta, raw = read_safetensors_header(src_p)
    if dst_p.exists() and dst_p.resolve() == src_p.resolve():
        raise ValueError("dst must differ from src (the source is read while the output is written)")
    if not dst_p.parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {dst_p.parent}")
    # safe_open validates what our header parser does not (dtypes, overlaps).
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(src_p), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{src_p} is not a readable safetensors file: {e}") from None

    items = _plan(entries, q, min_numel, quantize_1d)
    if not items:
        raise ValueError(f"{src_p} holds no tensors")
    if not any(it.quantize for it in items):  # an unquantized copy must not pass for a quantized file
        why = "; ".join(f"{it.src.name}: {it.reason}" for it in items[:3])
        raise ValueError(f"spec {spec!r} applies to no tensor of {src_p} ({why}{'; ...' if len(items) > 3 else ''})")
    flat = [k for it in items for k in it.keys]
    index = {it.src.name: it.meta for it in items}
    metadata = {_MAGIC: FILE_VERSION, "index": json.dumps(index, sort_keys=True), "lowbit.spec": str(parsed),
                "lowbit.source": src_p.name}
    for k, v in src_meta.items():
        metadata[f"source.{k}"] = v
    head, offsets = _header_bytes(flat, metadata)
    pos = 0
    for it in items:
        for key, _, _, _ in it.keys:
            it.offsets[key] = len(head) + offsets[pos]
            pos += 1
    total = len(head) + sum(k[3] for k in flat)

    partial = dst_p.with_name(dst_p.name + ".partial")
    state_path = dst_p.with_name(dst_p.name + ".partial.json")
    fingerprint = _source_fingerprint(src_p, raw)
    out_sha = hashlib.sha256(head).hexdigest()
    done: set[str] = set()
    state = _load_state(state_path) if resume else None
    if (
        state is not None
        and state.get("source") == fingerprint
        and state.get("header_sha256") == out_sha
        and partial.is_file()
        and partial.stat().st_size == total
    ):
        with open(partial, "rb") as f:
            if f.read(len(head)) == _UNFINISHED + head[8:]:
                done = set(state.get("done", []))  # type: ignore[arg-type]
    if not done:
        for p in (partial, state_path):
            p.unlink(missing_ok=True)
        with open(partial, "wb") as f:
            f.write(_UNFINISHED + head[8:])  # no reader takes a partial file for a finished one
            f.truncate(total)
    result = StreamResult(resumed=len(done), bytes_in=src_p.stat().st_size, bytes_out=total)
    state = {"version": _STATE_VERSION, "source": fingerprint, "header_sha256": out_sha, "done": sorted(done)}
    chunk_elems = max(8, int(chunk_mb * 2**20) // 4)
    stack = contextlib.ExitStack()  # closes the progress bar however the run ends
    bar = stack.enter_context(counter(sum(it.src.nbytes for it in items), "quantize", "B", progress))
    last_save = time.monotonic()
    fd = os.open(partial, os.O_RDWR)
    out = os.fdopen(fd, "r+b")

    def put(offset: int, data: Tensor | memoryview | bytes) -> None:
        out.seek(offset)
        out.write(_tensor_bytes(data) if isinstance(data, Tensor) else data)

    def checkpoint() -> None:
        out.flush()
        os.fsync(out.fileno())  # the data of every tensor marked done is on disk first
        state["done"] = sorted(done)
        _save_state(state_path, state)

    try:
        with open(src_p, "rb") as src_f:
            for it in items:
                name = it.src.name
                if name in done:
                    bar.update(it.src.nbytes)
                    (result.quantized.append(name) if it.quantize else result.copied.__setitem__(name, it.reason))
                    continue
                if it.quantize:
                    codes_key = f"{name}/codes"
                    base = it.offsets[codes_key]
                    try:
                        scale, zp = _encode_chunks(str(src_p), it.src, spec, chunk_elems, lambda o, d: put(base + o, d))
                    except ValueError as e:
                        raise ValueError(f"tensor {name!r}: {e}") from None
                    want = dict((k[0], k[3]) for k in it.keys)
                    if scale.numel() * 4 != want[f"{name}/scale"]:
                        raise RuntimeError(f"tensor {name!r}: {scale.numel()} scales, the header planned {want[f'{name}/scale'] // 4}")
                    put(it.offsets[f"{name}/scale"], scale.float().contiguous())
                    if f"{name}/zero_point" in want:
                        if zp is None:
                            raise RuntimeError(f"tensor {name!r}: no zero points, the header planned them")
                        put(it.offsets[f"{name}/zero_point"], zp.to(torch.int32).contiguous())
                    if f"{name}/levels" in want:
                        put(it.offsets[f"{name}/levels"], q.fmt.levels.float().contiguous())
                    result.quantized.append(name)
                else:
                    # Byte-for-byte copy, in bounded chunks (any dtype, even ones torch lacks).
                    dst_off = it.offsets[f"{name}/value"]
                    src_f.seek(it.src.start)
                    left = it.src.nbytes
                    while left:
                        buf = src_f.read(min(left, _COPY_CHUNK))
                        if not buf:
                            raise ValueError(f"{src_p} ended inside tensor {name!r}")
                        put(dst_off + it.src.nbytes - left, buf)
                        left -= len(buf)
                    result.copied[name] = it.reason
                done.add(name)
                bar.update(it.src.nbytes)
                if time.monotonic() - last_save > 1.0:
                    checkpoint()
                    last_save = time.monotonic()
                if on_tensor is not None:
                    on_tensor(name)
        out.flush()
        os.fsync(out.fileno())
        put(0, head[:8])  # the real header length: the file is complete
        out.flush()
        os.fsync(out.fileno())
        out.close()
        os.chmod(partial, FILE_MODE)  # an ordinary file for everyone, whatever the umask made of the partial one
        os.replace(partial, dst_p)
        state_path.unlink(missing_ok=True)
    except BaseException:
        if not out.closed:
            try:
                checkpoint()  # keep what is finished for the next run
            finally:
                out.close()
        raise
    finally:
        stack.close()
    result.seconds = time.perf_counter() - t0
    note(f"quantize: {len(result.quantized)} tensors quantized, {len(result.copied)} copied, "
         f"{result.bytes_in / 2**20:.1f} -> {result.bytes_out / 2**20:.1f} MiB in {result.seconds:.1f} s", progress=progress)
    return result
