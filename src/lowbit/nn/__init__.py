"""Quantized modules: layers with shadow float weights, activation quantizers, PACT, LSQ."""
from .act import PACT, ActQuant, pact_penalty
from .fold import fold_bn
from .handlers import act_quantizer, handled_types, handler_for, register_handler, weight_quantizer
from .layers import QuantConv1d, QuantConv2d, QuantLayer, QuantLinear, is_quant_layer
from .lsq import LSQQuantizer, lsq_init_scale

__all__ = [
    "ActQuant",
    "LSQQuantizer",
    "PACT",
    "QuantConv1d",
    "QuantConv2d",
    "QuantLayer",
    "QuantLinear",
    "act_quantizer",
    "fold_bn",
    "handled_types",
    "handler_for",
    "is_quant_layer",
    "lsq_init_scale",
    "pact_penalty",
    "register_handler",
    "weight_quantizer",
]
