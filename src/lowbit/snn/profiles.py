"""Integer neuromorphic profiles: QAT constrained to the arithmetic of Loihi 2 or SynSense Xylo.

``apply_profile(snn, "loihi2" | "xylo")`` makes an :class:`~lowbit.snn.SNN` run its forward
pass in the chip's integer arithmetic, fake-quantized (straight-through gradients), so that
BPTT fine-tunes the float shadow weights for the chip. Every intermediate of that forward
pass is an integer held in a **float64** tensor (products reach 2^35, past float32's 2^24, and
float64 is exact below 2^53), so :func:`lowbit.snn.intsim.simulate`, which runs the same
program with int64 NumPy arrays only, gives exactly the same spikes.

State units: hidden layer ``k``'s float threshold ``thr`` maps to the integer threshold
``theta = 2^threshold_bits``; one state unit is ``thr / theta``. The readout's unit is
``2^-readout_bits`` (logits are ``v * 2^-readout_bits``).

One step of a hidden neuron, in the chip's order (integers throughout):

1. ``i = W_ff @ x[t] (+ W_rec @ s[t-1])``   weights ``w_int << e``: 8-bit signed mantissa, one
   exponent per connection (Loihi 2: ``e = 6 + weight_exp``; Xylo: ``weight_shift``), fitted every
   forward pass to the 99th percentile of |W| as ``fxp8:p99`` does, clamped to ``[0, max_shift]``;
2. ``u = sat(decay_u(u) + i)``              synaptic current (a network without ``alpha`` decays it fully);
3. ``v = sat(decay_v(v) + u)``              membrane; ``sat`` clamps to the state width;
4. spike: ``v > theta`` (Loihi 2) or ``v >= theta`` (Xylo); at most one spike per step;
5. reset: ``v = 0`` (Loihi 2) or ``v -= theta`` (Xylo), in the same step.

Decays (sources: issue 18's figures, checked against a public copy where one was at hand):

- Loihi 2 (Lava's bit-accurate CUBA LIF, ``PyLifModelBitAcc``; recalled, not read here): 12-bit
  decay ``d`` in 0..4096, ``v <- sign(v * (4096 - d)) * (|v * (4096 - d)| >> 12)`` (truncation toward
  zero); 24-bit signed ``u`` and ``v``; threshold ``vth_mant << 6``. Lava wraps an overflowing ``u``
  around; this profile saturates it (a trained network stays far from 2^23: the range is 2048 thr).
- Xylo (XyloSim 0.1.3, ``XyloIAFNeuron.cpp``, read): ``dv = v >> dash`` (arithmetic shift), at least
  ``sign(v)`` when ``v != 0``; ``v -= dv``; 16-bit saturating state; ``while v >= thr: v -= thr``
  (this profile allows one spike per step, as the network's binary spikes). XyloSim saturates
  after each added weight; here the summed input saturates once (they differ only when a partial
  sum overflows 16 bits). Xylo's core sizes (16 inputs, 1000 hidden, 8 outputs on Xylo Audio)
  are not checked: the profile constrains the arithmetic, not the network's size.

``beta`` (and ``alpha``, the readout's ``beta``) round to the nearest representable decay:
``keep = round(4096 * beta)`` (Loihi 2), ``dash`` with ``1 - 2^-dash`` nearest to ``beta`` (Xylo).
:func:`apply_profile` turns off the network's own weight and state quantizers: the profile
quantizes both.

QAT recipe (:func:`profile_qat`, what ``lowbit snn --profile`` and the benchmark run): when the float
network resets otherwise than the chip (the default subtractive reset, for Loihi 2's standard CUBA LIF,
which resets to zero), its neurons are switched to the chip's reset and fine-tuned in float first, then the
profile is applied and the network trained in the integer arithmetic. Measured
(``benchmarks/bench_snn.py --only profiles``): Loihi 2's cost on the ``lowbit snn`` task is its reset to
zero, not its integers: the same arithmetic with a subtractive reset
(``dataclasses.replace(PROFILES["loihi2"], reset="subtract")``, a custom neuron model on Loihi 2) matches
8-bit QAT with integer QAT alone, while the standard neuron needs the reset adaptation to come within 1 pt.

``lowbit.save`` writes the profile (every field of its :class:`ChipProfile`) in the network's record and
``lowbit.load`` applies it again, so a loaded network gives the same spikes.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .neurons import RLIF, linear_seq

__all__ = ["ChipProfile", "PROFILES", "Profiled", "apply_profile", "remove_profile", "chip_weights",
           "decay_code", "decay_int", "profile_qat", "profile_record", "restore_profile"]


@dataclass(frozen=True)
class ChipProfile:
    """A chip's integer arithmetic: weight bits and exponent range, state width, decay kind, spike and reset rule."""

    name: str
    weight_bits: int        # signed weight mantissa
    max_shift: int          # largest weight exponent (left shift of the mantissa)
    threshold_bits: int     # the float threshold maps to 2^threshold_bits
    readout_bits: int       # the readout's unit is 2^-readout_bits
    state_bits: int         # signed width of current and membrane (saturating)
    decay: str              # "frac12": v*(4096-d) >> 12 toward zero; "shift": v -= max(v >> dash, sign v)
    reset: str              # "zero" or "subtract"
    strict: bool            # spike when v > theta (True) or v >= theta (False)

    @property
    def theta(self) -> int:
        """The integer threshold."""
        return 1 << self.threshold_bits

    @property
    def state_range(self) -> tuple[int, int]:
        """Saturation bounds of current and membrane."""
        # Lava clips v to +-(2^23 - 1); Xylo's int16 safe_add to [-2^15, 2^15 - 1]
        hi = (1 << (self.state_bits - 1)) - 1
        return (-hi if self.decay == "frac12" else -hi - 1), hi

    @property
    def weight_range(self) -> tuple[int, int]:
        """Bounds of the signed weight mantissa."""
        return -(1 << (self.weight_bits - 1)), (1 << (self.weight_bits - 1)) - 1


