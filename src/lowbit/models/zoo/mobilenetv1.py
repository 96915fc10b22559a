"""MobileNetV1, the MLPerf Tiny visual-wake-words model (96x96x3, 2 classes, width 0.25), random weights.

The reference (TF-slim ``mobilenet_v1_025``): a 3x3 stride-2 conv, then 13 depthwise-separable
blocks (depthwise 3x3 - BN - ReLU - pointwise 1x1 - BN - ReLU) with widths
32*a, 64, 128, 128, 256, 256, 512 x 6, 1024, 1024 (times ``width_mult`` a) and stride 2 at
blocks 2, 4, 6 and 12, global average pooling and a Dense classifier (logits here). ReLU
stands in for the reference's ReLU6 (the activation quantizer's range clips it anyway).
Stride-2 convs pad 1 on every side: the output sizes of Keras' 'same' (48, 24, 12, 6, 3).
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ..checks import check_input

__all__ = ["MobileNetV1"]

# (output channels at width 1, stride) of the 13 depthwise-separable blocks
_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


def _ds(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),  # depthwise
        nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),  # pointwise
    )


class MobileNetV1(nn.Module):
    """stem conv (3x3, stride 2) -> 13 depthwise-separable blocks -> global average pool -> fc."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, width_mult: float = 0.25) -> None:
        super().__init__()
        check_input(input_shape, num_classes, "(C, H, W) such as (3, 96, 96)", (3,))
        if width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")

        def w(c: int) -> int:
            return max(8, int(c * width_mult))

        c = w(32)
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        blocks = []
        for cout, stride in _BLOCKS:
            blocks.append(_ds(c, w(cout), stride))
            c = w(cout)
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits."""
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))
