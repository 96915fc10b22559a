"""Deep-Compression weight sharing (Han et al., ICLR 2016): k-means per layer or per network.

1. Cluster the weights with 1-D k-means, centroids initialised evenly over
   ``[min w, max w]`` (linear init: it keeps the rare large weights).
2. Optionally fine-tune the centroids: assignments stay fixed, each weight is
   ``centroids[index]``, so the gradient of a centroid is the sum of its
   members' gradients, ``dL/dC_k = sum_i dL/dW_i [I_i = k]``. Biases and
   BatchNorm parameters train along.
3. Convert: each layer holds a codebook QTensor (per layer or one per network).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .convert import check_int, check_loader, to_codebook_model, train_loop
from .stats import shared_layers

__all__ = ["kmeans_1d", "SharedWeights", "kmeans_share", "SCOPES"]

SCOPES = ("layer", "network")


def _nearest(x: Tensor, centroids: Tensor) -> Tensor:
    # Centroids sorted: nearest by bucketize on the midpoints (no [N, k] tensor).
    return torch.bucketize(x, (centroids[:-1] + centroids[1:]) / 2)


def kmeans_1d(x: Tensor, k: int, iters: int = 100) -> tuple[Tensor, Tensor]:
    """1-D k-means with linear initialisation over [min, max]: (sorted centroids [k], labels like ``x``)."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.numel() == 0:
        raise ValueError("x must be a non-empty floating-point tensor")
    check_int("k", k, 1)
    check_int("iters", iters, 1)
    v = x.detach().reshape(-1).double()
    if not torch.isfinite(v).all():
        raise ValueError("x contains NaN or Inf values")
    c = torch.linspace(float(v.min()), float(v.max()), k, dtype=torch.float64)
    labels = _nearest(v, c)
    for _ in range(iters):  # Lloyd iterations, each one vectorised over all weights
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, labels, v)
        counts = torch.bincount(labels, minlength=k)
        # An empty cluster keeps its centroid (it may win members later).
        c = torch.where(counts > 0, sums / counts.clamp_min(1), c).sort().values
        new = _nearest(v, c)
        if torch.equal(new, labels):
            break
        labels = new
    return c.to(x.dtype), labels.reshape(x.shape)


class SharedWeights(nn.Module):
    """Wraps a model so its Conv/Linear weights are ``centroids[group][index]``: only centroids (and the rest) train."""

    def __init__(self, model: nn.Module, centroids: dict[str, Tensor], assign: dict[str, tuple[str, Tensor]]) -> None:
        super().__init__()
        self.model = model
        self.centroids = nn.ParameterDict({g: nn.Parameter(c.detach().clone().float()) for g, c in centroids.items()})
        self._layers = list(assign)
        self._group = {n: g for n, (g, _) in assign.items()}
        for i, (_, idx) in enumerate(assign.values()):
            self.register_buffer(f"index{i}", idx.detach().long().clone())

    def weights(self) -> dict[str, Tensor]:
        """Each layer's weight rebuilt from its centroids (differentiable with respect to the centroids)."""
        return {n: self.centroids[self._group[n]][getattr(self, f"index{i}")] for i, n in enumerate(self._layers)}

    def forward(self, x: Tensor) -> Tensor:
        """The wrapped model's output with the shared weights."""
        return functional_call(self.model, {f"{n}.weight": w for n, w in self.weights().items()}, (x,))

    def trainable(self) -> list[nn.Parameter]:
        """Centroids plus every model parameter that is not a shared weight (biases, BatchNorm)."""
        tied = {id(self.model.get_submodule(n).weight) for n in self._layers}
        return list(self.centroids.values()) + [p for p in self.model.parameters() if id(p) not in tied and p.requires_grad]


def kmeans_share(
    model: nn.Module,
    k: int,
    scope: str = "layer",
    *,
    loader: object | None = None,
    epochs: int = 0,
    lr: float = 1e-3,
    iters: int = 100,
    progress: bool | None = None,
) -> nn.Module:
    """Share weights with k-means (``scope`` layer or network), optionally fine-tune centroids; a converted copy."""
    check_int("k", k, 2, 2**16)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    check_int("epochs", epochs, 0)
    if epochs and loader is None:
        raise ValueError("loader is needed when epochs > 0 (centroid fine-tuning)")
    if epochs:
        check_loader("loader", loader)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    layers = shared_layers(model)
    ws = {n: m.weight.detach().float() for n, m in layers.items()}
    centroids: dict[str, Tensor] = {}
    assign: dict[str, tuple[str, Tensor]] = {}
    if scope == "network":
        c, labels = kmeans_1d(torch.cat([w.reshape(-1) for w in ws.values()]), k, iters)
        centroids["network"] = c
        for n, part in zip(ws, labels.split([w.numel() for w in ws.values()])):
            assign[n] = ("network", part.reshape(ws[n].shape))
    else:
        for i, (n, w) in enumerate(ws.items()):
            c, labels = kmeans_1d(w, k, iters)
            centroids[f"l{i}"] = c
            assign[n] = (f"l{i}", labels)
    import copy

    shared = SharedWeights(copy.deepcopy(model), centroids, assign)
    if epochs:
        train_loop(shared, shared.trainable(), loader, epochs, lr, desc=f"k-means {k} {scope}", progress=progress)
    with torch.no_grad():
        final = {n: w.detach() for n, w in shared.weights().items()}
    return to_codebook_model(shared.model, final, per_network=scope == "network", tag=f"kmeans{k}:{scope}")
