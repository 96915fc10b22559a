"""Weight quantization per connection / population, state levels and quantizer, checkpoints."""
import math

import numpy as np
import pytest
import torch

import lowbit.formats as cb
import lowbit.quantizers as cbq
from lowbit.quantizer import Quantizer
from lowbit.snn import (
    SNN,
    LIF,
    StateQuantizer,
    WeightQuant,
    calibrate_state_range,
    load_checkpoint,
    save_checkpoint,
    state_levels,
    state_quantizer,
)


def mlgenn_quantise(w: np.ndarray, bits: int, pct: float = 99.0) -> np.ndarray:
    """mlGeNN PR #88's quantise_signed, written out from the reference notes."""
    pos, neg = w[w > 0], w[w <= 0]
    max_val = max(np.percentile(pos, pct), np.percentile(-neg, pct))
    high = math.floor(math.log2(max_val))
    scale = 2.0 ** (high - (bits - 2))
    return np.clip(scale * np.round(w / scale), -(2.0 ** (high + 1)), 2.0 ** (high + 1) - scale)


def _pop_weights():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 8, generator=g) * 0.03, torch.randn(16, 16, generator=g) * 0.3


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_population_fixed_point_equals_hand_computation(bits):
    w_ff, w_rec = _pop_weights()
    wq = WeightQuant({"hidden": ["ff", "rec"]}, f"fxp{bits}:p99")
    out = wq({"ff": w_ff, "rec": w_rec})
    joint = mlgenn_quantise(np.concatenate([w_ff.numpy().ravel(), w_rec.numpy().ravel()]).astype(np.float64), bits)
    exp_ff, exp_rec = joint[: w_ff.numel()].reshape(16, 8), joint[w_ff.numel():].reshape(16, 16)
    assert np.allclose(out["ff"].numpy(), exp_ff, atol=0) and np.allclose(out["rec"].numpy(), exp_rec, atol=0)


def test_per_connection_scopes_differ_from_population():
    w_ff, w_rec = _pop_weights()
    per = WeightQuant({"ff": ["ff"], "rec": ["rec"]}, "fxp4:p99")({"ff": w_ff, "rec": w_rec})
    assert np.array_equal(per["ff"].numpy(), mlgenn_quantise(w_ff.numpy().astype(np.float64), 4))
    pop = WeightQuant({"h": ["ff", "rec"]}, "fxp4:p99")({"ff": w_ff, "rec": w_rec})
    # the small feed-forward weights get a finer grid on their own than when sharing the recurrent scale
    assert len(torch.unique(per["ff"])) > len(torch.unique(pop["ff"]))
    m = SNN(8, 16, 3, recurrent=True)
    assert m.populations() == {"hidden0": ["fc0", "rec0"], "out": ["out"]}
    m.quantize_weights("fxp4:p99", "connection")
    assert m.weight_quant.groups == {"fc0": ["fc0"], "rec0": ["rec0"], "out": ["out"]}
    with pytest.raises(ValueError, match="scope"):
        m.quantize_weights("fxp4:p99", "layer")


def test_qat_shadow_weights_refresh_every_batch_no_lag():
    torch.manual_seed(0)
    m = SNN(6, 8, 3, recurrent=True).quantize_weights("fxp4:p99")
    x, y = (torch.rand(5, 10, 6) < 0.3).float(), torch.tensor([0, 1, 2, 0, 1])
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    before = m.fc[0].detach().clone()
    loss = torch.nn.functional.cross_entropy(m(x), y)
    loss.backward()
    # straight-through: the float shadow weight receives the gradient of the quantized one
    assert m.fc[0].grad is not None and m.fc[0].grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(m.fc[0].detach(), before)  # the optimizer stepped the float weights
    shadow = m.fc[0].detach()
    assert len(torch.unique(shadow)) > 16  # still full precision
    eff = m.effective_weights()
    fresh = mlgenn_quantise(torch.cat([shadow.flatten(), m.hidden[0].weight_rec.detach().flatten()]).double().numpy(), 4)
    assert np.array_equal(eff["fc0"].detach().numpy().ravel(), fresh[: shadow.numel()])  # from the new weights


