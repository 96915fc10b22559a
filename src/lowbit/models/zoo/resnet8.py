"""ResNet-8, the MLPerf Tiny image-classification model (CIFAR-10, 32x32x3), random weights.

The Keras reference (``resnet_v1_eembc``): a conv3-BN-ReLU stem with 16 filters,
then three residual stacks of 16, 32, 64 filters; the first is an identity
block, the other two stride 2 with a 1x1 conv (no BN) on the shortcut; global
average pooling and a Dense classifier (logits here; the reference appends a
softmax). Written as a PyTorch user would port it: attributes per layer, the
residual ``+`` and ``F.relu`` in ``forward``.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_input

__all__ = ["ResNet8"]


class _Stack(nn.Module):
    """conv3-BN-ReLU-conv3-BN plus the shortcut (a strided 1x1 conv when the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride) if stride != 1 or cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        """The residual stack."""
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.shortcut is not None:
            x = self.shortcut(x)
        return F.relu(x + y)


class ResNet8(nn.Module):
    """stem (conv3-BN-ReLU, 16) -> stacks 16, 32/2, 64/2 -> global average pool -> fc."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, filters: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        check_input(input_shape, num_classes, "(C, H, W)", (3,))
        if len(filters) != 3 or min(filters) < 1:
            raise ValueError(f"filters must be three positive widths, got {tuple(filters)}")
        f0, f1, f2 = (int(f) for f in filters)
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], f0, 3, padding=1), nn.BatchNorm2d(f0), nn.ReLU())
        self.stack1 = _Stack(f0, f0, 1)
        self.stack2 = _Stack(f0, f1, 2)
        self.stack3 = _Stack(f1, f2, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(f2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits."""
        x = self.stack3(self.stack2(self.stack1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))
