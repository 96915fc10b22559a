"""One factory: a spec (string or :class:`QuantSpec`) to the quantizer class its format and range need.

The class follows from the typed spec alone: a learned range (``lsq``) gives an
:class:`LSQQuantizer`, a format registered with :func:`register_quantizer` (DoReFa's tanh,
BitNetMCU's centred ``binary``) its own class, anything else a plain :class:`Quantizer`.
``lowbit.quantizer(spec)``, config rules and QAT layers all build through here.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..formats import CenteredCodebook, DoReFaCodebook, Format
from ..ranges import LSQInit
from .base import Quantizer
from .centered import CenteredQuantizer
from .dorefa import DoReFaQuantizer
from .lsq import LSQQuantizer
from .spec import QuantSpec, parse_spec

__all__ = ["register_quantizer", "build_quantizer", "quantizer"]

_QUANTIZER_CLASSES: dict[type, type[Quantizer]] = {}


def register_quantizer(format_type: type, quantizer_cls: type[Quantizer]) -> None:
    """Make :func:`build_quantizer` build ``quantizer_cls`` for formats of ``format_type`` (e.g. DoReFa's tanh step)."""
    if not (isinstance(format_type, type) and issubclass(format_type, Format)):
        raise TypeError(f"format_type must be a Format subclass, got {format_type!r}")
    if not (isinstance(quantizer_cls, type) and issubclass(quantizer_cls, Quantizer)):
        raise TypeError(f"quantizer_cls must be a Quantizer subclass, got {quantizer_cls!r}")
    _QUANTIZER_CLASSES[format_type] = quantizer_cls


def build_quantizer(
    spec: "QuantSpec | str", *, init: Tensor | None = None, generator: torch.Generator | None = None
) -> Quantizer:
    """Build the quantizer a spec asks for (``int4:channel:mse``, ``int4:lsq``, ``dorefa4``, ...).

    ``init``: data a learned step size starts from (LSQ; without it, the first batch it
    quantizes); other quantizers fit their scale to the data they see or are calibrated.
    """
    if not isinstance(spec, (str, QuantSpec)):
        raise TypeError(f"spec must be a string such as 'int4:channel:mse' or a QuantSpec, got {type(spec).__name__}")
    p = parse_spec(spec)
    fmt = p.build_format()
    est = p.build_range()
    if isinstance(est, LSQInit):
        q: Quantizer = LSQQuantizer(
            fmt, p.granularity, init=None if init is None else init.detach(), init_range=est.init,
            rounding=p.rounding, spec=str(p),
        )  # fmt: skip
        q.generator = generator
        return q
    cls = _QUANTIZER_CLASSES.get(type(fmt), Quantizer)
    return cls(
        fmt, est, p.granularity, pow2=p.pow2, rounding=p.rounding, gradient=p.gradient, generator=generator, spec=str(p)
    )


def quantizer(spec: "QuantSpec | str", *, generator: torch.Generator | None = None) -> Quantizer:
    """Build a quantizer from a spec such as ``int4:channel:mse``, ``fxp8:p99`` or ``int4:lsq`` (see :func:`build_quantizer`)."""
    return build_quantizer(spec, generator=generator)


register_quantizer(CenteredCodebook, CenteredQuantizer)
register_quantizer(DoReFaCodebook, DoReFaQuantizer)
