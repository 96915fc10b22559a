"""Ranges and granularity: how the scale is chosen from data.

Everything works on a 2-D *row view* of the tensor, one row per slice that
gets its own scale (granularity): ``tensor`` is one row, ``channel(axis)`` one
row per index along ``axis``, ``group(size)`` one row per block of ``size``
consecutive elements along the last axis.

A range estimator turns rows into a clip interval ``[lo, hi]`` per row; the
``scale_from_range`` step maps that interval onto the format's levels
(symmetric formats: no zero point; unsigned uniform formats: affine with an
integer zero point), optionally rounded to a power of two (fixed point).

One file per part: :mod:`.granularity`, :mod:`.scale` (interval -> scale), :mod:`.registry`
(spec token -> estimator), :mod:`.estimators` (``minmax``, ``p<pct>``, ``mse``),
:mod:`.clipping` (``octav``, ``prop``, ``absmean``, ``fixed``, ``mx``), :mod:`.learned`
(``lsq``, ``lsq.<range>``), :mod:`.state` (``state``: spiking-neuron states).
"""
from .granularity import Granularity
from .registry import range_from_token, range_names, register_range
from .scale import fixed_point_scale, percentile, scale_from_range
from .estimators import MSE, MinMax, Percentile, RangeEstimator
from .clipping import AbsMean, Fixed, MXScale, Octav, Prop
from .learned import LSQInit, lsq_init_scale
from .state import StateRange, calibrate_state_range

__all__ = [
    "Granularity",
    "RangeEstimator",
    "MinMax",
    "Percentile",
    "MSE",
    "Octav",
    "Prop",
    "AbsMean",
    "Fixed",
    "MXScale",
    "LSQInit",
    "lsq_init_scale",
    "StateRange",
    "calibrate_state_range",
    "register_range",
    "range_from_token",
    "range_names",
    "scale_from_range",
    "fixed_point_scale",
    "percentile",
]