PROFILES: dict[str, ChipProfile] = {
    # theta = 2^12 = vth_mant 64 << 6; weight exponent 6 + weight_exp, weight_exp in -8..7 (>= 0 kept)
    "loihi2": ChipProfile("loihi2", 8, 13, 12, 12, 24, "frac12", "zero", True),
    # theta = 2^11 leaves +-16 thr in 16 bits; weight_shift 0..7
    "xylo": ChipProfile("xylo", 8, 7, 11, 8, 16, "shift", "subtract", False),
}


def decay_code(profile: ChipProfile, beta: float | None) -> int:
    """The chip's decay constant for a per-step leak ``beta`` (None: full decay): Loihi 2's kept 12-bit fraction, Xylo's dash."""
    if beta is None or beta <= 0.0:
        return 0
    if not 0.0 < beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta!r}")
    if profile.decay == "frac12":
        return int(min(4096, max(0, round(4096 * beta))))  # keep = 4096 - d
    if beta >= 1.0:
        return 15  # no shift reaches 1; the slowest 4-bit dash
    # dash in 1..15 with 1 - 2^-dash nearest to beta (dash 0 = full decay)
    return min(range(1, 16), key=lambda d: abs(1.0 - 2.0 ** -d - beta))


def decay_factor(profile: ChipProfile, code: int) -> float:
    """The leak a decay code stands for (the straight-through gradient of one decay)."""
    if profile.decay == "frac12":
        return code / 4096.0
    return 0.0 if code == 0 else 1.0 - 2.0 ** -code


def decay_int(profile: ChipProfile, v: Tensor, code: int) -> Tensor:
    """One exact integer decay of ``v`` (integers in a float64 tensor); gradient ``decay_factor``."""
    f = decay_factor(profile, code)
    if profile.decay == "frac12":
        exact = torch.trunc(v.detach() * code / 4096.0)  # v*keep < 2^36: exact in float64
    elif code == 0:
        exact = torch.zeros_like(v)
    else:
        vd = v.detach()
        dv = torch.floor(vd / float(1 << code))  # arithmetic shift
        dv = torch.where((dv == 0) & (vd > 0), torch.ones_like(dv), dv)  # XyloSim: at least 1
        exact = vd - dv
    if not v.requires_grad:
        return exact
    approx = v * f
    return approx + (exact - approx.detach())


def _ste(x: Tensor, exact: Tensor) -> Tensor:
    return x + (exact - x.detach()) if x.requires_grad else exact


def saturate(profile: ChipProfile, v: Tensor) -> Tensor:
    """Clamp to the state width (straight-through gradient)."""
    lo, hi = profile.state_range
    return _ste(v, v.detach().clamp(lo, hi))


