"""Shared fixtures: the digits data and float reference models trained once per test session.

Training dominates the suite's time, so every test module that needs a trained
float model takes a deep copy of the same seeded one instead of training its own.
"""
from __future__ import annotations

import copy

import pytest
import torch

# One thread: the reference models then come out bit-identical whichever test
# trains them first (float sums depend on the thread split), and tiny models
# gain nothing from a second thread on CI's 2 cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _same_start_for_every_test():
    """Every test, and every fixture built after it, starts from one thread and one global seed."""
    # Commands run in-process set torch's thread count (--threads) and seed the global RNG
    # (--seed); without this, a result would depend on which tests ran before it. Teardown
    # resets too, because module fixtures are built before the next test's own set-up runs.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits, 80/20 stratified split, seed 0."""
    from lowbit.data.images import load_digits

    return load_digits(seed=0)


def _train(name: str, ds, epochs: int, **kw):
    from lowbit.data.images import loader
    from lowbit.models import build_model
    from lowbit.train import evaluate, fit

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build_model(name, ds.input_shape, ds.num_classes, seed=0, **kw)
        fit(model, loader(ds.train, 64, shuffle=True, seed=0), epochs=epochs, lr=3e-3, progress=False)
        model.eval()
        acc = evaluate(model, loader(ds.test, 512))
    finally:
        torch.set_num_threads(threads)
    return model, acc


@pytest.fixture(scope="session")
def _float_mlp(digits):
    return _train("mlp", digits, epochs=15)


@pytest.fixture(scope="session")
def _float_cnn(digits):
    return _train("vgg", digits, epochs=8, widths=(16, 32))


@pytest.fixture
def float_mlp(_float_mlp):
    """(a fresh copy of the trained float MLP, its test accuracy in %)."""
    return copy.deepcopy(_float_mlp[0]), _float_mlp[1]


@pytest.fixture
def float_cnn(_float_cnn):
    """(a fresh copy of the trained float small VGG (widths 16, 32), its test accuracy in %)."""
    return copy.deepcopy(_float_cnn[0]), _float_cnn[1]
