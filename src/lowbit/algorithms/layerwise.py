"""Layer-wise PTQ in network order: GPTQ or AdaRound per layer, BRECQ per block, optional bias correction.

``lowbit.quantize(..., method=...)`` calls :func:`apply_method` on the PTQ model (weight
scales fitted, activation ranges calibrated). Each quantized Conv/Linear layer, in the
order the forward pass reaches it, gets its inputs from the model as quantized so far
(earlier layers already rounded by the method), and its float shadow weight is replaced
by the chosen grid values. AdaRound and BRECQ reconstruct the float model's output of each
layer's / block's segment (lowbit.algorithms.brecq) from the quantized model's inputs: the result is an ordinary PTQ model (``convert``, ``save``,
ONNX and the MCU target take it as they take any).
"""
from __future__ import annotations

import copy
import warnings
from itertools import islice
from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

from ..api import batch_inputs
from ..nn.layers import QuantLayer
from ..progress import note, track
from .bias_correction import correct_bias
from .brecq import reconstruct_segment, segments
from .capture import layer_inputs, run_order
from .gptq import HessianAccumulator, gptq_quantize
from .grid import check_plain

__all__ = ["METHODS", "OPTIONS", "apply_method", "float_twin", "method_layers"]

METHODS = ("nearest", "gptq", "adaround", "brecq")
_ROUNDING = ("iters", "batch_size", "lr", "lam", "beta", "warmup", "seed")
# the keyword options each method takes (method_options=)
OPTIONS: dict[str, tuple[str, ...]] = {
    "nearest": (),
    "gptq": ("percdamp", "block", "act_order"),
    "adaround": _ROUNDING,
    "brecq": _ROUNDING + ("block_layers",),  # block_layers: rounded layers per block in a plain chain (default 2)
}
_KINDS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def check_method(method: object, options: Mapping[str, object] | None = None) -> dict[str, object]:
    """Validate ``method`` and its ``options``; return the options as a dict."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    opts = dict(options or {})
    bad = [k for k in opts if k not in OPTIONS[str(method)]]
    if bad:
        allowed = ", ".join(OPTIONS[str(method)]) or "none"
        raise ValueError(f"method_options {bad} do not apply to method {method!r}; allowed: {allowed}")
    return opts


def method_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The quantized Conv/Linear layers whose weights a method may round (name -> layer)."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, QuantLayer) and isinstance(m, _KINDS) and m.weight_quant is not None and not m.converted}


def float_twin(model: nn.Module) -> nn.Module:
    """A copy of a PTQ model whose quantized layers compute in float (no weight or input quantizer)."""
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if isinstance(m, QuantLayer):
            m.weight_quant = None  # type: ignore[assignment]
            m.input_quant = None  # type: ignore[assignment]
    return twin.eval()


def apply_method(
    model: nn.Module,
    calib: Iterable[object],
    method: str = "gptq",
    *,
    calib_batches: int = 8,
    bias_correction: bool = False,
    options: Mapping[str, object] | None = None,
    progress: bool | None = None,
) -> nn.Module:
    """Round a PTQ model's weights layer by layer with ``method``, in place; optionally correct the biases."""
    opts = check_method(method, options)
    if calib_batches < 1:
        raise ValueError(f"calib_batches must be >= 1, got {calib_batches}")
    batches: list[Tensor] = [batch_inputs(b) for b in islice(calib, calib_batches)]
    if not batches:
        raise ValueError("calib gave no batches")
    layers = method_layers(model)
    if not layers:
        raise ValueError("the model has no quantized Conv/Linear layer for method=" + repr(method))
    was = model.training
    model.eval()
    order = run_order(model, layers, batches[0])
    fmodel = float_twin(model) if bias_correction or method in ("adaround", "brecq") else None
    corrected: list[str] = []
    if method in ("adaround", "brecq"):
        block = int(opts.pop("block_layers", 2)) if method == "brecq" else 1  # type: ignore[call-overload]
        if block < 1:
            raise ValueError(f"block_layers must be >= 1, got {block}")
        assert fmodel is not None
        segs = segments(model, order, block=block)
        for seg in track(segs, total=len(segs), desc=f"PTQ {method}", progress=progress):
            for name, wq in reconstruct_segment(model, fmodel, seg, batches, opts).items():
                with torch.no_grad():
                    layers[name].weight.copy_(wq)
                if bias_correction:
                    corrected += correct_bias(model, fmodel, [name], batches)
            note(f"PTQ {method}: {', '.join(seg.layers)} done", progress=progress)
        order = [n for seg in segs for n in seg.layers]
    plain = order if method in ("nearest", "gptq") else []
    for name in track(plain, total=len(plain), desc=f"PTQ {method}", progress=progress):
        m = layers[name]
        if method == "gptq":
            q = check_plain(m.weight_quant, f"layer {name!r}")
            if getattr(m, "groups", 1) != 1:
                warnings.warn(f"layer {name!r}: GPTQ skips grouped convolutions; it keeps nearest rounding", stacklevel=2)
            else:
                acc = HessianAccumulator(m)
                for x in layer_inputs(model, m, batches):
                    acc.add(x)
                wq = gptq_quantize(m.weight, q, acc.H, **opts)  # type: ignore[arg-type]
                with torch.no_grad():
                    m.weight.copy_(wq)
        if bias_correction:
            corrected += correct_bias(model, fmodel, [name], batches)  # type: ignore[arg-type]
        note(f"PTQ {method}: {name} done", progress=progress)
    if bias_correction and len(corrected) < len(order):
        skipped = [n for n in order if n not in corrected]
        warnings.warn(f"bias correction skipped layers without a bias: {', '.join(skipped)}", stacklevel=2)
    model.train(was)
    return model
