"""Hardware-aware QAT: the crossbar's weight noise and ADC in the training forward pass."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lowbit.nn.act import PACT
from lowbit.nn.layers import QuantConv2d, QuantLinear
from lowbit.quantizers import build_quantizer
from lowbit.targets.cim import CrossbarConfig, adc_ste, noise_aware, simulate, weight_noise_sigma


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    p = PACT(4)
    p.alpha.data.fill_(2.0)
    conv = QuantConv2d(3, 4, 3, padding=1, weight_quant=build_quantizer("dorefa4"))
    p2 = PACT(4)
    p2.alpha.data.fill_(2.0)
    return nn.Sequential(p, conv, p2, nn.Flatten(), QuantLinear(4 * 5 * 5, 3, weight_quant=build_quantizer("dorefa4")))


def _x() -> torch.Tensor:
    return torch.randn((4, 3, 5, 5), generator=torch.Generator().manual_seed(1)) * 1.5


def test_everything_off_is_the_plain_model_bit_for_bit() -> None:
    m = _model()
    aware = noise_aware(m, CrossbarConfig(adc_bits=None))
    x = _x()
    for train in (True, False):
        m.train(train)
        aware.train(train)
        assert torch.equal(aware(x), m(x))
    assert [n for n, _ in aware.named_parameters()] == [n for n, _ in m.named_parameters()]  # checkpoints still load


def test_noise_is_redrawn_in_training_and_off_in_eval() -> None:
    m = _model().eval()
    aware = noise_aware(m, CrossbarConfig(variation=0.1, read_noise=0.05, adc_bits=6)).train()
    x = _x()
    a, b = aware(x), aware(x)
    assert not torch.equal(a, b)
    assert torch.equal(aware.eval()(x), m(x))
    assert torch.equal(simulate(aware, CrossbarConfig(adc_bits=None))(x), simulate(m, CrossbarConfig(adc_bits=None))(x))


def test_gradients_reach_the_shadow_weights_under_noise() -> None:
    aware = noise_aware(_model(), CrossbarConfig(variation=0.1, read_noise=0.05, adc_bits=4)).train()
    torch.manual_seed(0)
    aware(_x()).pow(2).sum().backward()
    for layer in (aware[1], aware[4]):
        g = layer.weight.grad
        assert g is not None and bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0


def test_adc_ste_rounds_forward_and_passes_gradient() -> None:
    y = torch.tensor([0.0, 0.1, 0.5, 0.74, 1.0], requires_grad=True)
    q = adc_ste(y, 2)  # levels 0, 1/3, 2/3, 1
    assert torch.allclose(q, torch.tensor([0.0, 0.0, 2 / 3, 2 / 3, 1.0]))
    q.sum().backward()
    assert torch.equal(y.grad, torch.ones(5))
    flat = torch.full((3,), 2.0)
    assert torch.equal(adc_ste(flat, 4), flat)


def test_scope_sigma_and_bad_input() -> None:
    assert math.isclose(weight_noise_sigma(CrossbarConfig(variation=0.3, read_noise=0.4)), 0.5)
    m = _model()
    aware = noise_aware(m, CrossbarConfig(variation=0.2, adc_bits=None), digital=["4"]).train()
    x = _x()
    ref = copy.deepcopy(m).train()
    assert not torch.equal(aware[1](x), ref[1](x))  # the conv is analog: noisy
    h = torch.randn(4, 100, generator=torch.Generator().manual_seed(2))
    assert torch.equal(aware[4](h), ref[4](h))  # the Linear is kept digital: untouched
    from lowbit.info import info_of

    assert info_of(aware).extra["cim_aware"]["layers"] == {"1": "noise-aware", "4": "digital"}
    with pytest.raises(ValueError, match="already noise-aware"):
        noise_aware(aware, CrossbarConfig())
    with pytest.raises(ValueError, match="digital pattern"):
        noise_aware(m, CrossbarConfig(), digital=["nope"])
    with pytest.raises(TypeError, match="config"):
        noise_aware(m, {"adc_bits": 4})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no quantized"):
        noise_aware(nn.Linear(2, 2), CrossbarConfig())


def _effective_weights(cfg: CrossbarConfig, code: int, k: int = 4000) -> torch.Tensor:
    """Per-row weight a simulated array stores for ``code`` (one-hot reads, ideal ADC): one sample per device set."""
    from lowbit.targets.cim import CrossbarArray

    arr = CrossbarArray(torch.full((k, 1), code), 4, 7, cfg, generator=torch.Generator().manual_seed(5))
    return arr(torch.eye(k, dtype=torch.uint8), 1)[:, 0].float()


@pytest.mark.parametrize("signed", ["dummy", "differential"])
def test_cell_noise_has_the_simulators_spread_per_code(signed: str) -> None:
    from lowbit.targets.cim import cell_noise

    cfg = CrossbarConfig(cell_bits=2, adc_bits=None, variation=0.1, signed=signed)
    g = torch.Generator().manual_seed(0)
    for code in (0, 7, 8, 15):
        sim = _effective_weights(cfg, code)
        draws = cell_noise(torch.full((1, 4000), code), 4, cfg, generator=g)[0]
        assert abs(float(sim.mean()) - (code - 7)) < 0.1  # the simulator is unbiased
        assert abs(float(draws.mean())) < 0.1
        # Same spread as the simulator's devices (4000 samples: ~2 % standard error on a std).
        assert math.isclose(float(draws.std()), float(sim.std()), rel_tol=0.08), (code, float(draws.std()), float(sim.std()))
    if signed == "dummy":
        # Offset binary: a zero weight (code 7 = cells 3, 1 against the reference 3, 1) is far from noise-free.
        expected = 0.1 * math.sqrt(2 * (3**2 + 16 * 1**2))
        assert math.isclose(float(cell_noise(torch.full((1, 20000), 7), 4, cfg, generator=g).std()), expected, rel_tol=0.03)
    assert torch.equal(cell_noise(torch.full((2, 3), 5), 4, CrossbarConfig()), torch.zeros(2, 3))


def test_cell_noise_model_is_the_default_and_weight_proxy_stays() -> None:
    m = _model()
    x = _x()
    cells = noise_aware(m, CrossbarConfig(variation=0.1, adc_bits=None)).train()
    proxy = noise_aware(m, CrossbarConfig(variation=0.1, adc_bits=None), noise="weight").train()
    from lowbit.info import info_of

    assert info_of(cells).extra["cim_aware"]["noise"] == "cells"
    assert info_of(proxy).extra["cim_aware"]["noise"] == "weight"
    # The cell model puts noise on weights at the middle code too; the proxy leaves a zero weight exactly zero.
    w = cells[1].quantized_weight().detach()
    ref = m[1].quantized_weight().detach()
    assert float((w - ref).abs().mean()) > 0
    with pytest.raises(ValueError, match="noise must be one of"):
        noise_aware(m, CrossbarConfig(), noise="gauss")


def test_cli_train_aware_prints_both_tables_and_the_cost(tmp_path, capsys) -> None:
    from lowbit.cli import main

    rc = main(["cim", "--arch", "mlp", "--epochs", "1", "--train-aware", "--aware-epochs", "1", "--cells", "2", "--adc", "8",
               "--variation", "0,0.1", "--out", str(tmp_path), "--no-plots"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    plain, aware = out.split("hardware-aware (1 epochs, 2-bit cells, 8-bit ADC, σ=10% in training):")
    for part in (plain, aware):
        row = next(line for line in part.splitlines() if line.startswith("| 2 | 8 |"))
        assert all(0 <= float(v) <= 100 for v in row.split("|")[3:5])
    assert "| **total** |" in aware and "ADC share" in aware
    assert main(["cim", "--aware-epochs", "0", "--out", str(tmp_path), "--no-plots"]) != 0
    assert "--aware-epochs must be >= 1" in capsys.readouterr().err
