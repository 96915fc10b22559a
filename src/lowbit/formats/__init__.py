"""Number formats: the grid of levels a code can stand for, in units of the scale.

A format knows nothing about tensors' ranges or modules. It maps a *normalised*
value (``x / scale + zero_point``) to a code and back:

- ``encode(x) -> codes``: integer indices into ``levels``, in ``[0, len(levels))``
  (uint8 for formats of up to 8 bits, int32 above).
  These are what gets bit-packed (``bits`` per code).
- ``decode(codes) -> values``: the level values (a table look-up).
- ``quantize(x)``: ``decode(encode(x))``, the fast path used by fake quantization.

Two kinds cover everything: ``Uniform`` (integers, round and clamp) and
``Codebook`` (any sorted set of levels; nearest level by ``bucketize`` on the
midpoints, O(log L) per element and no ``[N, L]`` tensor, or an exact look-up
table where one resolves the levels).

One file per concept: :mod:`.base` (the contract), :mod:`.uniform`, :mod:`.codebook`,
:mod:`.kinds` (centred, DoReFa, learned codebooks), :mod:`.levels` (named level tables),
:mod:`.state` (spiking-neuron state levels), :mod:`.registry` (spec token -> format) and
:mod:`.named` (the built-in tokens). New named formats are added with :func:`register_format`;
the spec parser (:mod:`lowbit.quantizers.spec`) looks them up by their first spec token.
"""
from .base import Format
from . import levels as _levels
from .codebook import Codebook
from .kinds import CenteredCodebook, DoReFaCodebook, LearnedCodebook
from .levels import (
    NF4_LEVELS,
    apot_levels,
    bitsym_levels,
    dorefa_levels,
    fp130_levels,
    minifloat_levels,
    nf4_levels,
    pot_levels,
    sym_levels,
)
from .registry import format_defaults, format_examples, format_from_spec, format_names, register_format
from .state import STATE_KINDS, state_levels
from .uniform import Uniform
from .named import SHARED_SPEC, sym_codebook  # noqa: E402  (registers the built-in tokens)

__all__ = [
    "Format",
    "Uniform",
    "Codebook",
    "CenteredCodebook",
    "DoReFaCodebook",
    "LearnedCodebook",
    "register_format",
    "format_from_spec",
    "format_names",
    "format_examples",
    "format_defaults",
    *_levels.__all__,  # the named level tables, listed once in levels.py
    "sym_codebook",
    "STATE_KINDS",
    "state_levels",
    "SHARED_SPEC",
]
