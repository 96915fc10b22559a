"""Reference models, built by name so that a saved model can be rebuilt (``lowbit.load``)."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .mlp import MLP
from .vgg import SmallVGG
from .zoo import ZOO

__all__ = ["MLP", "SmallVGG", "build_model", "build_from_arch", "model_names", "register_model"]

_MODELS: dict[str, Callable[..., nn.Module]] = {"mlp": MLP, "vgg": SmallVGG}
_MODELS.update({name: entry.factory for name, entry in ZOO.items()})  # the zoo (lowbit.models.zoo)


def register_model(name: str, factory: Callable[..., nn.Module]) -> None:
    """Make ``factory(input_shape=..., num_classes=..., **kwargs)`` buildable by name."""
    _MODELS[name] = factory


def model_names() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted(_MODELS)


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int, *, seed: int | None = None, **kwargs: Any
) -> nn.Module:
    """Build a reference model by name; the result remembers how (``lowbit_arch``) for ``lowbit.load``."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(model_names())}")
    if seed is not None:
        torch.manual_seed(seed)
    model = _MODELS[name](input_shape=tuple(int(s) for s in input_shape), num_classes=int(num_classes), **kwargs)
    from ..info import set_info  # plumbing below every layer: the one record of what lowbit did to a model

    set_info(model, arch={
        "name": name,
        "input_shape": [int(s) for s in input_shape],
        "num_classes": int(num_classes),
        "kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
    })
    return model


def build_from_arch(arch: Mapping[str, Any]) -> nn.Module:
    """Rebuild a model from its ``lowbit_arch`` description."""
    try:
        return build_model(arch["name"], arch["input_shape"], arch["num_classes"], **dict(arch.get("kwargs", {})))
    except (KeyError, TypeError) as e:
        raise ValueError(f"malformed architecture description {dict(arch)!r}: {e}") from None
