"""ConvSNN: convolutional spiking layers that quantize, train (BPTT), save and load like SNN; accuracy floors on spike-encoded digits.

The task: scikit-learn's 8x8 digits, latency encoded over 16 steps (``spiking_digits``), 1,258
samples to train on and 539 to test on (one sample = 0.19 points). The floors must hold on every
CPU, where another float rounding trains another model, as another seed does: each is measured
over 12 trajectories (seeds 0-5 for model and shuffling, each under ATEN_CPU_CAPABILITY=default and
=avx2): their mean, less 3 of their standard deviations, less 3 binomial standard errors of the
539-sample test set (1.2-1.3 points at these accuracies). The 8-bit claim needs no trajectory: it is a paired
comparison of two models on the same samples (tests/_margins.py).
"""
import copy

import pytest
import torch

import lowbit
from lowbit.data.spiking import spiking_digits, split
from lowbit.snn import evaluate, predict, record_membrane, state_quantizer, train
from lowbit.snn.conv import ConvSNN

from _margins import paired_margin

N_TEST = 539


@pytest.fixture(scope="module")
def task():
    pytest.importorskip("sklearn")
    x, y = spiking_digits(num_steps=16)
    xtr, ytr, xte, yte = split(x, y, 0.3, seed=0)
    assert (len(ytr), len(yte)) == (1258, N_TEST)
    return xtr, ytr, xte, yte


def _net(seed: int = 0, **kw) -> ConvSNN:  # type: ignore[no-untyped-def]
    return ConvSNN((1, 8, 8), channels=(8, 16), kernel=3, pool=2, n_out=10, seed=seed, init_scale=2.0, **kw)


@pytest.fixture(scope="module")
def fp_model(task):
    xtr, ytr, _, _ = task
    m = _net()
    hist = train(m, xtr, ytr, epochs=5, batch_size=32, lr=5e-3, seed=0)
    assert hist["loss"][-1] < 0.25 * hist["loss"][0]  # 12 trajectories: 1.83-2.45 -> 0.23-0.39
    return m


def test_float_conv_snn_learns(task, fp_model):
    _, _, xte, yte = task
    # chance is 0.1; 12 trajectories: 0.861-0.935 (mean 0.904, sd 0.024); mean - 3 sd - 3 SE = 0.795
    assert evaluate(fp_model, xte, yte) >= 0.79


def test_8bit_qat_keeps_accuracy(task, fp_model):
    xtr, ytr, xte, yte = task
    fp_ok = predict(fp_model, xte) == yte
    q = copy.deepcopy(fp_model).quantize_weights("fxp8:p99")
    train(q, xtr, ytr, epochs=1, batch_size=32, lr=1e-3, seed=1)
    q_ok = predict(q, xte) == yte
    # 12 trajectories: W8 QAT -0.4 to +3.0 points against float (mean 0.917). 3 paired standard errors: fails only
    # if 8-bit QAT truly loses accuracy
    assert q_ok.float().mean() >= fp_ok.float().mean() - paired_margin(fp_ok, q_ok)


def test_4bit_qat(task, fp_model):
    xtr, ytr, xte, yte = task
    q = copy.deepcopy(fp_model).quantize_weights("fxp4:p99")
    train(q, xtr, ytr, epochs=2, batch_size=32, lr=1e-3, seed=1)
    # 12 trajectories: 0.842-0.937 (mean 0.911, sd 0.026); mean - 3 sd - 3 SE = 0.797
    assert evaluate(q, xte, yte) >= 0.79
    for name, w in q.effective_weights().items():
        assert w.unique().numel() <= 16, name  # on a 4-bit grid, conv kernels too


def test_shapes_connections_and_input_layouts():
    m = _net()
    assert m.layer_shapes == [(8, 8, 8), (16, 4, 4)] and m.pooled_shapes == [(8, 4, 4), (16, 2, 2)]
    assert m.sizes == [64, 512, 256, 10]
    assert {k: tuple(v.shape) for k, v in m.connections().items()} == {
        "fc0": (8, 1, 3, 3), "fc1": (16, 8, 3, 3), "out": (10, 64)}
    assert m.populations() == {"hidden0": ["fc0"], "hidden1": ["fc1"], "out": ["out"]}
    x = (torch.rand(3, 5, 64, generator=torch.Generator().manual_seed(0)) < 0.4).float()
    torch.testing.assert_close(m(x), m(x.reshape(3, 5, 1, 8, 8)))
    r = m.run(x, record=True)
    assert [s.shape for s in r["spikes"]] == [torch.Size([3, 5, 512]), torch.Size([3, 5, 256])]
    # sum pooling of spikes = 4 x average pooling, which the next weights can absorb exactly
    a = _net(pool_kind="avg")
    with torch.no_grad():
        a.fc[1].mul_(4)
        a.w_out.mul_(4)
    torch.testing.assert_close(a(x), m(x))
    c1 = ConvSNN((2, 16), channels=4, kernel=5, pool=2, n_out=3)
    assert c1.layer_shapes == [(4, 16)] and c1.fc[0].shape == (4, 2, 5) and c1(torch.zeros(2, 4, 32)).shape == (2, 3)


def test_conv_snn_learns_by_bptt_with_states_quantized(task):
    xtr, ytr, _, _ = task
    m = _net(seed=1)
    before = [p.detach().clone() for p in m.fc]
    lower, upper = -1.0, 0.5
    q = state_quantizer("thr", 4, 1.0, lower, upper)
    m.quantize_weights("fxp4:p99").set_state_quant(q)
    h = train(m, xtr[:256], ytr[:256], epochs=2, batch_size=32, lr=5e-3, seed=0)
    assert h["loss"][1] < h["loss"][0]
    assert all(not torch.equal(b, p) for b, p in zip(before, m.fc))  # every kernel moved
    mem = record_membrane(m, xtr[:4], layer=1)
    assert mem.shape == (4, 16, 256) and torch.isin(mem, q.levels).all()


def test_save_load_is_bit_exact(tmp_path):
    m = _net()
    q = lowbit.quantize(m, "fxp4:p99").set_state_quant(state_quantizer("thr", 4))
    lowbit.save(q, tmp_path / "c.lowbit")
    r = lowbit.load(tmp_path / "c.lowbit", model=_net())
    x = (torch.rand(2, 6, 64, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    assert torch.equal(q(x), r(x))
    assert torch.equal(r.hidden[0].state_quant.levels, q.hidden[0].state_quant.levels)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="in_shape"):
        ConvSNN((8, 8, 8, 8))
    with pytest.raises(ValueError, match="channels"):
        ConvSNN((1, 8, 8), channels=())
    with pytest.raises(ValueError, match="pool_kind"):
        ConvSNN((1, 8, 8), pool_kind="max")
    with pytest.raises(ValueError, match="pool 2 leaves no output"):
        ConvSNN((1, 4, 4), channels=(2, 2, 2))
    with pytest.raises(ValueError, match="kernel"):
        ConvSNN((1, 8, 8), kernel=0)
    with pytest.raises(ValueError, match=r"\[batch, time, 64\]"):
        _net()(torch.zeros(2, 3, 7))
