"""snnTorch's state level sets, all of them: lowbit builds the same float32 levels for every setting
snnTorch's ``state_quant`` accepts, and refuses with a clear error what snnTorch refuses or builds
broken (a centre outside the range gives it more than 2^num_bits levels, some outside the range).

With snnTorch installed the levels are compared with its own table, bit for bit; without it, with
the closed form in the research notes (``shared/reference/snn.md`` section 3.1), to float32 rounding.
"""
import itertools
import math

import numpy as np
import pytest
import torch

from lowbit.formats import state_levels

try:
    from snntorch.functional import quant as snn_quant
except ImportError:  # the closed-form reference below stands in
    snn_quant = None

KINDS = {"uniform": (True, True), "thr": (False, True), "zero": (False, False)}  # (uniform, thr_centered)
BITS = range(1, 9)
THRESHOLDS = (0.5, 1.0, 2.5)
LOWER = (-1.0, -0.5, 0.0, 0.5)  # -1: the range starts at 0 (the zero-centred levels' centre is its bottom)
UPPER = (0.0, 0.2, 1.0)  # 0: the threshold is the top of the range


def _snntorch_levels(kind: str, bits: int, thr: float, ll: float, ul: float) -> torch.Tensor:
    uniform, centred = KINDS[kind]
    inner = snn_quant.state_quant(num_bits=bits, uniform=uniform, thr_centered=centred, threshold=thr,
                                  lower_limit=ll, upper_limit=ul)
    (levels,) = [c.cell_contents for c in inner.__closure__ if isinstance(c.cell_contents, torch.Tensor)]
    return torch.unique(levels)  # snnTorch keeps levels that coincide in float32; lowbit merges them


def _formula_levels(kind: str, bits: int, thr: float, ll: float, ul: float) -> torch.Tensor:
    """snn.md 3.1: N = 2^b levels on [-thr (1 + ll), thr (1 + ul)]; gaps m^j / R shrinking towards the centre."""
    n = 2**bits
    lo, hi = -thr * (1 + ll), thr * (1 + ul)
    if kind == "uniform":
        return torch.unique(torch.tensor(np.linspace(lo, hi, n), dtype=torch.float32))
    m = {1: 0.05, 2: 0.1, 3: 0.3, 4: 0.5, 5: 0.7, 6: 0.9, 7: 0.925}.get(bits, 0.95)
    c = thr if kind == "thr" else 0.0
    n_lo = math.floor(n * (c - lo) / (hi - lo))
    n_hi = n - n_lo
    g_lo = m ** np.arange(n_lo)  # gaps from lo towards c, c excluded
    below = lo + np.concatenate([[0.0], np.cumsum(g_lo)[:-1]]) * (c - lo) / g_lo.sum() if n_lo else np.zeros(0)
    g_hi = m ** np.arange(n_hi)[::-1]  # gaps growing from c up to hi, c excluded
    above = c + np.cumsum(g_hi) * (hi - c) / g_hi.sum() if n_hi else np.zeros(0)
    return torch.unique(torch.tensor(np.concatenate([below, above]), dtype=torch.float32))


def _grid():  # type: ignore[no-untyped-def]
    for kind, bits, thr, ll, ul in itertools.product(KINDS, BITS, THRESHOLDS, LOWER, UPPER):
        c = {"uniform": None, "thr": thr, "zero": 0.0}[kind]
        lo, hi = -(thr + thr * ll), thr + thr * ul
        if c is None or lo <= c <= hi:
            yield kind, bits, thr, ll, ul


def test_every_snntorch_level_set_is_lowbits():
    n = 0
    for kind, bits, thr, ll, ul in _grid():
        ours = state_levels(kind, bits, threshold=thr, lower_limit=ll, upper_limit=ul).levels
        if snn_quant is not None:
            assert torch.equal(ours, _snntorch_levels(kind, bits, thr, ll, ul)), (kind, bits, thr, ll, ul)
        else:
            ref = _formula_levels(kind, bits, thr, ll, ul)
            # the closed form rounds differently from snnTorch's running sums; at 7-8 bits neighbours
            # within an ulp of the threshold may merge in one and not the other
            assert ours[0] == ref[0] and abs(len(ours) - len(ref)) <= 2 ** max(bits - 4, 0), (kind, bits, thr, ll, ul)
            if len(ours) == len(ref):
                torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6 * thr)
        assert len(ours) <= 2**bits and torch.all(ours[1:] > ours[:-1])
        n += 1
    assert n == len(KINDS) * len(BITS) * len(THRESHOLDS) * len(LOWER) * len(UPPER)  # the whole grid is valid


def test_threshold_at_the_top_of_the_range():
    # upper_limit = 0: snnTorch puts all 2^b levels below the threshold, none on it (a quantized
    # neuron then never reaches its threshold: that is snnTorch's table, reproduced, not corrected)
    lv = state_levels("thr", 3, threshold=1.0, upper_limit=0.0).levels
    assert len(lv) == 8 and lv[0] == -1.0 and lv[-1] < 1.0 and lv[-1] > 0.99
    gaps = torch.diff(lv.double())
    assert torch.allclose(gaps[1:] / gaps[:-1], torch.full((6,), 0.3, dtype=torch.float64), rtol=1e-5)
    # lower_limit = -1: the range starts at 0, the zero-centred levels all lie above it
    z = state_levels("zero", 2, threshold=2.0, lower_limit=-1.0).levels
    assert len(z) == 4 and float(z[0]) > 0 and float(z[-1]) == pytest.approx(2.4)


@pytest.mark.parametrize(
    "kind, kw, match",
    [
        ("thr", dict(upper_limit=-0.1), "upper_limit must be >= 0"),  # snnTorch: > 2^b levels above its top
        ("zero", dict(lower_limit=-1.5), "lower_limit must be >= -1"),  # snnTorch: > 2^b levels, some below its bottom
        ("thr", dict(lower_limit=-2.0, upper_limit=0.0), "non-empty range"),  # snnTorch: ZeroDivisionError
        ("uniform", dict(lower_limit=-2.5), "non-empty range"),
        ("uniform", dict(threshold=0.0), "threshold"),
        ("thr", dict(threshold=-1.0), "threshold"),
        ("thr", dict(multiplier=0.0), "multiplier"),
    ],
)
def test_broken_settings_are_refused(kind, kw, match):
    with pytest.raises(ValueError, match=match):
        state_levels(kind, 4, **kw)


def test_snntorch_refuses_what_lowbit_refuses():
    if snn_quant is None:
        pytest.skip("snntorch is not installed")
    with pytest.raises(ZeroDivisionError):
        snn_quant.state_quant(num_bits=4, uniform=False, threshold=1.0, lower_limit=-2.0, upper_limit=0.0)
    with pytest.raises(ValueError):
        snn_quant.state_quant(num_bits=0)
    with pytest.raises(ValueError, match="num_bits"):
        state_levels("uniform", 0)
    # what snnTorch builds for a centre outside the range: more levels than 2^num_bits
    assert len(_snntorch_levels("thr", 2, 1.0, 0.0, -0.5)) > 4
