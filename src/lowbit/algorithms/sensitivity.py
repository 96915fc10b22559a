"""Per-layer sensitivity to weight quantization: measured (one layer at a time) and Hessian-trace estimates.

``sensitivity(model, calib, data)`` quantizes each Conv/Linear layer *alone* at each bit
width (the rest stays float), with the PTQ method given, and records the accuracy drop
(points) and the loss increase on ``data``. The fast alternative needs no quantized
evaluations: Hutchinson's estimator of the trace of the loss Hessian per layer,
``tr(H) ~ mean over v of v^T H v`` (Rademacher ``v``, Hessian-vector products by double
backpropagation on the calibration batches), times the squared quantization error of the
weights: ``tr(H)/n * ||Q_b(W) - W||^2`` (HAWQ-v2's score), in loss units.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from itertools import islice
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..api import batch_inputs, quantize
from ..nn.fold import fold_bn
from ..progress import note, track
from ..quantizer import quantizer

__all__ = ["Sensitivity", "sensitivity", "hessian_traces", "weight_layers", "DEFAULT_SPEC"]

DEFAULT_SPEC = "int{b}:channel:mse"
_KINDS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The float Conv/Linear layers of ``model`` by name (what a config can set bits for)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, _KINDS) and n}


def _labelled(data: object) -> list[tuple[Tensor, Tensor]]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data) \
            and data[0].shape[0] == data[1].shape[0] and data[1].dim() == 1:  # (inputs, labels) tensors
        return [(data[0], data[1])]
    out = []
    for b in data:  # type: ignore[union-attr]
        if not (isinstance(b, (tuple, list)) and len(b) >= 2 and isinstance(b[1], Tensor)):
            raise TypeError("data must be (inputs, labels) tensors or batches of (inputs, labels)")
        out.append((b[0], b[1]))
    if not out:
        raise ValueError("data gave no batches")
    return out


@torch.no_grad()
def _score(model: nn.Module, data: Sequence[tuple[Tensor, Tensor]]) -> tuple[float, float]:
    was = model.training
    model.eval()
    correct, loss, n = 0, 0.0, 0
    for x, y in data:
        out = model(x)
        correct += int((out.argmax(1) == y).sum())
        loss += float(F.cross_entropy(out, y, reduction="sum"))
        n += y.shape[0]
    model.train(was)
    return 100.0 * correct / n, loss / n


@dataclass
class Sensitivity:
    """Per-layer sensitivity: accuracy drop (points) and loss increase per bit width; Hessian-trace estimates."""

    layers: list[str]
    bits: list[int]
    params: dict[str, int]
    float_acc: float
    float_loss: float
    acc_drop: dict[str, dict[int, float]] = field(default_factory=dict)
    loss_increase: dict[str, dict[int, float]] = field(default_factory=dict)
    trace: dict[str, float] = field(default_factory=dict)
    hessian: dict[str, dict[int, float]] = field(default_factory=dict)

    def score(self, layer: str, bits: int, measure: str = "loss") -> float:
        """One layer's cost at ``bits``: ``loss`` (measured increase), ``accuracy`` (drop) or ``hessian`` (estimate)."""
        table = {"loss": self.loss_increase, "accuracy": self.acc_drop, "hessian": self.hessian}.get(measure)
        if table is None:
            raise ValueError(f"measure must be 'loss', 'accuracy' or 'hessian', got {measure!r}")
        if not table:
            raise ValueError(f"no {measure!r} sensitivities were computed")
        return table[layer][bits]

    def table(self) -> str:
        """A markdown table: one row per layer, accuracy drop / loss increase per bit width, Hessian trace."""
        head = "| layer | params | " + " | ".join(f"W{b} drop pt / loss +" for b in self.bits) + " | tr(H)/n |"
        lines = [head, "|---|---:|" + "---:|" * (len(self.bits) + 1)]
        for n in self.layers:
            cells = []
            for b in self.bits:
                a = self.acc_drop.get(n, {}).get(b)
                lo = self.loss_increase.get(n, {}).get(b)
                cells.append("–" if a is None else f"{a:+.2f} / {lo:+.4f}")
            tr = f"{self.trace[n]:.3g}" if n in self.trace else "–"
            lines.append(f"| {n} | {self.params[n]} | " + " | ".join(cells) + f" | {tr} |")
        lines.append(f"\nfloat: {self.float_acc:.2f} % accuracy, loss {self.float_loss:.4f}")
        return "\n".join(lines)


