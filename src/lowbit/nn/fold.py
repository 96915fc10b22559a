"""Fold BatchNorm into the conv / linear layer before it (inference statistics).

lowbit quantizes the *folded* weights: ``quantize`` and ``prepare_qat`` fold
first (``QuantConfig.fold_bn``), so the integers that are trained, converted
and exported are the ones the hardware runs, with no BN left to apply.
Pairs are found inside ``nn.Sequential`` containers (a conv/linear directly
followed by a BatchNorm); the BN becomes ``nn.Identity`` so module names stay.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

__all__ = ["fold_bn"]

_FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


@torch.no_grad()
def _fold_pair(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    w = layer.weight
    if bn.running_var is None or bn.running_mean is None:
        raise ValueError("BatchNorm without running statistics (track_running_stats=False) cannot be folded")
    inv = torch.rsqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(inv)
    beta = bn.bias if bn.affine else torch.zeros_like(inv)
    a = gamma * inv
    w.mul_(a.reshape(-1, *([1] * (w.dim() - 1))))
    b = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
    new_b = beta + (b - bn.running_mean) * a
    if layer.bias is None:
        layer.bias = nn.Parameter(new_b.to(w.dtype))
    else:
        layer.bias.copy_(new_b)


def fold_bn(model: nn.Module, *, untrained: str = "keep", only: "list[str] | None" = None) -> list[str]:
    """Fold every BatchNorm that directly follows a conv/linear in a Sequential; return the folded BN names.

    ``untrained="keep"`` leaves a BN that never saw data in place (with a warning);
    ``"fold"`` folds it anyway (rebuilding the structure of a saved folded model).
    ``only``: fold just these BN names (what a saved model records it folded).
    """
    if untrained not in ("keep", "fold"):
        raise ValueError(f"untrained must be 'keep' or 'fold', got {untrained!r}")
    folded: list[str] = []
    kept: list[str] = []
    for cname, container in model.named_modules():
        if not isinstance(container, nn.Sequential):
            continue
        keys = list(container._modules.keys())
        for k0, k1 in zip(keys, keys[1:]):
            a, b = container._modules[k0], container._modules[k1]
            bn_name = f"{cname}.{k1}" if cname else k1
            if only is not None and bn_name not in only:
                continue
            if isinstance(a, _FOLDABLE) and isinstance(b, _BN) and a.weight.shape[0] == b.num_features:
                seen = getattr(b, "num_batches_tracked", None)
                if untrained == "keep" and seen is not None and int(seen) == 0:
                    # A BN that never saw data (QAT from scratch) would fold its identity
                    # statistics and vanish; keep it to learn during training.
                    kept.append(bn_name)
                    continue
                _fold_pair(a, b)
                container._modules[k1] = nn.Identity()
                folded.append(bn_name)
    if kept:
        warnings.warn(
            f"BatchNorm modules {kept} have never seen data (an untrained model?) and were not folded; "
            "they stay float and train with the model. Fold after float training for deployable integers.",
            stacklevel=2,
        )
    left = [n for n, m in model.named_modules() if isinstance(m, _BN) and n not in kept and only is None]
    if left:
        warnings.warn(
            f"BatchNorm modules {left} do not directly follow a conv/linear inside an nn.Sequential and were "
            "not folded; they stay float", stacklevel=2,
        )
    return folded
