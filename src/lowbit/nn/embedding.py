"""Quantized look-up tables: ``QuantEmbedding`` and ``QuantEmbeddingBag`` (weight-only, one scale per row).

Each row of an embedding table is one token's vector, so the natural granularity is
per row (``channel`` on axis 0, the default of ``w4``): a rare token with small
values keeps its own resolution. The input is integer ids, so there is no input
quantizer; an activation spec in the config does not apply here. ``padding_idx``
behaves as in torch (the row gets no gradient; a zero row stays exactly zero on any
grid). ``max_norm`` renormalises the weight in place inside the forward pass, which
would rewrite the float shadow weight behind the quantizer: it is refused.
"""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..quantizer import Quantizer
from .attention import refuse_trace
from .layers import QuantLayer

__all__ = ["QuantEmbedding", "QuantEmbeddingBag", "embedding_handler"]


def _check_max_norm(mod: nn.Module) -> None:
    if mod.max_norm is not None:  # type: ignore[attr-defined]
        raise ValueError(
            f"max_norm={mod.max_norm} renormalises the weight in place during forward, which lowbit cannot "  # type: ignore[attr-defined]
            "quantize; set max_norm=None (renormalise before quantizing)"
        )


class QuantEmbedding(nn.Embedding, QuantLayer):
    """``nn.Embedding`` whose table is quantized per row (weight-only)."""

    def __init__(self, *args: Any, weight_quant: Quantizer | None = None, **kwargs: Any) -> None:
        nn.Embedding.__init__(self, *args, **kwargs)
        _check_max_norm(self)
        self._init_quant(weight_quant, None)

    @classmethod
    def from_float(cls, mod: nn.Embedding, weight_quant: Quantizer | None, input_quant: Any = None) -> "QuantEmbedding":
        """A QuantEmbedding sharing ``mod``'s table."""
        _check_max_norm(mod)
        if input_quant is not None:
            raise ValueError("an embedding's input is integer ids: it takes no input quantizer")
        new = cls(
            mod.num_embeddings, mod.embedding_dim, padding_idx=mod.padding_idx, scale_grad_by_freq=mod.scale_grad_by_freq,
            sparse=mod.sparse, _weight=mod.weight, _freeze=not mod.weight.requires_grad,
        )
        new.weight = mod.weight
        new._init_quant(weight_quant, None)
        return new

    def forward(self, tokens: Tensor) -> Tensor:
        """Look up rows of the quantized table."""
        refuse_trace(self, tokens)
        return F.embedding(tokens, self.quantized_weight(), self.padding_idx, None, 2.0, self.scale_grad_by_freq, self.sparse)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._quant_repr()}"


class QuantEmbeddingBag(nn.EmbeddingBag, QuantLayer):
    """``nn.EmbeddingBag`` whose table is quantized per row (weight-only)."""

    def __init__(self, *args: Any, weight_quant: Quantizer | None = None, **kwargs: Any) -> None:
        nn.EmbeddingBag.__init__(self, *args, **kwargs)
        _check_max_norm(self)
        self._init_quant(weight_quant, None)

    @classmethod
    def from_float(cls, mod: nn.EmbeddingBag, weight_quant: Quantizer | None, input_quant: Any = None) -> "QuantEmbeddingBag":
        """A QuantEmbeddingBag sharing ``mod``'s table."""
        _check_max_norm(mod)
        if input_quant is not None:
            raise ValueError("an embedding's input is integer ids: it takes no input quantizer")
        new = cls(
            mod.num_embeddings, mod.embedding_dim, mode=mod.mode, scale_grad_by_freq=mod.scale_grad_by_freq,
            sparse=mod.sparse, _weight=mod.weight, include_last_offset=mod.include_last_offset, padding_idx=mod.padding_idx,
        )
        new.weight = mod.weight
        new._init_quant(weight_quant, None)
        return new

    def forward(self, tokens: Tensor, offsets: Tensor | None = None, per_sample_weights: Tensor | None = None) -> Tensor:
        """Pooled look-ups in the quantized table."""
        refuse_trace(self, tokens)
        return F.embedding_bag(
            tokens, self.quantized_weight(), offsets, None, 2.0, self.scale_grad_by_freq, self.mode, self.sparse,
            per_sample_weights, self.include_last_offset, self.padding_idx,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._quant_repr()}"


def embedding_handler(mod: nn.Module, wspec: str | None, aspec: str | None) -> nn.Module:
    """Handler: ``nn.Embedding`` / ``nn.EmbeddingBag`` -> the quantized table (the activation spec does not apply)."""
    from .handlers import weight_quantizer  # the registry imports this module

    if wspec is None:
        return mod
    cls = QuantEmbeddingBag if isinstance(mod, nn.EmbeddingBag) else QuantEmbedding
    _check_max_norm(mod)
    return cls.from_float(mod, weight_quantizer(wspec, mod.weight))  # type: ignore[arg-type]
