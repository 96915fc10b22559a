"""Algorithms built on the core: weight sharing (k-means, weight fixing) and its statistics; PTQ rounding
(GPTQ, AdaRound, bias correction, equalization) and per-layer sensitivity / mixed precision.

``sensitivity`` and ``mixed_precision`` (the functions) are ``lowbit.sensitivity`` and
``lowbit.mixed_precision``; here the names are their modules.
"""
from .adaround import adaround_quantize
from .bias_correction import correct_bias
from .equalization import equalize, relu_chains
from .gptq import HessianAccumulator, gptq_quantize
from .layerwise import METHODS, apply_method
from .mixed_precision import average_bits, choose_bits
from .sensitivity import Sensitivity, hessian_traces
from .convert import SHARED_SPEC, to_codebook_model
from .kmeans import SharedWeights, kmeans_1d, kmeans_share
from .stats import ShareStats, layer_weights, share_stats, shared_layers, unique_count, weight_entropy
from .weight_fixing import PWFN_SCHEDULE, WeightFixer, candidate_centres, init_sigma, weight_fixing

__all__ = [
    "HessianAccumulator",
    "METHODS",
    "Sensitivity",
    "adaround_quantize",
    "apply_method",
    "average_bits",
    "choose_bits",
    "correct_bias",
    "equalize",
    "gptq_quantize",
    "hessian_traces",
    "relu_chains",
    "PWFN_SCHEDULE",
    "SHARED_SPEC",
    "ShareStats",
    "SharedWeights",
    "WeightFixer",
    "candidate_centres",
    "init_sigma",
    "kmeans_1d",
    "kmeans_share",
    "layer_weights",
    "share_stats",
    "shared_layers",
    "to_codebook_model",
    "unique_count",
    "weight_entropy",
    "weight_fixing",
]
