"""Which modules a layer's output runs through, and BRECQ-style block reconstruction (Li et al. 2021).

AdaRound reconstructs what a layer feeds forward, BRECQ what a block of layers does. Both
need the modules that follow a layer, which only an ``nn.Sequential`` spells out: a
:class:`Segment` is a run of sibling modules inside one ``nn.Sequential``, from a rounded
layer (or a block holding several, such as a residual block) up to, not including, the next
sibling that holds a rounded layer. So ``conv -> BN (folded) -> ReLU -> pool`` is one layer's
segment, and with ``block=2`` two such runs are one block. A layer whose parent is not an
``nn.Sequential`` (the classifier behind a custom ``forward``, a conv inside a residual block
in layer mode) is a segment of its own (its output with bias, no activation).

:func:`reconstruct_segment` learns the roundings of every layer in a segment jointly: the
target is the float model's segment output on the float model's inputs, the soft weights see
the inputs of the model as quantized so far (asymmetric reconstruction).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .adaround import SoftRounding, reconstruct
from .capture import layer_inputs
from .grid import check_plain

__all__ = ["Segment", "segments", "reconstruct_segment"]


@dataclass
class Segment:
    """Module names run in order (siblings of one ``nn.Sequential``, or one layer) and the rounded layers in them."""

    modules: list[str]
    layers: list[str]


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _children(model: nn.Module, name: str) -> list[str]:
    mod = model.get_submodule(name)
    return [f"{name}.{c}" if name else c for c, _ in mod.named_children()]


def _inside(name: str, unit: str) -> bool:
    return name == unit or name.startswith(unit + ".")


def _unit(model: nn.Module, layer: str, block: bool) -> str | None:
    # the smallest module holding the layer whose parent is an nn.Sequential (None: no chain to follow)
    a = layer
    while a:
        if isinstance(model.get_submodule(_parent(a)), nn.Sequential):
            return a
        if not block:
            return None  # layer mode follows only a layer that is itself a Sequential's child
        a = _parent(a)
    return None


def segments(model: nn.Module, order: Sequence[str], *, block: int = 1) -> list[Segment]:
    """Group the rounded layers ``order`` (run order) into segments of up to ``block`` layers (1: one per layer)."""
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be an integer >= 1, got {block!r}")
    runs: list[tuple[str | None, list[str], list[str]]] = []  # (parent, units, layers)
    for n in order:
        u = _unit(model, n, block > 1)
        if u is None:
            runs.append((None, [n], [n]))
            continue
        p = _parent(u)
        last = runs[-1] if runs else None
        if last is not None and last[0] == p and u == last[1][-1]:  # another layer of the same compound unit
            last[2].append(n)
        elif last is not None and last[0] == p and u == n and last[1][-1] in last[2] and len(last[2]) < block:
            last[1].append(u)
            last[2].append(n)
        else:
            runs.append((p, [u], [n]))
    out: list[Segment] = []
    for p, units, layers in runs:
        if p is None:
            out.append(Segment(units, layers))
            continue
        sib = _children(model, p)
        i, j = sib.index(units[0]), sib.index(units[-1])
        between = [s for s in sib[i:j + 1] if any(_inside(n, s) for n in order)]
        if between != units:  # the run skips a sibling that holds another rounded layer: one segment per layer
            out.extend(Segment([n], [n]) for n in layers)
            continue
        j += 1
        while j < len(sib) and not any(_inside(n, sib[j]) for n in order):
            j += 1  # what follows up to the next rounded layer: BN, activation, pooling
        out.append(Segment(sib[i:j], layers))
    return out


def reconstruct_segment(model: nn.Module, fmodel: nn.Module, seg: Segment, batches: Sequence[Tensor],
                        options: Mapping[str, object] | None = None) -> dict[str, Tensor]:
    """The learned rounded weight of each layer of ``seg`` (``model`` quantized so far, ``fmodel`` its float twin)."""
    first = seg.modules[0]
    xq = torch.cat(layer_inputs(model, model.get_submodule(first), batches, quantized=False))
    xf = torch.cat(layer_inputs(fmodel, fmodel.get_submodule(first), batches, quantized=False))
    fseq = nn.Sequential(*[fmodel.get_submodule(n) for n in seg.modules])
    qseq = nn.Sequential(*[model.get_submodule(n) for n in seg.modules])
    with torch.no_grad():
        target = torch.cat([fseq(c) for c in xf.split(256)])
    layers = [model.get_submodule(n) for n in seg.layers]
    paths = []
    for n in seg.layers:
        i = next(k for k, m in enumerate(seg.modules) if _inside(n, m))
        paths.append(f"{i}{n[len(seg.modules[i]):]}.weight")
    rounds = [SoftRounding(m.weight, check_plain(m.weight_quant, f"layer {n!r}")) for n, m in zip(seg.layers, layers)]
    saved = [m.weight_quant for m in layers]
    for m in layers:
        m.weight_quant = None  # the soft weight goes in as it is; restored below

    def forward(x: Tensor, ws: Sequence[Tensor]) -> Tensor:
        return functional_call(qseq, dict(zip(paths, ws)), (x,))

    try:
        ws = reconstruct(forward, rounds, xq, target, **options or {})  # type: ignore[arg-type]
    finally:
        for m, q in zip(layers, saved):
            m.weight_quant = q
    return dict(zip(seg.layers, ws))
