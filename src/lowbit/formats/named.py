"""Spec tokens of every built-in format, registered at import time.

Formats (spec tokens; levels in units of the scale unless said otherwise):

- ``int<b>``, ``int<b>n`` (narrow), ``uint<b>``, ``fxp<b>`` (fixed point: pow2 scale, p99);
- ``nf4`` -- the 16 NormalFloat4 values (QLoRA), blocks of 64 with absmax scales by default;
- ``fp4`` (OCP E2M1), ``fp8_e4m3``, ``fp8_e5m2`` -- finite values only, saturating;
  ``mxfp4`` / ``mxfp8_e4m3`` / ``mxfp8_e5m2`` add the OCP MX block-32 power-of-two scales;
- ``pot<b>`` -- sign and powers of two with zero; ``fp130`` -- sign * 2^e, e in 0..7, no zero;
  ``apot<b>`` / ``uapot<b>`` -- additive powers of two (APoT), signed / unsigned;
- BitNetMCU: ``binary`` (sign around the mean), ``binarysym``, ``ternary``, ``<b>bitsym``
  (levels k + 0.5, no zero), ``4bit`` / ``8bit`` (two's complement);
- ``dorefa<k>`` -- DoReFa weights (tanh normalisation to [-1, 1], no exact zero);
- ``state_uniform<b>``, ``state_thr<b>``, ``state_zero<b>`` -- spiking-neuron state levels
  (snnTorch SQUAT), absolute (scale 1, the ``fixed`` range);
- ``sym<N>`` -- N (odd) integer levels -Q..Q, the operands of the 4.6-bit pairs;
- ``shared`` -- a learned (weight-sharing) codebook whose levels travel with each tensor.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import torch
from torch import Tensor

from .base import _check_bits
from .codebook import Codebook
from .kinds import CenteredCodebook, DoReFaCodebook, LearnedCodebook
from .levels import apot_levels, bitsym_levels, fp130_levels, minifloat_levels, nf4_levels, pot_levels, sym_levels
from .registry import register_format
from .state import state_levels
from .uniform import Uniform

__all__ = ["sym_codebook", "SHARED_SPEC"]


def sym_codebook(n: int) -> Codebook:
    """The ``sym<N>`` codebook: integer levels ``-Q..Q``, marked as a 4.6-bit pair operand (``pair_q = Q``)."""
    cb = Codebook(sym_levels(n), name=f"sym{n}")
    cb.pair_q = (n - 1) // 2
    return cb


def _bits_of(m: re.Match[str]) -> int:
    return _check_bits(int(m.group("bits")))


register_format(r"int(?P<bits>\d+)", lambda m: Uniform(_bits_of(m), True), help="int<b> (b=1..16)")
register_format(r"int(?P<bits>\d+)n", lambda m: Uniform(_bits_of(m), True, narrow=True), help="int<b>n (narrow)")
register_format(r"uint(?P<bits>\d+)", lambda m: Uniform(_bits_of(m), False), help="uint<b>")
# Fixed point Qm.n: signed integers with a power-of-two scale fitted to the
# 99th percentile (mlGeNN's default); the binary point floats with the data.
register_format(r"fxp(?P<bits>\d+)", lambda m: Uniform(_bits_of(m), True), defaults=("pow2", "p99"), help="fxp<b> (fixed point)")


def _bits(m: re.Match[str]) -> int:
    return int(m.group("bits"))


def _check(name: str, value: int, allowed: Sequence[int]) -> int:
    if value not in allowed:
        raise ValueError(f"{name} needs bits in {allowed[0]}..{allowed[-1]}, got {value}")
    return value


_Factory = Callable[[re.Match[str]], Codebook]


def _fixed(name: str, levels: Sequence[float] | Tensor, cls: type[Codebook] = Codebook) -> _Factory:
    table = torch.as_tensor(levels, dtype=torch.float32)
    return lambda m: cls(table.clone(), name=name)  # type: ignore[call-arg]


def _family(prefix: str, levels_of: Callable[[int], Tensor]) -> _Factory:
    return lambda m: Codebook(levels_of(_bits(m)), name=f"{prefix}{_bits(m)}")


def _bitsym(m: re.Match[str]) -> Codebook:
    bits = _check("<b>bitsym", _bits(m), range(2, 9))
    cb = Codebook(bitsym_levels(bits), name=f"{bits}bitsym")
    cb.clip_edge = float(2 ** (bits - 1))  # type: ignore[attr-defined]  # the clip is the edge of the top bin
    return cb


def _state(m: re.Match[str]) -> Codebook:
    def num(tag: str, default: float) -> float:
        return default if m.group(tag) is None else float(m.group(tag))

    mult = None if m.group("m") is None else float(m.group("m"))
    return state_levels(m.group("kind"), _bits(m), num("t", 1.0), num("l", 0.0), num("u", 0.2), mult)


_MINIFLOATS = {"fp4": (2, 1, 1, "none"), "fp8_e4m3": (4, 3, 7, "nan"), "fp8_e5m2": (5, 2, 15, "ieee")}
for _name, _args in _MINIFLOATS.items():
    register_format(_name, _fixed(_name, minifloat_levels(*_args)), help=_name)
    register_format(f"mx{_name}", _fixed(f"mx{_name}", minifloat_levels(*_args)), defaults=("group32", "mx"),
                    help=f"mx{_name} (block 32, OCP MX scales)")  # fmt: skip
register_format("nf4", _fixed("nf4", nf4_levels()), defaults=("group64",), help="nf4 (group64 absmax)")
register_format(r"pot(?P<bits>\d+)", _family("pot", pot_levels), help="pot<b> (b=2..8)")
register_format("fp130", _fixed("fp130", fp130_levels()), defaults=("octav",), help="fp130")
register_format(r"apot(?P<bits>\d+)", _family("apot", apot_levels), help="apot<b> (b=3..5)")
register_format(r"uapot(?P<bits>\d+)", _family("uapot", lambda b: apot_levels(b, False)), help="uapot<b> (b=2..4)")
register_format("binary", _fixed("binary", [-1.0, 1.0], CenteredCodebook), defaults=("absmean",), help="binary")
register_format("binarysym", _fixed("binarysym", [-1.0, 1.0]), defaults=("absmean",), help="binarysym")
register_format("ternary", _fixed("ternary", [-1.0, 0.0, 1.0]), defaults=("absmean",), help="ternary")
register_format(r"(?P<bits>\d)bitsym", _bitsym, defaults=("octav",), help="<b>bitsym (b=2..8)")
register_format("4bit", lambda m: Uniform(4), defaults=("octav",), help="4bit (int4, octav)")
register_format("8bit", lambda m: Uniform(8), defaults=("octav",), help="8bit (int8, octav)")
register_format(r"dorefa(?P<bits>\d+)", lambda m: DoReFaCodebook(_check("dorefa<k>", _bits(m), range(1, 9))),
                help="dorefa<k> (k=1..8)")  # fmt: skip
register_format(r"sym(?P<n>\d+)", lambda m: sym_codebook(int(m.group("n"))),
                help="sym<N> (odd N=3..255)", examples=("sym3", "sym17", "sym31", "sym255"))  # fmt: skip
_NUM = r"[-+0-9.e]+"
register_format(
    rf"state_(?P<kind>uniform|thr|zero)(?P<bits>\d+)"
    rf"(?:_t(?P<t>{_NUM}))?(?:_l(?P<l>{_NUM}))?(?:_u(?P<u>{_NUM}))?(?:_m(?P<m>{_NUM}))?",
    _state,
    defaults=("fixed",),
    help="state_uniform<b> / state_thr<b> / state_zero<b> [_t<thr>][_l<lower>][_u<upper>][_m<mult>]",
    examples=("state_uniform2", "state_uniform4", "state_thr2", "state_thr4", "state_zero4",
              "state_thr3_t0.5_l0.1_u0.5_m0.3"),
)  # fmt: skip


#: weight spec of layers whose levels were learned (weight sharing); the real
#: levels travel with each QTensor, so this placeholder only has to parse when a
#: saved model is rebuilt (``lowbit.load``) -- in any process, with no extra import.
SHARED_SPEC = "shared"
register_format(
    SHARED_SPEC,
    lambda m: LearnedCodebook([-1.0, 1.0], name=SHARED_SPEC),
    defaults=("fixed",),
    help="shared (learned weight-sharing codebook; levels stored with each tensor)",
)