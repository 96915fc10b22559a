"""Compute-in-memory (RRAM crossbar) simulator, after DNN+NeuroSim and TorchInference_RRAM.

``simulate(model, CrossbarConfig(cell_bits=1, adc_bits=6))`` returns a copy of a
quantized model whose Linear/Conv2d layers compute as bit-sliced crossbars with
bit-serial inputs, ADC read-out and device non-idealities. With an ideal
configuration (``adc_bits=None`` or enough bits, no variation, no faults, infinite
on/off ratio) it equals the fake-quantized model.
"""
from .aware import NOISE_MODELS, adc_ste, cell_noise, noise_aware, weight_noise_sigma
from .array import CrossbarArray, adc, combine_slices, n_slices, slice_codes, tile_layout
from .config import CrossbarConfig
from .cost import CostParams, LayerCost, adc_energy, cost, cost_table
from .drift import age, compensation_scale, drift_factors, with_read_noise
from .layers import CrossbarLayer, weight_grid
from .simulate import crossbar_layers, simulate

__all__ = [
    "NOISE_MODELS",
    "CrossbarArray",
    "CrossbarConfig",
    "CrossbarLayer",
    "CostParams",
    "LayerCost",
    "adc_energy",
    "cost",
    "cost_table",
    "adc",
    "adc_ste",
    "age",
    "cell_noise",
    "combine_slices",
    "compensation_scale",
    "crossbar_layers",
    "drift_factors",
    "n_slices",
    "noise_aware",
    "simulate",
    "slice_codes",
    "tile_layout",
    "weight_grid",
    "weight_noise_sigma",
    "with_read_noise",
]
