"""Checking an exported ONNX graph against the PyTorch model, in units of quantization steps.

Why steps and not the output range: a quantized activation rounds ``x / s`` to an integer.
When ``x / s`` sits within float rounding noise of a rounding boundary (a ``.5``), any change
in summation order — onnxruntime's kernels, or PyTorch itself at another batch size — can
send it to the neighbouring level: that activation moves by exactly one step ``s``. Such
inputs are rare but certain to exist, so a bound relative to the output range fails on
whichever input happens to hold one. The check is therefore:

1. **Every quantized activation** (a layer's ``input_quant``, a standalone ``ActQuant``,
   ``PACT``) is compared with onnxruntime's *on the same quantized inputs*: PyTorch runs
   with each quantizer's output replaced by onnxruntime's value once compared (a forward
   hook), so a move upstream is counted once, where it happens, and not again in every
   layer it feeds (in a ResNet-18 one upstream move shifts ``fc``'s input by 2-3 steps).
   Each element may move by **at most one step** (``scale x`` the largest gap between
   adjacent levels), and at most a fraction ``max_moved`` (1 %) of a quantizer's elements,
   over all inputs checked, may move (at least one element always may).
2. **The output**, given the same last quantized activation ``a_q``, differs only by float
   summation order; the bound is ``slack`` (0.05) of one *output unit* ``u``:

   - output quantized (the graph ends in an activation quantizer, possibly followed by
     reshapes, pooling, ReLU or softmax, which change no element by more than their input
     moved, and float BatchNorm, which scales by at most ``gain = max|gamma|/sqrt(var+eps)``):
     ``u = s_out * gain``, the output's quantization step;
   - output of a quantized layer ``y = W a_q + b`` whose input is quantized with step
     ``s_a`` (by its own input quantizer, or by an activation quantizer feeding it directly): ``u = s_a * max|W| * gain``, the most that one element of ``a_q`` moving one
     step can change any output (for a convolution too: one input element meets each
     output through one weight). So a run in which ``M`` elements of ``a_q`` moved one
     step differs from the PyTorch model by at most ``(M + slack) * u`` per output;
   - otherwise (no quantized activation on the way to the output): float arithmetic in
     another order, ``|dy| <= atol * (output range)`` (1e-4).

   Float noise is far below the slack: ``u`` is one weight times one activation step,
   the noise ~1e-7 of the sum (measured: <= 0.0005 u on ResNet-8/18).

The inputs are the example input **and** ``random_inputs`` batches of the same shape drawn
(seeded) from a normal distribution with the example's mean and standard deviation (integer
inputs, token ids: uniformly between the example's smallest and largest id), so the verdict
does not depend on which input was the example.
"""
from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..nn.act import PACT, ActQuant
from ..nn.layers import QuantLayer

__all__ = ["OnnxCheck", "verify_onnx", "output_unit", "activation_step"]

DEFAULT_MAX_MOVED = 0.01
DEFAULT_RANDOM_INPUTS = 5
DEFAULT_SLACK = 0.05
_ONE_STEP = 1.0 + 1e-3  # an element that moved one level, plus float noise on the level value


@dataclass(frozen=True)
class OnnxCheck:
    """What a verification compared: inputs checked, the output bound used, the worst output error, moved fractions."""

    inputs: int
    bound: str  # "output step", "last activation step", or "output range"
    worst: float  # max over inputs of |onnxruntime - torch| / allowed, given the same activations (<= 1 passes)
    moved: dict[str, float]  # activation quantizer -> fraction of its elements that moved one step


def activation_step(m: nn.Module) -> float:
    """The largest distance between adjacent output levels of an activation quantizer (ActQuant or PACT)."""
    if isinstance(m, PACT):
        return float(m.alpha.detach().float()) / float(2**m.bits - 1)
    if isinstance(m, ActQuant):
        levels = m.q.fmt.levels.double()
        gap = float((levels[1:] - levels[:-1]).max()) if levels.numel() > 1 else 1.0
        return float(m.q.scale.detach().double().reshape(-1)[0]) * gap
    raise TypeError(f"expected an ActQuant or PACT module, got {type(m).__name__}")


_LIPSCHITZ = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
              nn.Flatten, nn.Softmax, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
              nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
_LIPSCHITZ_CALLS = {"relu", "sigmoid", "tanh", "flatten", "reshape", "view", "contiguous", "clone", "detach", "softmax"}


