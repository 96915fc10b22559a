"""The QAT hot path's shortcuts give exactly what the plain computation gives.

Activation ranges (``a8`` = ``uint8:p99.99``) take a percentile of every batch in QAT; the
percentile selects its tail from a fraction of the row (``tail_values``) and checks the data
with one ``aminmax`` (``all_finite``). Both must equal ``torch.topk`` / ``torch.isfinite``
bit for bit, ties, NaN, Inf and ragged row ends included.
"""
from __future__ import annotations

import math

import pytest
import torch

from lowbit.ranges import Percentile
from lowbit.ranges.scale import all_finite, percentile, tail_values
from lowbit.formats import Uniform


def _rows(kind: int, r: int, n: int, g: torch.Generator) -> torch.Tensor:
    x = torch.randn(r, n, generator=g)
    if kind == 1:
        x = torch.relu(x)  # half the row tied at zero
    elif kind == 2:
        x = torch.round(x * 2) / 2  # few distinct values: ties everywhere
    elif kind == 3:
        x[0, torch.randint(0, n, (5,), generator=g)] = math.nan
    elif kind == 4:
        x[:, torch.randint(0, n, (7,), generator=g)] = math.inf
        x[:, torch.randint(0, n, (3,), generator=g)] = -math.inf
    elif kind == 5:
        x = torch.zeros(r, n)
        x[:, -3:] = 1.0  # the extremes sit in the ragged end past the last full block
    return x


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(torch.nan_to_num(a, 7.0), torch.nan_to_num(b, 7.0))


@pytest.mark.parametrize("kind", range(6))
def test_tail_values_equal_topk(kind: int) -> None:
    g = torch.Generator().manual_seed(kind)
    for r, n in ((1, 4099), (1, 65_537), (3, 20_000), (1, 524_288)):
        x = _rows(kind, r, n, g)
        for k in (1, 5, 53, 200):
            for largest in (True, False):
                want = torch.topk(x, k, dim=1, largest=largest, sorted=True).values
                assert _same(tail_values(x, k, largest), want), (r, n, k, largest)


def test_tail_values_small_rows_take_topk() -> None:
    x = torch.tensor([[3.0, 1.0, 2.0, 2.0]])
    assert tail_values(x, 2, True).tolist() == [[3.0, 2.0]]
    assert tail_values(x, 3, False).tolist() == [[1.0, 2.0, 2.0]]


def test_percentile_matches_numpy_on_large_rows() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(1, 300_000, generator=g, dtype=torch.float64))
    for p in (0.01, 1.0, 99.0, 99.99):
        want = float(torch.quantile(x[0], p / 100))  # linear interpolation, as numpy
        assert float(percentile(x, p)[0]) == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_percentile_range_rejects_nan_and_inf() -> None:
    est = Percentile(99.99)
    fmt = Uniform(8, signed=False)
    for bad in (math.nan, math.inf, -math.inf):
        x = torch.randn(1, 10_000)
        x[0, 1234] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            est(x, fmt)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_all_finite_equals_isfinite(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    for n in (1, 7, 4097, 100_000):
        for v in (None, math.nan, math.inf, -math.inf):
            for pos in (0, n // 2, n - 1):
                x = torch.randn(n, generator=g).to(dtype)
                if v is not None:
                    x[pos] = v
                assert all_finite(x) == bool(torch.isfinite(x).all())
    assert all_finite(torch.empty(0)) is True
