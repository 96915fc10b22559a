"""Energy, latency and area estimates of crossbar inference (lowbit.targets.cim.cost)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lowbit.nn.act import PACT
from lowbit.nn.layers import QuantConv2d, QuantLinear
from lowbit.quantizers import build_quantizer
from lowbit.targets.cim import CostParams, CrossbarConfig, adc_energy, cost, cost_table


def _model() -> nn.Module:
    torch.manual_seed(0)
    p = PACT(4)
    p.alpha.data.fill_(2.0)
    conv = QuantConv2d(3, 4, 3, padding=1, weight_quant=build_quantizer("dorefa4"))
    p2 = PACT(4)
    p2.alpha.data.fill_(2.0)
    return nn.Sequential(p, conv, p2, nn.Flatten(), QuantLinear(4 * 5 * 5, 3, weight_quant=build_quantizer("dorefa4"))).eval()


X = torch.zeros(2, 3, 5, 5)


def test_counts_and_energy_by_hand() -> None:
    cfg = CrossbarConfig(cell_bits=2, adc_bits=5, rows=16)
    conv, lin = cost(_model(), cfg, example=X)
    # conv: K = 27 rows -> 2 tiles of 16; 4-bit codes in 2 slices of 2 bits; 4 weight columns per slice + 1 reference.
    assert (conv.tiles, conv.columns, conv.cycles) == (2, 2 * 4 + 2, 4)
    assert conv.conversions == 25 * 4 * 2 * 10  # 5x5 positions x 4 input bits x 2 tiles x 10 columns
    assert lin.conversions == 1 * 4 * 7 * (2 * 3 + 2)  # K = 100 -> 7 tiles
    p = CostParams()
    assert math.isclose(conv.e_adc, conv.conversions * p.adc_fom * 32)
    g_mean = (1 / 6e3) * (1 / 150 + (1 - 1 / 150) / 2)
    assert math.isclose(conv.e_array, 25 * 4 * 2 * 16 * 10 * 0.5 * 0.25 * g_mean * 10e-9)
    assert math.isclose(conv.latency, 25 * 4 * (10e-9 + 8 * 5 * 1e-9))
    assert all(v > 0 for lc in (conv, lin) for v in (lc.energy, lc.e_array, lc.e_adc, lc.e_driver, lc.e_shift_add, lc.latency, lc.area))


def test_adc_energy_doubles_per_bit() -> None:
    assert math.isclose(adc_energy(8) / adc_energy(4), 16.0)
    m = _model()
    e = {b: sum(lc.e_adc for lc in cost(m, CrossbarConfig(adc_bits=b), example=X)) for b in (4, 5, 6, 8)}
    assert math.isclose(e[8] / e[4], 16.0) and math.isclose(e[6] / e[5], 2.0)
    share = [sum(lc.e_adc for lc in cs) / sum(lc.energy for lc in cs)
             for cs in (cost(m, CrossbarConfig(adc_bits=b), example=X) for b in (4, 6, 8))]  # fmt: skip
    assert share[0] < share[1] < share[2]  # the ADC's share grows with its bits


def test_scope_zero_layers_and_bad_input() -> None:
    m = _model()
    assert cost(m, CrossbarConfig(), example=X, digital=["1", "4"]) == []
    assert cost_table([]).endswith("| **total** | 0 | 0 | 0 | 0.000 | 0% | 0.00 | 0.0000 |")
    (lin,) = cost(m, CrossbarConfig(), digital=["1"])  # a Linear needs no example
    assert lin.name == "4"
    d = cost(m, CrossbarConfig(signed="differential"), example=X)[1]
    assert d.columns == 2 * 4 * 3  # differential pairs: magnitudes up to 8 need 4 one-bit slices, twice per column
    with pytest.raises(ValueError, match="example is needed"):
        cost(m, CrossbarConfig())
    with pytest.raises(ValueError, match="adc_fom"):
        CostParams(adc_fom=0)
    with pytest.raises(TypeError, match="config"):
        cost(m, {"adc_bits": 4}, example=X)  # type: ignore[arg-type]
    assert "| **total** |" in cost_table(cost(m, CrossbarConfig(), example=X))
