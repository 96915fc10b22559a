"""QTensor: packed integer codes with their scales, zero points and format; lossless files.

A QTensor is what ``Quantizer.encode`` returns and what targets consume:

- ``data``: the codes, bit-packed (see :mod:`lowbit.packing` for the bit order);
- ``scale`` / ``zero_point``: one per slice of the granularity (row view);
- ``fmt``, ``granularity``, ``shape``: enough to rebuild the float values.

``dequantize()`` gives ``(level[code] - zero_point) * scale`` in the original shape.

Files: :func:`save_qtensors` writes a safetensors file whose metadata records
every QTensor's format, granularity and shape; :func:`load_qtensors` rebuilds
them exactly. Writes are atomic (temp file in the same folder, then rename).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from .formats import Codebook, Format, Uniform, format_from_spec
from .packing import pack, packed_nbytes, unpack, unpack_lookup
from .ranges import Granularity

__all__ = ["QTensor", "save_qtensors", "load_qtensors", "FILE_VERSION"]

FILE_VERSION = "1"
_MAGIC = "lowbit"


@dataclass(eq=False)
class QTensor:
    """Packed codes + per-slice scales (and zero points) + format spec + shape."""

    data: Tensor
    scale: Tensor
    zero_point: Tensor | None
    fmt: Format
    granularity: Granularity
    shape: torch.Size

    @classmethod
    def from_codes(
        cls,
        codes: Tensor,
        scale: Tensor,
        zero_point: Tensor | None,
        fmt: Format,
        granularity: Granularity,
        shape: torch.Size | tuple[int, ...],
        *,
        trusted: bool = False,
    ) -> "QTensor":
        """Pack codes laid out as the granularity's row view into a QTensor (``trusted``: made by ``fmt.encode``)."""
        shape = torch.Size(shape)
        if codes.numel() != shape.numel():
            raise ValueError(f"codes hold {codes.numel()} values but shape {tuple(shape)} needs {shape.numel()}")
        return cls(
            # codes from a format are in range by construction; others are checked
            pack(codes.reshape(-1).cpu(), fmt.bits, check=not trusted),
            # copies: a QTensor owns its scales (a population's tensors share the
            # quantizer's buffer, and safetensors refuses shared memory)
            scale.detach().reshape(-1).float().cpu().clone(),
            None if zero_point is None else zero_point.detach().reshape(-1).to(torch.int32).cpu().clone(),
            fmt,
            granularity,
            shape,
        )

    # ------------------------------------------------------------------ views

    @property
    def bits(self) -> int:
        """Storage bits per code."""
        return self.fmt.bits

    @property
    def numel(self) -> int:
        """Number of quantized values."""
        return self.shape.numel()

    @property
    def nbytes(self) -> int:
        """Bytes of packed codes plus scales and zero points."""
        zp = 0 if self.zero_point is None else self.zero_point.numel() * 4
        return self.data.numel() + self.scale.numel() * 4 + zp

    @property
    def bits_per_value(self) -> float:
        """Storage cost per value, scales and zero points included."""
        return 8 * self.nbytes / max(1, self.numel)

    def codes(self) -> Tensor:
        """Unpacked codes (level indices; uint8 up to 8 bits, else int32) in the granularity's row view."""
        return unpack(self.data, self.bits, self.numel).reshape(self.scale.numel(), -1)

    def int_repr(self) -> Tensor:
        """Integer values (int32) in the original shape: ``qmin + code`` for uniform formats, the code otherwise."""
        c = self.codes().to(torch.int32)
        if isinstance(self.fmt, Uniform):
            c = c + self.fmt.qmin
        return self.granularity.from_rows(c, self.shape)

    def dequantize(self) -> Tensor:
        """Float values ``(level - zero_point) * scale`` in the original shape."""
        table = _level_table(self.fmt)
        if table is None:  # codes wider than a byte: decode the unpacked codes
            v = self.fmt.decode(self.codes())
        else:  # one look-up pass from the packed bytes; the result is the only float-sized tensor made
            v = unpack_lookup(self.data, self.bits, self.numel, table).view(self.scale.numel(), -1)
        if self.zero_point is not None:
            v = v.sub_(self.zero_point.float()[:, None])
        s = self.scale[:, None]
        # in place when that is what `v * s` would give (same dtype); else promote as it would
        v = v.mul_(s) if s.dtype == v.dtype and table is not None else v * s
        return self.granularity.from_rows(v, self.shape)

    def __repr__(self) -> str:
        return (
            f"QTensor(shape={tuple(self.shape)}, format={self.fmt.spec!r}, granularity={self.granularity.spec!r}, "
            f"bits={self.bits}, nbytes={self.nbytes})"
        )

    # ------------------------------------------------------------------ (de)serialisation

    def _to_entries(self, name: str) -> tuple[dict[str, Tensor], dict[str, object]]:
        tensors = {f"{name}/codes": self.data, f"{name}/scale": self.scale}
        if self.zero_point is not None:
            tensors[f"{name}/zero_point"] = self.zero_point
        meta: dict[str, object] = {
            "kind": "qtensor",
            "format": self.fmt.spec,
            "granularity": self.granularity.spec,
            "shape": list(self.shape),
            "bits": self.bits,
        }
        if isinstance(self.fmt, Codebook):
            # a copy: a network-wide codebook is one tensor shared by every layer
            tensors[f"{name}/levels"] = self.fmt.levels.clone()
            meta["codebook"] = True
        return tensors, meta

    @classmethod
    def _from_entries(cls, name: str, meta: Mapping[str, object], get: "callable[[str], Tensor | None]") -> "QTensor":
        try:
            shape = torch.Size(int(s) for s in meta["shape"])  # type: ignore[union-attr]
            bits = int(meta["bits"])  # type: ignore[arg-type]
            gran = Granularity.from_spec(str(meta["granularity"]))
            if meta.get("codebook"):
                levels = get(f"{name}/levels")
                if levels is None:
                    raise KeyError(f"{name}/levels")
                fmt: Format = _codebook_from(str(meta["format"]), levels)
            else:
                fmt = format_from_spec(str(meta["format"]))
            data, scale = get(f"{name}/codes"), get(f"{name}/scale")
            if data is None or scale is None:
                raise KeyError(f"{name}/codes or {name}/scale")
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"entry {name!r} is malformed: {e}") from None
        if fmt.bits != bits:
            raise ValueError(f"entry {name!r}: format {fmt.spec!r} has {fmt.bits} bits, the file says {bits}")
        if data.numel() != packed_nbytes(shape.numel(), bits):
            raise ValueError(f"entry {name!r}: {data.numel()} packed bytes do not fit shape {tuple(shape)} at {bits} bits")
        if scale.numel() != gran.n_slices(shape):
            raise ValueError(f"entry {name!r}: {scale.numel()} scales do not fit granularity {gran.spec!r}")
        return cls(data, scale, get(f"{name}/zero_point"), fmt, gran, shape)


