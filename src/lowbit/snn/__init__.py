"""Spiking neural networks: neurons with explicit state, surrogate gradients, encoders, BPTT, quantization.

- :mod:`~lowbit.snn.neurons` -- ``LIF``, ``RLIF`` (recurrent), ``LI`` readout;
- :mod:`~lowbit.snn.surrogate` -- ``fast_sigmoid``, ``atan``;
- :mod:`~lowbit.snn.encoders` -- ``latency_encode``, ``rate_encode`` (they live in :mod:`lowbit.data.encoders`);
- :mod:`~lowbit.snn.base` -- ``SpikingNetwork``: sizes, named connections and populations, shared by
- :mod:`~lowbit.snn.network` -- ``SNN`` (BPTT, surrogate gradients) and
  :mod:`~lowbit.snn.eventprop` -- ``EventPropSNN`` (exact gradients), trained by ``train_eventprop``;
- :mod:`~lowbit.snn.quant` -- ``WeightQuant`` (per connection / population), ``state_quantizer``;
- :mod:`~lowbit.snn.verbs` -- ``lowbit.quantize`` / ``prepare_qat`` / ``convert`` / ``save`` / ``load`` for both networks;
- :mod:`~lowbit.snn.train` -- ``train`` (BPTT), ``evaluate``;  :mod:`~lowbit.snn.ablation` -- the FP/PTQ/QAT/SQUAT table.

NIR export is a target: :func:`lowbit.targets.nir.export_nir`. :mod:`~lowbit.snn.conv` -- ``ConvSNN``
(Conv1d/Conv2d + LIF, pooling); :mod:`~lowbit.snn.nir_import` -- ``from_nir`` (a NIR graph into an ``SNN``).
:mod:`~lowbit.snn.profiles` -- ``apply_profile`` / ``remove_profile`` (Loihi 2, Xylo integer arithmetic; kept by ``lowbit.save``).
"""
from .base import SpikingNetwork
from .conv import ConvSNN
from .encoders import latency_encode, rate_encode
from .eventprop import EventPropSNN
from .eventprop_train import train_eventprop
from .network import SNN
from .neurons import LI, LIF, RLIF, LIFState
from .profiles import apply_profile, remove_profile
from .quant import (
    StateQuantizer,
    WeightQuant,
    calibrate_state_range,
    state_levels,
    state_quantizer,
)
from .surrogate import atan, fast_sigmoid
from .train import evaluate, predict, record_membrane, train
from .verbs import load_checkpoint, save_checkpoint  # importing verbs registers the networks with lowbit's verbs

__all__ = [
    "LI",
    "LIF",
    "LIFState",
    "RLIF",
    "SNN",
    "ConvSNN",
    "EventPropSNN",
    "SpikingNetwork",
    "StateQuantizer",
    "WeightQuant",
    "apply_profile",
    "atan",
    "calibrate_state_range",
    "evaluate",
    "fast_sigmoid",
    "latency_encode",
    "load_checkpoint",
    "predict",
    "rate_encode",
    "record_membrane",
    "remove_profile",
    "save_checkpoint",
    "state_levels",
    "state_quantizer",
    "train",
    "train_eventprop",
]
