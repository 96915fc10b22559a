"""Turn shared weights into a converted lowbit model whose layers hold codebook QTensors.

Every Conv/Linear layer becomes a converted ``QuantLinear`` / ``QuantConv*`` whose
``qweight`` is a :class:`~lowbit.qtensor.QTensor` over a :class:`~lowbit.codebooks.LearnedCodebook`
(scale 1: the levels are the weight values). With ``per_network=True`` one codebook
instance is shared by all layers; otherwise each layer gets its own. The model
then goes through ``lowbit.save`` / ``lowbit.load`` and the targets like any
converted model (the codebook levels travel in the file).
"""
from __future__ import annotations

import copy
from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from ..formats import SHARED_SPEC, LearnedCodebook
from ..info import set_info
from ..loop import Hook, LoopState, run_epochs
from ..nn.layers import QuantConv1d, QuantConv2d, QuantLayer, QuantLinear
from ..quantizer import Quantizer
from .stats import shared_layers

__all__ = ["SHARED_SPEC", "to_codebook_model", "codebook_levels"]

_QUANT_CLS = {nn.Linear: QuantLinear, nn.Conv1d: QuantConv1d, nn.Conv2d: QuantConv2d}


def _as_levels(values: Tensor) -> Tensor:
    lv = torch.unique(values.detach().float().reshape(-1))
    if lv.numel() == 1:  # a codebook needs two levels; a lone value gets zero (or 1) as a partner
        other = torch.zeros(1) if float(lv) != 0.0 else torch.ones(1)
        lv = torch.unique(torch.cat([lv, other]))
    return lv


def codebook_levels(weights: Mapping[str, Tensor], per_network: bool) -> dict[str, Tensor]:
    """The sorted level set of each layer: the values its weight takes (per layer) or all layers' values."""
    if per_network:
        lv = _as_levels(torch.cat([w.reshape(-1) for w in weights.values()]))
        return {n: lv for n in weights}
    return {n: _as_levels(w) for n, w in weights.items()}


def to_codebook_model(model: nn.Module, weights: Mapping[str, Tensor], *, per_network: bool, tag: str = "") -> nn.Module:
    """A converted copy of ``model`` whose listed layers hold ``weights`` as codebook QTensors."""
    if any(isinstance(m, QuantLayer) for m in model.modules()):
        raise ValueError("model is already quantized; weight sharing starts from a float model")
    layers = shared_layers(model)
    missing = set(layers) - set(weights)
    if missing:
        raise ValueError(f"weights lack layers {sorted(missing)}")
    out = copy.deepcopy(model)
    levels = codebook_levels(weights, per_network)
    info: dict[str, dict[str, object]] = {}
    for name in layers:
        mod = out.get_submodule(name)
        cls = next(c for t, c in _QUANT_CLS.items() if isinstance(mod, t))
        # One codebook object per layer even when the levels are the network's: safetensors
        # refuses tensors that share memory, and QTensor files store each one's levels.
        cb = LearnedCodebook(levels[name].clone(), name=SHARED_SPEC)
        q = Quantizer(cb, "fixed")
        new = cls.from_float(mod, q)
        w = weights[name].detach().to(mod.weight.dtype).reshape(mod.weight.shape)
        qt = q.encode(w)
        if not torch.equal(qt.dequantize().to(w.dtype), w):
            raise ValueError(f"layer {name!r}: its weights are not all on the codebook levels")
        new.set_qweight(qt)
        parent_name, _, child = name.rpartition(".")
        setattr(out.get_submodule(parent_name) if parent_name else out, child, new)
        info[name] = {"kind": cls.__name__, "weight": SHARED_SPEC, "act": None, "converted": True}
    set_info(out, stage="converted", layers=info, config=tag, fold_bn=False, folded=())
    out.eval()
    return out


def check_int(name: str, value: object, lo: int, hi: int | None = None) -> int:
    """``value`` as an int in ``lo..hi``, or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an int {rng}, got {value!r}")
    return value


def check_loader(name: str, loader: object) -> None:
    """A ValueError naming ``name`` unless ``loader`` is an iterable of (inputs, targets) batches with a length."""
    if loader is None or not hasattr(loader, "__iter__") or not hasattr(loader, "__len__"):
        raise ValueError(f"{name} must be a DataLoader of (inputs, targets) batches, got {type(loader).__name__}")
    if len(loader) == 0:  # type: ignore[arg-type]
        raise ValueError(f"{name} gave no batches")


class _Callbacks(Hook):
    """An extra loss term and an after-step action given as plain callables."""

    def __init__(self, extra_loss: Callable[[], Tensor] | None, after_step: Callable[[], object] | None) -> None:
        self.extra, self.after = extra_loss, after_step

    def extra_loss(self, s: LoopState) -> Tensor | None:
        """The regulariser, if any."""
        return self.extra() if self.extra is not None else None

    def on_step_end(self, s: LoopState) -> None:
        """The after-step action (e.g. a clamp), if any."""
        if self.after is not None:
            self.after()


def train_loop(
    forward: nn.Module,
    params: list[nn.Parameter],
    loader: object,
    epochs: int,
    lr: float,
    *,
    extra_loss: Callable[[], Tensor] | None = None,
    after_step: Callable[[], object] | None = None,
    desc: str = "train",
    progress: bool | None = None,
) -> float:
    """Adam + cross-entropy for ``epochs`` over ``loader`` (the one loop of :mod:`lowbit.loop`); returns the last epoch's mean loss."""
    opt = torch.optim.Adam(params, lr=lr)
    s = run_epochs(forward, loader, epochs=epochs, optimizer=opt, hooks=[_Callbacks(extra_loss, after_step)],  # type: ignore[arg-type]
                   desc=desc, progress=progress)
    return s.history["loss"][-1] if s.history["loss"] else float("nan")
