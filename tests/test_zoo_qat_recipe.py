"""The W4 QAT recipe of ``benchmarks/bench_zoo_accuracy.py``: ``w4:lsq.mse`` starts LSQ at the MSE clip.

The benchmark reports ``w4:lsq`` (the paper's start) and ``w4:lsq.mse`` side by side; these
tests pin what the second one is: every weight's learned step size starts at the step of the
MSE range (per output channel, of the BN-folded weight), it is trained like ``w4:lsq``, and
``convert`` still computes the fake-quantized network bit for bit.
"""
from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F

import lowbit
from lowbit.models import build_model
from lowbit.models.zoo import ZOO, zoo_input
from lowbit.nn import QuantLayer, fold_bn
from lowbit.quantizers import LSQQuantizer


def _resnet8() -> torch.nn.Module:
    e = ZOO["resnet8"]
    m = build_model("resnet8", e.small_input_shape, e.num_classes, seed=0, **e.small)
    m.train()
    with torch.no_grad():
        m(zoo_input("resnet8", 4, seed=1))  # BN statistics, as after training
    return m.eval()


def test_lsq_mse_starts_at_the_mse_step() -> None:
    model = _resnet8()
    folded = _copy_folded(model)  # the weights prepare_qat quantizes
    q = lowbit.prepare_qat(model, "w4:lsq.mse")
    paper = lowbit.prepare_qat(model, "w4:lsq")
    layers = {n: m for n, m in q.named_modules() if isinstance(m, QuantLayer)}
    assert len(layers) == 10  # stem, 3 stacks x 2 convs, 2 shortcuts, fc
    for name, layer in layers.items():
        wq = layer.weight_quant
        assert isinstance(wq, LSQQuantizer) and wq.spec == "int4:channel:lsq.mse"
        w = folded.get_submodule(name).weight.detach()
        mse = lowbit.quantizer("int4:channel:mse").fit(w)
        assert torch.equal(wq.scale.detach(), mse.scale)
        # the paper's start is a coarser grid on these weights
        assert bool((paper.get_submodule(name).weight_quant.scale > wq.scale).float().mean() > 0.5)


def test_lsq_mse_trains_and_converts_bit_exactly() -> None:
    model = _resnet8()
    q = lowbit.prepare_qat(model, "w4:lsq.mse")
    s0 = q.fc.weight_quant.scale.detach().clone()
    opt = torch.optim.Adam(q.parameters(), lr=1e-3)
    x, y = zoo_input("resnet8", 8, seed=2), torch.arange(8) % 10
    for _ in range(2):
        loss = F.cross_entropy(q(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(q.fc.weight_quant.scale.detach(), s0)  # the step sizes are learned
    q.eval()
    with torch.no_grad():
        want = q(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        i = lowbit.convert(q)
    with torch.no_grad():
        assert torch.equal(i(x), want)


def _copy_folded(m: torch.nn.Module) -> torch.nn.Module:
    c = copy.deepcopy(m)
    fold_bn(c)
    return c
