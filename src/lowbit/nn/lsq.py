"""LSQ in :mod:`lowbit.nn`: the learned-step quantizer of the core, and building one from a spec.

:class:`LSQQuantizer` lives in :mod:`lowbit.quantizers.lsq` and the ``lsq`` range token in
:mod:`lowbit.ranges.learned`: the core factory (``lowbit.quantizer("int4:lsq")``) and QAT
layers build the same class from the same string. They are re-exported here, where they
have always been importable.
"""
from __future__ import annotations

from torch import Tensor

from ..quantizers import LSQQuantizer, build_quantizer, round_ste
from ..quantizers.spec import QuantSpec
from ..ranges import LSQInit, lsq_init_scale

__all__ = ["LSQQuantizer", "LSQInit", "lsq_init_scale", "lsq_from_spec", "round_ste"]


def lsq_from_spec(spec: "str | QuantSpec", init: Tensor | None = None) -> LSQQuantizer:
    """Build an :class:`LSQQuantizer` from a spec whose range token is ``lsq`` (``init``: its first data)."""
    q = build_quantizer(spec, init=init)
    if not isinstance(q, LSQQuantizer):
        raise ValueError(f"spec {str(spec)!r} has range {q.range.spec!r}; an LSQ quantizer needs the 'lsq' token")
    return q