def test_weights_quantized_once_per_forward_not_per_step(monkeypatch):
    calls = {"n": 0}
    orig = Quantizer.forward

    def counting(self, x):
        calls["n"] += 1
        return orig(self, x)

    monkeypatch.setattr(Quantizer, "forward", counting)
    m = SNN(4, 5, 2, recurrent=True).quantize_weights("fxp8:p99")
    m(torch.rand(3, 25, 4))
    assert calls["n"] == 3  # fc0, rec0, out: once each for 25 time steps


def test_static_weights_quantized_once_and_refreshed_on_change():
    w = torch.randn(4, 4)
    wq = WeightQuant({"a": ["w"]}, "fxp4:p99")
    a, b = wq({"w": w}), wq({"w": w})
    assert a["w"] is b["w"]  # cached: not re-quantized
    w.mul_(2.0)
    c = wq({"w": w})
    assert torch.equal(c["w"], a["w"] * 2.0)  # in-place change: re-quantized (power-of-two scale doubles)


def test_state_levels_match_snntorch_examples():
    assert torch.allclose(state_levels("uniform", 2), torch.tensor([-1.0, -0.26667, 0.46667, 1.2]), atol=1e-4)
    assert torch.allclose(state_levels("thr", 2), torch.tensor([-1.0, 0.8018, 0.9820, 1.2]), atol=1e-3)
    assert torch.allclose(
        state_levels("thr", 3), torch.tensor([-1, 0.400, 0.820, 0.946, 0.984, 0.996, 0.999, 1.2]), atol=1e-3
    )
    assert len(state_levels("uniform", 4)) == 16 and state_levels("thr", 4, threshold=2.0)[-1] == pytest.approx(2.4)
    assert torch.equal(state_levels("thr", 4), cb.state_levels("thr", 4).levels)  # one construction in the project
    # the threshold at the top of the range (upper_limit=0), which snnTorch builds: 2 levels below it,
    # gaps 1 and m = 0.05 (1 bit) scaled to the distance 2 from -1 to the threshold (the grid: test_snn_levels.py)
    assert torch.allclose(state_levels("thr", 1, upper_limit=0.0), torch.tensor([-1.0, -1.0 + 2 / 1.05]), atol=1e-6)
    with pytest.raises(ValueError, match="kind"):
        state_levels("log", 4)


@pytest.mark.parametrize("kind,bits", [("uniform", 2), ("uniform", 8), ("thr", 2), ("thr", 4), ("thr", 8), ("zero", 4)])
def test_state_quantizer_is_exact_nearest_level_with_ste(kind, bits):
    q = state_quantizer(kind, bits)
    lv, mids = q.levels, q.mids
    x = torch.cat([torch.randn(20000) * 1.5, mids, torch.nextafter(mids, torch.tensor(math.inf)), lv])
    ref = lv[torch.bucketize(x, mids)]  # nearest level, ties to the lower one
    assert torch.equal(q(x), ref)
    xg = x.clone().requires_grad_(True)
    q(xg).sum().backward()
    assert torch.equal(xg.grad, torch.ones_like(x))  # identity straight-through, no clipping mask


@pytest.mark.parametrize("kind,bits,limits,mult", [("thr", 8, (0.0, 0.2), None), ("thr", 8, (6.6, 4.4), None),
                                                  ("thr", 4, (6.6, 4.4), 0.7), ("uniform", 4, (6.6, 4.4), None)])
def test_state_quantizer_table_is_exact_for_crowded_and_calibrated_levels(kind, bits, limits, mult):
    q = state_quantizer(kind, bits, 1.0, *limits, multiplier=mult)
    assert q._table is not None  # the fast path (8-bit thr levels crowd within ulps of the threshold: several indices)
    lv, mids = q.levels, q.mids
    up, down = torch.nextafter(mids, torch.tensor(math.inf)), torch.nextafter(mids, torch.tensor(-math.inf))
    x = torch.cat([torch.randn(50000) * 4, 1.0 + torch.randn(20000) * 1e-4, mids, up, down, lv,
                   torch.tensor([math.inf, -math.inf, 1e30, -1e30])])
    assert torch.equal(q(x), lv[torch.bucketize(x, mids)])
    xt = x[: 40000].reshape(200, 200).t()  # non-contiguous input
    assert torch.equal(q(xt), lv[torch.bucketize(xt.contiguous(), mids)])


