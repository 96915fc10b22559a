"""Reference models, built by name so that a saved model can be rebuilt (``lowbit.load``)."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .mlp import MLP
from .vgg import SmallVGG
from .user import build_user_model, is_builder_spec
from .zoo import ZOO

__all__ = ["MLP", "SmallVGG", "build_model", "build_from_arch", "model_names", "register_model", "build_user_model",
           "is_builder_spec"]

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


_JSON_SCALARS = (str, int, float, bool, type(None))


def _plain(v: Any) -> bool:
    """True for JSON data (numbers, strings, lists, dicts of them): nothing that can name code to run."""
    if isinstance(v, _JSON_SCALARS):
        return True
    if isinstance(v, (list, tuple)):
        return all(_plain(x) for x in v)
    return isinstance(v, dict) and all(isinstance(k, str) and _plain(x) for k, x in v.items())


def build_from_arch(arch: Mapping[str, Any]) -> nn.Module:
    """Rebuild a reference or zoo model from its ``lowbit_arch`` description (registered names only).

    The description comes from a file, so it is data, never code: the name must be one of
    :func:`model_names` (the fixed registry; no module path is imported), the shape and class
    count integers, the keyword arguments plain JSON values.
    """
    if not isinstance(arch, Mapping):
        raise ValueError(f"architecture description must be a mapping, got {type(arch).__name__}")
    name = arch.get("name")
    if not isinstance(name, str) or name not in _MODELS:
        raise ValueError(f"the file names architecture {name!r}, which is not a registered lowbit model "
                         f"({', '.join(model_names())}); lowbit builds only registered models by name")
    kwargs = arch.get("kwargs", {})
    shape = arch.get("input_shape")
    if (not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
            or not isinstance(arch.get("num_classes"), int) or not isinstance(kwargs, dict) or not _plain(kwargs)):
        raise ValueError(f"malformed architecture description {dict(arch)!r}: input_shape must be a list of ints, "
                         "num_classes an int, kwargs plain values")
    try:
        return build_model(name, shape, arch["num_classes"], **kwargs)
    except (KeyError, TypeError) as e:
        raise ValueError(f"malformed architecture description {dict(arch)!r}: {e}") from None
