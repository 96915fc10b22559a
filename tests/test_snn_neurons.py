"""LIF / RLIF / LI dynamics on hand-computed cases, surrogate gradients, encoders."""
import math

import pytest
import torch

from lowbit.snn import LI, LIF, RLIF, atan, fast_sigmoid, latency_encode, rate_encode
from lowbit.snn.surrogate import surrogate


def seq(*vals):
    return torch.tensor(vals, dtype=torch.float32).reshape(1, -1, 1)


def test_lif_subtract_reset_hand_computed():
    n = LIF(1, beta=0.5, threshold=1.0, reset="subtract")
    spk, state, mem = n(seq(0.6, 0.6, 0.6, 0.0), record=True)
    # 0.6; 0.3+0.6=0.9; 0.45+0.6=1.05 -> spike; 0.525+0-1 = -0.475 (reset acts one step later)
    assert torch.allclose(mem.flatten(), torch.tensor([0.6, 0.9, 1.05, -0.475]), atol=1e-6)
    assert spk.flatten().tolist() == [0.0, 0.0, 1.0, 0.0]
    assert state.mem.item() == pytest.approx(-0.475, abs=1e-6)


def test_lif_zero_reset_hand_computed():
    n = LIF(1, beta=0.5, threshold=1.0, reset="zero")
    spk, _, mem = n(seq(0.6, 0.6, 0.6, 0.2), record=True)
    assert torch.allclose(mem.flatten(), torch.tensor([0.6, 0.9, 1.05, 0.2]), atol=1e-6)
    assert spk.flatten().tolist() == [0.0, 0.0, 1.0, 0.0]


def test_threshold_is_strict_and_tau_gives_exp_decay():
    n = LIF(1, tau_mem=10.0, dt=1.0, threshold=1.0)
    assert n.beta == pytest.approx(math.exp(-0.1))
    spk, _, mem = n(seq(1.0, 0.0), record=True)
    assert spk.sum() == 0  # mem == threshold does not spike (v > thr, as NIR and snnTorch)
    assert mem[0, 1, 0].item() == pytest.approx(math.exp(-0.1), rel=1e-6)


def test_synaptic_current_hand_computed():
    n = LIF(1, beta=0.5, alpha=0.5, threshold=10.0)
    _, state, mem = n(seq(1.0, 0.0, 0.0), record=True)
    # syn: 1, 0.5, 0.25;  mem: 1, 0.5 + 0.5 = 1.0, 0.5 + 0.25 = 0.75
    assert torch.allclose(mem.flatten(), torch.tensor([1.0, 1.0, 0.75]))
    assert state.syn.item() == pytest.approx(0.25)
    assert n.synaptic and LIF(1, tau_syn=5.0).alpha == pytest.approx(math.exp(-0.2))


def test_recurrent_lif_hand_computed():
    n = RLIF(2, beta=0.0, threshold=1.0)
    with torch.no_grad():
        n.weight_rec.copy_(torch.tensor([[0.0, 2.0], [0.0, 0.0]]))  # neuron 1 -> neuron 0, weight 2
    x = torch.tensor([[[0.0, 1.5], [0.0, 0.0], [0.0, 0.0]]])
    spk, _, mem = n(x, record=True)
    assert spk[0, :, 1].tolist() == [1.0, 0.0, 0.0]
    assert spk[0, :, 0].tolist() == [0.0, 1.0, 0.0]
    assert mem[0, 1, 0].item() == pytest.approx(2.0)


def _reference_rlif(x, w, beta, thr, slope):
    # plain autograd ops, the textbook formulation
    mem = torch.zeros(x.shape[0], x.shape[2])
    spk = torch.zeros_like(mem)
    out = []
    sg = fast_sigmoid(slope)
    for t in range(x.shape[1]):
        mem = beta * mem + x[:, t] + spk @ w.t() - spk.detach() * thr
        spk = sg(mem - thr)
        out.append(spk)
    return torch.stack(out, 1)


def test_fused_update_gradients_match_plain_autograd():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 12, 6, generator=g) * 0.8
    n = RLIF(6, beta=0.8, threshold=1.0, generator=g, init_scale=0.5)
    w = n.weight_rec.detach().clone().requires_grad_(True)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    spk1, _ = n(x1)
    spk2 = _reference_rlif(x2, w, 0.8, 1.0, 25.0)
    assert torch.equal(spk1, spk2)
    (spk1 * torch.arange(12.0)[None, :, None]).sum().backward()
    (spk2 * torch.arange(12.0)[None, :, None]).sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-5)
    assert torch.allclose(n.weight_rec.grad, w.grad, atol=1e-5)


