"""Conformance checks every format and quantizer must pass (as scikit-learn's ``check_estimator``).

Each check raises ``AssertionError`` with a message naming what failed. The
test suite runs them over every registered format and many quantizer specs,
with hypothesis supplying the data; new formats add themselves by being
registered.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .formats import Format, Uniform
from .packing import pack, unpack
from .quantizer import Quantizer

__all__ = ["check_format", "check_quantizer"]


def _on_levels(values: Tensor, levels: Tensor) -> bool:
    idx = torch.searchsorted(levels, values.contiguous()).clamp(max=levels.numel() - 1)
    return bool((levels[idx] == values).all())


def _nearest_distance(x: Tensor, levels: Tensor) -> Tensor:
    # Distance to the nearest level via the two neighbours (no [N, L] tensor).
    i = torch.searchsorted(levels, x.contiguous())
    above = levels[i.clamp(max=levels.numel() - 1)]
    below = levels[(i - 1).clamp(min=0)]
    return torch.minimum((x - above).abs(), (x - below).abs())


def check_format(fmt: Format, x: Tensor | None = None) -> None:
    """Assert the format contract on normalised values ``x`` (default: a sweep over and past the levels)."""
    lv = fmt.levels
    assert lv.dtype == torch.float32 and lv.dim() == 1, "levels must be a 1-D float32 tensor"
    assert bool((lv[1:] > lv[:-1]).all()), "levels must be strictly increasing"
    assert lv.numel() <= 2**fmt.bits, f"{lv.numel()} levels do not fit in {fmt.bits} bits"
    assert fmt.lo == float(lv[0]) and fmt.hi == float(lv[-1]), "lo/hi must be the extreme levels"
    if x is None:
        span = float(lv[-1] - lv[0])
        x = torch.linspace(float(lv[0]) - 0.5 * span, float(lv[-1]) + 0.5 * span, 4001)
    x = x.float().reshape(-1)

    codes = fmt.encode(x)
    assert not codes.is_floating_point(), "encode must return integer codes"
    assert int(codes.min()) >= 0 and int(codes.max()) < lv.numel(), "codes must index the levels"
    q = fmt.quantize(x)
    assert torch.equal(q, fmt.decode(codes)), "quantize must equal decode(encode(x))"
    assert _on_levels(q, lv), "quantized values must lie on the level set"
    assert torch.equal(fmt.quantize(q), q), "quantizing twice must change nothing"
    # Nearest level: the error is the distance to the nearest level (half a step for integers).
    nearest = _nearest_distance(x, lv)
    err = (q - x).abs()
    assert bool((err <= nearest + 1e-6 * (1 + x.abs())).all()), "quantize must pick the nearest level"
    if isinstance(fmt, Uniform):
        inside = (x >= fmt.lo) & (x <= fmt.hi)
        assert bool((err[inside] <= 0.5 + 1e-6).all()), "uniform error inside the range must be <= half a step"
    xs, _ = torch.sort(x)
    qs = fmt.quantize(xs)
    assert bool((qs[1:] >= qs[:-1]).all()), "quantization must be monotone"
    # encode/decode round trip on the levels themselves, and through packing
    all_codes = torch.arange(lv.numel())
    assert torch.equal(fmt.encode(fmt.decode(all_codes)).long(), all_codes), "encode(decode(c)) must give c back"
    assert torch.equal(unpack(pack(codes, fmt.bits), fmt.bits, codes.numel()).long(), codes.long()), "pack/unpack"


def check_quantizer(q: Quantizer, x: Tensor) -> None:
    """Assert the quantizer contract on data ``x``: grid, idempotence, error bound, monotone, codes, gradient."""
    y = q(x)
    assert y.shape == x.shape and y.dtype == x.dtype, "q(x) must keep shape and dtype"
    assert bool(torch.isfinite(y).all()), "q(x) must be finite"
    qt = q.encode(x)
    tol = 1e-6 * float(qt.scale.detach().max())
    if q.rounding == "nearest":
        assert torch.allclose(qt.dequantize(), y, rtol=1e-6, atol=tol), "encode/dequantize must equal q(x)"
    else:  # stochastic: different draws, but the same grid and at most one level apart
        assert bool(((qt.dequantize() - y).abs() <= qt.scale.max() * (q.fmt.levels.diff().max()) + tol).all())
    # Idempotence under the same (frozen) scale.
    frozen = q.frozen
    if not frozen:
        q.fit(x)
    try:
        assert torch.allclose(q(y), y, rtol=1e-6, atol=1e-7 * float(q.scale.detach().max())), "quantizing twice must change nothing"
        # Error bound inside the representable range: the distance to the nearest level.
        rows = q.granularity.to_rows(x)
        scale = q.scale[:, None]
        zp = q.zero_point[:, None].float() if q.zero_point.numel() else 0.0
        xn = rows / scale + zp
        lv = q.fmt.levels
        inside = (xn >= lv[0]) & (xn <= lv[-1])
        yn = q.granularity.to_rows(y) / scale + zp
        nearest = _nearest_distance(xn.reshape(-1), lv).reshape(xn.shape)
        if q.rounding == "nearest":
            # tolerance: float rounding of y / scale, which grows with |xn| (16-bit grids)
            tol = 1e-4 + 4 * torch.finfo(torch.float32).eps * xn.abs()
            assert bool(((yn - xn).abs() <= nearest + tol)[inside].all()), "error must be <= the distance to the nearest level"
            # Monotone along each row.
            order = torch.argsort(rows, dim=1)
            ys = torch.gather(q.granularity.to_rows(y), 1, order)
            assert bool((ys[:, 1:] >= ys[:, :-1]).all()), "quantization must be monotone"
        # Straight-through gradient reaches x.
        xg = x.detach().clone().requires_grad_(True)
        q(xg).sum().backward()
        assert xg.grad is not None and bool(torch.isfinite(xg.grad).all()), "the gradient must reach x"
        if q.gradient == "ste":
            assert torch.equal(xg.grad, torch.ones_like(x)), "straight-through gradient must be 1"
    finally:
        if not frozen:
            q.reset()