def output_unit(gm: torch.fx.GraphModule, node: Any) -> dict[str, Any] | None:
    """Where the output's quantization step comes from: ``{"kind": "act"|"layer", "name", "gain"}``, or None.

    Walks back from the output through ops that change no element by more than its input
    changed (1-Lipschitz: reshapes, ReLU, pooling, softmax) and float BatchNorm (gain).
    """
    gain = 1.0
    while isinstance(node, torch.fx.Node):
        if node.op == "call_module":
            m = gm.get_submodule(str(node.target))
            if isinstance(m, (ActQuant, PACT)):
                return {"kind": "act", "name": str(node.target), "gain": gain}
            if isinstance(m, QuantLayer):
                if getattr(m, "input_quant", None) is not None:
                    return {"kind": "layer", "name": str(node.target), "gain": gain}
                # no input quantizer of its own, but fed straight by one (the graph path's quantizer on a
                # `mean` or residual edge): that quantizer's step bounds the layer's output the same way
                src = node.args[0] if node.args else None
                if isinstance(src, torch.fx.Node) and src.op == "call_module" and isinstance(
                        gm.get_submodule(str(src.target)), (ActQuant, PACT)):
                    return {"kind": "layer", "name": str(node.target), "gain": gain, "act": str(src.target)}
                return None
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if m.running_var is None:
                    return None
                g = m.weight.detach().abs() if m.weight is not None else torch.ones_like(m.running_var)
                gain *= float((g / torch.sqrt(m.running_var + m.eps)).max())
            elif isinstance(m, nn.LeakyReLU):
                gain *= max(1.0, abs(float(m.negative_slope)))
            elif not isinstance(m, _LIPSCHITZ):
                return None
        elif node.op in ("call_function", "call_method"):
            t = node.target
            name = t.overloadpacket.__name__ if isinstance(t, torch._ops.OpOverload) else getattr(t, "__name__", str(t))
            if name not in _LIPSCHITZ_CALLS:
                return None
        else:
            return None
        node = node.args[0] if node.args else None
    return None


