"""The model zoo: real architectures, hand-written, random init, nothing downloaded.

Each entry says how to build the model and what it eats: ``ZOO[name]`` holds the
factory, its usual input shape and class count, small keyword arguments for fast
tests, and, for token models, the vocabulary size. :func:`zoo_input` makes a
matching random batch. The factories are registered with
:func:`lowbit.models.build_model` under the same names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .autoencoder import FCAutoencoder
from .conv1d import Conv1dNet
from .dscnn import DSCNN
from .lstm import LSTMClassifier
from .mobilenetv1 import MobileNetV1
from .mobilenetv2 import MobileNetV2
from .resnet8 import ResNet8
from .resnet18 import ResNet18
from .vit import VisionTransformer

__all__ = [
    "warm_zoo",
    "ZOO", "ZooModel", "zoo_input", "ResNet18", "ResNet8", "DSCNN", "MobileNetV2",
    "VisionTransformer", "LSTMClassifier", "Conv1dNet", "MobileNetV1", "FCAutoencoder",
]


@dataclass(frozen=True)
class ZooModel:
    """A zoo architecture: factory, usual input shape and classes, small kwargs for tests, vocabulary (tokens)."""

    factory: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    num_classes: int
    small: dict[str, Any] = field(default_factory=dict)
    small_input_shape: tuple[int, ...] | None = None
    vocab: int | None = None  # token ids in [0, vocab) instead of float inputs


ZOO: dict[str, ZooModel] = {
    "resnet18": ZooModel(ResNet18, (3, 224, 224), 1000, {"width": 16}, (3, 32, 32)),
    "resnet8": ZooModel(ResNet8, (3, 32, 32), 10, {"filters": (8, 16, 32)}, (3, 16, 16)),
    "dscnn": ZooModel(DSCNN, (1, 49, 10), 12, {"filters": 32}),
    "mobilenetv2": ZooModel(MobileNetV2, (3, 224, 224), 1000, {"width_mult": 0.25}, (3, 32, 32)),
    "vit": ZooModel(VisionTransformer, (3, 32, 32), 10, {"dim": 32, "depth": 2, "heads": 4}, (3, 16, 16)),
    "lstm": ZooModel(LSTMClassifier, (32,), 4, {"vocab": 50, "embed": 16, "hidden": 16}, (12,), vocab=100),
    "conv1d": ZooModel(Conv1dNet, (1, 40), 10, {"width": 16}),
    "mobilenetv1": ZooModel(MobileNetV1, (3, 96, 96), 2, {"width_mult": 0.25}, (3, 32, 32)),
    "autoencoder": ZooModel(FCAutoencoder, (640,), 640, {"hidden": 32, "bottleneck": 4}),
}


def zoo_input(name: str, batch: int = 2, *, small: bool = True, seed: int = 0, **kwargs: Any) -> Tensor:
    """A random input batch for zoo model ``name`` (its small test shape unless ``small=False``)."""
    if name not in ZOO:
        raise ValueError(f"unknown zoo model {name!r}; valid: {', '.join(sorted(ZOO))}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    entry = ZOO[name]
    shape = (entry.small_input_shape or entry.input_shape) if small else entry.input_shape
    g = torch.Generator().manual_seed(seed)
    if entry.vocab is not None:
        vocab = int(kwargs.get("vocab", entry.small.get("vocab", entry.vocab) if small else entry.vocab))
        return torch.randint(0, vocab, (batch, *shape), generator=g)
    return torch.randn(batch, *shape, generator=g)


def warm_zoo(factory: str, shape: tuple[int, ...], outputs: int, signed: bool, n: int,
             seed: int = 0) -> tuple[nn.Module, Tensor]:
    """A zoo model (``lowbit.models.zoo.<factory>``) with random weights, BatchNorm statistics from ``n``
    synthetic inputs (normal when ``signed``, uniform [0, 1) otherwise), and those inputs."""
    torch.manual_seed(seed)
    model = globals()[factory](shape, outputs)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn((n, *shape), generator=gen) if signed else torch.rand((n, *shape), generator=gen)
    model.train()
    with torch.no_grad():  # BatchNorm statistics as a trained model has them
        for _ in range(3):
            model(x)
    return model.eval(), x
