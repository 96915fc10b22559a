"""The conformance suite every format, range and quantizer must pass (as scikit-learn's ``check_estimator``).

Three generators yield ``(name, check)`` pairs, so a test can parametrize over them:

- :func:`format_checks` (a :class:`~lowbit.formats.Format`): levels sorted, encode/decode and
  pack/unpack round trips at the storage bits, nearest level, monotone, idempotent, and
  NaN/Inf/empty/constant inputs handled on purpose; ``check(x)`` takes normalised values
  (``None``: a sweep over and past the levels).
- :func:`range_checks` (a spec naming format, granularity and range): the scale is positive and
  finite on normal, constant, all-zero and one-signed data, with one scale per slice;
  ``check(x)`` takes a 2-D tensor.
- :func:`quantizer_checks` (any quantizer module: ``Quantizer`` and its LSQ, DoReFa, centred
  and state subclasses, ``StateQuantizer``, ``PACT``, ``ActQuant``): on the grid, idempotent,
  its documented gradient, encode -> QTensor -> dequantize equals the forward pass, state_dict
  and file round trips, bad input refused; ``check(x)`` runs on a fresh copy of the quantizer.

Every check raises ``AssertionError`` naming what failed. :func:`check_format`,
:func:`check_range` and :func:`check_quantizer` run a generator's checks at once (the
bad-input ones, :data:`BAD_INPUT_CHECKS`, when asked: ``bad_input=True``).
"""
from __future__ import annotations

import copy
import math
import os
import tempfile
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from .formats import Format, Uniform
from .nn.act import PACT, ActQuant
from .packing import pack, unpack
from .qtensor import QTensor, load_qtensors, save_qtensors
from .quantizers import (
    CenteredQuantizer,
    DoReFaQuantizer,
    LSQQuantizer,
    Quantizer,
    StateQuantizer,
    build_quantizer,
    parse_spec,
)
from .ranges import range_from_token, range_names

__all__ = [
    "Check",
    "format_checks",
    "range_checks",
    "quantizer_checks",
    "range_examples",
    "BAD_INPUT_CHECKS",
    "check_format",
    "check_range",
    "check_quantizer",
]

#: a conformance check: takes the data (or None for the check's own default) and raises AssertionError
Check = Callable[[Tensor | None], None]


# =========================================================================== helpers


def _on_levels(values: Tensor, levels: Tensor) -> bool:
    idx = torch.searchsorted(levels, values.contiguous()).clamp(max=levels.numel() - 1)
    return bool((levels[idx] == values).all())


def _nearest_distance(x: Tensor, levels: Tensor) -> Tensor:
    # Distance to the nearest level via the two neighbours (no [N, L] tensor).
    i = torch.searchsorted(levels, x.contiguous())
    above = levels[i.clamp(max=levels.numel() - 1)]
    below = levels[(i - 1).clamp(min=0)]
    return torch.minimum((x - above).abs(), (x - below).abs())


def _sweep(fmt: Format) -> Tensor:
    lv = fmt.levels
    span = float(lv[-1] - lv[0])
    return torch.linspace(float(lv[0]) - 0.5 * span, float(lv[-1]) + 0.5 * span, 4001)


# =========================================================================== formats


def _fmt_levels(fmt: Format, x: Tensor) -> None:
    lv = fmt.levels
    assert lv.dtype == torch.float32 and lv.dim() == 1, "levels must be a 1-D float32 tensor"
    assert bool(torch.isfinite(lv).all()), "levels must be finite"
    assert bool((lv[1:] > lv[:-1]).all()), "levels must be strictly increasing"
    assert lv.numel() <= 2**fmt.bits, f"{lv.numel()} levels do not fit in {fmt.bits} bits"
    assert fmt.bits == 1 or lv.numel() > 2 ** (fmt.bits - 1), f"{lv.numel()} levels waste a bit of {fmt.bits}"
    assert fmt.lo == float(lv[0]) and fmt.hi == float(lv[-1]), "lo/hi must be the extreme levels"