def test_state_quant_callable_applied_before_threshold():
    seen = []

    def q(v):
        seen.append(v.detach().clone())
        return torch.round(v)  # any callable Tensor -> Tensor

    n = LIF(1, beta=0.5, threshold=1.0, state_quant=q)
    spk, _, mem = n(seq(0.6, 0.6, 0.6), record=True)
    # 0.6 -> 1.0 (no spike: 1.0 is not > 1); 0.5+0.6 = 1.1 -> 1.0; 0.5+0.6=1.1 -> 1
    assert mem.flatten().tolist() == [1.0, 1.0, 1.0]
    assert spk.sum() == 0
    assert seen[1].item() == pytest.approx(1.1)


def test_li_readouts():
    x = seq(1.0, 0.0, 0.0)
    assert LI(1, beta=0.5, readout="mean")(x).item() == pytest.approx(1.75 / 3)
    assert LI(1, beta=0.5, readout="max")(x).item() == pytest.approx(1.0)
    assert LI(1, beta=0.5, readout="sum")(x).item() == pytest.approx(1.75)
    assert LI(1, beta=0.5, readout="last")(x).item() == pytest.approx(0.25)
    w = torch.exp(-torch.arange(3.0) / 3) / 3  # mlGeNN's AvgVarExpWeight: e^{-k/T} V_k / T
    assert LI(1, beta=0.5, readout="exp")(x).item() == pytest.approx(float(w @ torch.tensor([1.0, 0.5, 0.25])))
    with pytest.raises(ValueError, match="readout"):
        LI(1, readout="median")


def test_surrogate_gradient_values():
    x = torch.tensor([0.0, 0.1, -0.5], requires_grad=True)
    fast_sigmoid(25.0)(x).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([1.0, 1 / 3.5**2, 1 / 13.5**2]))
    x = torch.tensor([0.0, 0.5], requires_grad=True)
    out = atan(2.0)(x)
    assert out.tolist() == [0.0, 1.0]
    out.sum().backward()
    assert torch.allclose(x.grad, torch.tensor([1.0, 1.0 / (1 + (math.pi / 2) ** 2)]))
    assert surrogate("atan:5").slope == 5.0


def test_bad_neuron_arguments():
    with pytest.raises(ValueError, match="beta"):
        LIF(beta=1.5)
    with pytest.raises(ValueError, match="tau_mem"):
        LIF(beta=0.5, tau_mem=3.0)
    with pytest.raises(ValueError, match="reset"):
        LIF(reset="none")
    with pytest.raises(ValueError, match="threshold"):
        LIF(threshold=0.0)
    with pytest.raises(ValueError, match="slope"):
        fast_sigmoid(-1.0)
    with pytest.raises(ValueError, match="surrogate"):
        surrogate("relu")
    with pytest.raises(ValueError, match="readout"):
        LI(readout="median")
    with pytest.raises(ValueError, match=r"\[batch, time, features\]"):
        LIF(3)(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="state_quant"):
        LIF(state_quant=3)


def test_latency_encoder():
    x = torch.tensor([[1.0, 0.5, 0.0]])
    s = latency_encode(x, 20)  # t_min 2, t_max 18
    assert s.shape == (1, 20, 3)
    assert s[0, :, 0].nonzero().flatten().tolist() == [2]  # brightest: earliest
    assert s[0, :, 1].nonzero().flatten().tolist() == [10]
    assert s[0, :, 2].sum() == 0  # not above thresh: silent
    assert s.sum(1).max() == 1
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        latency_encode(torch.tensor([[2.0]]), 10)
    with pytest.raises(ValueError, match="num_steps"):
        latency_encode(x, 0)


def test_rate_encoder_seeded():
    x = torch.full((4, 50), 0.3)
    a, b = rate_encode(x, 200, seed=3), rate_encode(x, 200, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, rate_encode(x, 200, seed=4))
    assert a.shape == (4, 200, 50)
    assert abs(a.mean().item() - 0.3) < 0.01
    assert rate_encode(torch.zeros(1, 5), 10).sum() == 0 and rate_encode(torch.ones(1, 5), 10).sum() == 50
