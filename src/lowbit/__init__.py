"""lowbit: low-bit quantization for PyTorch networks, ANNs and spiking networks.

The core, one concept a module:

- :mod:`lowbit.formats` -- ``Uniform``, ``Codebook``: the grid of levels;
- :mod:`lowbit.ranges` -- ``minmax``, ``p<pct>``, ``mse``, fixed point; granularity;
- :mod:`lowbit.quantizers` -- ``QuantSpec``, ``Quantizer`` and its classes, ``quantizer(spec)`` (the factory);
- :mod:`lowbit.qtensor` -- ``QTensor`` and lossless files (:mod:`lowbit.qtensor_storage`: bits per parameter);
- :mod:`lowbit.packing` -- bit packing.
"""
from .formats import Codebook, Format, LearnedCodebook, Uniform, format_from_spec, register_format, state_levels
from .packing import pack, unpack
from .qtensor import QTensor, load_qtensors, save_qtensors
from .qtensor_storage import bits_per_param, double_quantize
from .quantizers import CenteredQuantizer, DoReFaQuantizer, build_quantizer, state_quantizer
from .quantizer import Quantizer, QuantSpec, parse_spec, quantizer
from .ranges import Granularity, register_range

# the 4.6-bit pair arithmetic lives with the MCU target; loaded on first use (see __getattr__)
_LAZY = {"FourSixPair": "lowbit.targets.mcu.pairs", "pair46": "lowbit.targets.mcu.pairs",
         # per-layer sensitivity and bit widths under a budget (issue 17): the algorithms layer, loaded on first use
         "sensitivity": "lowbit.algorithms.sensitivity", "mixed_precision": "lowbit.algorithms.mixed_precision",
         # per-layer format, bytes and kernel of a converted model (issue 20)
         "inspect": "lowbit.nn.inspect"}

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
    "sensitivity",
    "mixed_precision",
    "inspect",
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


# subpackages reachable as ``lowbit.<name>`` after a plain ``import lowbit``, imported on first use
# (snn, targets and data pull in more than the core needs)
_SUBMODULES = ("algorithms", "data", "distributed", "models", "snn", "streaming", "targets", "train")


def __getattr__(name: str) -> object:
    """Load the names that live outside the core (the 4.6-bit pairs, the subpackages) on first use."""
    if name in _LAZY or name in _SUBMODULES:
        import importlib

        if name in _SUBMODULES:
            return importlib.import_module(f"{__name__}.{name}")
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lowbit' has no attribute {name!r}")