def hessian_traces(model: nn.Module, calib: Iterable[object], layers: Sequence[str], *, samples: int = 16,
                   calib_batches: int = 4, seed: int = 0) -> dict[str, float]:
    """Hutchinson estimates of ``tr(H)/n`` of the loss per layer weight (labels from the batches, else the model's own)."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    model = copy.deepcopy(model).eval()
    params = [model.get_submodule(n).weight for n in layers]
    gen = torch.Generator().manual_seed(seed)
    sums = [0.0] * len(layers)
    batches = list(islice(calib, calib_batches))
    if not batches:
        raise ValueError("calib gave no batches")
    for b in batches:
        x = batch_inputs(b)
        with torch.enable_grad():
            out = model(x)
            y = b[1] if isinstance(b, (tuple, list)) and len(b) > 1 and isinstance(b[1], Tensor) else out.argmax(1).detach()
            loss = F.cross_entropy(out, y)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            for s in range(samples):
                vs = [torch.randint(0, 2, p.shape, generator=gen).to(p.dtype) * 2 - 1 for p in params]
                hv = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=s < samples - 1)
                for i, (h, v) in enumerate(zip(hv, vs)):
                    sums[i] += float((h * v).sum())
    k = samples * len(batches)
    return {n: sums[i] / k / params[i].numel() for i, n in enumerate(layers)}


def sensitivity(
    model: nn.Module,
    calib: Iterable[object],
    data: object,
    *,
    bits: Sequence[int] = (8, 4, 3, 2),
    spec: str = DEFAULT_SPEC,
    method: str = "nearest",
    measured: bool = True,
    hessian: bool = True,
    calib_batches: int = 8,
    progress: bool | None = None,
    seed: int = 0,
) -> Sensitivity:
    """Each layer's accuracy drop and loss increase on ``data`` when it alone is quantized at each of ``bits``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    bits = [int(b) for b in bits]
    if not bits or any(b < 1 for b in bits):
        raise ValueError(f"bits must be positive integers, got {bits}")
    if "{b}" not in spec:
        raise ValueError(f"spec must hold '{{b}}' for the bit width, e.g. {DEFAULT_SPEC!r}; got {spec!r}")
    calib = list(islice(calib, calib_batches))
    labelled = _labelled(data) if measured or data is not None else []
    ref = copy.deepcopy(model).eval()
    fold_bn(ref)  # what PTQ quantizes: the folded weights (the float function is unchanged)
    layers = list(weight_layers(ref))
    if not layers:
        raise ValueError("model has no Conv/Linear layer to quantize")
    acc0, loss0 = _score(model, labelled) if labelled else (float("nan"), float("nan"))
    out = Sensitivity(layers, bits, {n: ref.get_submodule(n).weight.numel() for n in layers}, acc0, loss0)
    if measured:
        for n in track(layers, total=len(layers), desc="sensitivity", progress=progress):
            out.acc_drop[n], out.loss_increase[n] = {}, {}
            for b in bits:
                qm = quantize(model, f"{n}={spec.format(b=b)}", calib=calib, calib_batches=calib_batches, method=method)
                acc, loss = _score(qm, labelled)
                out.acc_drop[n][b], out.loss_increase[n][b] = acc0 - acc, loss - loss0
            note(f"sensitivity: {n} done", progress=progress)
    if hessian:
        out.trace = hessian_traces(ref, calib, layers, seed=seed)
        for n in layers:
            w = ref.get_submodule(n).weight.detach()
            out.hessian[n] = {}
            for b in bits:
                q = quantizer(spec.format(b=b))
                q.fit(w)
                out.hessian[n][b] = out.trace[n] * float(((q(w) - w) ** 2).sum())
    return out
