"""BPTT training on a small seeded Randman task: accuracy floors for float, QAT and QAT + stateful QAT."""
import copy

import pytest
import torch

from lowbit.data.spiking import randman_raster, split
from lowbit.snn import SNN, calibrate_state_range, evaluate, record_membrane, state_quantizer, train


@pytest.fixture(scope="module")
def task():
    x, y = randman_raster(nb_classes=4, nb_units=20, nb_steps=20, nb_samples=80, dim_manifold=1, seed=0)
    return split(x, y, 0.2, seed=0)


@pytest.fixture(scope="module")
def fp_model(task):
    xtr, ytr, _, _ = task
    m = SNN(20, 32, 4, seed=0)
    hist = train(m, xtr, ytr, epochs=10, batch_size=32, lr=1e-2, seed=0)
    assert hist["loss"][-1] < hist["loss"][0]
    return m


def test_float_snn_learns(task, fp_model):
    _, _, xte, yte = task
    assert evaluate(fp_model, xte, yte) >= 0.75  # chance is 0.25; measured 0.81


def test_qat_8bit_weights_keep_accuracy(task, fp_model):
    xtr, ytr, xte, yte = task
    fp = evaluate(fp_model, xte, yte)
    m = copy.deepcopy(fp_model).quantize_weights("fxp8:p99")
    train(m, xtr, ytr, epochs=3, batch_size=32, lr=1e-3, seed=1)
    assert evaluate(m, xte, yte) >= fp - 0.03  # measured: +6 points


def test_qat_4bit_weights_and_thr_states(task, fp_model):
    xtr, ytr, xte, yte = task
    lower, upper = calibrate_state_range(record_membrane(fp_model, xtr), 1.0)
    q = state_quantizer("thr", 4, 1.0, lower, upper)
    m = copy.deepcopy(fp_model).quantize_weights("fxp4:p99").set_state_quant(q)
    train(m, xtr, ytr, epochs=3, batch_size=32, lr=1e-3, seed=1)
    q.start_tracking()
    acc = evaluate(m, xte, yte)
    clipped = q.stop_tracking()
    assert acc >= 0.70  # measured 0.77
    assert 0.0 <= clipped < 0.05
    mem = m.run(xte[:4], record=True)["mem"][0]
    assert torch.isin(mem, q.levels).all()  # the states really are on the levels


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
