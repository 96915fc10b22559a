"""The crossbar simulator: exact at ideal settings, and each non-ideality does what it says."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lowbit.nn.act import PACT, ActQuant
from lowbit.nn.layers import QuantConv2d, QuantLinear
from lowbit.quantizer import quantizer
from lowbit.quantizers import build_quantizer
from lowbit.targets.cim import (
    CrossbarArray, CrossbarConfig, CrossbarLayer, adc, combine_slices, crossbar_layers, simulate, slice_codes, tile_layout,
)  # fmt: skip

IDEAL = dict(adc_bits=None)


def _pact(bits: int = 4, alpha: float = 2.0) -> PACT:
    p = PACT(bits)
    p.alpha.data.fill_(alpha)
    return p


def _linear_model(seed: int = 0, k: int = 20, c: int = 6) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(_pact(), QuantLinear(k, c, weight_quant=build_quantizer("dorefa4"))).eval()
    return m


def _conv_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    conv = QuantConv2d(5, 4, 3, padding=1, stride=2, weight_quant=build_quantizer("dorefa4"))
    return nn.Sequential(_pact(), conv).eval()


def _x(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 1.5


# --------------------------------------------------------------------------- slices, tiles, ADC


def test_slices_are_lsb_first_and_recombine_exactly() -> None:
    codes = torch.tensor([0, 7, 8, 15, 13])
    s1 = slice_codes(codes, 1, 4)
    assert s1[:, 1].tolist() == [1, 1, 1, 0] and s1[:, 2].tolist() == [0, 0, 0, 1]  # 7 and 8, as in the reference
    assert slice_codes(codes, 2, 2)[:, 4].tolist() == [1, 3]  # 13 = 0b11_01
    for cb, n in ((1, 4), (2, 2), (4, 1)):
        assert torch.equal(combine_slices(slice_codes(codes, cb, n), cb), codes)
    with pytest.raises(ValueError, match="0..15"):
        slice_codes(torch.tensor([16]), 1, 4)


def test_tile_layout_keeps_the_remainder_tile() -> None:
    lay = tile_layout(7, 3)
    assert lay.tolist() == [[0, 1, 2], [3, 4, 5], [6, -1, -1]]
    tap = tile_layout(6, 2, taps=3, mapping="tap")  # 2 channels x 3 taps: rows c*3 + tap
    assert tap.tolist() == [[0, 3], [1, 4], [2, 5]]


def test_adc_hand_made() -> None:
    x = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    assert adc(x, 3, 0.0, 4.0).tolist() == x.tolist()  # 8 levels >= 5 integers: lossless (step 1)
    assert adc(x, 1, 0.0, 4.0).tolist() == [0.0, 0.0, 0.0, 4.0, 4.0]  # step 4, round half to even
    assert adc(torch.tensor([9.0]), 2, 0.0, 6.0).tolist() == [6.0]  # saturates at the top level


@pytest.mark.parametrize("signed", ["dummy", "differential"])
@pytest.mark.parametrize("cell_bits", [1, 2, 4])
@pytest.mark.parametrize("cycle_bits", [1, 3])
def test_array_is_exact_on_hand_made_integers(signed: str, cell_bits: int, cycle_bits: int) -> None:
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (7, 3), generator=g)
    x = torch.randint(0, 16, (5, 7), generator=g)
    cfg = CrossbarConfig(cell_bits=cell_bits, rows=3, signed=signed, input_bits_per_cycle=cycle_bits, **IDEAL)
    arr = CrossbarArray(codes, 4, 7, cfg)
    assert arr.tiles == 3
    assert torch.equal(arr(x.float(), 4), (x @ (codes - 7)).double())
    # enough ADC bits read the integer column sums losslessly, in both range modes
    for mode in ("dynamic", "full_scale"):
        arr = CrossbarArray(codes, 4, 7, CrossbarConfig(cell_bits=cell_bits, rows=3, signed=signed, adc_bits=12,
                                                        adc_range=mode, input_bits_per_cycle=cycle_bits))  # fmt: skip
        assert torch.equal(arr(x.float(), 4), (x @ (codes - 7)).double())


# --------------------------------------------------------------------------- ideal = fake-quantized model


@pytest.mark.parametrize("signed", ["dummy", "differential"])
@pytest.mark.parametrize("cell_bits", [1, 2, 4])
def test_ideal_linear_equals_fake_quant(signed: str, cell_bits: int) -> None:
    m = _linear_model()
    x = _x((9, 20))
    for adc_bits in (None, 12):  # no ADC, and an ADC with enough bits
        sim = simulate(m, CrossbarConfig(cell_bits=cell_bits, rows=8, signed=signed, adc_bits=adc_bits))
        layer = crossbar_layers(sim)["1"]
        assert layer.array.tiles == 3  # 20 rows = 8 + 8 + a remainder of 4
        torch.testing.assert_close(sim(x), m(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("mapping", ["unrolled", "tap"])
@pytest.mark.parametrize("signed", ["dummy", "differential"])
def test_ideal_conv_equals_fake_quant(mapping: str, signed: str) -> None:
    m = _conv_model()
    x = _x((3, 5, 7, 7))
    sim = simulate(m, CrossbarConfig(cell_bits=2, rows=16, mapping=mapping, signed=signed, **IDEAL))
    assert crossbar_layers(sim)["1"].array.tiles == (3 if mapping == "unrolled" else 9)  # 45 rows
    out = sim(x)
    assert out.shape == m(x).shape == (3, 4, 4, 4)
    torch.testing.assert_close(out, m(x), rtol=0, atol=1e-5)


def test_ideal_with_signed_inputs_zero_points_and_channel_scales() -> None:
    torch.manual_seed(3)
    x = _x((4, 3, 6, 6))
    conv = QuantConv2d(3, 5, 3, padding=1, weight_quant=quantizer("int4:channel"),
                       input_quant=ActQuant(quantizer("int4").fit(x)))  # fmt: skip
    lin = QuantLinear(12, 4, weight_quant=quantizer("uint3:channel"), input_quant=ActQuant(quantizer("uint4").fit(x - 1)))
    for model, inp in ((conv.eval(), x), (lin.eval(), x.reshape(-1, 12)[:10] - 1)):
        wrapped = nn.Sequential(model).eval()
        sim = simulate(wrapped, CrossbarConfig(cell_bits=1, rows=10, **IDEAL))
        assert isinstance(sim[0], CrossbarLayer)
        torch.testing.assert_close(sim(inp), wrapped(inp), rtol=0, atol=1e-4)


# --------------------------------------------------------------------------- non-idealities


def _err(cfg: CrossbarConfig, seed: int = 0) -> float:
    """Mean |output - ideal crossbar output| (the ideal one equals the fake-quantized model)."""
    m = _linear_model(k=64, c=8)
    x = _x((32, 64), seed=5)
    ideal = simulate(m, CrossbarConfig(rows=cfg.rows, cell_bits=cfg.cell_bits, **IDEAL))(x)
    return float((simulate(m, cfg)(x) - ideal).abs().mean())


def test_adc_error_shrinks_with_adc_bits() -> None:
    for mode in ("dynamic", "full_scale"):
        errs = [_err(CrossbarConfig(rows=32, adc_bits=b, adc_range=mode)) for b in (2, 3, 4, 5, 6, 8)]
        assert errs[0] > 0 and errs[-1] == 0.0, (mode, errs)
        assert all(a >= b for a, b in zip(errs, errs[1:])), (mode, errs)


def test_variation_is_seeded_and_grows_with_sigma() -> None:
    m, x = _linear_model(k=64, c=8), _x((16, 64))
    a = simulate(m, CrossbarConfig(variation=0.1, seed=1, **IDEAL))(x)
    b = simulate(m, CrossbarConfig(variation=0.1, seed=1, **IDEAL))(x)
    c = simulate(m, CrossbarConfig(variation=0.1, seed=2, **IDEAL))(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    errs = [_err(CrossbarConfig(variation=v, **IDEAL)) for v in (0.0, 0.02, 0.2)]
    assert errs[0] == 0.0 < errs[1] < errs[2]


def test_on_off_ratio_sets_g_min_and_costs_accuracy() -> None:
    cfg = CrossbarConfig(cell_bits=1, on_off_ratio=11.0, **IDEAL)
    assert cfg.g_min == pytest.approx(0.1)
    arr = CrossbarArray(torch.tensor([[0, 15]]), 4, 7, cfg)
    assert float(arr.g_pos.min()) == pytest.approx(0.1) and float(arr.g_pos.max()) == pytest.approx(1.1)
    # an off cell's current cancels against the reference column only on average: with
    # variation, or with the full-scale ADC range that the g_min floor eats into, a low ratio costs
    for extra in (dict(variation=0.05, seed=3), dict(adc_bits=6, adc_range="full_scale")):
        lo_ratio = _err(CrossbarConfig(on_off_ratio=2.0, **{**IDEAL, **extra}))
        hi_ratio = _err(CrossbarConfig(on_off_ratio=1e4, **{**IDEAL, **extra}))
        assert lo_ratio > 1.5 * hi_ratio, (extra, lo_ratio, hi_ratio)


def test_stuck_at_faults() -> None:
    codes = torch.randint(0, 16, (10, 4), generator=torch.Generator().manual_seed(0))
    x = torch.randint(0, 16, (6, 10)).float()
    all_off = CrossbarArray(codes, 4, 7, CrossbarConfig(stuck_at_zero=1.0, **IDEAL))
    assert float(all_off.g_pos.abs().max()) == 0.0 and torch.equal(all_off(x, 4), torch.zeros(6, 4, dtype=torch.float64))
    all_on = CrossbarArray(codes, 4, 7, CrossbarConfig(cell_bits=2, stuck_at_one=1.0, **IDEAL))
    assert torch.equal(all_on.g_pos, torch.full_like(all_on.g_pos, 3.0))
    e1, e2 = _err(CrossbarConfig(stuck_at_zero=0.05, **IDEAL)), _err(CrossbarConfig(stuck_at_zero=0.05, **IDEAL))
    assert e1 == e2 > 0 and _err(CrossbarConfig(stuck_at_zero=0.2, stuck_at_one=0.05, **IDEAL)) > e1


# --------------------------------------------------------------------------- errors, digital layers


@pytest.mark.parametrize(
    "kw, word",
    [(dict(cell_bits=3), "cell_bits"), (dict(adc_bits=0), "adc_bits"), (dict(rows=0), "rows"),
     (dict(input_bits_per_cycle=0), "input_bits_per_cycle"), (dict(adc_range="log"), "adc_range"),
     (dict(signed="twos"), "signed"), (dict(mapping="x"), "mapping"), (dict(on_off_ratio=1.0), "on_off_ratio"),
     (dict(variation=-0.1), "variation"), (dict(stuck_at_zero=0.7, stuck_at_one=0.7), "stuck_at")],
)  # fmt: skip
def test_bad_config_raises(kw: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        CrossbarConfig(**kw)


def test_digital_layers_and_missing_integer_inputs() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(QuantLinear(8, 6, weight_quant=build_quantizer("dorefa4")), _pact(),
                      nn.Dropout(), QuantLinear(6, 3, weight_quant=build_quantizer("dorefa4"))).eval()  # fmt: skip
    with pytest.raises(ValueError, match="digital"):
        simulate(m, CrossbarConfig())  # layer 0 takes raw inputs
    with pytest.raises(ValueError, match="matches no quantized layer"):
        simulate(m, CrossbarConfig(), digital=["nope"])
    sim = simulate(m, CrossbarConfig(**IDEAL), digital=["0"])
    assert isinstance(sim[0], QuantLinear) and isinstance(sim[3], CrossbarLayer)
    assert sim.lowbit_cim["layers"] == {"0": "digital", "3": "crossbar"}
    x = _x((5, 8))
    torch.testing.assert_close(sim(x), m(x), rtol=0, atol=1e-5)
    bad = simulate(_linear_model(), CrossbarConfig())
    bad[0] = nn.Identity()  # now the input is not on PACT's grid
    with pytest.raises(ValueError, match="not on the 4-bit grid"):
        bad(_x((2, 20)))


def test_cli_prints_the_table(tmp_path, capsys) -> None:
    from lowbit.cli import main

    common = ["--cells", "1", "--adc", "6", "--variation", "0", "--out", str(tmp_path), "--no-plots"]
    saved = str(tmp_path / "m.lowbit")
    rc = main(["cim", "--arch", "mlp", "--epochs", "1", "--save", saved, *common])
    out = capsys.readouterr().out
    assert rc == 0 and "| software (fake-quant) |" in out and "| 1 | 6 |" in out
    row = next(line for line in out.splitlines() if line.startswith("| 1 | 6 |"))
    assert 0 <= float(row.split("|")[3]) <= 100
    assert (tmp_path / "cim_table.md").read_text().startswith("| cell bits")
    assert main(["cim", "--model", saved, *common]) == 0  # the loaded model gives the same table
    assert capsys.readouterr().out.split("\n\n")[0] == out.split("\n\n")[0]
