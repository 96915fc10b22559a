"""Quantizers: a :class:`QuantSpec` (parsed once) and the classes one factory builds from it.

- :mod:`.spec` -- the spec grammar (``int4:channel:mse``) and :class:`QuantSpec`;
- :mod:`.base` -- :class:`Quantizer` (format + range + granularity + rounding + gradient);
- :mod:`.lsq` -- :class:`LSQQuantizer` (learned step size, range token ``lsq``);
- :mod:`.centered`, :mod:`.dorefa` -- the formats that need more than scale-and-round;
- :mod:`.state` -- spiking-neuron state quantizers (``state_quantizer``, ``StateQuantizer``);
- :mod:`.factory` -- :func:`build_quantizer` (= ``lowbit.quantizer``), which picks the class.
"""
from .spec import QuantSpec, parse_spec
from .base import Quantizer
from .centered import CenteredQuantizer
from .dorefa import DoReFaQuantizer
from .lsq import LSQQuantizer, round_ste
from .factory import build_quantizer, quantizer, register_quantizer
from .state import StateQuantizer, state_quantizer

__all__ = [
    "QuantSpec",
    "parse_spec",
    "Quantizer",
    "CenteredQuantizer",
    "DoReFaQuantizer",
    "LSQQuantizer",
    "round_ste",
    "build_quantizer",
    "quantizer",
    "register_quantizer",
    "state_quantizer",
    "StateQuantizer",
]
