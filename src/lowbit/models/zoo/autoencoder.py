"""The fully connected autoencoder of MLPerf Tiny anomaly detection (ToyADMOS: 640 = 5 frames x 128 mel bins), random weights.

The reference: Dense 128 - BN - ReLU four times, a Dense 8 bottleneck - BN - ReLU, Dense 128 -
BN - ReLU four times and a Dense back to the input size. The output is the reconstruction
(its distance to the input is the anomaly score), not class logits: ``num_classes`` is the
output width, the input size by default.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

__all__ = ["FCAutoencoder"]


def _dense(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Linear(cin, cout), nn.BatchNorm1d(cout), nn.ReLU()]


class FCAutoencoder(nn.Module):
    """640 -> 128 x 4 -> 8 -> 128 x 4 -> 640, BN and ReLU after every hidden layer."""

    def __init__(self, input_shape: Sequence[int], num_classes: int | None = None, hidden: int = 128, bottleneck: int = 8) -> None:
        super().__init__()
        if len(input_shape) != 1 or int(input_shape[0]) < 1:
            raise ValueError(f"input_shape must be (features,) such as (640,), got {tuple(input_shape)}")
        n = int(input_shape[0])
        out = n if num_classes is None else int(num_classes)
        if out < 2:
            raise ValueError(f"num_classes must be >= 2 (the output width), got {out}")
        if hidden < 1 or bottleneck < 1:
            raise ValueError(f"hidden and bottleneck must be >= 1, got {hidden}, {bottleneck}")
        layers: list[nn.Module] = []
        widths = [n, hidden, hidden, hidden, hidden, bottleneck, hidden, hidden, hidden, hidden]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += _dense(a, b)
        self.layers = nn.Sequential(*layers)
        self.out = nn.Linear(hidden, out)

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction of ``x``."""
        return self.out(self.layers(x))
