"""Codebooks that need more than scale-and-round (centred, DoReFa) and learned ones (weight sharing)."""
from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import Tensor

from .codebook import Codebook
from .levels import dorefa_levels

__all__ = ["CenteredCodebook", "DoReFaCodebook", "LearnedCodebook"]


class CenteredCodebook(Codebook):
    """A codebook whose quantizer subtracts each slice's mean first (BitNetMCU ``binary``).

    The mean only moves the decision threshold: it is not added back, so the
    codes and scale alone rebuild the values.
    """


class DoReFaCodebook(Codebook):
    """DoReFa levels; :class:`DoReFaQuantizer` maps weights onto them through tanh."""

    def __init__(self, bits: int) -> None:
        super().__init__(dorefa_levels(bits), name=f"dorefa{bits}")
        self.dorefa_bits = bits


class LearnedCodebook(Codebook):
    """Levels found from data (weight sharing); one instance may be shared by many tensors.

    Weight-sharing algorithms refill it with :meth:`set_levels`; every quantizer
    holding the instance sees the new levels. Files store the levels, so a
    QTensor with a learned codebook loads back exactly (as a ``Codebook``).
    """

    def __init__(self, levels: Sequence[float] | Tensor, name: str = "learned") -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ValueError(f"name must be lower-case letters, digits and '_', got {name!r}")
        super().__init__(self._clean(levels), name=name)

    @staticmethod
    def _clean(levels: Sequence[float] | Tensor) -> Tensor:
        # Centroids come unsorted and may coincide: sort and merge them.
        return torch.unique(torch.as_tensor(levels, dtype=torch.float32).flatten())

    def set_levels(self, levels: Sequence[float] | Tensor) -> None:
        """Replace the levels (sorted and de-duplicated); the storage bits follow the new count."""
        fresh = Codebook(self._clean(levels), name=self.name)
        self._levels, self._mid, self._bits, self.symmetric = fresh._levels, fresh._mid, fresh._bits, fresh.symmetric
