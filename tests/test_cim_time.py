"""Crossbar over time: PCM drift, global drift compensation and per-read noise."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lowbit.nn.act import PACT
from lowbit.nn.layers import QuantConv2d, QuantLinear
from lowbit.quantizers import build_quantizer
from lowbit.targets.cim import CrossbarArray, CrossbarConfig, simulate
from lowbit.targets.cim.drift import compensation_scale, drift_factors, with_read_noise

DAY = 86400.0


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    p = PACT(4)
    p.alpha.data.fill_(2.0)
    conv = QuantConv2d(5, 4, 3, padding=1, weight_quant=build_quantizer("dorefa4"))
    p2 = PACT(4)
    p2.alpha.data.fill_(2.0)
    return nn.Sequential(p, conv, p2, nn.Flatten(), QuantLinear(4 * 6 * 6, 3, weight_quant=build_quantizer("dorefa4"))).eval()


def _x(seed: int = 1) -> torch.Tensor:
    return torch.randn((3, 5, 6, 6), generator=torch.Generator().manual_seed(seed)) * 1.5


def _array(**kw: object) -> tuple[CrossbarArray, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 16, (20, 5), generator=g)
    cfg = CrossbarConfig(cell_bits=2, rows=8, **kw)  # type: ignore[arg-type]
    return CrossbarArray(codes, 4, 7, cfg, generator=torch.Generator().manual_seed(0),
                         drift_generator=torch.Generator().manual_seed(1)), torch.randint(0, 16, (7, 20), generator=g)  # fmt: skip


def test_drift_factor_is_the_power_law() -> None:
    cfg = CrossbarConfig(drift_nu=(0.05, 0.0), t_seconds=DAY)
    f = drift_factors((4, 3), cfg)
    assert torch.allclose(f, torch.full((4, 3), DAY**-0.05), rtol=1e-6)
    assert abs(float(f[0, 0]) - 0.56647) < 1e-5  # 86400^-0.05
    spread = drift_factors((20000,), CrossbarConfig(drift_nu=(0.05, 0.02), t_seconds=DAY), torch.Generator().manual_seed(0))
    assert float(spread.max()) <= 1.0  # nu clipped at 0: no device gains conductance
    # median device has nu = 0.05
    assert abs(float(spread.median()) - DAY**-0.05) < 0.01
    assert torch.equal(drift_factors((5,), CrossbarConfig(drift_nu=(0.05, 0.02))), torch.ones(5))  # read at t0


@pytest.mark.parametrize("extra", [dict(adc_bits=None), dict(adc_bits=6, variation=0.1, stuck_at_zero=0.02)])
def test_drift_with_nu_zero_changes_nothing(extra: dict) -> None:
    m, x = _model(), _x()
    base = simulate(m, CrossbarConfig(cell_bits=2, rows=16, **extra))(x)
    for comp in (False, True):
        cfg = CrossbarConfig(cell_bits=2, rows=16, drift_nu=(0.0, 0.0), t_seconds=365 * DAY, drift_compensation=comp, **extra)
        assert torch.equal(simulate(m, cfg)(x), base)


def test_read_noise_zero_changes_nothing_and_noise_is_redrawn() -> None:
    m, x = _model(), _x()
    base = simulate(m, CrossbarConfig(cell_bits=2, rows=16, adc_bits=None))(x)
    assert torch.equal(simulate(m, CrossbarConfig(cell_bits=2, rows=16, adc_bits=None, read_noise=0.0))(x), base)
    noisy = simulate(m, CrossbarConfig(cell_bits=2, rows=16, adc_bits=None, read_noise=0.05))
    torch.manual_seed(5)
    a = noisy(x)
    b = noisy(x)
    torch.manual_seed(5)
    assert torch.equal(noisy(x), a)  # seeded by torch's global generator
    assert not torch.equal(a, b)  # a fresh draw per forward
    louder = simulate(m, CrossbarConfig(cell_bits=2, rows=16, adc_bits=None, read_noise=0.2))
    torch.manual_seed(5)
    assert 0 < float((a - base).abs().mean()) < float((louder(x) - base).abs().mean())


def test_compensation_restores_a_uniform_drift_to_float_rounding() -> None:
    # Exact up to float rounding, not bit-exact: g(t) = g(t0) c is rounded to float32 and the
    # column sums are float32, so alpha * y(t) differs from y(t0) in the last bits.
    ideal, x = _array(adc_bits=None)
    y0 = ideal(x, 4)
    drifted, _ = _array(adc_bits=None, drift_nu=(0.05, 0.0), t_seconds=30 * DAY)
    comp, _ = _array(adc_bits=None, drift_nu=(0.05, 0.0), t_seconds=30 * DAY, drift_compensation=True)
    c = (30 * DAY) ** -0.05
    assert torch.allclose(drifted(x, 4), c * y0, rtol=1e-5, atol=1e-4)  # the whole read-out decays by c
    assert abs(comp.drift_scale - 1 / c) < 1e-5 / c
    assert torch.allclose(comp(x, 4), y0, rtol=1e-6, atol=1e-4)
    m, xm = _model(), _x()
    base = simulate(m, CrossbarConfig(cell_bits=2, rows=16, adc_bits=None))(xm)
    late = simulate(m, CrossbarConfig(cell_bits=2, rows=16, adc_bits=None, drift_nu=(0.05, 0.0), t_seconds=365 * DAY,
                                      drift_compensation=True))(xm)  # fmt: skip
    assert torch.allclose(late, base, rtol=1e-5, atol=1e-5)


def test_compensation_helps_under_a_spread_of_nu() -> None:
    # Differential pairs: both columns hold the signal. (With signed="dummy" the reference column
    # drifts independently of the weight column and the offset no longer cancels; one global
    # scalar cannot fix that, and on this toy model it does not help.)
    m, x = _model(), _x()
    base = simulate(m, CrossbarConfig(cell_bits=2, rows=16, adc_bits=None, signed="differential"))(x)
    errs = []
    for comp in (False, True):
        cfg = CrossbarConfig(cell_bits=2, rows=16, adc_bits=None, signed="differential", drift_nu=(0.05, 0.02),
                             t_seconds=30 * DAY, drift_compensation=comp)  # fmt: skip
        out = simulate(m, cfg)(x)
        assert torch.equal(simulate(m, cfg)(x), out)  # same seed, same chip, same drift
        errs.append(float((out - base).abs().mean()))
    assert errs[1] < 0.7 * errs[0]  # measured 2.46 vs 4.23


def test_helpers_and_bad_input() -> None:
    assert compensation_scale(torch.tensor([2.0, -2.0]), torch.tensor([1.0, -1.0])) == 2.0
    assert compensation_scale(torch.zeros(3), torch.zeros(3)) == 1.0  # both clamp at 1e-4
    g = torch.ones(10)
    assert with_read_noise(g, 0.0) is g
    assert CrossbarConfig(drift_nu=(0.0, 0.0), t_seconds=DAY, adc_bits=None).ideal
    assert not CrossbarConfig(drift_nu=(0.05, 0.0), t_seconds=DAY, adc_bits=None).ideal
    assert not CrossbarConfig(read_noise=0.01, adc_bits=None).ideal
    assert CrossbarConfig(drift_nu=[0.05, 0.02]).drift_nu == (0.05, 0.02)
    with pytest.raises(ValueError, match="drift_nu"):
        CrossbarConfig(drift_nu=(0.05,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="drift_nu"):
        CrossbarConfig(drift_nu=(-0.1, 0.0))
    with pytest.raises(ValueError, match="t_seconds"):
        CrossbarConfig(t_seconds=0.5)
    with pytest.raises(ValueError, match="t0"):
        CrossbarConfig(t0=0)
    with pytest.raises(ValueError, match="read_noise"):
        CrossbarConfig(read_noise=-0.1)
    with pytest.raises(TypeError, match="drift_compensation"):
        CrossbarConfig(drift_compensation=1)  # type: ignore[arg-type]
    assert math.isclose(CrossbarConfig(t0=2.0, t_seconds=4.0).t_seconds, 4.0)


def test_fault_rate_zero_and_retention_zero_change_nothing() -> None:
    m, x = _model(), _x()
    base = simulate(m, CrossbarConfig(cell_bits=2, rows=16, adc_bits=6, variation=0.1))(x)
    for kw in (dict(fault_rate=0.0), dict(retention=(0.0, 0.0)), dict(retention=(0.0, 0.0), fault_rate=0.0, drift_nu=(0.0, 0.0))):
        cfg = CrossbarConfig(cell_bits=2, rows=16, adc_bits=6, variation=0.1, t_seconds=365 * DAY, **kw)  # type: ignore[arg-type]
        assert torch.equal(simulate(m, cfg)(x), base)
    assert CrossbarConfig(retention=(0.0, 0.0), t_seconds=DAY, adc_bits=None).ideal
    assert not CrossbarConfig(fault_rate=0.01, t_seconds=DAY, adc_bits=None).ideal


def test_faults_appear_monotonically_with_time_at_the_documented_rate() -> None:
    from lowbit.targets.cim import age

    g = torch.full((200000,), 1.5)  # 2-bit cells at a level no stuck cell has (0 or 3)
    stuck = []
    for t in (1.0, 10.0, 3600.0, DAY, 30 * DAY, 365 * DAY):
        cfg = CrossbarConfig(cell_bits=2, fault_rate=0.01, t_seconds=t)
        out = age(g, cfg, torch.Generator().manual_seed(7))
        mask = out != 1.5
        assert set(out[mask].unique().tolist()) <= {0.0, 3.0}
        if stuck:
            assert bool((mask >= stuck[-1]).all())  # a cell stuck earlier is still stuck (and at the same level)
        stuck.append(mask)
        expected = 1 - 0.99 ** math.log10(t)
        assert abs(float(mask.float().mean()) - expected) < 0.002, (t, float(mask.float().mean()), expected)
    assert int(stuck[0].sum()) == 0 and int(stuck[-1].sum()) > int(stuck[2].sum()) > 0


def test_retention_relaxes_toward_the_middle_with_log_time_spread() -> None:
    from lowbit.targets.cim import age

    g = torch.cat([torch.zeros(50000), torch.full((50000,), 3.0)])
    cfg = CrossbarConfig(cell_bits=2, retention=(0.05, 0.02), t_seconds=1e4)  # 4 decades: 20 % of the way to 1.5
    out = age(g, cfg, torch.Generator().manual_seed(0))
    lo, hi = out[:50000], out[50000:]
    assert abs(float(hi.mean()) - (3.0 - 0.2 * 1.5)) < 0.01
    assert abs(float(hi.std()) - 0.02 * 4 * 3) < 0.01  # sigma * decades * range
    assert float(lo.min()) >= 0.0  # clipped at zero conductance
    assert float(lo.mean()) > 0.2  # the off state relaxes upward
    assert torch.equal(age(g, CrossbarConfig(cell_bits=2, retention=(0.05, 0.02))), g)  # read at t0
    with pytest.raises(ValueError, match="retention"):
        CrossbarConfig(retention=(1.5, 0.0))
    with pytest.raises(ValueError, match="fault_rate"):
        CrossbarConfig(fault_rate=-0.1)


def test_compensated_uniform_drift_through_an_adc_stays_near_t0() -> None:
    # With the fresh array's one-level minimum ADC step, decayed sums (0.57 of a level) were rounded
    # to whole levels and the compensated output was off by 2.7 (1 hour) to 1.7e5 (1 year); an aged
    # array's ADC spreads its levels over the range, and the error stays at the ADC's own ~0.17.
    m, x = _model(), _x()
    base = simulate(m, CrossbarConfig(cell_bits=1, rows=16, adc_bits=6, signed="differential"))(x)
    scale = float(base.abs().mean())
    for t in (3600.0, DAY, 365 * DAY):
        cfg = CrossbarConfig(cell_bits=1, rows=16, adc_bits=6, signed="differential", drift_nu=(0.05, 0.0), t_seconds=t,
                             drift_compensation=True)  # fmt: skip
        assert cfg.time_changes
        assert float((simulate(m, cfg)(x) - base).abs().mean()) < 0.08 * scale  # measured 0.171-0.177 of 3.70
    assert not CrossbarConfig(drift_nu=(0.0, 0.0), t_seconds=DAY).time_changes
    assert not CrossbarConfig(drift_nu=(0.05, 0.02)).time_changes  # read at t0
