"""GPTQ, AdaRound, bias correction, equalization, sensitivity and mixed precision (issue 17)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit.algorithms.adaround import adaround_quantize, rectified_sigmoid
from lowbit.algorithms.bias_correction import mean_output_error
from lowbit.algorithms.equalization import equalize, relu_chains
from lowbit.algorithms.gptq import HessianAccumulator, gptq_quantize
from lowbit.algorithms.layerwise import float_twin


def _layer_and_inputs(seed: int = 0) -> tuple[nn.Linear, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(48, 24)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(24, 48, generator=g) * 0.2)
    mix = torch.randn(48, 48, generator=g) / 7  # correlated inputs: where error feedback pays off
    return lin, torch.randn(512, 48, generator=g) @ mix


def _out_mse(x: torch.Tensor, w: torch.Tensor, wq: torch.Tensor) -> float:
    return float(((x @ (w - wq).T) ** 2).mean())


SPECS = ["int4:channel:mse", "int3:tensor", "uint3:channel", "int3:group16", "int4:channel1", "nf4:channel"]


@pytest.mark.parametrize("spec", SPECS)
def test_gptq_lowers_output_error_and_stays_on_the_grid(spec: str) -> None:
    lin, x = _layer_and_inputs()
    w = lin.weight.detach()
    q = lowbit.quantizer(spec).fit(w)
    nearest = q(w)
    acc = HessianAccumulator(lin)
    for chunk in x.split(128):
        acc.add(chunk)
    torch.testing.assert_close(acc.H, 2 * x.T @ x / x.shape[0], rtol=1e-4, atol=1e-5)
    for act_order in (False, True):
        qg = lowbit.quantizer(spec).fit(w)
        wq = gptq_quantize(w, qg, acc.H, act_order=act_order)
        assert _out_mse(x, w, wq) < 0.8 * _out_mse(x, w, nearest)
        assert torch.equal(qg(wq), wq)  # a fixed point of the quantizer
        assert torch.equal(qg.encode(wq).dequantize(), wq)  # encode -> dequantize is the weight


@pytest.mark.parametrize("spec", ["int4:channel:mse", "int2:tensor", "uint3:channel", "nf4:channel", "int3:channel1"])
def test_gptq_with_an_identity_hessian_is_nearest_rounding(spec: str) -> None:
    w = torch.randn(16, 40, generator=torch.Generator().manual_seed(1))
    q = lowbit.quantizer(spec).fit(w)
    assert torch.equal(gptq_quantize(w, q, torch.eye(40)), q(w))


def test_gptq_conv_hessian_matches_the_unfolded_patches() -> None:
    conv = nn.Conv2d(3, 5, 3, padding=1, stride=2)
    x = torch.randn(4, 3, 7, 7)
    acc = HessianAccumulator(conv)
    acc.add(x)
    w = torch.randn(5, 27)
    y = F.conv2d(x, w.reshape(5, 3, 3, 3), padding=1, stride=2)  # (W X) through the Hessian's rows
    rows = F.unfold(x, 3, padding=1, stride=2).transpose(1, 2).reshape(-1, 27)
    torch.testing.assert_close((rows @ w.T).reshape(4, -1, 5).transpose(1, 2).reshape(y.shape), y, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(acc.H, 2 * rows.T @ rows / rows.shape[0], rtol=1e-4, atol=1e-5)


def test_gptq_rejects_bad_arguments() -> None:
    w = torch.randn(4, 8)
    q = lowbit.quantizer("int4").fit(w)
    with pytest.raises(ValueError, match="H must be 8x8"):
        gptq_quantize(w, q, torch.eye(7))
    with pytest.raises(ValueError, match="percdamp"):
        gptq_quantize(w, q, torch.eye(8), percdamp=2.0)


def test_rectified_sigmoid_and_adaround_init() -> None:
    v = torch.tensor([-100.0, 0.0, 100.0])
    assert rectified_sigmoid(v).tolist() == [0.0, 0.5, 1.0]


@pytest.mark.parametrize("spec", ["int3:channel:mse", "nf4:channel"])
def test_adaround_lowers_output_error_and_stays_on_the_grid(spec: str) -> None:
    lin, x = _layer_and_inputs(2)
    w = lin.weight.detach()
    q = lowbit.quantizer(spec).fit(w)
    nearest = q(w)
    wq = adaround_quantize(lin, q, x, iters=300, batch_size=64, lr=1e-2)
    assert _out_mse(x, w, wq) < 0.95 * _out_mse(x, w, nearest)
    assert torch.equal(q(wq), wq)
    assert torch.equal(q.encode(wq).dequantize(), wq)
    assert bool(((wq - nearest).abs() <= q.scale.reshape(-1, 1) * 1.0001 * (2 if spec.startswith("nf") else 1)).all())


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.MaxPool1d(1), nn.Linear(24, 5)).eval()


def _calib(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(64, 12, generator=g) * 2 + 0.5 for _ in range(4)]


@pytest.mark.parametrize("method", ["gptq", "adaround", "brecq"])
def test_quantize_method_gives_an_ordinary_ptq_model(method: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, calib = _mlp(), _calib()
    opts = {"iters": 200} if method in ("adaround", "brecq") else None
    qm = lowbit.quantize(model, "w3", calib=calib, method=method, method_options=opts)
    near = lowbit.quantize(model, "w3", calib=calib)
    x = torch.cat(calib)
    with torch.no_grad():
        ref = model(x)
        assert float(((qm(x) - ref) ** 2).mean()) < float(((near(x) - ref) ** 2).mean())
    for name, layer in lowbit.api.quantized_layers(qm).items():
        assert torch.equal(layer.encode_weight().dequantize(), layer.weight.detach()), name
    conv = lowbit.convert(qm)
    torch.testing.assert_close(conv(x), qm(x), rtol=0, atol=0)
    lowbit.save(qm, tmp_path / "m.lowbit")
    back = lowbit.load(tmp_path / "m.lowbit", model=model)
    assert torch.equal(back(x), qm(x))


def test_quantize_method_is_deterministic() -> None:
    model, calib = _mlp(), _calib()
    a = lowbit.quantize(model, "w2", calib=calib, method="adaround", method_options={"iters": 50, "seed": 3})
    b = lowbit.quantize(model, "w2", calib=calib, method="adaround", method_options={"iters": 50, "seed": 3})
    assert all(torch.equal(p, r) for p, r in zip(a.state_dict().values(), b.state_dict().values()))


def test_bias_correction_zeroes_the_mean_output_error() -> None:
    model, calib = _mlp(1), _calib(1)
    plain = lowbit.quantize(model, "w2:tensor", calib=calib)
    fl = float_twin(plain)
    before = [mean_output_error(plain, fl, n, calib).abs().max().item() for n in ("0", "2", "5")]
    qm = lowbit.quantize(model, "w2:tensor", calib=calib, bias_correction=True)
    for n, b in zip(("0", "2", "5"), before):
        err = mean_output_error(qm, fl, n, calib)
        assert err.abs().max().item() < 1e-4 + 1e-4 * b, n
    assert max(before) > 1e-2  # there was an error to remove


def test_equalization_keeps_the_float_function_and_evens_the_ranges() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 6, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(6 * 2 * 2, 4)).eval()
    with torch.no_grad():  # channels of very different ranges: what equalization is for
        model[0].weight.mul_(torch.logspace(-2, 1, 8).reshape(-1, 1, 1, 1))
    x = torch.randn(16, 3, 8, 8)
    ref = model(x)
    spread = lambda w: float(w.abs().reshape(w.shape[0], -1).amax(1).log().std())  # noqa: E731
    before = spread(model[0].weight)
    assert relu_chains(model) == [("0", "3")]
    equalize(model)
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)
    assert spread(model[0].weight) < 0.5 * before
    w1, w2 = model[0].weight, model[3].weight
    r1 = w1.abs().reshape(8, -1).amax(1)
    r2 = w2.abs().transpose(0, 1).reshape(8, -1).amax(1)
    torch.testing.assert_close(r1, r2, rtol=1e-5, atol=1e-7)  # both sides end at sqrt(r1 r2)


def test_quantize_rejects_unknown_methods_and_options() -> None:
    model, calib = _mlp(), _calib()
    with pytest.raises(ValueError, match="method must be one of nearest, gptq, adaround, brecq"):
        lowbit.quantize(model, "w4", calib=calib, method="optimal")
    with pytest.raises(ValueError, match="allowed: percdamp, block, act_order"):
        lowbit.quantize(model, "w4", calib=calib, method="gptq", method_options={"iters": 3})
    with pytest.raises(ValueError, match="need calib"):
        lowbit.quantize(model, "w4", method="gptq")
    with pytest.raises(ValueError, match="not a plain PTQ quantizer"):
        lowbit.quantize(model, "w4:lsq", calib=calib, method="gptq")


def test_choose_bits_respects_the_budget_and_spares_the_sensitive_layer() -> None:
    from lowbit.algorithms.mixed_precision import average_bits, choose_bits
    from lowbit.algorithms.sensitivity import Sensitivity

    bits = [8, 4, 3, 2]
    s = Sensitivity(["a", "b", "c"], bits, {"a": 100, "b": 1000, "c": 1000}, 99.0, 0.1)
    s.loss_increase = {"a": {8: 0, 4: 0.01, 3: 0.1, 2: 1.0}, "b": {8: 0, 4: 0.001, 3: 0.002, 2: 0.004},
                       "c": {8: 0, 4: 0.2, 3: 0.5, 2: 5.0}}
    for budget in (2.0, 3.0, 4.0, 6.0):
        choice = choose_bits(s, budget)
        assert average_bits(choice, s.params) <= budget + 1e-9
        assert choice["b"] <= choice["c"]  # the insensitive layer gives its bits first
    assert choose_bits(s, 3.0) == {"a": 8, "b": 2, "c": 3}  # 800 + 2000 + 3000 <= 3 * 2100 bits
    with pytest.raises(ValueError, match="budget must be >= the narrowest bit width 2"):
        choose_bits(s, 1.5)


def test_sensitivity_and_mixed_precision_on_a_small_model() -> None:
    from lowbit.algorithms.mixed_precision import average_bits

    model, calib = _mlp(3), _calib(3)
    with torch.no_grad():
        data = [(x, model(x).argmax(1)) for x in _calib(4)]  # the float model is right by construction
    sens = lowbit.sensitivity(model, calib, data, bits=(8, 2))
    assert sens.layers == ["0", "2", "5"] and sens.float_acc == 100.0
    for n in sens.layers:
        assert sens.loss_increase[n][2] > sens.loss_increase[n][8]
        assert sens.hessian[n][2] > sens.hessian[n][8] >= 0
        assert sens.trace[n] > 0
    cfg = lowbit.mixed_precision(model, calib, data, budget=5.0, bits=(8, 2), sens=sens)
    parsed = lowbit.QuantConfig.parse(cfg)
    qm = lowbit.quantize(model, parsed, calib=calib)
    chosen = {n: layer.weight_quant.bits for n, layer in lowbit.api.quantized_layers(qm).items()}
    assert average_bits(chosen, sens.params) <= 5.0 and set(chosen.values()) == {8, 2}


def test_sensitivity_command_prints_the_table(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from lowbit.cli import main

    assert main(["sensitivity", "--model", "mlp", "--epochs", "1", "--bits", "8,2", "--budget", "4", "--no-plots", "--out", str(tmp_path),
                 "--progress", "none"]) == 0
    out = capsys.readouterr().out
    assert "| features.0 |" in out and "mixed precision at <= 4 bits/weight" in out
    assert (tmp_path / "sensitivity.md").read_text().count("| classifier |") == 1
