"""Counting shared weights: unique values and the entropy of the weight distribution.

What is counted (the reference code is inconsistent, so we say it once here):

- the **weights of Conv and Linear layers** (float or quantized: the values the
  forward pass uses); biases, BatchNorm parameters and activation scales are
  *not* counted, unless ``include_bias=True`` adds the Conv/Linear biases (the
  original PWFN counts every ``*mu*`` parameter: weights and biases);
- **zeros are included** by default (PWFN's convention); ``include_zero=False``
  drops them before counting and normalising (WFN's README numbers);
- entropy is Shannon's, **base 2** (bits): ``H = -sum_v p_v log2 p_v`` with
  ``p_v`` the fraction of counted weights equal to ``v``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["shared_layers", "layer_weights", "unique_count", "weight_entropy", "ShareStats", "share_stats"]

COUNTED = "Conv/Linear weights (biases and BatchNorm excluded), entropy in bits"
COUNTED_WITH_BIAS = "Conv/Linear weights and biases (BatchNorm excluded; PWFN's count), entropy in bits"


def shared_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers whose weights are shared and counted: every Conv1d/Conv2d/Linear, by name."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    out = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))}
    if not out:
        raise ValueError("model has no Conv1d/Conv2d/Linear layers whose weights could be shared")
    return out


@torch.no_grad()
def layer_weights(model: nn.Module, include_bias: bool = False) -> dict[str, Tensor]:
    """The weight each counted layer's forward pass uses (fake-quantized if the layer is quantized); ``name.bias`` too if asked."""
    out = {}
    for name, m in shared_layers(model).items():
        qw = getattr(m, "quantized_weight", None)
        out[name] = (qw() if callable(qw) else m.weight).detach().float()
        if include_bias and getattr(m, "bias", None) is not None:
            out[f"{name}.bias"] = m.bias.detach().float()
    return out


def _values(x: Tensor, include_zero: bool) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
    v = x.detach().reshape(-1).float()
    if not torch.isfinite(v).all():
        raise ValueError("x contains NaN or Inf values")
    return v if include_zero else v[v != 0]


def unique_count(x: Tensor, include_zero: bool = True) -> int:
    """Number of distinct values in ``x`` (zero counted unless ``include_zero=False``)."""
    return int(torch.unique(_values(x, include_zero)).numel())


def weight_entropy(x: Tensor, include_zero: bool = True) -> float:
    """Shannon entropy in bits of the value distribution of ``x`` (0.0 for an empty or constant tensor)."""
    v = _values(x, include_zero)
    if v.numel() == 0:
        return 0.0
    _, counts = torch.unique(v, return_counts=True)
    p = counts.double() / v.numel()
    return float(-(p * torch.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0


@dataclass
class ShareStats:
    """Unique weights and entropy for the whole network and per layer."""

    unique: int
    entropy: float
    numel: int
    per_layer: dict[str, tuple[int, float, int]] = field(default_factory=dict)  # name -> (unique, entropy, numel)
    include_zero: bool = True
    include_bias: bool = False

    @property
    def counted(self) -> str:
        """A sentence saying what was counted."""
        what = COUNTED_WITH_BIAS if self.include_bias else COUNTED
        return f"{what}; zeros {'included' if self.include_zero else 'excluded'}"

    def table(self) -> str:
        """Per-layer table as text."""
        rows = [f"{'layer':<24}{'weights':>9}{'unique':>8}{'entropy':>9}"]
        for n, (u, h, k) in self.per_layer.items():
            rows.append(f"{n:<24}{k:>9}{u:>8}{h:>9.3f}")
        rows.append(f"{'network':<24}{self.numel:>9}{self.unique:>8}{self.entropy:>9.3f}")
        rows.append(f"({self.counted})")
        return "\n".join(rows)


def share_stats(model: nn.Module, include_zero: bool = True, include_bias: bool = False) -> ShareStats:
    """Unique weight count and entropy (bits) over the network's Conv/Linear weights (and biases if asked), and per layer."""
    ws = layer_weights(model, include_bias)
    per = {n: (unique_count(w, include_zero), weight_entropy(w, include_zero), w.numel()) for n, w in ws.items()}
    allw = torch.cat([w.reshape(-1) for w in ws.values()])
    return ShareStats(unique_count(allw, include_zero), weight_entropy(allw, include_zero), allw.numel(), per, include_zero,
                      include_bias)  # fmt: skip
