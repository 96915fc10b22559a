"""GPTQ (Frantar et al. 2022): quantize a layer's columns in order, correcting the rest with the inverse Hessian.

For a layer ``y = W x`` and calibration inputs ``X`` (rows; a conv's unfolded patches),
the layer-output error ``||W X - Q X||^2`` has Hessian ``H = 2 X^T X / n``. Column by
column, the weight is rounded to the grid and the rounding error, divided by the
diagonal of the (upper) Cholesky factor of ``H^-1``, is spread over the columns not yet
quantized. Updates inside a block of ``block`` columns are immediate; the rest of the
matrix gets them once per block (lazy batch updates: one matrix product per block).

- dead columns (``H_jj = 0``: inputs that are always zero) are zeroed and skipped;
- damping adds ``percdamp * mean(diag H)`` to the diagonal;
- ``act_order`` quantizes columns by decreasing ``H_jj`` (the inputs with most energy first);
- group scales (granularity ``group<g>``) are fitted, with the quantizer's own range
  estimator, when GPTQ reaches the group's first column, from the weights as updated so
  far; with ``act_order`` they are fitted up front (the groups are no longer contiguous in
  the quantization order);
- codebook formats (NF4, levels) take the nearest level per column, same error propagation.

With ``H = I`` no error moves (the inverse's factor is diagonal): GPTQ is nearest rounding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..quantizer import Quantizer
from .grid import element_grid, fit_rows, to_grid

__all__ = ["gptq_quantize", "hessian_rows", "HessianAccumulator"]


def hessian_rows(layer: nn.Module, x: Tensor) -> Tensor:
    """The layer's input as rows ``[n, in * kernel]`` matching ``weight.reshape(out, -1)`` (conv: unfolded patches)."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        if layer.groups != 1:
            raise ValueError(f"grouped convolutions (groups={layer.groups}) are not supported by GPTQ")
        if isinstance(layer, nn.Conv1d):  # a 1-D conv is a 2-D conv of height 1
            x = x.unsqueeze(2)
            k, d, p, s = (1, layer.kernel_size[0]), (1, layer.dilation[0]), (0, layer.padding[0]), (1, layer.stride[0])
        else:
            k, d, p, s = layer.kernel_size, layer.dilation, layer.padding, layer.stride
        if isinstance(p, str):
            raise ValueError(f"padding={p!r} is not supported by GPTQ; use integer padding")
        cols = F.unfold(x, k, dilation=d, padding=p, stride=s)  # [N, C*kh*kw, L]
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    raise TypeError(f"layer must be a Linear, Conv1d or Conv2d, got {type(layer).__name__}")


class HessianAccumulator:
    """Running ``H = 2 X^T X / n`` over batches of a layer's inputs."""

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer
        cols = layer.weight[0].numel()
        self.H = torch.zeros(cols, cols, dtype=torch.float32)
        self.n = 0

    def add(self, x: Tensor) -> None:
        """Add one batch of the layer's (already quantized) inputs."""
        rows = hessian_rows(self.layer, x.detach().float())
        m = rows.shape[0]
        self.H.mul_(self.n / (self.n + m))
        self.n += m
        self.H.addmm_(rows.t(), rows, alpha=2.0 / self.n)


def gptq_quantize(
    weight: Tensor,
    q: Quantizer,
    H: Tensor,
    *,
    percdamp: float = 0.01,
    block: int = 128,
    act_order: bool = False,
) -> Tensor:
    """The GPTQ-quantized weight (on ``q``'s grid, same shape); group scales are set on ``q`` as fitted."""
    if not 0 <= percdamp < 1:
        raise ValueError(f"percdamp must be in [0, 1), got {percdamp}")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    shape = weight.shape
    W = weight.detach().reshape(shape[0], -1).to(torch.float32).clone()
    rows, cols = W.shape
    if H.shape != (cols, cols):
        raise ValueError(f"H must be {cols}x{cols} for a weight of shape {tuple(shape)}, got {tuple(H.shape)}")
    if not bool(torch.isfinite(W).all()) or not bool(torch.isfinite(H).all()):
        raise ValueError("weight and H must be finite (no NaN/Inf)")
    H = H.detach().to(torch.float32).clone()
    fmt = q.fmt
    g = q.granularity.size if q.granularity.kind == "group" else 0
    dynamic_groups = g > 0 and not act_order
    if g and not act_order:
        block = max(g, block // g * g)  # a group never straddles two blocks: it is fitted from the block's updated copy
    if g:
        gs = torch.empty(rows, cols // g)
        if act_order:  # static groups: fitted from the original weight
            s0, z0 = fit_rows(q, W.reshape(-1, g))
            q.set_scale(s0, z0)
        S, Z = (element_grid(q, weight.detach().float()) if act_order else (torch.empty(rows, cols), None))
    else:
        S, Z = element_grid(q, weight.detach().float())
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H, S = W[:, perm], H[perm][:, perm], S[:, perm]
        Z = Z[:, perm] if Z is not None else None
    damp = percdamp * torch.mean(torch.diag(H))
    H.diagonal().add_(damp)
    L = torch.linalg.cholesky(H)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    Q = torch.zeros_like(W)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        E1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            if dynamic_groups and j % g == 0:  # the group's scale, from its weights as updated so far
                s_g, z_g = fit_rows(q, W1[:, i:i + g])
                gs[:, j // g] = s_g
                S[:, j:j + g] = s_g[:, None]
                if z_g is not None:
                    if Z is None:
                        Z = torch.zeros(rows, cols)
                    Z[:, j:j + g] = z_g.float()[:, None]
            w = W1[:, i]
            d = Hinv1[i, i]
            qcol = to_grid(w, fmt, S[:, j], Z[:, j] if Z is not None else None)
            Q1[:, i] = qcol
            err = (w - qcol) / d
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            E1[:, i] = err
        Q[:, i1:i2] = Q1
        W[:, i2:] -= E1 @ Hinv[i1:i2, i2:]
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    if dynamic_groups:
        zp = None
        if Z is not None:
            zp = Z[:, ::g].round().to(torch.int32).reshape(-1)
        q.set_scale(gs.reshape(-1), zp)
    return Q.reshape(shape).to(weight.dtype)
