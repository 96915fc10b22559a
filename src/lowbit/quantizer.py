"""The quantizer and its factory (``from lowbit.quantizer import Quantizer, quantizer, parse_spec``).

Kept as a stable import path; the code lives in :mod:`lowbit.quantizers` (one file per
quantizer class, the spec grammar and the factory).
"""
from .quantizers import QuantSpec, Quantizer, build_quantizer, parse_spec, quantizer, register_quantizer

__all__ = ["Quantizer", "quantizer", "parse_spec", "QuantSpec", "register_quantizer", "build_quantizer"]
