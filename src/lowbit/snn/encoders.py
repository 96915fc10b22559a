"""Spike encoders (``latency_encode``, ``rate_encode``, ``events_to_raster``), kept under their spiking-network name.

They live in :mod:`lowbit.data.encoders`: the offline spiking data sets encode with them, and
data is a leaf that imports no layer above it (before, ``data`` imported ``snn`` while ``snn``
imported ``data``). Same functions, same objects.
"""
from __future__ import annotations

from ..data.encoders import events_to_raster, latency_encode, rate_encode

__all__ = ["latency_encode", "rate_encode", "events_to_raster"]
