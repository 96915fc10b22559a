"""The format contract: a grid of levels in units of the scale (encode, decode, quantize)."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Format"]

_MAX_BITS = 16  # Uniform goes to 16 bits (int16 containers); packing to 8.


def _check_bits(bits: object, *, lo: int = 1, hi: int = _MAX_BITS) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits must be an int in {lo}..{hi}, got {bits!r}")
    if not lo <= bits <= hi:
        raise ValueError(f"bits must be in {lo}..{hi}, got {bits}")
    return bits


def _code_dtype(bits: int) -> torch.dtype:
    # The smallest container: codes of <= 8 bits travel as uint8 (what packing
    # and the targets read), wider ones as int32.
    return torch.uint8 if bits <= 8 else torch.int32


def _refuse_nan(x: Tensor) -> None:
    # A code stands for a level, and no level stands for NaN: encode refuses it (one reduction;
    # encode is not the training hot path, and quantize, which is, passes NaN on unchecked).
    if x.is_floating_point() and x.numel() and bool(torch.isnan(x).any()):
        raise ValueError("x contains NaN: a code cannot stand for NaN (quantize passes NaN on; encode refuses it)")


def _round_stochastic(x: Tensor, generator: torch.Generator | None) -> Tensor:
    # floor(x + u), u ~ U[0, 1): rounds up with probability frac(x), unbiased.
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.floor(x + u)


class Format:
    """A grid of levels in units of the scale; the base of Uniform and Codebook."""

    #: spec string that rebuilds the format through :func:`format_from_spec`
    spec: str
    #: True when the scale should be symmetric around zero (no zero point)
    symmetric: bool = True

    @property
    def levels(self) -> Tensor:
        """All representable values, sorted ascending (float32)."""
        raise NotImplementedError

    @property
    def bits(self) -> int:
        """Storage bits per code."""
        raise NotImplementedError

    @property
    def lo(self) -> float:
        """Smallest level."""
        return float(self.levels[0])

    @property
    def hi(self) -> float:
        """Largest level."""
        return float(self.levels[-1])

    def encode(self, x: Tensor, rounding: str = "nearest", generator: torch.Generator | None = None) -> Tensor:
        """Map normalised values to integer codes in [0, len(levels)) (uint8 up to 8 bits, else int32).

        NaN raises ``ValueError`` (no code stands for it); +-Inf take the extreme codes.
        """
        raise NotImplementedError

    def decode(self, codes: Tensor) -> Tensor:
        """Map codes back to level values (float32)."""
        raise NotImplementedError

    def quantize(self, x: Tensor, rounding: str = "nearest", generator: torch.Generator | None = None) -> Tensor:
        """Round normalised values onto the level set: ``decode(encode(x))`` for every non-NaN ``x``.

        The hot path: NaN is not checked here (``Uniform`` passes it on as NaN, a codebook
        rounds it to one of its levels); :meth:`encode` refuses it.
        """
        return self.decode(self.encode(x, rounding, generator)).to(x.dtype)

    def quantize_(self, x: Tensor, rounding: str = "nearest", generator: torch.Generator | None = None) -> Tensor:
        """Like :meth:`quantize`, but may overwrite ``x`` (a temporary of the caller's) to save a pass."""
        return self.quantize(x, rounding, generator)

    def quantize_clamped(self, x: Tensor, rounding: str = "nearest", generator: torch.Generator | None = None) -> Tensor:
        """Like :meth:`quantize`, for ``x`` already clamped to ``[lo, hi]`` (a format may skip its own clamp)."""
        return self.quantize(x, rounding, generator)

    def encode_(self, x: Tensor, rounding: str = "nearest", generator: torch.Generator | None = None) -> Tensor:
        """Like :meth:`encode`, but may overwrite ``x`` (a temporary of the caller's)."""
        return self.encode(x, rounding, generator)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Format)
            and type(other) is type(self)
            and other.spec == self.spec
            and torch.equal(other.levels, self.levels)
        )

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.spec))