def _fmt_encode_decode(fmt: Format, x: Tensor) -> None:
    lv = fmt.levels
    codes = fmt.encode(x)
    assert not codes.is_floating_point(), "encode must return integer codes"
    assert codes.dtype == (torch.uint8 if fmt.bits <= 8 else torch.int32), f"codes of {fmt.bits} bits come as {codes.dtype}"
    assert int(codes.min()) >= 0 and int(codes.max()) < lv.numel(), "codes must index the levels"
    assert torch.equal(fmt.quantize(x), fmt.decode(codes)), "quantize must equal decode(encode(x))"
    all_codes = torch.arange(lv.numel())
    assert torch.equal(fmt.decode(all_codes), lv), "decode(c) must be level c"
    assert torch.equal(fmt.encode(fmt.decode(all_codes)).long(), all_codes), "encode(decode(c)) must give c back"
    assert torch.equal(fmt.quantize_clamped(x.clamp(fmt.lo, fmt.hi)), fmt.quantize(x.clamp(fmt.lo, fmt.hi))), (
        "quantize_clamped must equal quantize on clamped values"
    )


def _fmt_pack(fmt: Format, x: Tensor) -> None:
    codes = fmt.encode(x)
    back = unpack(pack(codes, fmt.bits), fmt.bits, codes.numel())
    assert torch.equal(back.long(), codes.long()), f"pack/unpack at {fmt.bits} bits must give the codes back"
    top = torch.full((9,), fmt.levels.numel() - 1, dtype=codes.dtype)  # the widest code, odd count
    assert torch.equal(unpack(pack(top, fmt.bits), fmt.bits, 9).long(), top.long()), "the top code must survive packing"


def _fmt_nearest(fmt: Format, x: Tensor) -> None:
    lv = fmt.levels
    q = fmt.quantize(x)
    assert _on_levels(q, lv), "quantized values must lie on the level set"
    err = (q - x).abs()
    assert bool((err <= _nearest_distance(x, lv) + 1e-6 * (1 + x.abs())).all()), "quantize must pick the nearest level"
    if isinstance(fmt, Uniform):
        inside = (x >= fmt.lo) & (x <= fmt.hi)
        assert bool((err[inside] <= 0.5 + 1e-6).all()), "uniform error inside the range must be <= half a step"


def _fmt_monotone(fmt: Format, x: Tensor) -> None:
    xs, _ = torch.sort(x)
    qs = fmt.quantize(xs)
    assert bool((qs[1:] >= qs[:-1]).all()), "quantization must be monotone"


def _fmt_idempotent(fmt: Format, x: Tensor) -> None:
    q = fmt.quantize(x)
    assert torch.equal(fmt.quantize(q), q), "quantizing twice must change nothing"
    assert torch.equal(fmt.quantize(fmt.levels), fmt.levels), "every level must quantize to itself"


