"""Learned state ranges (lowbit.snn.state_lsq): levels on the grid, LSQ gradients to the ends, calibrated start, freeze."""
from __future__ import annotations

import math

import pytest
import torch

from lowbit.snn import SNN, StateQuantizer, calibrate_state_range, state_levels
from lowbit.snn.state_lsq import LearnedStateQuantizer, freeze_states


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("kind,mult", [("thr", 0.7), ("thr", None), ("uniform", None), ("zero", 0.6)])
def test_initial_levels_are_the_state_levels(kind, mult):
    q = LearnedStateQuantizer(kind, 4, 1.0, 4.0, 3.0, mult)
    ref = state_levels(kind, 4, 1.0, 4.0, 3.0, mult)
    assert len(q.levels) == len(ref) == 16
    assert torch.allclose(q.levels, ref, atol=1e-5)
    assert q.limits() == pytest.approx((4.0, 3.0), abs=1e-5)


@pytest.mark.parametrize("kind", ["thr", "uniform"])
def test_outputs_stay_on_the_grid_and_round_to_nearest(kind):
    q = LearnedStateQuantizer(kind, 3, 1.0, 2.0, 1.0, 0.7 if kind == "thr" else None)
    with torch.no_grad():  # move the ends: the grid moves with them
        q.lower.sub_(0.5)
        q.upper.add_(0.25)
    x = torch.linspace(-6, 6, 2001)
    y = q(x)
    lv = q.levels
    assert float(lv[0]) == pytest.approx(-3.5) and float(lv[-1]) == pytest.approx(2.25)
    assert torch.isin(y, lv).all()
    nearest = lv[(x[:, None] - lv[None]).abs().argmin(1)]
    assert torch.allclose((y - x).abs(), (nearest - x).abs())


def test_uniform_lsq_gradients_by_hand():
    # levels -1, 0, 1, 2 (2 bits, lower -1, upper 2, step 1)
    q = LearnedStateQuantizer("uniform", 2, 1.0, 0.0, 1.0)
    assert q.levels.tolist() == [-1.0, 0.0, 1.0, 2.0]
    x = torch.tensor([0.3, 1.6, 2.5, -1.5], requires_grad=True)
    q(x).sum().backward()
    s, g = 3.0, 1.0 / math.sqrt(4 * 3)  # range width; LSQ's gradient scale 1/sqrt(numel * Qp)
    # inside: d q/d upper = (q - x)/s, d q/d lower = (x - q)/s; clipped at the top: t = 1 / 0, bottom: 0 / 1
    d_hi = (0 - 0.3) / s + (2 - 1.6) / s + 1.0 + 0.0
    d_lo = (0.3 - 0) / s + (1.6 - 2) / s + 0.0 + 1.0
    assert float(q.upper.grad) == pytest.approx(d_hi * g, rel=1e-5)
    assert float(q.lower.grad) == pytest.approx(d_lo * g, rel=1e-5)
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0]  # LSQ: no gradient to clipped states


def test_thr_lsq_gradients_reach_each_side():
    q = LearnedStateQuantizer("thr", 4, 1.0, 3.0, 2.0, 0.7)  # range [-4, 3], centre 1
    lv = q.levels
    x = torch.tensor([-2.7, 2.2, 5.0], requires_grad=True)
    y = q(x)
    y.sum().backward()
    qv = y.detach()
    n_lo, n_hi = int((lv < 1).sum()), int((lv >= 1).sum())
    exp_lo = -((qv[0] - x[0].detach()) / 5.0) / math.sqrt(3 * n_lo)  # lower = c - s_lo
    exp_hi = ((qv[1] - x[1].detach()) / 2.0 + (3.0 - 1.0) / 2.0) / math.sqrt(3 * n_hi)  # clipped: normalised end = 1
    assert float(q.lower.grad) == pytest.approx(float(exp_lo), rel=1e-5)
    assert float(q.upper.grad) == pytest.approx(float(exp_hi), rel=1e-5)
    assert x.grad.tolist() == [1.0, 1.0, 0.0]
    q2 = LearnedStateQuantizer("thr", 4, 1.0, 3.0, 2.0, 0.7, clip_grad=False)
    x2 = torch.tensor([5.0, -9.0], requires_grad=True)
    q2(x2).sum().backward()
    assert x2.grad.tolist() == [1.0, 1.0]  # straight through everywhere, as StateQuantizer


def test_calibrated_start_is_the_percentile_range():
    mem = torch.randn(20000) * 2.0 + 0.3
    q = LearnedStateQuantizer.calibrated("thr", 4, mem, 1.0, (2.0, 98.0), 0.7)
    p = torch.quantile(mem, torch.tensor([0.02, 0.98]))
    assert float(q.levels[0]) == pytest.approx(float(p[0]), abs=1e-5)
    assert float(q.levels[-1]) == pytest.approx(float(p[1]), abs=1e-5)
    assert q.limits() == pytest.approx(calibrate_state_range(mem, 1.0, 2.0, 98.0), abs=1e-5)


def test_training_widens_a_too_narrow_range():
    x = torch.randn(4096) * 3.0
    q = LearnedStateQuantizer("uniform", 4, 1.0, 0.0, 0.2)  # [-1, 1.2]: most of x clips
    opt = torch.optim.Adam(q.parameters(), lr=0.05)
    err0 = float(((q(x).detach() - x) ** 2).mean())
    for _ in range(200):
        opt.zero_grad()
        ((q(x) - x) ** 2).mean().backward()
        opt.step()
    err1 = float(((q(x).detach() - x) ** 2).mean())
    assert err1 < 0.25 * err0
    assert float(q.lower.detach()) < -3.0 and float(q.upper.detach()) > 3.0


