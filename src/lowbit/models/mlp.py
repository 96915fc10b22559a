"""A small MLP reference model: Flatten, hidden Linear+ReLU layers, a Linear classifier."""
from __future__ import annotations

import math
from typing import Sequence

from torch import Tensor, nn

__all__ = ["MLP"]


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU] * len(hidden) -> ``classifier`` Linear."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (128, 64)) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        layers: list[nn.Module] = []
        width = math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits."""
        return self.classifier(self.features(x.flatten(1)))
