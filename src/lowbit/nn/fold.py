"""Fold BatchNorm into the conv / linear layer that feeds it (inference statistics).

lowbit quantizes the *folded* weights: ``quantize`` and ``prepare_qat`` fold
first (``QuantConfig.fold_bn``), so the integers that are trained, converted
and exported are the ones the hardware runs, with no BN left to apply.

Pairs are found in the model's traced graph (``torch.fx``; ``torch.export`` when
fx cannot trace and an example input is given): a BN module whose only input is
a conv/linear module whose only consumer is that BN, each called once. That
covers residual blocks, branches, ``nn.ModuleDict`` entries and names built with
``getattr``. When the model cannot be traced, pairs inside ``nn.Sequential``
containers (a conv/linear directly followed by a BN) are folded. The BN becomes
``nn.Identity`` in the model itself, so module names, the class and its
``forward`` stay.
"""
from __future__ import annotations

import warnings
from collections import Counter
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["fold_bn", "fold_pair", "find_bn_pairs", "FOLDABLE", "BATCHNORMS"]

_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, *_CONV_T)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_FOLDABLE, _BN = FOLDABLE, BATCHNORMS  # earlier private names


def _out_channels(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return layer.out_features
    return int(layer.out_channels)  # type: ignore[arg-type]


@torch.no_grad()
def fold_pair(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold ``bn``'s inference statistics into ``layer``'s weight and bias, in place."""
    w = layer.weight
    if bn.running_var is None or bn.running_mean is None:
        raise ValueError("BatchNorm without running statistics (track_running_stats=False) cannot be folded")
    inv = torch.rsqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(inv)
    beta = bn.bias if bn.affine else torch.zeros_like(inv)
    a = gamma * inv
    if isinstance(layer, _CONV_T):
        # ConvTranspose weights are [in, out/groups, *k]: output channel g*(out/groups)+j lives at [g-block, j]
        g = layer.groups
        view = w.view(g, w.shape[0] // g, w.shape[1], *w.shape[2:])
        view.mul_(a.reshape(g, 1, w.shape[1], *([1] * (w.dim() - 2))))
    else:
        w.mul_(a.reshape(-1, *([1] * (w.dim() - 1))))
    b = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
    new_b = beta + (b - bn.running_mean) * a
    if layer.bias is None:
        layer.bias = nn.Parameter(new_b.to(w.dtype))
    else:
        layer.bias.copy_(new_b)


_fold_pair = fold_pair  # the earlier private name


def _pair_ok(model: nn.Module, layer_name: str, bn_name: str) -> bool:
    layer, bn = model.get_submodule(layer_name), model.get_submodule(bn_name)
    return isinstance(layer, FOLDABLE) and isinstance(bn, BATCHNORMS) and _out_channels(layer) == bn.num_features


def _fx_pairs(model: nn.Module) -> list[tuple[str, str]]:
    import torch.fx as fx

    gm = fx.symbolic_trace(model)
    nodes = [n for n in gm.graph.nodes if n.op == "call_module"]
    # a module called twice (or reachable under two names) is shared: folding would change its other use
    calls = Counter(id(model.get_submodule(n.target)) for n in nodes)
    pairs = []
    for n in nodes:
        src = n.args[0] if len(n.args) == 1 and not n.kwargs else None
        if not (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1):
            continue
        if calls[id(model.get_submodule(n.target))] == 1 and calls[id(model.get_submodule(src.target))] == 1:
            if _pair_ok(model, src.target, n.target):
                pairs.append((str(src.target), str(n.target)))
    return pairs


def _export_pairs(model: nn.Module, example: Any) -> list[tuple[str, str]]:
    # torch.export traces what fx cannot (shape-dependent Python control flow, specialised on the example)
    args = example if isinstance(example, tuple) else (example,)
    ep = torch.export.export(model, args)
    names = {id(m): n for n, m in model.named_modules()}

    def owner(node: Any) -> str | None:
        stack = node.meta.get("nn_module_stack") or {}
        return list(stack.values())[-1][0] if stack else None

    def canon(path: str | None) -> str | None:
        if path is None:
            return None
        path = path.replace("L['self'].", "").replace("L__self___", "")
        try:
            return names.get(id(model.get_submodule(path)))
        except AttributeError:
            return None

    calls: Counter[str] = Counter()
    aten = [n for n in ep.graph.nodes if n.op == "call_function"]
    for n in aten:
        o = canon(owner(n))
        if o is not None and isinstance(model.get_submodule(o), FOLDABLE + BATCHNORMS) and "getitem" not in str(n.target):
            calls[o] += 1
    pairs = []
    for n in aten:
        o = canon(owner(n))
        if o is None or not isinstance(model.get_submodule(o), BATCHNORMS) or "batch_norm" not in str(n.target):
            continue
        src = n.args[0]
        s = canon(owner(src)) if hasattr(src, "meta") else None
        if s is None or len(src.users) != 1 or calls[o] != 1 or calls[s] != 1:
            continue
        if _pair_ok(model, s, o):
            pairs.append((s, o))
    return pairs


def _sequential_pairs(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for cname, container in model.named_modules():
        if not isinstance(container, nn.Sequential):
            continue
        keys = list(container._modules.keys())
        for k0, k1 in zip(keys, keys[1:]):
            p = f"{cname}." if cname else ""
            if _pair_ok(model, p + k0, p + k1):
                pairs.append((p + k0, p + k1))
    return pairs


def find_bn_pairs(model: nn.Module, example: Tensor | tuple | None = None) -> tuple[list[tuple[str, str]], str]:
    """The (conv/linear name, BatchNorm name) pairs that can be folded, and how they were found (fx, export, sequential)."""
    try:
        return _fx_pairs(model), "fx"
    except Exception:  # noqa: BLE001 - any tracing failure means: try the next way
        pass
    if example is not None:
        try:
            return _export_pairs(model, example), "export"
        except Exception:  # noqa: BLE001
            pass
    return _sequential_pairs(model), "sequential"


def fold_bn(
    model: nn.Module, *, untrained: str = "keep", only: "list[str] | None" = None, example: Tensor | tuple | None = None
) -> list[str]:
    """Fold every BatchNorm that a conv/linear alone feeds (in the traced graph); return the folded BN names.

    ``untrained="keep"`` leaves a BN that never saw data in place (with a warning);
    ``"fold"`` folds it anyway (rebuilding the structure of a saved folded model).
    ``only``: fold just these BN names (what a saved model records it folded).
    ``example``: an input, used to trace with ``torch.export`` where ``torch.fx`` fails.
    """
    if untrained not in ("keep", "fold"):
        raise ValueError(f"untrained must be 'keep' or 'fold', got {untrained!r}")
    pairs, how = find_bn_pairs(model, example)
    if only is not None:
        pairs = [(a, b) for a, b in pairs if b in only]
        missing = sorted(set(only) - {b for _, b in pairs})
        if missing:
            raise ValueError(f"cannot fold BatchNorm {missing}: no conv/linear feeds them in this model; is it the same architecture?")
    folded: list[str] = []
    kept: list[str] = []
    for layer_name, bn_name in pairs:
        bn = model.get_submodule(bn_name)
        seen = getattr(bn, "num_batches_tracked", None)
        if untrained == "keep" and seen is not None and int(seen) == 0:
            # A BN that never saw data (QAT from scratch) would fold its identity
            # statistics and vanish; keep it to learn during training.
            kept.append(bn_name)
            continue
        fold_pair(model.get_submodule(layer_name), bn)
        parent, _, child = bn_name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
        folded.append(bn_name)
    if kept:
        warnings.warn(
            f"BatchNorm modules {kept} have never seen data (an untrained model?) and were not folded; "
            "they stay float and train with the model. Fold after float training for deployable integers.",
            stacklevel=2,
        )
    left = [n for n, m in model.named_modules() if isinstance(m, BATCHNORMS) and n not in kept and only is None]
    if left:
        where = "inside an nn.Sequential (the model could not be traced)" if how == "sequential" else "in the traced graph"
        warnings.warn(
            f"BatchNorm modules {left} do not directly follow a conv/linear {where} and were not folded; they stay float",
            stacklevel=2,
        )
    return folded