def _fmt_inf_empty_constant(fmt: Format, x: Tensor) -> None:
    inf = torch.tensor([math.inf, -math.inf])
    assert fmt.quantize(inf).tolist() == [fmt.hi, fmt.lo], "+-Inf must saturate to the extreme levels"
    assert fmt.decode(fmt.encode(inf)).tolist() == [fmt.hi, fmt.lo], "+-Inf must encode to the extreme codes"
    empty = torch.empty(0, 3)
    assert fmt.quantize(empty).shape == empty.shape and fmt.encode(empty).shape == empty.shape, "empty in, empty out"
    c = torch.full((17,), float(x[len(x) // 2]))
    qc = fmt.quantize(c)
    assert bool((qc == qc[0]).all()) and bool(torch.isfinite(qc).all()), "a constant input must give one finite level"


def _fmt_nan(fmt: Format, x: Tensor) -> None:
    # The documented rule: no code stands for NaN, so encode raises ValueError; quantize (the hot
    # path) does not check, and may pass NaN on or give a level, but never raise or touch its neighbours.
    nan = torch.tensor([0.0, math.nan, 0.0])
    try:
        fmt.encode(nan)
    except ValueError as e:
        assert "NaN" in str(e), f"encode's ValueError must say NaN: {e}"
    else:
        raise AssertionError("encode(NaN) must raise ValueError (no code stands for NaN)")
    q = fmt.quantize(nan)
    assert torch.equal(q[[0, 2]], fmt.quantize(torch.zeros(2))), "a NaN must not change its neighbours' levels"
    assert bool(torch.isnan(q[1])) or _on_levels(q[1:2], fmt.levels), "quantize(NaN) must be NaN or a level"


_FORMAT_CHECKS: dict[str, Callable[[Format, Tensor], None]] = {
    "levels_sorted": _fmt_levels,
    "encode_decode_round_trip": _fmt_encode_decode,
    "pack_round_trip": _fmt_pack,
    "nearest_level": _fmt_nearest,
    "monotone": _fmt_monotone,
    "idempotent": _fmt_idempotent,
    "inf_empty_constant": _fmt_inf_empty_constant,
    "nan": _fmt_nan,
}


def format_checks(fmt: Format) -> Iterator[tuple[str, Check]]:
    """Yield ``(name, check)`` for every format check; ``check(x)`` takes normalised values (None: a sweep)."""
    if not isinstance(fmt, Format):
        raise TypeError(f"fmt must be a lowbit Format, got {type(fmt).__name__}")

    for name, fn in _FORMAT_CHECKS.items():

        def check(x: Tensor | None = None, _fn: Callable[[Format, Tensor], None] = fn) -> None:
            data = _sweep(fmt) if x is None else x.detach().float().reshape(-1)
            if data.numel() == 0:
                data = _sweep(fmt)
            _fn(fmt, data)

        yield name, check


#: checks of what a format or quantizer does with bad input (NaN, Inf, empty), apart from the contract on data
BAD_INPUT_CHECKS = ("nan", "bad_input")


def check_format(fmt: Format, x: Tensor | None = None, *, bad_input: bool = False) -> None:
    """Assert the format contract on normalised values ``x`` (default: a sweep); ``bad_input`` adds the NaN check."""
    for name, check in format_checks(fmt):
        if bad_input or name not in BAD_INPUT_CHECKS:
            check(x)


# =========================================================================== ranges


def range_examples() -> list[str]:
    """One or more buildable spec tokens for every registered range (read from the registry's help)."""
    out: list[str] = []
    for h in range_names():
        words = h.replace("(", " ").replace(")", " ").replace(",", " ").replace("/", " ").split()
        found = [w for w in words if "<" not in w and range_from_token(w) is not None]
        for w in found:
            if w not in out:
                out.append(w)
    return out


def _range_data(kind: str, x: Tensor) -> Tensor:
    m = float(x.abs().mean()) or 1.0
    return {
        "normal": x,
        "constant": torch.full_like(x, 0.37 * m),
        "all_zero": torch.zeros_like(x),
        "positive": x.abs() + 1e-3 * m,
        "negative": -x.abs() - 1e-3 * m,
    }[kind]


def _range_scale(spec: str, data: Tensor) -> None:
    q = build_quantizer(spec)
    scale, zp = q.compute_scale(data)
    n = q.granularity.n_slices(data.shape)
    assert scale.shape == (n,), f"{q.granularity.spec}: {tuple(scale.shape)} scales for {n} slices"
    assert scale.dtype == torch.float32, f"scales must be float32, got {scale.dtype}"
    assert bool(torch.isfinite(scale).all()) and bool((scale > 0).all()), f"scale must be finite and > 0, got {scale.tolist()[:8]}"
    if zp is not None:
        fmt = q.fmt
        assert zp.shape == (n,) and not zp.is_floating_point(), "one integer zero point per slice"
        assert bool(((zp >= fmt.lo) & (zp <= fmt.hi)).all()), "zero points must be codes of the format"
    y = q(data)
    assert bool(torch.isfinite(y).all()), "the quantized values must be finite"


def range_checks(spec: str) -> Iterator[tuple[str, Check]]:
    """Yield ``(name, check)`` for the range of ``spec`` (format, granularity and range); ``check(x)`` takes 2-D data."""
    parse_spec(spec)  # a bad spec fails here, with the parser's message

    for kind in ("normal", "constant", "all_zero", "positive", "negative"):

        def check(x: Tensor | None = None, _kind: str = kind) -> None:
            data = torch.randn(8, 64, generator=torch.Generator().manual_seed(0)) if x is None else x
            _range_scale(spec, _range_data(_kind, data.detach().float()))

        yield f"scale_{kind}", check


def check_range(spec: str, x: Tensor | None = None) -> None:
    """Assert the range contract of ``spec`` on 2-D data ``x`` (default: Gaussian 8 x 64)."""
    for _, check in range_checks(spec):
        check(x)


# =========================================================================== quantizers


def _kind(q: nn.Module) -> str:
    for cls, name in ((PACT, "pact"), (ActQuant, "act"), (StateQuantizer, "state"), (DoReFaQuantizer, "dorefa"),
                      (LSQQuantizer, "lsq"), (CenteredQuantizer, "centered"), (Quantizer, "quantizer")):  # fmt: skip
        if isinstance(q, cls):
            return name
    raise TypeError(f"q must be a lowbit quantizer (Quantizer, StateQuantizer, PACT or ActQuant), got {type(q).__name__}")


def _inner(q: nn.Module) -> nn.Module:
    return q.q if isinstance(q, ActQuant) else q


def _ready(q: nn.Module, x: Tensor) -> nn.Module:
    """Give ``q`` a fixed scale from ``x`` (fit, LSQ init, activation calibration), as after calibration."""
    k = _kind(q)
    if k == "act":
        if not q.learned and not q.q.frozen:
            q.calibrating = True
            q(x)
            q.freeze()
        elif q.learned and not q.q.scale.numel():
            q.q.init_from(x)
    elif k == "lsq":
        if not q.scale.numel():
            q.init_from(x)
    elif k in ("quantizer", "centered") and not q.frozen:
        q.fit(x)
    return q


def _equivalent_encode(q: nn.Module, x: Tensor) -> QTensor:
    """``q``'s QTensor of ``x``; PACT and StateQuantizer via the plain Quantizer their docs say they equal."""
    k = _kind(q)
    if k == "pact":
        n = 2**q.bits - 1
        return Quantizer(q.fmt).set_scale(float(q.alpha.detach()) / n, 0).encode(x)
    if k == "state":
        return Quantizer(q.fmt, "fixed").fit(q.fmt.levels).encode(x)
    return _inner(q).encode(x)


def _scale_of(q: nn.Module, x: Tensor) -> tuple[Tensor, Tensor | None]:
    k = _kind(q)
    if k == "pact":
        return (q.alpha.detach() / (2**q.bits - 1)).reshape(1), torch.zeros(1, dtype=torch.int32)
    if k == "state":
        return torch.ones(1), None
    inner = _inner(q)
    s, zp = inner.compute_scale(x)
    return s.detach(), zp


def _units(q: nn.Module, v: Tensor, x: Tensor) -> Tensor:
    """``v`` (x or q(x)) in units of the levels, as rows: what the format rounds for input ``x``."""
    k, inner = _kind(q), _inner(q)
    gran = getattr(inner, "granularity", None)
    rows = gran.to_rows(v.detach()) if gran is not None else v.detach().reshape(1, -1)
    if k == "dorefa" and v is x:
        return inner._normalise(x.detach().float())
    if k == "pact" and v is x:
        rows = rows.clamp(0, float(q.alpha.detach()))
    if k == "centered" and v is x:
        rows = rows - rows.mean(dim=1, keepdim=True)
    scale, zp = _scale_of(q, x)
    return rows / scale[:, None] + (zp[:, None].float() if zp is not None and zp.numel() else 0.0)


def _q_grid(q: nn.Module, x: Tensor) -> None:
    _ready(q, x)
    y = q(x)
    assert y.shape == x.shape and y.dtype == x.dtype, "q(x) must keep shape and dtype"
    assert bool(torch.isfinite(y).all()), "q(x) must be finite"
    yn = _units(q, y, x).reshape(-1)
    off = _nearest_distance(yn, _inner(q).fmt.levels)
    assert bool((off <= 1e-5 * (1 + yn.abs())).all()), f"q(x) must lie on the grid (off by up to {float(off.max()):.3g} levels)"


def _q_nearest(q: nn.Module, x: Tensor) -> None:
    _ready(q, x)
    y = q(x)
    if getattr(_inner(q), "rounding", "nearest") != "nearest":
        return  # stochastic rounding picks either neighbour; the grid check covers it
    lv = _inner(q).fmt.levels
    xn, yn = _units(q, x, x), _units(q, y, x)
    inside = (xn >= lv[0]) & (xn <= lv[-1])
    nearest = _nearest_distance(xn.reshape(-1), lv).reshape(xn.shape)
    # tolerance: float rounding of y / scale, which grows with |xn|
    tol = 1e-4 + 4 * torch.finfo(torch.float32).eps * xn.abs()
    assert bool(((yn - xn).abs() <= nearest + tol)[inside].all()), "inside the range the error must be <= the distance to the nearest level"
    order = torch.argsort(xn, dim=1)
    ys = torch.gather(yn, 1, order)
    assert bool((ys[:, 1:] >= ys[:, :-1] - 1e-6 * (1 + ys[:, 1:].abs())).all()), "quantization must be monotone in each slice"


def _q_idempotent(q: nn.Module, x: Tensor) -> None:
    _ready(q, x)
    y = q(x).detach()
    if _kind(q) == "dorefa":  # documented: the output is in DoReFa's units; the rounding step is idempotent
        assert torch.equal(q.fmt.quantize(y), y), "DoReFa's output must be fixed by its rounding"
        return
    scale, _ = _scale_of(q, x)
    assert torch.allclose(q(y), y, rtol=1e-6, atol=1e-6 * float(scale.max())), "quantizing twice must change nothing"


def _q_gradient(q: nn.Module, x: Tensor) -> None:
    _ready(q, x)
    k = _kind(q)
    xg = x.detach().clone().requires_grad_(True)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))  # a non-uniform upstream gradient
    params = [p for p in q.parameters() if p.requires_grad]
    y = q(xg)
    grads = torch.autograd.grad((y * w).sum(), [xg, *params])
    gx, gp = grads[0], grads[1:]
    assert bool(torch.isfinite(gx).all()), "the gradient to x must be finite"
    inner = _inner(q)
    if k == "pact":  # y = round_ste(clip(relu(x), 0, alpha) / step) * step, step detached
        a = q.alpha.detach()
        want_x = torch.where((x > 0) & (x < a), w, torch.zeros_like(w))
        want_a = (w * (x >= a)).sum()
        assert torch.allclose(gx, want_x), "PACT: the gradient to x passes where 0 < x < alpha only"
        tol = 1e-5 * float((w.abs() * (x >= a)).sum()) + 1e-6  # summation order of a long row sum
        assert abs(float(gp[0]) - float(want_a)) <= tol, f"PACT: d y / d alpha is 1 where x >= alpha ({float(gp[0])} vs {float(want_a)})"
    elif isinstance(inner, LSQQuantizer):  # LSQ: reference autograd with gradient-scaled steps
        s = inner.scale.detach().clone().requires_grad_(True)
        fmt, gran = inner.fmt, inner.granularity
        rows = gran.to_rows(x.detach().clone().requires_grad_(True))
        per = rows.shape[1] * (rows.shape[0] // s.numel())
        qp = fmt.hi if fmt.hi > 0 else max(abs(fmt.lo), 1e-12)
        g = 1.0 / math.sqrt(per * qp)
        ss = (s * g + (s - s * g).detach())[:, None]
        v = torch.clamp(rows / ss, fmt.lo, fmt.hi)
        r = v + (fmt.quantize(v.detach()) - v).detach()
        ref = gran.from_rows(r * ss, x.shape)
        ref_x, ref_s = torch.autograd.grad((ref * w).sum(), [rows, s])
        assert torch.allclose(gx, gran.from_rows(ref_x, x.shape), atol=1e-6), "LSQ: x gradient passes inside the range only"
        got_s = gp[0] if k == "lsq" else gp[-1]
        assert torch.allclose(got_s, ref_s, rtol=1e-4, atol=1e-5), "LSQ: the step gradient is (q - x/s) inside, the clip level outside, times 1/sqrt(N Qp)"
    elif k == "dorefa":  # straight through the rounding, through tanh and the normalisation
        xr = x.detach().clone().requires_grad_(True)
        t = torch.tanh(inner.granularity.to_rows(xr))
        t = t / t.abs().amax(dim=1, keepdim=True)
        (ref,) = torch.autograd.grad((inner.granularity.from_rows(t, x.shape) * w).sum(), [xr])
        assert torch.allclose(gx, ref, rtol=1e-5, atol=1e-6), "DoReFa: the gradient flows through tanh and the normalisation"
    elif getattr(inner, "gradient", "ste") == "clipped":
        scale, zp = _scale_of(q, x)
        rows = inner.granularity.to_rows(x)
        xn = rows / scale[:, None] + (zp[:, None].float() if zp is not None and zp.numel() else 0.0)
        mask = inner.granularity.from_rows((xn >= inner.fmt.lo) & (xn <= inner.fmt.hi), x.shape)
        assert torch.equal(gx, torch.where(mask, w, torch.zeros_like(w))), "clipped: the gradient passes inside the range only"
    else:
        assert torch.equal(gx, w), "straight-through: the gradient to x must pass unchanged"


def _q_encode(q: nn.Module, x: Tensor) -> None:
    _ready(q, x)
    y = q(x).detach()
    qt = _equivalent_encode(q, x)
    assert isinstance(qt, QTensor) and qt.shape == x.shape, "encode must give a QTensor of x's shape"
    tol = 1e-6 * float(qt.scale.max())
    if getattr(_inner(q), "rounding", "nearest") != "nearest":  # different draws: the same grid, at most one step apart
        step = float(qt.scale.max()) * float(_inner(q).fmt.levels.diff().max())
        assert bool(((qt.dequantize() - y).abs() <= step + tol).all()), "stochastic encode must be within one step of q(x)"
        return
    assert torch.allclose(qt.dequantize(), y, rtol=1e-6, atol=tol), "encode(x).dequantize() must equal q(x)"


def _perturb(q: nn.Module) -> None:
    # Move the learned / calibrated state away from where a fresh copy starts.
    with torch.no_grad():
        for p in q.parameters():
            p.mul_(1.25)


def _q_state_dict(q: nn.Module, x: Tensor) -> None:
    fresh = copy.deepcopy(q)
    _ready(q, x)
    _perturb(q)
    sd = q.state_dict()
    fresh.load_state_dict(sd)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, sd[key]), f"state_dict entry {key!r} did not round trip"
    k = _kind(q)
    if k == "act":  # the fresh copy was never calibrated: it takes the loaded scale
        fresh.calibrating = fresh.tracking = False
    outs = []
    for m in (fresh, q):  # stochastic rounding: the same draws for both
        if hasattr(_inner(m), "generator"):
            _inner(m).generator = torch.Generator().manual_seed(0)
        outs.append(m(x))
    assert torch.equal(outs[0], outs[1]), "a fresh quantizer with the loaded state_dict must give the same output"


def _q_file(q: nn.Module, x: Tensor) -> None:
    _ready(q, x)
    qt = _equivalent_encode(q, x)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "q.safetensors")
        save_qtensors(path, {"t": qt})
        back = load_qtensors(path)["t"]
    assert isinstance(back, QTensor), "load_qtensors must give a QTensor back"
    assert torch.equal(back.data, qt.data) and torch.equal(back.scale, qt.scale), "codes and scales must round trip"
    assert (back.zero_point is None) == (qt.zero_point is None), "the zero point must round trip"
    assert back.zero_point is None or torch.equal(back.zero_point, qt.zero_point), "zero points must round trip"
    assert back.fmt.spec == qt.fmt.spec and torch.equal(back.fmt.levels, qt.fmt.levels), "the format must round trip"
    assert back.granularity == qt.granularity and back.shape == qt.shape, "granularity and shape must round trip"
    assert torch.equal(back.dequantize(), qt.dequantize()), "the loaded QTensor must dequantize to the same values"