def _level_table(fmt: Format) -> Tensor | None:
    # code -> fmt.decode(code) for every code the storage bits can hold; None above 8 bits
    bits = fmt.bits
    if bits > 8:
        return None
    if isinstance(fmt, Codebook):
        lv = fmt.decode(torch.arange(min(2**bits, fmt.levels.numel())))
        return torch.cat([lv, lv.new_full((2**bits - lv.numel(),), float("nan"))])  # codes past the levels: NaN
    return fmt.decode(torch.arange(2**bits))


def _codebook_from(spec: str, levels: Tensor) -> Format:
    # A named codebook comes back as its registered class when the levels agree;
    # a learned one (levels found by an algorithm) as a plain Codebook.
    try:
        fmt = format_from_spec(spec)
        if torch.equal(fmt.levels, levels.float()):
            return fmt
    except ValueError:
        pass
    return Codebook(levels, name=spec)


def save_qtensors(path: str | os.PathLike[str], tensors: Mapping[str, "QTensor | Tensor"], metadata: Mapping[str, str] | None = None) -> None:
    """Write QTensors (and plain tensors) to a safetensors file, atomically."""
    from safetensors.torch import save_file

    if not isinstance(tensors, Mapping) or not tensors:
        raise ValueError("tensors must be a non-empty mapping of name -> QTensor or Tensor")
    flat: dict[str, Tensor] = {}
    index: dict[str, object] = {}
    for name, t in tensors.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"tensor names must be non-empty strings without '/', got {name!r}")
        if isinstance(t, QTensor):
            entries, meta = t._to_entries(name)
        elif isinstance(t, Tensor):
            entries, meta = {f"{name}/value": t.detach().cpu().contiguous()}, {"kind": "tensor"}
        else:
            raise TypeError(f"tensors[{name!r}] must be a QTensor or a Tensor, got {type(t).__name__}")
        flat.update({k: v.contiguous() for k, v in entries.items()})
        index[name] = meta
    header = {_MAGIC: FILE_VERSION, "index": json.dumps(index)}
    for k, v in (metadata or {}).items():
        if k in header:
            raise ValueError(f"metadata key {k!r} is reserved")
        header[k] = str(v)
    from .fileio import save_with
    from .safetensors_header import canonical

    def write(tmp: Path) -> None:
        save_file(flat, str(tmp), metadata=header)
        # sorted header keys: equal inputs give equal bytes (the reference writer's order is a hash order)
        tmp.write_bytes(canonical(tmp.read_bytes()))

    save_with(path, write)


def load_qtensors(path: str | os.PathLike[str], *, with_metadata: bool = False):  # type: ignore[no-untyped-def]
    """Read a file written by :func:`save_qtensors`: name -> QTensor or Tensor (and the metadata if asked)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such quantized checkpoint: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if header.get(_MAGIC) is None:
                raise ValueError(f"{path} is a safetensors file but not a lowbit file (no {_MAGIC!r} metadata)")
            if header[_MAGIC] != FILE_VERSION:
                raise ValueError(f"{path} has lowbit file version {header[_MAGIC]}; this lowbit reads version {FILE_VERSION}")
            keys = set(f.keys())
            index = json.loads(header["index"])

            def get(k: str) -> Tensor | None:
                return f.get_tensor(k) if k in keys else None

            out: dict[str, QTensor | Tensor] = {}
            for name, meta in index.items():
                if meta.get("kind") == "tensor":
                    v = get(f"{name}/value")
                    if v is None:
                        raise ValueError(f"entry {name!r} is missing its value")
                    out[name] = v
                else:
                    out[name] = QTensor._from_entries(name, meta, get)
    except (SafetensorError, json.JSONDecodeError, KeyError, OSError) as e:
        raise ValueError(f"{path} is not a readable lowbit file (truncated or foreign?): {e}") from None
    if with_metadata:
        return out, {k: v for k, v in header.items() if k not in (_MAGIC, "index")}
    return out
