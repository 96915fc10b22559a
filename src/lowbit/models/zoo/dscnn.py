"""DS-CNN, the MLPerf Tiny keyword-spotting model (49x10 MFCC frames, 12 classes), random weights.

The Keras reference: a (10, 4) stride-2 conv with 64 filters, BN, ReLU, then four
depthwise-separable blocks (depthwise 3x3 - BN - ReLU - pointwise 1x1 - BN - ReLU),
average pooling and a Dense classifier (logits here). With 64 filters and 12
classes it has the reference's 23,756 trainable parameters. Dropout as in the
reference (identity in eval). Each block is an ``nn.Sequential``.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ..checks import check_input

__all__ = ["DSCNN"]


def _ds_block(c: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c, c, 3, padding=1, groups=c),  # depthwise
        nn.BatchNorm2d(c),
        nn.ReLU(),
        nn.Conv2d(c, c, 1),  # pointwise
        nn.BatchNorm2d(c),
        nn.ReLU(),
    )


class DSCNN(nn.Module):
    """stem conv (10x4, stride 2) -> 4 depthwise-separable blocks -> average pool -> fc."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, filters: int = 64, blocks: int = 4) -> None:
        super().__init__()
        check_input(input_shape, num_classes, "(C, frames, coefficients) such as (1, 49, 10)", (3,))
        if filters < 1 or blocks < 1:
            raise ValueError(f"filters and blocks must be >= 1, got {filters}, {blocks}")
        # padding (5, 1) gives Keras' 'same' output size, ceil(49/2) x ceil(10/2) = 25 x 5
        self.stem = nn.Sequential(
            nn.Conv2d(input_shape[0], filters, (10, 4), stride=2, padding=(5, 1)),
            nn.BatchNorm2d(filters),
            nn.ReLU(),
            nn.Dropout(0.2),
        )
        self.blocks = nn.Sequential(*[_ds_block(filters) for _ in range(blocks)])
        self.dropout = nn.Dropout(0.4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(filters, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits."""
        x = self.dropout(self.blocks(self.stem(x)))
        return self.fc(self.pool(x).flatten(1))
