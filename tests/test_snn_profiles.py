"""Integer neuromorphic profiles (Loihi 2, Xylo) and the integer-only simulator.

The simulator (int64 NumPy) must give exactly the spikes of the fake-quantized network, every
neuron at every step, on Randman and on spike-encoded digits, for trained networks; and the
profiles' arithmetic (decay codes, weight grid, threshold rule, saturation) is checked by value.
"""
import copy

import numpy as np
import pytest
import torch

from lowbit.data.spiking import randman_raster, spiking_digits, split
from lowbit.snn import SNN, evaluate, train
from lowbit.snn.intsim import _decay, compile_int, simulate
from lowbit.snn.profiles import PROFILES, apply_profile, chip_weights, decay_code, decay_int, remove_profile, saturate

LOIHI, XYLO = PROFILES["loihi2"], PROFILES["xylo"]


def _agree(net, x):
    """Spikes of the profiled network and of the integer simulator; assert they are identical."""
    with torch.no_grad():
        r = net.run(x, record=True)
    s = simulate(compile_int(net), x)
    for a, b in zip(r["spikes"], s["spikes"]):
        assert a.shape == b.shape
        assert np.array_equal(a.numpy().astype(np.int64), b)
    # the readout trace is the same integers, so the predictions are the same
    assert np.array_equal(r["out"].numpy() / s["scale"], s["trace"])
    assert np.array_equal(r["logits"].argmax(1).numpy(), s["pred"])
    return r, s


# ------------------------------------------------------------------ arithmetic by value


def test_decay_codes():
    assert decay_code(LOIHI, 0.9) == 3686  # round(0.9 * 4096)
    assert decay_code(LOIHI, None) == 0 and decay_code(LOIHI, 1.0) == 4096
    assert decay_code(XYLO, 0.9) == 3  # 1 - 1/8 = 0.875 is nearer than 0.9375
    assert decay_code(XYLO, 0.95) == 4  # 0.9375 vs 0.96875
    assert decay_code(XYLO, None) == 0


def test_loihi_decay_truncates_toward_zero():
    v = torch.tensor([-5000.0, -1.0, 0.0, 1.0, 5000.0, 4095.0], dtype=torch.float64)
    want = [-4499, 0, 0, 0, 4499, 3685]  # trunc(v * 3686 / 4096)
    assert decay_int(LOIHI, v, 3686).tolist() == want
    assert _decay(LOIHI, v.numpy().astype(np.int64), 3686).tolist() == want


def test_xylo_decay_is_a_shift_with_a_minimum_step():
    v = torch.tensor([-9.0, -1.0, 0.0, 1.0, 7.0, 8.0, 100.0], dtype=torch.float64)
    want = [-7, 0, 0, 0, 6, 7, 88]  # v - max(v >> 3, sign v) as XyloSim; -1 >> 3 = -1
    assert decay_int(XYLO, v, 3).tolist() == want
    assert _decay(XYLO, v.numpy().astype(np.int64), 3).tolist() == want
    assert decay_int(XYLO, v, 0).tolist() == [0] * 7  # dash 0: full decay


def test_saturation_bounds():
    v = torch.tensor([-1e9, 1e9], dtype=torch.float64)
    assert saturate(XYLO, v).tolist() == [-32768, 32767]
    assert saturate(LOIHI, v).tolist() == [-(2**23 - 1), 2**23 - 1]


def test_decay_gradient_is_the_leak():
    v = torch.tensor([1000.0, -77.0], dtype=torch.float64, requires_grad=True)
    decay_int(LOIHI, v, 3686).sum().backward()
    assert torch.allclose(v.grad, torch.full((2,), 3686 / 4096, dtype=torch.float64))