def weight_exponent(profile: ChipProfile, w: Tensor, unit: float) -> int:
    """The connection's exponent: 99th percentile of |w| / unit on the mantissa's range, clamped to [0, max_shift]."""
    a = float(torch.quantile(w.detach().abs().flatten().double(), 0.99)) if w.numel() else 0.0
    if a <= 0.0:
        return 0
    e = math.ceil(math.log2(a / unit / profile.weight_range[1]))
    return int(min(profile.max_shift, max(0, e)))


def chip_weights(net: Any, profile: ChipProfile) -> dict[str, tuple[Tensor, int]]:
    """Every connection as (``w_int * 2^e`` in state units, float64, straight-through; ``e``)."""
    out: dict[str, tuple[Tensor, int]] = {}
    lo, hi = profile.weight_range
    for name, w in net.connections().items():
        if name == "out":
            unit = 2.0 ** -profile.readout_bits
        else:
            k = int(name[3:] if name.startswith("rec") else name[2:])
            unit = net.hidden[k].threshold / profile.theta
        e = weight_exponent(profile, w, unit)
        step = unit * 2.0 ** e  # float units per mantissa step
        scaled = w.double() / step
        mant = _ste(scaled, torch.round(scaled.detach()).clamp(lo, hi))
        out[name] = (mant * float(1 << e), e)
    return out


class _ChipStep(torch.autograd.Function):
    """``u' = sat(decay(u) + i)``, ``v' = sat(decay(v) + u')`` exactly, as one autograd node (straight-through:
    the decays pass ``decay_factor``, saturation passes 1), so the time loop stays a few nodes per step."""

    @staticmethod
    def forward(ctx, u: Tensor, v: Tensor, i: Tensor, p: ChipProfile, syn: int, mem: int):  # type: ignore[override]
        lo, hi = p.state_range
        u2 = (decay_int(p, u.detach(), syn) + i.detach()).clamp_(lo, hi)
        v2 = (decay_int(p, v.detach(), mem) + u2).clamp_(lo, hi)
        ctx.fs, ctx.fm = decay_factor(p, syn), decay_factor(p, mem)
        return u2, v2

    @staticmethod
    def backward(ctx, gu: Tensor, gv: Tensor):  # type: ignore[override]
        g = gu + gv  # v' depends on u' with slope 1
        return g * ctx.fs, gv * ctx.fm, g, None, None, None


class Profiled:
    """The forward pass of a network under a chip profile (set by :func:`apply_profile`; not a module: no state)."""

    def __init__(self, profile: ChipProfile) -> None:
        self.profile = profile

    def __repr__(self) -> str:
        return f"Profiled({self.profile.name!r})"

    def codes(self, net: Any) -> dict[str, object]:
        """Decay codes per hidden layer (membrane, current) and for the readout."""
        p = self.profile
        return {"mem": [decay_code(p, n.beta) for n in net.hidden], "syn": [decay_code(p, n.alpha) for n in net.hidden],
                "out": decay_code(p, net.readout.beta)}

    def run(self, net: Any, x: Tensor, record: bool = False) -> dict[str, object]:
        """The network's forward pass in the chip's integer arithmetic: logits (and spikes, membranes, readout trace)."""
        p = self.profile
        net.check_input(x)
        w = chip_weights(net, p)
        codes = self.codes(net)
        theta = float(p.theta)
        h = x.double()
        spikes, mems = [], []
        for k, neuron in enumerate(net.hidden):
            cur = linear_seq(h, w[f"fc{k}"][0])  # integer sums, once for the sequence
            wrec = w[f"rec{k}"][0].t() if isinstance(neuron, RLIF) else None
            to_float = neuron.threshold / theta  # surrogate input in threshold units (a sign-preserving scale)
            edge = theta if p.strict else theta - 1.0  # v >= theta  <=>  v > theta - 1 for integers
            b, n = cur.shape[0], cur.shape[2]
            u = v = s = cur.new_zeros(b, n)
            out_s, out_v = [], []
            for it in cur.unbind(1):
                if wrec is not None:
                    it = torch.addmm(it, s, wrec)
                u, v = _ChipStep.apply(u, v, it, p, codes["syn"][k], codes["mem"][k])  # type: ignore[index]
                s = neuron.spike((v - edge) * to_float)
                if record:
                    out_v.append(v)
                r = s.detach()
                v = v * (1.0 - r) if p.reset == "zero" else v - r * theta  # reset in the same step
                out_s.append(s)
            h = torch.stack(out_s, dim=1)
            spikes.append(h)
            if record:
                mems.append(torch.stack(out_v, dim=1) * to_float)
        cur = linear_seq(h, w["out"][0])
        v = cur.new_zeros(cur.shape[0], cur.shape[2])
        trace = []
        for it in cur.unbind(1):
            v = saturate(p, decay_int(p, v, codes["out"]) + it)  # type: ignore[arg-type]
            trace.append(v)
        out_trace = torch.stack(trace, dim=1) * 2.0 ** -p.readout_bits
        logits = net.readout.reduce(out_trace).to(x.dtype)
        result: dict[str, object] = {"logits": logits}
        if record:
            result.update(spikes=spikes, mem=mems, out=out_trace)
        return result


