"""A 1-D conv net for signals ``(C, L)``: plain, strided, depthwise-dilated and pointwise convs, then a Linear."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ..checks import check_input

__all__ = ["Conv1dNet"]


class Conv1dNet(nn.Module):
    """``features``: conv5 -> conv3/2 -> depthwise conv3 (dilation 2) -> conv1, each + BN + ReLU; mean over time; ``fc``."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: int = 32) -> None:
        super().__init__()
        check_input(input_shape, num_classes, "(C, L)", (2,))
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        w, w2 = width, 2 * width
        self.features = nn.Sequential(
            nn.Conv1d(input_shape[0], w, 5, padding=2), nn.BatchNorm1d(w), nn.ReLU(),
            nn.Conv1d(w, w2, 3, stride=2, padding=1), nn.BatchNorm1d(w2), nn.ReLU(),
            nn.Conv1d(w2, w2, 3, padding=2, dilation=2, groups=w2), nn.BatchNorm1d(w2), nn.ReLU(),
            nn.Conv1d(w2, w2, 1), nn.BatchNorm1d(w2), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(w2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits."""
        return self.fc(self.pool(self.features(x)).flatten(1))