def _session(proto: Any, exact: bool, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = int(threads)
    if exact:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _random_like(example: Tensor, n: int, seed: int) -> list[Tensor]:
    """``n`` batches shaped like ``example``, normal with its mean and standard deviation (seeded)."""
    gen = torch.Generator().manual_seed(int(seed))
    if not example.is_floating_point():  # token ids: uniform over the ids the example holds (all valid ones)
        lo, hi = int(example.min()), int(example.max())
        return [torch.randint(lo, hi + 1, example.shape, generator=gen) for _ in range(n)]
    mu = float(example.mean())
    sd = float(example.std()) if example.numel() > 1 else 0.0
    if not math.isfinite(sd) or sd == 0.0:
        sd = max(abs(mu), 1.0)
    return [mu + sd * torch.randn(example.shape, generator=gen) for _ in range(n)]


def _check_options(random_inputs: int, max_moved: float, slack: float, atol: float) -> None:
    if isinstance(random_inputs, bool) or not isinstance(random_inputs, int) or random_inputs < 0:
        raise ValueError(f"random_inputs must be an int >= 0, got {random_inputs!r}")
    if not 0 <= max_moved < 1:
        raise ValueError(f"max_moved must be a fraction in [0, 1), got {max_moved!r}")
    if not 0 <= slack < 1:
        raise ValueError(f"slack must be in [0, 1) (a fraction of one step), got {slack!r}")
    if not atol > 0:
        raise ValueError(f"atol must be > 0, got {atol!r}")


def verify_onnx(
    model: nn.Module,
    onnx_model: "str | os.PathLike[str] | Any",
    example_input: Tensor,
    *,
    random_inputs: int = DEFAULT_RANDOM_INPUTS,
    seed: int = 0,
    max_moved: float = DEFAULT_MAX_MOVED,
    slack: float = DEFAULT_SLACK,
    atol: float = 1e-4,
    exact: bool = True,
    threads: int = 1,
) -> OnnxCheck:
    """Run an exported graph in onnxruntime against ``model``; raise ValueError when it differs by more than the step bound."""
    import onnx

    _check_options(random_inputs, max_moved, slack, atol)
    proto = onnx.load(str(onnx_model)) if isinstance(onnx_model, (str, os.PathLike)) else onnx_model
    props = {p.key: p.value for p in proto.metadata_props}
    recorded = json.loads(props.get("lowbit.verify") or "{}")
    m = copy.deepcopy(model).float().eval()
    modules = dict(m.named_modules())
    taps = {k: v for k, v in recorded.get("taps", {}).items() if isinstance(modules.get(k), (ActQuant, PACT))}
    steps = {k: activation_step(modules[k]) for k in taps}
    unit = recorded.get("output")
    last = None  # the activation whose moves bound the output
    if unit is not None:
        last = unit["name"] if unit["kind"] == "act" else unit.get("act") or f"{unit['name']}.input_quant"
        if last not in taps:
            unit, last = None, None
    u = 0.0
    if unit is not None:
        u = steps[last] * float(unit["gain"])
        if unit["kind"] == "layer":
            u *= float(modules[unit["name"]].quantized_weight().detach().abs().max())  # type: ignore[operator]
    tapped = copy.deepcopy(proto)
    del tapped.graph.output[1:]  # verification reads the first output and the activations
    for t in taps.values():
        tapped.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    sess = _session(tapped, exact, threads)
    in_name = sess.get_inputs()[0].name
    example = example_input.detach().cpu()
    example = example.float() if example.is_floating_point() else example.long()
    batches = [example, *_random_like(example, random_inputs, seed)]
    moved = {k: 0 for k in taps}
    total = {k: 0 for k in taps}
    ort_acts: dict[str, np.ndarray] = {}
    state = {"what": ""}

    def force(mod: nn.Module, _inp: Any, out: Tensor, k: str) -> Tensor:
        # Compare this quantizer with onnxruntime's, then go on with onnxruntime's values, so
        # that every later layer is compared on the same quantized inputs (a move upstream is
        # counted once, where it happens, and not again in everything it feeds).
        theirs = torch.from_numpy(ort_acts[k]).to(out.dtype)
        if theirs.shape != out.shape:
            raise ValueError(f"onnxruntime's activation {k!r} has shape {tuple(theirs.shape)}, PyTorch's {tuple(out.shape)}")
        diff = (theirs - out.detach()).abs() / steps[k]
        worst_k = float(diff.max()) if diff.numel() else 0.0
        if not math.isfinite(worst_k) or worst_k > _ONE_STEP:
            raise ValueError(
                f"onnxruntime differs from PyTorch at activation {k!r} by {worst_k:.3g} steps on {state['what']} "
                "(given the same quantized inputs, an element may move at most one step); the graph was not written")
        moved[k] += int((diff > 0.5).sum())
        total[k] += diff.numel()
        return theirs

    hooks = [modules[k].register_forward_hook(lambda mod, i, o, k=k: force(mod, i, o, k)) for k in taps]
    worst = 0.0
    try:
        for i, x in enumerate(batches):
            state["what"] = "the example input" if i == 0 else f"random input {i} (seed {seed})"
            outs = sess.run(None, {in_name: x.numpy()})
            ort_acts.clear()
            ort_acts.update(zip(taps, outs[1:]))
            with torch.no_grad():
                ref = m(x)
            if not isinstance(ref, Tensor):
                ref = ref[0]
            ref_np = ref.numpy()
            err = float(np.abs(outs[0] - ref_np).max()) if ref_np.size else 0.0
            allowed = atol * (float(ref_np.max() - ref_np.min()) or 1.0) if unit is None else slack * u
            if not math.isfinite(err) or err > allowed:
                if unit is None:
                    why = f"{err:.3g} (allowed {atol:g} of the output range)"
                else:
                    why = f"{err / u:.3g} output steps (allowed {slack:g}; one step = {u:.3g})"
                raise ValueError(f"onnxruntime's output differs from PyTorch's on {state['what']} by {why}, given the "
                                 "same quantized activations; the graph was not written")
            worst = max(worst, err / allowed)
    finally:
        for h in hooks:
            h.remove()
    fractions = {k: moved[k] / max(total[k], 1) for k in taps}
    for k in taps:
        if moved[k] > max(1, math.floor(max_moved * total[k])):
            raise ValueError(
                f"onnxruntime differs from PyTorch at activation {k!r}: {moved[k]} of {total[k]} elements moved one step "
                f"({fractions[k]:.2%}, allowed {max_moved:.2%}) over {len(batches)} inputs; the graph was not written")
    bound = "output range" if unit is None else ("output step" if unit["kind"] == "act" else "last activation step")
    return OnnxCheck(inputs=len(batches), bound=bound, worst=worst, moved=fractions)
