"""lowbit: low-bit quantization for PyTorch networks, ANNs and spiking networks.

The core, one concept a module:

- :mod:`lowbit.formats` -- ``Uniform``, ``Codebook``: the grid of levels;
- :mod:`lowbit.ranges` -- ``minmax``, ``p<pct>``, ``mse``, fixed point; granularity;
- :mod:`lowbit.quantizer` -- ``Quantizer`` and ``quantizer(spec)``;
- :mod:`lowbit.qtensor` -- ``QTensor`` and lossless files;
- :mod:`lowbit.packing` -- bit packing.
"""
from .formats import Codebook, Format, Uniform, format_from_spec, register_format
from .packing import pack, unpack
from .qtensor import QTensor, load_qtensors, save_qtensors
from .quantizer import Quantizer, QuantSpec, parse_spec, quantizer
from .ranges import Granularity, register_range
from . import codebooks  # noqa: F401  (registers the named formats)
from .codebooks import (
    CenteredQuantizer,
    DoReFaQuantizer,
    FourSixPair,
    LearnedCodebook,
    bits_per_param,
    build_quantizer,
    double_quantize,
    pair46,
    state_levels,
    state_quantizer,
)

__version__ = "0.1.0"

__all__ = [
    "CenteredQuantizer",
    "DoReFaQuantizer",
    "FourSixPair",
    "LearnedCodebook",
    "bits_per_param",
    "build_quantizer",
    "double_quantize",
    "pair46",
    "state_levels",
    "state_quantizer",
    "Codebook",
    "Format",
    "Granularity",
    "QTensor",
    "QuantSpec",
    "Quantizer",
    "Uniform",
    "format_from_spec",
    "load_qtensors",
    "pack",
    "parse_spec",
    "quantizer",
    "register_format",
    "register_range",
    "save_qtensors",
    "unpack",
    "__version__",
]
from .config import QuantConfig  # noqa: E402
from .api import calibrate, convert, load, prepare_qat, quantize, save  # noqa: E402
__all__ += ["QuantConfig", "calibrate", "convert", "load", "prepare_qat", "quantize", "save"]  # noqa: E402
