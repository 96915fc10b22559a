"""The verbs' registry of whole-model handlers (torchao style): a model type -> the object that runs the verbs for it.

Most models are trees of layers, and the verbs swap their layers one by one
(:mod:`lowbit.nn.handlers` maps layer types to layer handlers). A model that holds its
weights as a whole instead — a spiking network names its connections and shares one
scale per population — registers a :class:`ModelHandler` for its type, and
``quantize`` / ``prepare_qat`` / ``convert`` / ``save`` / ``load`` hand it the model
(:mod:`lowbit.snn.verbs` registers the spiking networks when ``lowbit.snn`` is imported,
which any code holding one has done).
"""
from __future__ import annotations

import os
from typing import Iterable, Mapping, Protocol

from torch import nn

__all__ = ["ModelHandler", "register_model_handler", "model_handler_for"]


class ModelHandler(Protocol):
    """What a whole-model handler provides: the five verbs, with the verbs' arguments (``config`` already parsed)."""

    def quantize(self, model: nn.Module, config: object, calib: Iterable[object] | None, *, inplace: bool) -> nn.Module:
        """Post-training quantization."""

    def prepare_qat(self, model: nn.Module, config: object, calib: Iterable[object] | None, *, inplace: bool) -> nn.Module:
        """Ready the model for quantization-aware training."""

    def convert(self, model: nn.Module, *, inplace: bool) -> nn.Module:
        """Freeze to integer weights."""

    def save(self, model: nn.Module, path: "str | os.PathLike[str]", metadata: Mapping[str, str] | None) -> None:
        """Write the model in lowbit's file format."""

    def load(self, path: "str | os.PathLike[str]", model: nn.Module) -> nn.Module:
        """Rebuild a saved model into a copy of ``model``."""


_MODEL_HANDLERS: dict[type, ModelHandler] = {}


def register_model_handler(model_type: type, handler: ModelHandler) -> None:
    """Run the verbs on models of ``model_type`` (and its subclasses) through ``handler``."""
    if not isinstance(model_type, type) or not issubclass(model_type, nn.Module):
        raise TypeError(f"model_type must be an nn.Module subclass, got {model_type!r}")
    missing = [v for v in ("quantize", "prepare_qat", "convert", "save", "load") if not callable(getattr(handler, v, None))]
    if missing:
        raise TypeError(f"handler must provide the verbs quantize, prepare_qat, convert, save and load; it lacks {missing}")
    _MODEL_HANDLERS[model_type] = handler


def model_handler_for(model: object) -> ModelHandler | None:
    """The handler registered for ``model``'s type (nearest registered base class), or None: the layer-by-layer verbs."""
    for t in type(model).__mro__:
        if t in _MODEL_HANDLERS:
            return _MODEL_HANDLERS[t]
    return None
