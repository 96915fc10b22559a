"""Algorithms built on the core: weight sharing (k-means, weight fixing) and its statistics."""
from .convert import SHARED_SPEC, to_codebook_model
from .kmeans import SharedWeights, kmeans_1d, kmeans_share
from .stats import ShareStats, layer_weights, share_stats, shared_layers, unique_count, weight_entropy
from .weight_fixing import PWFN_SCHEDULE, WeightFixer, candidate_centres, init_sigma, weight_fixing

__all__ = [
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