def _refuses_or(fn: Callable[[], Tensor], ok: Callable[[Tensor], bool], what: str) -> None:
    try:
        out = fn()
    except ValueError as e:
        assert str(e), "the ValueError must say what is wrong"
        return
    assert ok(out), what


def _q_bad_input(q: nn.Module, x: Tensor) -> None:
    nan_x = x.detach().clone()
    nan_x.view(-1)[0] = math.nan
    inf_x = x.detach().clone()
    inf_x.view(-1)[0] = math.inf
    for phase in ("dynamic", "calibrated"):
        if phase == "calibrated":
            _ready(q, x)
        # NaN: refused, or passed on only where it came in (never a NaN made from finite values)
        _refuses_or(lambda: q(nan_x), lambda y: bool(torch.isfinite(y.view(-1)[1:]).all()),
                    f"{phase}: a NaN input must raise ValueError or stay confined to its own element")  # fmt: skip
        # Inf: refused, or saturated to the range's edge
        _refuses_or(lambda: q(inf_x), lambda y: bool(torch.isfinite(y).all()),
                    f"{phase}: an Inf input must raise ValueError or saturate to a finite level")  # fmt: skip
        # a QTensor cannot hold a NaN: encoding one must be refused
        if _kind(q) not in ("pact", "state"):
            try:
                _inner(q).encode(nan_x)
            except ValueError:
                pass
            else:
                raise AssertionError(f"{phase}: encode of a NaN input must raise ValueError")
        # a constant and an all-zero tensor are ordinary data: finite, constant output
        for c in (0.0, 0.3):
            y = q(torch.full_like(x, c))
            assert bool(torch.isfinite(y).all()), f"{phase}: a constant input ({c}) must give finite values"
        # empty: refused or empty out
        _refuses_or(lambda: q(x[:0]), lambda y: y.shape == x[:0].shape,
                    f"{phase}: an empty input must raise ValueError or give an empty output")  # fmt: skip


