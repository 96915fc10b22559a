"""BPTT training on a small seeded Randman task: accuracy floors for float, QAT and QAT + stateful QAT.

The floors must hold on every CPU. A training trajectory is chaotic: another CPU (other
vector kernels, another float rounding) gives another model, as another seed does. So each
floor below is measured over 24 trajectories (seeds 0-11 for model and shuffling, each under
ATEN_CPU_CAPABILITY=default and =avx2): their mean, less 3 of their standard deviations, less
3 binomial standard errors of the 1,024-sample test set (1.3-1.4 points at these accuracies).
The test set is large; the training set is 256 samples as before, so training costs no more.
Where a claim can be made without a trajectory (8-bit weights barely move the float model;
states on the levels; weights on a 16-value grid) it is checked directly.
"""
import copy

import pytest
import torch

from lowbit.data.spiking import randman_raster, split
from lowbit.snn import SNN, calibrate_state_range, evaluate, predict, record_membrane, state_quantizer, train

N_TEST = 1024


@pytest.fixture(scope="module")
def task():
    # 4 x 320 samples: 256 to train on, 1,024 to test on (one sample = 0.1 point)
    x, y = randman_raster(nb_classes=4, nb_units=20, nb_steps=20, nb_samples=320, dim_manifold=1, seed=0)
    xtr, ytr, xte, yte = split(x, y, N_TEST / len(y), seed=0)
    assert (len(ytr), len(yte)) == (256, N_TEST)
    return xtr, ytr, xte, yte


@pytest.fixture(scope="module")
def fp_model(task):
    xtr, ytr, _, _ = task
    m = SNN(20, 32, 4, seed=0)
    hist = train(m, xtr, ytr, epochs=10, batch_size=32, lr=1e-2, seed=0)
    assert hist["loss"][-1] < 0.75 * hist["loss"][0]  # 24 trajectories: 1.35-1.40 -> 0.20-0.55
    return m


def test_float_snn_learns(task, fp_model):
    _, _, xte, yte = task
    # chance is 0.25; 24 trajectories: 0.78-0.88 (mean 0.845, sd 0.029); mean - 3 sd - 3 SE = 0.72
    assert evaluate(fp_model, xte, yte) >= 0.70


def test_qat_8bit_weights_keep_accuracy(task, fp_model):
    xtr, ytr, xte, yte = task
    fp, fp_pred = evaluate(fp_model, xte, yte), predict(fp_model, xte)
    m = copy.deepcopy(fp_model).quantize_weights("fxp8:p99")
    # 8-bit weights barely move the model, whatever the trajectory: 24 trajectories agree with
    # the float predictions on 0.95-0.99 of the test set (mean 0.97, sd 0.013; minus 3 sd and
    # 3 binomial SE at 0.93, 2.4 points: 0.91)
    assert float((predict(m, xte) == fp_pred).float().mean()) >= 0.90
    assert evaluate(m, xte, yte) >= fp - 0.04  # measured -1.4 to +2.3 points
    train(m, xtr, ytr, epochs=3, batch_size=32, lr=1e-3, seed=1)
    # 24 trajectories: QAT gains +0.4 to +10 points over float. The difference of two models on
    # the same 1,024 samples has SE <= sqrt(discordant) / 1024 <= sqrt(188) / 1024 = 1.34 points:
    # 4 points is 3 SE, so this fails only if 8-bit QAT truly loses accuracy.
    assert evaluate(m, xte, yte) >= fp - 0.04


def test_qat_4bit_weights_and_thr_states(task, fp_model):
    xtr, ytr, xte, yte = task
    lower, upper = calibrate_state_range(record_membrane(fp_model, xtr), 1.0)
    q = state_quantizer("thr", 4, 1.0, lower, upper)
    m = copy.deepcopy(fp_model).quantize_weights("fxp4:p99").set_state_quant(q)
    train(m, xtr, ytr, epochs=3, batch_size=32, lr=1e-3, seed=1)
    q.start_tracking()
    acc = evaluate(m, xte, yte)
    clipped = q.stop_tracking()
    # chance is 0.25; 24 trajectories: 0.74-0.85 (mean 0.785, sd 0.032); mean - 3 sd - 3 SE = 0.645
    assert acc >= 0.64
    assert 0.0 <= clipped < 0.05  # 24 trajectories: at most 0.011
    # what holds on any trajectory: the states are on the 16 levels, the weights on a 4-bit grid
    assert len(q.levels) == 16
    mem = m.run(xte[:4], record=True)["mem"][0]
    assert torch.isin(mem, q.levels).all()
    for name, w in m.effective_weights().items():
        assert w.unique().numel() <= 16, name


def test_training_is_deterministic(task):
    xtr, ytr, _, _ = task
    a, b = SNN(20, 8, 4, seed=3), SNN(20, 8, 4, seed=3)
    ha = train(a, xtr[:64], ytr[:64], epochs=1, batch_size=16, seed=7)
    hb = train(b, xtr[:64], ytr[:64], epochs=1, batch_size=16, seed=7)
    assert ha["loss"] == hb["loss"]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_train_bad_arguments(task):
    xtr, ytr, _, _ = task
    m = SNN(20, 4, 4)
    with pytest.raises(ValueError, match="epochs"):
        train(m, xtr, ytr, epochs=-1)
    with pytest.raises(ValueError, match="lr"):
        train(m, xtr, ytr, lr=0.0)
    with pytest.raises(ValueError, match="labels"):
        train(m, xtr, ytr[:3])
    with pytest.raises(ValueError, match=r"\[batch, time, 20\]"):
        m(torch.zeros(2, 5, 7))