@pytest.mark.parametrize("name", ["loihi2", "xylo"])
def test_fused_step_matches_the_composed_straight_through_ops(name):
    from lowbit.snn.profiles import _ChipStep

    p = PROFILES[name]
    syn, mem = decay_code(p, 0.5), decay_code(p, 0.9)
    g = torch.Generator().manual_seed(0)
    lo, hi = p.state_range
    ins = [torch.randint(lo // 2, hi // 2, (64,), generator=g).double().requires_grad_() for _ in range(3)]
    ins[2].data[:4] = float(hi)  # some sums saturate
    u2, v2 = _ChipStep.apply(*ins, p, syn, mem)
    (u2 * 3 + v2 * 5).sum().backward()
    fused = [t.grad.clone() for t in ins]
    for t in ins:
        t.grad = None
    u, v, i = ins
    ur = saturate(p, decay_int(p, u, syn) + i)
    vr = saturate(p, decay_int(p, v, mem) + ur)
    assert torch.equal(u2, ur) and torch.equal(v2, vr) and float(v2.detach().max()) == hi
    (ur * 3 + vr * 5).sum().backward()
    assert all(torch.equal(a, t.grad) for a, t in zip(fused, ins))
    assert fused[0][0].item() == 8 * 0.5  # (3 + 5) * the leak of the current (0.5 on both chips)


@pytest.mark.parametrize("name", ["loihi2", "xylo"])
def test_weights_on_the_chip_grid(name):
    p = PROFILES[name]
    net = apply_profile(SNN(20, 32, 4, seed=1), name)
    w = chip_weights(net, p)
    assert set(w) == {"fc0", "rec0", "out"}
    for conn, (v, e) in w.items():
        assert 0 <= e <= p.max_shift
        mant = v / 2**e
        assert torch.equal(mant, mant.round()) and -128 <= mant.min() and mant.max() <= 127
        unit = 1.0 / p.theta if conn != "out" else 2.0 ** -p.readout_bits
        # the float weight, rounded on the power-of-two grid (inside the clipped range)
        float_w = net.connections()[conn].detach().double()
        inside = (float_w / (unit * 2**e)).abs() < 127
        assert torch.allclose(v[inside] * unit, float_w[inside], atol=unit * 2**e / 2 + 1e-12)
    assert name != "loihi2" or w["fc0"][1] >= 0  # Loihi 2: e = 6 + weight_exp, weight_exp >= -6 here


@pytest.mark.parametrize("name,spikes_at_theta", [("loihi2", False), ("xylo", True)])
def test_threshold_rule(name, spikes_at_theta):
    # one input, one neuron whose chip weight is exactly theta: Loihi 2 needs v > theta, Xylo v >= theta
    p = PROFILES[name]
    net = SNN(1, 1, 1, recurrent=False, seed=0)
    with torch.no_grad():
        net.fc[0].fill_(1.0)
        net.w_out.fill_(1.0)
    apply_profile(net, name)
    assert chip_weights(net, p)["fc0"][0].item() == p.theta
    x = torch.zeros(1, 3, 1)
    x[0, 0, 0] = 1.0
    r, s = _agree(net, x)
    assert r["spikes"][0][0, :, 0].tolist() == [float(spikes_at_theta), 0.0, 0.0]
    if name == "loihi2":  # no spike: v decays 4096 -> 3686 -> trunc(3686 * 3686 / 4096) = 3317
        assert (r["mem"][0][0, :, 0] * p.theta).tolist() == [4096, 3686, 3317]


# ------------------------------------------------------------------ integer simulator == fake-quant spikes


@pytest.fixture(scope="module")
def randman_task():
    x, y = randman_raster(nb_classes=4, nb_units=20, nb_steps=20, nb_samples=80, dim_manifold=1, seed=0)
    return split(x, y, 0.25, seed=0)


@pytest.mark.parametrize("name", ["loihi2", "xylo"])
@pytest.mark.parametrize("hidden,recurrent", [(32, True), ([24, 16], False)])
def test_intsim_equals_fake_quant_on_randman(randman_task, name, hidden, recurrent):
    xtr, ytr, xte, yte = randman_task
    net = SNN(20, hidden, 4, recurrent=recurrent, seed=0)
    train(net, xtr, ytr, epochs=2, batch_size=40, lr=1e-2, seed=0)
    apply_profile(net, name)
    before = copy.deepcopy(net.state_dict())
    train(net, xtr, ytr, epochs=1, batch_size=40, lr=1e-3, seed=1)  # QAT under the profile moves the weights
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())
    r, _ = _agree(net, xte)
    rate = float(torch.cat([s.flatten() for s in r["spikes"]]).mean())
    assert 0.005 < rate < 0.6  # the comparison covers many spikes and many silent steps


@pytest.mark.parametrize("name", ["loihi2", "xylo"])
def test_intsim_equals_fake_quant_on_digits(name):
    x, y = spiking_digits(num_steps=12)
    x, y = x[:240], y[:240]
    net = SNN(64, 32, 10, seed=0)
    train(net, x[:160], y[:160], epochs=2, batch_size=40, lr=1e-2, seed=0)
    apply_profile(net, name)
    train(net, x[:160], y[:160], epochs=1, batch_size=40, lr=1e-3, seed=1)
    r, _ = _agree(net, x[160:])
    assert float(r["spikes"][0].mean()) > 0.005


@pytest.mark.parametrize("name", ["loihi2", "xylo"])
def test_intsim_equals_fake_quant_when_states_saturate(randman_task, name):
    p = PROFILES[name]
    _, _, xte, _ = randman_task
    x = torch.cat([xte[:16], torch.ones(4, 20, 20)])  # dense input: every weight at once
    net = SNN(20, 32, 4, seed=2, init_scale=3.0)
    with torch.no_grad():
        net.fc[0].mul_(2.0**p.max_shift)  # mantissas at the clip, the largest exponent: currents past the width
    apply_profile(net, name)
    with torch.no_grad():
        mem = net.run(x, record=True)["mem"][0] * p.theta
    lo, hi = p.state_range
    assert float(mem.max()) == hi and float(mem.min()) == lo  # saturation happened, both ways
    _agree(net, x)


# ------------------------------------------------------------------ training and the public spelling


def test_profile_qat_trains_every_connection(randman_task):
    xtr, ytr, _, _ = randman_task
    net = apply_profile(SNN(20, 32, 4, seed=0), "xylo")
    torch.nn.functional.cross_entropy(net(xtr[:32]), ytr[:32]).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_apply_and_remove_profile(randman_task):
    _, _, xte, _ = randman_task
    net = SNN(20, 32, 4, seed=0).quantize_weights("fxp8:p99")
    ref = SNN(20, 32, 4, seed=0)
    apply_profile(net, "loihi2")
    assert net.weight_quant is None  # the profile quantizes weights itself
    assert repr(net.profile) == "Profiled('loihi2')"
    remove_profile(net)
    assert torch.equal(net(xte), ref(xte))


def test_bad_input():
    with pytest.raises(ValueError, match="profile must be one of"):
        apply_profile(SNN(4, 4, 2), "truenorth")
    with pytest.raises(TypeError, match="net must be a lowbit.snn.SNN"):
        apply_profile(torch.nn.Linear(2, 2), "xylo")
    with pytest.raises(ValueError, match="chip profile"):
        compile_int(SNN(4, 4, 2))
    prog = compile_int(apply_profile(SNN(4, 4, 2), "xylo"))
    with pytest.raises(ValueError, match="0/1 spikes"):
        simulate(prog, np.full((1, 3, 4), 0.5))
    with pytest.raises(ValueError, match="x must have shape"):
        simulate(prog, np.zeros((1, 3, 5)))


# ------------------------------------------------------------------ saved files keep the profile


@pytest.mark.parametrize("profile", ["loihi2", "xylo", "loihi2-subtract"])
def test_save_load_keeps_the_profile(randman_task, tmp_path, profile):
    import dataclasses

    import lowbit

    xtr, ytr, xte, _ = randman_task
    p = (dataclasses.replace(LOIHI, name="loihi2-subtract", reset="subtract") if profile == "loihi2-subtract"
         else PROFILES[profile])
    net = SNN(20, 32, 4, seed=0)
    train(net, xtr, ytr, epochs=1, batch_size=40, lr=1e-2, seed=0)
    apply_profile(net, p)
    train(net, xtr, ytr, epochs=1, batch_size=40, lr=1e-3, seed=1)
    lowbit.save(net, tmp_path / "net.lowbit")
    back = lowbit.load(tmp_path / "net.lowbit", model=SNN(20, 32, 4, seed=5))
    assert back.profile.profile == p  # every field, a custom profile too
    with torch.no_grad():
        a, b = net.run(xte, record=True), back.run(xte, record=True)
    for sa, sb in zip(a["spikes"], b["spikes"]):
        assert torch.equal(sa, sb)
    assert torch.equal(a["logits"], b["logits"])
    s = simulate(compile_int(back), xte)  # the loaded network compiles to the same integer program's spikes
    assert all(np.array_equal(x.numpy().astype(np.int64), y) for x, y in zip(a["spikes"], s["spikes"]))


def test_load_without_a_profile_removes_the_templates(randman_task, tmp_path):
    import lowbit

    _, _, xte, _ = randman_task
    net = SNN(20, 32, 4, seed=0)
    lowbit.save(net, tmp_path / "float.lowbit")
    back = lowbit.load(tmp_path / "float.lowbit", model=apply_profile(SNN(20, 32, 4, seed=5), "xylo"))
    assert back.profile is None  # the file, not the template, says how the network runs
    assert torch.equal(back(xte), net(xte))


def test_profile_exported_from_lowbit_snn():
    import lowbit.snn

    assert lowbit.snn.apply_profile is apply_profile and lowbit.snn.remove_profile is remove_profile


# ------------------------------------------------------------------ the profile's QAT recipe and lowbit snn --profile


def test_profile_qat_adapts_the_reset_then_trains_in_the_chip_arithmetic(randman_task):
    xtr, ytr, _, _ = randman_task
    fp = SNN(20, 32, 4, seed=0)
    train(fp, xtr, ytr, epochs=1, batch_size=40, lr=1e-2, seed=0)
    from lowbit.snn.profiles import profile_qat

    net = profile_qat(copy.deepcopy(fp), "loihi2", xtr, ytr, epochs=1, adapt_epochs=1, batch_size=40, seed=3)
    ref = copy.deepcopy(fp)  # the recipe spelled out: float with the chip's reset (seed), then integer QAT (seed + 1)
    ref.hidden[0].reset = "zero"
    train(ref, xtr, ytr, epochs=1, batch_size=40, lr=2e-3, seed=3)
    apply_profile(ref, "loihi2")
    train(ref, xtr, ytr, epochs=1, batch_size=40, lr=1e-3, seed=4)
    assert net.hidden[0].reset == "zero" and net.profile.profile == LOIHI
    for k, v in ref.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k
    # Xylo resets by subtraction, as the float network: no adaptation, straight to integer QAT
    xy = profile_qat(copy.deepcopy(fp), "xylo", xtr, ytr, epochs=1, adapt_epochs=1, batch_size=40, seed=3)
    ref = apply_profile(copy.deepcopy(fp), "xylo")
    train(ref, xtr, ytr, epochs=1, batch_size=40, lr=1e-3, seed=4)
    assert xy.hidden[0].reset == "subtract"
    for k, v in ref.state_dict().items():
        assert torch.equal(xy.state_dict()[k], v), k
    with pytest.raises(ValueError, match="adapt_epochs"):
        profile_qat(copy.deepcopy(fp), "xylo", xtr, ytr, adapt_epochs=-1)
    with pytest.raises(ValueError, match="profile must be one of"):
        profile_qat(copy.deepcopy(fp), "spinnaker", xtr, ytr)


def test_lowbit_snn_profile_command(tmp_path, capsys):
    import json

    import lowbit
    from lowbit.cli import main

    argv = ["snn", "--profile", "loihi2", "--classes", "3", "--units", "12", "--steps", "10", "--samples", "30",
            "--hidden", "16", "--epochs", "2", "--qat-epochs", "1", "--out", str(tmp_path), "--no-plots",
            "--progress", "none"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| loihi2 QAT |" in printed and "== fake-quant spikes (test set, every neuron and step) | yes |" in printed
    res = json.loads((tmp_path / "profile_loihi2.json").read_text())
    assert res["spikes_identical"] is True and res["acc"]["integer simulator"] == res["acc"]["loihi2 QAT"]
    back = lowbit.load(tmp_path / "snn_loihi2.lowbit", model=SNN(12, 16, 3))
    assert back.profile.profile == LOIHI  # the profile runs the chip's reset, whatever the template's neurons say
    assert main(["snn", "--profile", "xylo", "--trainer", "eventprop", "--out", str(tmp_path)]) == 2
    assert "--profile" in capsys.readouterr().err


def test_a_bad_saved_profile_is_refused():
    from lowbit.snn.profiles import profile_record, restore_profile

    rec = profile_record(apply_profile(SNN(4, 4, 2), "xylo"))
    assert rec["name"] == "xylo" and rec["state_bits"] == 16 and rec["reset"] == "subtract"
    assert profile_record(SNN(4, 4, 2)) is None
    with pytest.raises(ValueError, match="saved chip profile must have the fields"):
        restore_profile(SNN(4, 4, 2), {"name": "xylo"})