def apply_profile(net: Any, profile: str | ChipProfile | None) -> Any:
    """Constrain ``net``'s forward pass (and so its QAT) to a chip's integer arithmetic: ``"loihi2"``, ``"xylo"``, or None to remove it."""
    from .network import SNN

    if not isinstance(net, SNN):
        raise TypeError(f"net must be a lowbit.snn.SNN, got {type(net).__name__}")
    if profile is None:
        net.profile = None
        return net
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {sorted(PROFILES)} or a ChipProfile, got {profile!r}")
        profile = PROFILES[profile]
    if not isinstance(profile, ChipProfile):
        raise TypeError(f"profile must be a name or a ChipProfile, got {type(profile).__name__}")
    net.quantize_weights(None)  # the profile quantizes weights and states itself
    net.set_state_quant(None)
    net.profile = Profiled(profile)
    return net


def profile_qat(net: Any, profile: str | ChipProfile, x: Tensor, y: Tensor, *, epochs: int = 4, lr: float = 1e-3,
                adapt_epochs: int = 8, adapt_lr: float = 2e-3, batch_size: int = 128, seed: int = 0) -> Any:
    """The profile's QAT recipe, in place: adapt a float network to the chip's reset first (if it differs), then integer QAT.

    When the hidden neurons reset otherwise than the chip (a network trained with the default subtractive reset,
    for Loihi 2's reset to zero), they are switched to the chip's reset and fine-tuned in float for
    ``adapt_epochs`` at ``adapt_lr`` (shuffling seed ``seed``); then the profile is applied and the network trained
    ``epochs`` at ``lr`` in the chip's arithmetic (seed ``seed + 1``). A network that already resets like the chip
    (Xylo; a network trained with ``reset="zero"``) goes straight to integer QAT. The defaults are the
    ``lowbit snn`` task's: the adaptation runs twice the QAT epochs at the float training's lr.
    """
    from .network import SNN
    from .train import train

    if not isinstance(net, SNN):
        raise TypeError(f"net must be a lowbit.snn.SNN, got {type(net).__name__}")
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {sorted(PROFILES)} or a ChipProfile, got {profile!r}")
        profile = PROFILES[profile]
    if isinstance(adapt_epochs, bool) or not isinstance(adapt_epochs, int) or adapt_epochs < 0:
        raise ValueError(f"adapt_epochs must be a non-negative int, got {adapt_epochs!r}")
    apply_profile(net, None)  # the adaptation is float: no weight or state quantizer either
    net.quantize_weights(None)
    net.set_state_quant(None)
    if adapt_epochs and any(n.reset != profile.reset for n in net.hidden):
        for n in net.hidden:
            n.reset = profile.reset
        train(net, x, y, epochs=adapt_epochs, batch_size=batch_size, lr=adapt_lr, seed=seed)
    apply_profile(net, profile)
    train(net, x, y, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed + 1)
    return net


def remove_profile(net: Any) -> Any:
    """Back to the network's float (or fake-quantized) forward pass."""
    return apply_profile(net, None)


def profile_record(net: Any) -> dict[str, object] | None:
    """The network's chip profile as a JSON-able record for ``lowbit.save`` (every field, so a custom profile survives), or None."""
    prof = getattr(net, "profile", None)
    return dataclasses.asdict(prof.profile) if isinstance(prof, Profiled) else None


def restore_profile(net: Any, record: object) -> Any:
    """Re-apply a profile read by ``lowbit.load`` (None: the network runs without one)."""
    if record is None:
        if getattr(net, "profile", None) is not None:
            net.profile = None
        return net
    fields = {f.name for f in dataclasses.fields(ChipProfile)}
    if not isinstance(record, dict) or set(record) != fields:
        raise ValueError(f"the saved chip profile must have the fields {sorted(fields)}, got {record!r}")
    return apply_profile(net, ChipProfile(**record))
