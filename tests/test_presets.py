"""Presets that compute what the originals compute (issue 23): PWFN's fixing rules, TorchInference_RRAM's crossbar.

Every expected value below was worked out by hand from the errata at the top of
shared/reference/cim_pwfn.md (and the original sources it cites), not by running the code.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lowbit.algorithms.fixing_presets import PRESETS, fixing_preset
from lowbit.algorithms.pwfn_cluster import pwfn_cluster_round
from lowbit.algorithms.stats import share_stats
from lowbit.algorithms.weight_fixing import WeightFixer

# --------------------------------------------------------------------------- PWFN: the clustering step


def _round(mu, sigma, fraction, **kw):
    return pwfn_cluster_round(torch.tensor(mu, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64), fraction, **kw)


def test_selection_quota_zero_fix_and_std_mu():
    # min_exp -2, max |mu| 0.9 -> centres 0, ±0.25, ±0.5 (powers below 2^ceil(log2 0.9) = 1).
    # Within tau=1 (|mu - c| <= 0.02): -0.25 <- {-0.26}; 0 <- zero-fix {0.24, 0.1} (|mu| < 2^-2);
    # 0.25 <- {0.26, 0.24}; 0.5 <- {0.5}. Quota ceil(6 * 0.5) = 3. Ties go to the first centre
    # (np.argmax): 0 (2) beats 0.25 (2); then -0.25, 0.25 and 0.5 tie at 1 and -0.25 takes the last slot.
    r = _round([0.26, 0.24, 0.5, 0.9, -0.26, 0.1], [0.02] * 6, 0.5, min_exp=-2)
    assert [(s.centre, s.members) for s in r.steps] == [(0.0, (1, 5)), (-0.25, (4,))]
    assert r.escalations == []
    c = r.centre.tolist()
    assert math.isnan(c[0]) and math.isnan(c[2]) and math.isnan(c[3]) and c[1] == c[5] == 0.0 and c[4] == -0.25
    # sigma_join = std_mu: the population std of the group's mus (a group of one: 0).
    assert r.sigma[1] == r.sigma[5] == pytest.approx(0.07, abs=1e-12) and r.sigma[4] == 0.0
    assert math.isnan(r.sigma[0])


def test_escalation_raises_the_terms_first_then_tau():
    # min_exp -3. Terms 1: centres 0, ±1/8, ±1/4, ±1/2; 0.38 (sigma 0.003) and 0.625 are near none.
    mu, sig = [0.38, 0.625], [0.003, 0.01]
    r = _round(mu, sig, 1.0, min_exp=-3)
    # PWFN: terms 2 first -> 0.625 = 1/8 + 1/2 (d 0) at tau 1; 0.38 is 1.67 sigma from 3/8, so then
    # tau 2; the centres are rebuilt from the largest free |mu| 0.38: 0, ±{1/8, 1/4, 3/8}.
    assert r.escalations == ["terms", "tau"]
    assert [(s.centre, s.members, s.tau, s.terms) for s in r.steps] == [(0.625, (1,), 1.0, 2), (0.375, (0,), 2.0, 2)]
    # lowbit's order: tau 2 first (still nothing at one term), then two terms: both are in
    # reach of the same list and 3/8 (the first) goes first.
    r = _round(mu, sig, 1.0, min_exp=-3, escalation="tau_first")
    assert r.escalations == ["tau", "terms"]
    assert [(s.centre, s.members, s.tau, s.terms) for s in r.steps] == [(0.375, (0,), 2.0, 2), (0.625, (1,), 2.0, 2)]


def test_zero_fix_index_bug_only_with_faithful_bugs():
    # min_exp -2; centres [-1/2, -1/4, 0, 1/4, 1/2]; 0.2 is the only small weight (|mu| < 1/4).
    # -1/2 takes both -0.5 first (2). The original then looks for zero at len//2 = 2 of
    # [-1/4, 0, 1/4, 1/2], which is 1/4: -1/4 takes -0.25, then (list [0, 1/4, 1/2], len//2 = 1,
    # again 1/4) 1/4 takes the small 0.2 before 1/2 takes 0.51.
    mu, sig = [-0.5, -0.5, -0.25, 0.2, 0.51], [0.01, 0.01, 0.01, 0.01, 0.02]
    bug = _round(mu, sig, 1.0, min_exp=-2, faithful_bugs=True)
    assert bug.centre.tolist() == [-0.5, -0.5, -0.25, 0.25, 0.5]
    ok = _round(mu, sig, 1.0, min_exp=-2)
    assert ok.centre.tolist() == [-0.5, -0.5, -0.25, 0.0, 0.5]
    assert [s.centre for s in ok.steps] == [-0.5, -0.25, 0.0, 0.5]
    # Without zero_fix 0.2 (5 sigma from 1/4, 20 from 0) is left after the three others; two
    # terms built from max 0.2 give only zero (no power of two 2^-2 <= 2^e < 2^ceil(log2 0.2)),
    # still 20 sigma away, so tau grows to 64 before zero takes it.
    off = _round(mu, sig, 1.0, min_exp=-2, zero_fix=False, inc=64.0)
    assert off.centre.tolist() == [-0.5, -0.5, -0.25, 0.0, 0.5] and off.escalations == ["terms", "tau"]
    assert [(s.centre, s.tau) for s in off.steps][-1] == (0.0, 64.0)


def test_reclustering_moves_a_fixed_weight_or_lets_it_fall_free():
    # A weight fixed last round at 1/4 carries sigma = its old group's std (0.15). max |mu| 1/4 ->
    # centres 0, ±1/8 only; 1/8 reaches all four (d 0.83, 0.6, 0.3, 0.1): the fixed one moves.
    r = _round([0.25, 0.131, 0.122, 0.126], [0.15, 0.01, 0.01, 0.01], 1.0, min_exp=-3)
    assert [(s.centre, s.members) for s in r.steps] == [(0.125, (3, 2, 1, 0))]
    vals = [0.25, 0.131, 0.122, 0.126]
    mean = sum(vals) / 4
    assert float(r.sigma[0]) == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in vals) / 4), rel=1e-12)
    # Quota 2 of 4: 1/4 takes 0.25 (d 0) and 0.245 (d 0.25) before the fixed 1/8 (sigma 0) is reached.
    r = _round([0.245, 0.26, 0.25, 0.125], [0.02, 0.02, 0.02, 0.0], 0.5, min_exp=-3)
    assert [(s.centre, s.members) for s in r.steps] == [(0.25, (2, 0))]
    assert torch.isnan(r.centre[3])  # fell free


def test_cluster_round_bad_input():
    with pytest.raises(ValueError, match="escalation"):
        _round([0.1], [0.1], 1.0, escalation="sideways")
    with pytest.raises(ValueError, match="fraction"):
        _round([0.1], [0.1], 1.5)
    with pytest.raises(ValueError, match="mu"):
        _round([float("nan")], [0.1], 1.0)


# --------------------------------------------------------------------------- PWFN: the preset in the fixer


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _batches(n: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(n)]


def test_presets_differ_exactly_in_the_stated_knobs():
    lb, pw = PRESETS["lowbit"], PRESETS["pwfn"]
    assert (lb.optimizer, lb.clip_norm, lb.include_bias, lb.fixed_noise, lb.escalation) == ("adam", None, False, False, "tau_first")
    assert (pw.optimizer, pw.lr, pw.momentum, pw.weight_decay, pw.clip_norm) == ("sgd", 1e-3, 0.9, 1e-4, 1.0)
    assert (pw.include_bias, pw.fixed_noise, pw.reg_on_fixed, pw.escalation, pw.warmup_fraction) == (True, True, True, "terms_first", 0.05)
    assert pw.faithful_bugs is False
    assert fixing_preset("pwfn", escalation="tau_first").escalation == "tau_first"
    with pytest.raises(ValueError, match="preset"):
        fixing_preset("pwfm")
    with pytest.raises(ValueError, match="knob"):
        fixing_preset("pwfn", optimiser="sgd")
    with pytest.raises(ValueError, match="mode='probabilistic'"):
        WeightFixer(_tiny(), "deterministic", preset="pwfn")


def test_pwfn_preset_fixes_biases_keeps_noise_and_decays_fixed_values():
    model = _tiny()
    lb = WeightFixer(model)
    fx = WeightFixer(model, preset="pwfn")
    assert lb.mu.numel() == 6 * 5 + 5 * 3 and fx.mu.numel() == 6 * 5 + 5 + 5 * 3 + 3  # biases join mu
    assert int(fx.is_weight.sum()) == 45
    fx.fix(0.5)
    fixed, centre = fx.fixed.clone(), fx.centre.clone()
    sig0 = fx.sigma.detach().clone()
    fx.train()
    a, b = fx.flat_weights(sample=True), fx.flat_weights(sample=True)
    assert bool((a[fixed] != b[fixed]).any())  # fixed values are still sampled
    fx.fit(_batches(), 1, progress=False)
    mu = fx.mu.detach()
    # No gradient reaches a fixed value, but SGD's weight decay does: each shrinks a little toward 0.
    nz = fixed & (centre != 0)
    assert bool((mu[nz].abs() < centre[nz].abs()).all())
    assert float(((mu[nz] - centre[nz]) / centre[nz]).abs().max()) < 8 * 1e-3 * 1e-4 * 10
    # The push-up regulariser reaches fixed weight sigmas (they rise); fixed bias sigmas only decay.
    w, bias = fixed & fx.is_weight, fixed & ~fx.is_weight
    s1 = fx.sigma.detach()
    assert float(s1[w].mean()) > float(sig0[w].mean())
    assert bool((s1[bias] <= sig0[bias]).all())
    # The next round re-clusters everything from scratch.
    fx.fix(1.0)
    assert fx.fraction_fixed == 1.0 and fx.last_round is not None
    out = fx.to_model()
    st = share_stats(out, include_bias=True)
    cents = set(fx.centres().tolist())
    assert {float(v) for v in out[0].bias.detach()} <= cents and {float(v) for v in out[2].bias.detach()} <= cents
    assert st.numel == 53 and "biases" in st.counted


def test_exactly_zero_weights_refused_only_with_faithful_bugs():
    model = _tiny()
    with torch.no_grad():
        model[0].weight[0, 0] = 0.0
    with pytest.raises(ValueError, match=r"0\.weight has exactly-zero values"):
        WeightFixer(model, preset="pwfn", faithful_bugs=True)
    fx = WeightFixer(model, preset="pwfn")
    assert float(fx.sigma.detach()[0]) == 2.0**-30 and torch.isfinite(fx.sigma).all()


# --------------------------------------------------------------------------- crossbar: TorchInference_RRAM vs NeuroSim-style

from lowbit.quantizers import build_quantizer  # noqa: E402
from lowbit.nn.act import PACT  # noqa: E402
from lowbit.nn.layers import QuantConv2d, QuantLinear  # noqa: E402
from lowbit.targets.cim import CrossbarArray, CrossbarConfig, adc, simulate, tile_layout  # noqa: E402

TI = "torchinference_rram"


def test_adc_transfer_functions_on_hand_made_sums():
    x = torch.tensor([0.0, 1.0, 3.0, 5.0, 7.0, 8.0])
    # TorchInference: step 8/2^2 = 2; (x-0)/2 = 0, .5, 1.5, 2.5, 3.5, 4 -> round half even 0, 0, 2, 2, 4, 4
    # -> clamp to 3: the top (8) reads 6.
    assert adc(x, 2, 0.0, 8.0, transfer="torchinference").tolist() == [0.0, 0.0, 4.0, 4.0, 6.0, 6.0]
    # lowbit: step 8/3; x/step = 0, .375, 1.125, 1.875, 2.625, 3 -> 0, 0, 1, 2, 3, 3.
    assert adc(x, 2, 0.0, 8.0).tolist() == pytest.approx([0.0, 0.0, 8 / 3, 16 / 3, 8.0, 8.0])
    # A small range: no minimum step in the original (levels of 1/8, 2 reads 15/8); lowbit's step
    # never drops below one cell level, so integers read exactly.
    small = torch.tensor([0.0, 1.0, 2.0])
    assert adc(small, 4, 0.0, 2.0, transfer="torchinference").tolist() == [0.0, 1.0, 1.875]
    assert adc(small, 4, 0.0, 2.0).tolist() == [0.0, 1.0, 2.0]
    assert adc(torch.tensor([3.0, 3.0]), 4, 3.0, 3.0, transfer="torchinference").tolist() == [3.0, 3.0]
    with pytest.raises(ValueError, match="transfer"):
        adc(x, 2, 0.0, 8.0, transfer="floor")


def _array(cfg: CrossbarConfig) -> CrossbarArray:
    codes = torch.tensor([[3, 1], [0, 1], [2, 0]])  # [K=3 rows, C=2 columns], 2-bit codes, one 2-bit cell each
    return CrossbarArray(codes, 2, 1, cfg)


def test_one_adc_on_the_difference_vs_two_adcs():
    x = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # Column sums: weight [[5, 2], [3, 1]], offset-code reference (1 per row) [[3], [1]].
    # neurosim (two ADCs, 2 bits, lowbit transfer): weights lo 1, hi 5, step 4/3 -> 5, 7/3, 11/3, 1;
    # reference lo 1, hi 3, step 1 (the minimum) -> 3, 1. Difference [[2, -2/3], [8/3, 0]]
    # (exact: x @ (codes - 1) = [[2, -1], [2, 0]]).
    two = _array(CrossbarConfig.preset("neurosim", cell_bits=2, adc_bits=2))(x, 1)
    assert two.flatten().tolist() == pytest.approx([2.0, -2 / 3, 8 / 3, 0.0])
    # torchinference: the dummy is 1.5 per cell; analog difference [[0.5, -2.5], [1.5, -0.5]]
    # (= x @ (codes - 1.5)); one ADC: lo -2.5, hi 1.5, step 4/4 = 1, codes 3, 0, 4 -> 3, 2:
    # 1.5 (the top) reads 0.5.
    one = _array(CrossbarConfig.preset(TI, cell_bits=2, adc_bits=2))(x, 1)
    assert one.tolist() == [[0.5, -2.5], [0.5, -0.5]]
    # The same difference through lowbit's transfer: step 4/3 -> codes 2.25, 0, 3, 1.5 -> 2, 0, 3, 2.
    mixed = _array(CrossbarConfig.preset(TI, cell_bits=2, adc_bits=2, adc_transfer="lowbit"))(x, 1)
    assert mixed.flatten().tolist() == pytest.approx([-2.5 + 8 / 3, -2.5, 1.5, -2.5 + 8 / 3])
    # Ideal read-outs are exact under both presets.
    assert _array(CrossbarConfig.preset("neurosim", cell_bits=2, adc_bits=None))(x, 1).tolist() == [[2.0, -1.0], [2.0, 0.0]]
    assert _array(CrossbarConfig.preset(TI, cell_bits=2, adc_bits=None))(x, 1).tolist() == [[0.5, -2.5], [1.5, -0.5]]


def test_per_tap_tiling_and_the_dropped_remainder():
    # 3 channels x 2 taps (rows c*2 + tap), 2 rows per sub-array: per tap [0, 2, 4] / [1, 3, 5].
    assert tile_layout(6, 2, taps=2, mapping="tap").tolist() == [[0, 2], [4, -1], [1, 3], [5, -1]]
    assert tile_layout(6, 2, taps=2, mapping="tap", drop_remainder=True).tolist() == [[0, 2], [1, 3]]  # Cin // 2
    with pytest.raises(ValueError, match="fill no sub-array"):
        tile_layout(2, 4, taps=2, mapping="tap", drop_remainder=True)
    with pytest.raises(ValueError, match="mapping='tap'"):
        CrossbarConfig(drop_remainder=True)
    with pytest.raises(ValueError, match="preset"):
        CrossbarConfig.preset("neurosim_v2")


def _vgg() -> nn.Module:
    torch.manual_seed(0)

    def pact() -> PACT:
        p = PACT(4)
        p.alpha.data.fill_(2.0)
        return p

    q = lambda: build_quantizer("dorefa4")  # noqa: E731
    return nn.Sequential(
        QuantConv2d(1, 8, 3, padding=1, weight_quant=q()), pact(),
        QuantConv2d(8, 8, 3, padding=1, weight_quant=q()), pact(),
        QuantConv2d(8, 6, 3, padding=1, weight_quant=q()), pact(), nn.Flatten(),
        QuantLinear(6 * 16, 5, weight_quant=q()),
    ).eval()  # fmt: skip


def test_analog_scope_and_ideal_equality_under_both_presets():
    m = _vgg()
    x = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    # The first conv has a float input (no PACT before it): neurosim needs it digital by name,
    # torchinference keeps it (and the Linear layer) digital by its scope.
    ns = simulate(m, CrossbarConfig.preset("neurosim", adc_bits=None), digital=["0"])
    ti = simulate(m, CrossbarConfig.preset(TI, adc_bits=None, rows=16))
    assert ns.lowbit_info.extra["cim"]["layers"] == {"0": "digital", "2": "crossbar", "4": "crossbar", "7": "crossbar"}
    assert ti.lowbit_info.extra["cim"]["layers"] == {"0": "digital", "2": "crossbar", "4": "crossbar", "7": "digital"}
    with torch.no_grad():
        ref = m(x)
        torch.testing.assert_close(ns(x), ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(ti(x), ref, rtol=0, atol=1e-5)
        # Cin 8 on 4-row sub-arrays tiles exactly; on 16 rows the literal Cin >= rows rule leaves all digital.
        wide = simulate(m, CrossbarConfig.preset(TI, adc_bits=None, rows=4, analog="wide_convs", drop_remainder=True))
        torch.testing.assert_close(wide(x), ref, rtol=0, atol=1e-5)
        assert simulate(m, CrossbarConfig.preset(TI, analog="wide_convs")).lowbit_info.extra["cim"]["layers"]["2"] == "digital"
        # 8 channels on 3-row sub-arrays: 2 of each tap's channels are dropped, so the output moves.
        dropped = simulate(m, CrossbarConfig.preset(TI, adc_bits=None, rows=3, analog="wide_convs", drop_remainder=True))
        assert float((dropped(x) - ref).abs().max()) > 1e-3
