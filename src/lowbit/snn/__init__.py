"""Spiking neural networks: neurons with explicit state, surrogate gradients, encoders, BPTT, quantization.

- :mod:`~lowbit.snn.neurons` -- ``LIF``, ``RLIF`` (recurrent), ``LI`` readout;
- :mod:`~lowbit.snn.surrogate` -- ``fast_sigmoid``, ``atan``;
- :mod:`~lowbit.snn.encoders` -- ``latency_encode``, ``rate_encode``;
- :mod:`~lowbit.snn.network` -- ``SNN`` classifier with named connections and populations;
- :mod:`~lowbit.snn.quant` -- ``WeightQuant`` (per connection / population), ``state_quantizer``, checkpoints;
- :mod:`~lowbit.snn.train` -- ``train`` (BPTT), ``evaluate``;
- :mod:`~lowbit.snn.nir_export` -- ``export_nir``;  :mod:`~lowbit.snn.ablation` -- the FP/PTQ/QAT/SQUAT table.
"""
from .encoders import latency_encode, rate_encode
from .network import SNN
from .neurons import LI, LIF, RLIF, LIFState
from .quant import (
    StateQuantizer,
    WeightQuant,
    calibrate_state_range,
    load_checkpoint,
    save_checkpoint,
    state_levels,
    state_quantizer,
)
from .surrogate import atan, fast_sigmoid
from .train import evaluate, predict, record_membrane, train

__all__ = [
    "LI",
    "LIF",
    "LIFState",
    "RLIF",
    "SNN",
    "StateQuantizer",
    "WeightQuant",
    "atan",
    "calibrate_state_range",
    "evaluate",
    "fast_sigmoid",
    "latency_encode",
    "load_checkpoint",
    "predict",
    "rate_encode",
    "record_membrane",
    "save_checkpoint",
    "state_levels",
    "state_quantizer",
    "train",
]