_QUANTIZER_CHECKS: dict[str, Callable[[nn.Module, Tensor], None]] = {
    "on_grid": _q_grid,
    "nearest_monotone": _q_nearest,
    "idempotent": _q_idempotent,
    "gradient": _q_gradient,
    "encode_dequantize": _q_encode,
    "state_dict_round_trip": _q_state_dict,
    "file_round_trip": _q_file,
    "bad_input": _q_bad_input,
}


def quantizer_checks(q: nn.Module) -> Iterator[tuple[str, Check]]:
    """Yield ``(name, check)`` for every quantizer check; ``check(x)`` runs on a fresh copy of ``q`` (x: 2-D data)."""
    _kind(q)  # a TypeError for anything that is not a quantizer

    for name, fn in _QUANTIZER_CHECKS.items():

        def check(x: Tensor | None = None, _fn: Callable[[nn.Module, Tensor], None] = fn) -> None:
            data = torch.randn(8, 64, generator=torch.Generator().manual_seed(0)) if x is None else x
            _fn(copy.deepcopy(q), data.detach())

        yield name, check


def check_quantizer(q: nn.Module, x: Tensor | None = None, *, bad_input: bool = False) -> None:
    """Assert the quantizer contract on data ``x`` (grid, idempotence, gradient, codes, state, files); ``bad_input`` adds NaN/Inf/empty."""
    for name, check in quantizer_checks(q):
        if bad_input or name not in BAD_INPUT_CHECKS:
            check(x)