def test_freeze_gives_the_same_outputs_and_counts_clips():
    q = LearnedStateQuantizer("thr", 4, 1.0, 3.0, 2.0, 0.7)
    with torch.no_grad():
        q.upper.add_(0.3)
    x = torch.linspace(-6, 6, 4001)
    fz = q.freeze()
    assert isinstance(fz, StateQuantizer) and fz.kind == "thr" and fz.num_bits == 4
    assert torch.equal(fz(x), q(x).detach())
    fz.start_tracking()
    fz(x)
    clipped = fz.stop_tracking()
    assert clipped == pytest.approx(float(((x < q.levels[0]) | (x > q.levels[-1])).float().mean()))


def test_inside_an_snn_the_ends_train_and_freeze_states_replaces_it():
    m = SNN(6, 8, 3, seed=0)
    q = LearnedStateQuantizer("thr", 4, 1.0, 2.0, 1.0, 0.7)
    m.set_state_quant(q)
    assert {n for n, _ in m.named_parameters() if n.endswith(("lower", "upper"))} == {
        "hidden.0.state_quant.lower", "hidden.0.state_quant.upper"}
    x = (torch.rand(4, 10, 6) < 0.3).float()
    out = m.run(x, record=True)
    assert torch.isin(out["mem"][0], q.levels).all()
    out["logits"].sum().backward()
    assert q.lower.grad is not None and q.upper.grad is not None
    assert float(q.lower.grad.abs() + q.upper.grad.abs()) > 0
    ref = m(x).detach()
    freeze_states(m)
    assert isinstance(m.hidden[0].state_quant, StateQuantizer)
    assert torch.allclose(m(x), ref)


def test_bad_input_is_refused_with_one_line():
    with pytest.raises(ValueError, match="kind"):
        LearnedStateQuantizer("log", 4)
    with pytest.raises(TypeError, match="clip_grad"):
        LearnedStateQuantizer("thr", 4, clip_grad=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="both sides"):
        LearnedStateQuantizer("thr", 4, 1.0, 0.0, 0.0)  # upper_limit 0: no level above the threshold
    with pytest.raises(ValueError, match="num_bits"):
        LearnedStateQuantizer("thr", 0)


def test_snn_command_learned_ranges(tmp_path, capsys):
    """`lowbit snn --state-range learned`: PTQ and weight-only rows as calibrated; trained state rows report their ranges."""
    import json

    from lowbit.cli import main

    tiny = ["snn", "--bits", "4", "--epochs", "2", "--qat-epochs", "1", "--samples", "12", "--classes", "3",
            "--units", "10", "--steps", "10", "--hidden", "12", "--threads", "1", "--no-plots", "--seed", "1"]
    assert main(tiny + ["--out", str(tmp_path / "c")]) == 0
    assert main(tiny + ["--state-range", "learned", "--state-lr", "0.05", "--out", str(tmp_path / "l")]) == 0
    out = capsys.readouterr().out
    assert "learned state range QAT+SQUAT@4:thr: [" in out
    cal = json.loads((tmp_path / "c" / "ablation.json").read_text())
    lrn = json.loads((tmp_path / "l" / "ablation.json").read_text())
    assert cal["state_range"] == lrn["state_range"]  # the learned ranges start from the calibrated one
    same = [(r["method"], r["states"]) for r in cal["rows"] if r["method"] in ("FP32", "PTQ", "QAT")]
    assert len(same) == 5
    for a, b in zip(cal["rows"], lrn["rows"]):
        if (a["method"], a["states"]) in same:
            assert a["acc"] == b["acc"] and a["clipped"] == b["clipped"]
    sr = cal["state_range"]
    lo0, hi0 = -sr["threshold"] * (1 + sr["lower_limit"]), sr["threshold"] * (1 + sr["upper_limit"])
    assert sorted(lrn["learned_ranges"]) == ["QAT+SQUAT@4:thr", "QAT+SQUAT@4:uniform", "SQUAT@4:thr", "SQUAT@4:uniform"]
    for lo, hi in lrn["learned_ranges"].values():
        assert lo < 1.0 < hi and (lo, hi) != pytest.approx((lo0, hi0), abs=1e-6)  # trained away from the start


def test_state_optimizer_puts_the_ends_in_their_own_group_and_config_checks():
    from lowbit.snn.ablation import AblationConfig, state_optimizer

    m = SNN(6, 8, 3, seed=0).set_state_quant(LearnedStateQuantizer("thr", 4, 1.0, 2.0, 1.0, 0.7))
    opt = state_optimizer(m, 1e-3, 1e-2)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-2]
    q = m.hidden[0].state_quant
    assert [id(p) for p in opt.param_groups[1]["params"]] == [id(q.lower), id(q.upper)]
    assert len(opt.param_groups[0]["params"]) == len(list(m.parameters())) - 2
    assert len(state_optimizer(SNN(6, 8, 3), 1e-3, 1e-2).param_groups) == 1  # no learned ranges: one group, as before
    with pytest.raises(ValueError, match="state_range"):
        AblationConfig(state_range="lsq").validate()
    with pytest.raises(ValueError, match="state_lr"):
        AblationConfig(state_lr=0).validate()