def test_state_quantizer_counts_clipped_states():
    q = state_quantizer("uniform", 2)  # range [-1, 1.2]
    q.start_tracking()
    q(torch.tensor([-2.0, -1.0, 0.0, 1.2, 1.3, 5.0]))
    assert q.stop_tracking() == pytest.approx(3 / 6)


def test_state_quant_in_neuron_gives_levels_only():
    q = state_quantizer("thr", 2)
    n = LIF(3, beta=0.9, state_quant=q)
    _, _, mem = n(torch.rand(2, 15, 3), record=True)
    assert torch.isin(mem, q.levels).all()
    # codebooks' generic quantizer is accepted as any callable and gives the same dynamics
    n2 = LIF(3, beta=0.9, state_quant=cbq.state_quantizer("thr", 2))
    x = torch.rand(2, 15, 3)
    assert torch.equal(n(x, record=True)[2], n2(x, record=True)[2])


def test_calibrate_state_range():
    mem = torch.linspace(-3.0, 2.0, 100001)
    lower, upper = calibrate_state_range(mem, 1.0, 0.5, 99.5)
    assert -(1 + lower) == pytest.approx(-3.0 + 0.025, abs=1e-3)
    assert 1 + upper == pytest.approx(2.0 - 0.025, abs=1e-3)
    lower, upper = calibrate_state_range(torch.full((10,), 0.5), 1.0)  # never spikes: keep thr and 0 inside
    assert -(1 + lower) < 0 and 1 + upper > 1
    with pytest.raises(ValueError, match="mem"):
        calibrate_state_range(torch.tensor([float("nan")]))


@pytest.mark.filterwarnings("ignore:lowbit.snn.(save|load)_checkpoint is deprecated:DeprecationWarning")
def test_checkpoint_keeps_shadow_and_quantized(tmp_path):
    # save_checkpoint / load_checkpoint: deprecated wrappers over lowbit.save / lowbit.load (tests/test_snn_verbs.py)
    torch.manual_seed(0)
    m = SNN(6, 8, 3).quantize_weights("fxp4:p99")
    path = tmp_path / "snn.safetensors"
    with pytest.deprecated_call():
        save_checkpoint(m, path)
    shadow = {n: p.detach().clone() for n, p in m.named_parameters()}
    quant = {k: v.detach().clone() for k, v in m.effective_weights().items()}
    m2 = SNN(6, 8, 3, seed=5).quantize_weights("fxp4:p99")
    load_checkpoint(m2, path, "shadow")
    for n, p in m2.named_parameters():
        assert torch.equal(p, shadow[n])  # full precision is kept for resuming
    m3 = SNN(6, 8, 3, seed=5)
    meta = load_checkpoint(m3, path, "quantized")
    assert meta["weight_spec"] == "fxp4:p99"
    for c, v in m3.connections().items():
        assert torch.equal(v.detach(), quant[c])  # the deployable integers
    with pytest.raises(ValueError, match="shape"):
        load_checkpoint(SNN(6, 9, 3), path)
    with pytest.raises(ValueError, match="does not match"):
        load_checkpoint(SNN(6, [8, 4], 3), path)
    save_checkpoint(SNN(6, 8, 3), tmp_path / "f.safetensors")
    with pytest.raises(ValueError, match="no quantized weights"):
        load_checkpoint(SNN(6, 8, 3), tmp_path / "f.safetensors", "quantized")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(m, tmp_path / "missing.safetensors")


def test_bad_quant_arguments():
    with pytest.raises(ValueError, match="groups"):
        WeightQuant({}, "fxp4")
    with pytest.raises(ValueError, match="more than one group"):
        WeightQuant({"a": ["w"], "b": ["w"]})
    with pytest.raises(ValueError, match="spec"):
        SNN(3, 4, 2).quantize_weights("fxp4:bogus")
    with pytest.raises(ValueError, match="num_bits"):
        state_quantizer("thr", 0)
    with pytest.raises(ValueError, match="strictly increasing"):
        StateQuantizer([0.0, 0.0, 1.0])
