"""A small VGG-style CNN: blocks of (conv-BN-ReLU) x 2 + max-pool, then a Linear classifier.

Sized for small images (digits 8x8, MNIST 28x28) and 1-D signals (MNIST-1D):
``input_shape`` ``(C, H, W)`` builds 2-D convolutions, ``(C, L)`` 1-D ones.
"""
from __future__ import annotations

import math
from typing import Sequence

from torch import Tensor, nn

from .checks import check_input

__all__ = ["SmallVGG"]


class SmallVGG(nn.Module):
    """``features``: per width, 2 x (conv3 - BN - ReLU) then max-pool 2; ``classifier``: Linear."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, widths: Sequence[int] = (32, 64)) -> None:
        super().__init__()
        check_input(input_shape, num_classes, "(C, L) or (C, H, W)", (2, 3))
        two_d = len(input_shape) == 3
        conv, bn, pool = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d) if two_d else (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d)
        layers: list[nn.Module] = []
        c, spatial = input_shape[0], list(input_shape[1:])
        for w in widths:
            for _ in range(2):
                layers += [conv(c, w, 3, padding=1, bias=False), bn(w), nn.ReLU()]
                c = w
            if min(spatial) >= 2:
                layers.append(pool(2))
                spatial = [s // 2 for s in spatial]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c * math.prod(spatial), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits."""
        return self.classifier(self.features(x).flatten(1))
