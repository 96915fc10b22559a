"""Quantized layers, LSQ, PACT, activation quantizers, BN folding: values and gradients."""
import math

import pytest
import torch
from torch import nn

import lowbit
from lowbit.nn import PACT, ActQuant, LSQQuantizer, QuantConv1d, QuantConv2d, QuantLinear, fold_bn, pact_penalty
from lowbit.nn.handlers import weight_quantizer
from lowbit.testing import check_quantizer



def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("cls,shape", [(QuantLinear, (4, 16)), (QuantConv2d, (4, 3, 6, 6)), (QuantConv1d, (4, 3, 10))])
def test_gradient_reaches_shadow_weight_straight_through(cls, shape):
    torch.manual_seed(0)
    if cls is QuantLinear:
        f = nn.Linear(16, 8)
    elif cls is QuantConv2d:
        f = nn.Conv2d(3, 8, 3, padding=1)
    else:
        f = nn.Conv1d(3, 8, 3)
    ref = type(f)(*([16, 8] if cls is QuantLinear else [3, 8, 3]), **({} if cls is QuantLinear else {"padding": f.padding}))
    q = cls.from_float(f, lowbit.quantizer("int4:channel"))
    x = torch.randn(*shape, generator=_gen())
    y = q(x)
    # the forward pass uses the quantized weight ...
    ref.weight.data = q.weight_quant(f.weight).detach().clone()
    ref.bias.data = f.bias.detach().clone()
    assert torch.equal(y, ref(x))
    # ... and the straight-through gradient reaches the float shadow weight unchanged
    y.square().sum().backward()
    ref(x).square().sum().backward()
    assert q.weight is f.weight and f.weight.grad is not None
    torch.testing.assert_close(f.weight.grad, ref.weight.grad)


def test_weight_is_quantized_once_per_forward():
    q = QuantLinear.from_float(nn.Linear(8, 4), lowbit.quantizer("int4"))
    calls = []
    q.weight_quant.register_forward_hook(lambda *a: calls.append(1))
    q(torch.randn(5, 8))
    assert len(calls) == 1


def test_optimizer_step_moves_shadow_weight_not_grid():
    torch.manual_seed(0)
    q = QuantLinear.from_float(nn.Linear(8, 4), lowbit.quantizer("int2:channel"))
    w0 = q.weight.detach().clone()
    opt = torch.optim.SGD(q.parameters(), lr=1e-3)
    q(torch.randn(16, 8)).sum().backward()
    opt.step()
    assert not torch.equal(q.weight, w0)  # the float weight moved by a small step
    assert (q.weight - w0).abs().max() < 0.1


def _lsq_reference(x, s, fmt_lo, fmt_hi, g):
    # LSQ as written in the paper's reference code (detach tricks)
    s = (s - s * g).detach() + s * g
    v = torch.clamp(x / s[:, None], fmt_lo, fmt_hi)
    v = v + (torch.round(v) - v).detach()
    return v * s[:, None]


def test_lsq_gradients_match_the_paper():
    x = torch.randn(6, 50, generator=_gen(1)) * 0.1
    q = LSQQuantizer("int4", "channel", init=x)
    xa = x.clone().requires_grad_(True)
    up = torch.randn(6, 50, generator=_gen(2))
    (q(xa) * up).sum().backward()
    s = q.scale.detach().clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    g = 1.0 / math.sqrt(50 * 7)
    (_lsq_reference(xb, s, -8.0, 7.0, g) * up).sum().backward()
    torch.testing.assert_close(q.scale.grad, s.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(xa.grad, xb.grad)


def _lsq_plain(x, s, gran, fmt, g):
    # LSQ in plain autograd, one op at a time: clamp passes the gradient inside
    # [lo, hi] (bounds included), rounding is straight through, and a hook
    # scales the step's gradient by g (the values stay exact).
    rows = gran.to_rows(x)
    s = s * 1.0
    s.register_hook(lambda grad: grad * g)
    v = torch.clamp(rows / s[:, None], fmt.lo, fmt.hi)
    q = v + (torch.round(v) - v).detach()
    return gran.from_rows(q * s[:, None], x.shape)


@pytest.mark.parametrize("fmt", ["int4", "uint4", "int3n", "int8", "int2"])
@pytest.mark.parametrize(
    "gran,shape",
    [("tensor", (8, 4, 3, 3)), ("channel", (8, 4, 3, 3)), ("channel", (10, 24)), ("channel-2", (10, 24)),
     ("channel1", (3, 5, 7)), ("group8", (6, 32)), ("channel", (12,))],
)
def test_lsq_value_and_gradients_match_plain_autograd(fmt, gran, shape):
    gen = _gen(7)
    x = torch.randn(shape, generator=gen)
    q = LSQQuantizer(fmt, gran, init=x)
    with torch.no_grad():
        q.scale.mul_(0.6)  # push some values past the clip levels
    xa = x.clone().requires_grad_(True)
    y = q(xa)
    up = torch.randn(shape, generator=gen)
    (y * up).sum().backward()

    s = q.scale.detach().clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    rows = q.granularity.to_rows(x)
    g = 1.0 / math.sqrt(rows.shape[1] * max(q.fmt.hi, 1e-12))
    ref = _lsq_plain(xb, s, q.granularity, q.fmt, g)
    (ref * up).sum().backward()
    assert torch.equal(y.detach(), ref.detach())
    with torch.no_grad():
        assert torch.equal(q(x), ref)  # the no-grad path gives the same values
    torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(q.scale.grad, s.grad, rtol=1e-6, atol=1e-6)


def test_lsq_gradients_at_the_clip_levels_and_for_one_input():
    # Power-of-two steps put values exactly on lo and hi: those count as inside.
    fmt_lo, fmt_hi, step = -8.0, 7.0, 0.25
    x = torch.tensor([[fmt_lo * step, fmt_hi * step, (fmt_hi + 0.5) * step, (fmt_lo - 1) * step, 0.3]])
    q = LSQQuantizer("int4", "tensor")
    q.set_scale(step)
    xa = x.clone().requires_grad_(True)
    q(xa).sum().backward()
    assert xa.grad.tolist() == [[1.0, 1.0, 0.0, 0.0, 1.0]]
    # d/ds per value: q - x/s inside (0 on the levels themselves), the clip level outside; times g
    g = 1.0 / math.sqrt(5 * 7)
    xn = 0.3 / step
    expected = 0.0 + 0.0 + fmt_hi + fmt_lo + (round(xn) - xn)
    assert float(q.scale.grad) == pytest.approx(expected * g, rel=1e-6)
    # only the input needs a gradient, or only the step
    q.scale.requires_grad_(False)
    xa.grad = None
    q(xa).sum().backward()
    assert xa.grad.tolist() == [[1.0, 1.0, 0.0, 0.0, 1.0]]
    q.scale.requires_grad_(True)
    q.scale.grad = None
    q(x).sum().backward()
    assert float(q.scale.grad) == pytest.approx(expected * g, rel=1e-6)


def test_lsq_follows_changes_to_shape_granularity_step_and_levels():
    from lowbit.formats import LearnedCodebook
    from lowbit.ranges import Granularity

    w = torch.randn(6, 10, generator=_gen(8))
    q = LSQQuantizer("int4", "channel", init=w)
    q(w)
    with pytest.raises(ValueError, match="6 step sizes but x needs 3"):
        q(w[:3])
    q.granularity = Granularity("tensor")
    q.init_from(w)  # a new step-size tensor, of another size
    assert torch.equal(q(w), LSQQuantizer("int4", "tensor", init=w)(w))
    assert torch.equal(q(w[:3]), LSQQuantizer("int4", "tensor", init=w)(w[:3]))
    cb = LearnedCodebook([-1.0, 0.0, 1.0], name="shared")
    q = LSQQuantizer(cb, "tensor", init=w)
    y0 = q(w)
    cb.set_levels([-2.0, -1.0, 0.0, 1.0, 2.0])  # a weight-sharing step refills the levels
    assert not torch.equal(q(w), y0)
    fresh = LSQQuantizer(cb, "tensor")
    fresh.set_scale(q.scale.detach())
    assert torch.equal(q(w), fresh(w))


def test_lsq_init_is_two_mean_abs_over_sqrt_qp():
    w = torch.randn(4, 30, generator=_gen(3))
    q = LSQQuantizer("int4", "channel", init=w)
    assert isinstance(q.scale, nn.Parameter)
    torch.testing.assert_close(q.scale.detach(), 2 * w.abs().mean(1) / math.sqrt(7))
    q3 = weight_quantizer("int3:channel:lsq.mse", w)
    ref = lowbit.quantizer("int3:channel:mse").fit(w)
    torch.testing.assert_close(q3.scale.detach(), ref.scale)


def test_lsq_quantizer_passes_the_conformance_suite():
    w = torch.randn(16, 32, generator=_gen(4)) * 0.05
    check_quantizer(weight_quantizer("int4:channel:lsq", w), w)


def test_lsq_scale_learns_and_round_trips_state_dict():
    w = torch.randn(8, 16, generator=_gen(5))
    layer = QuantLinear.from_float(nn.Linear(16, 8), weight_quantizer("int3:channel:lsq", w))
    s0 = layer.weight_quant.scale.detach().clone()
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        (layer(torch.randn(32, 16, generator=_gen(6))) ** 2).mean().backward()
        opt.step()
    assert not torch.equal(layer.weight_quant.scale.detach(), s0)
    fresh = LSQQuantizer("int3", "channel")
    fresh.load_state_dict(layer.weight_quant.state_dict())
    assert torch.equal(fresh.scale, layer.weight_quant.scale)


def test_pact_clip_gradient_and_real_l2_penalty():
    p = PACT(bits=2, alpha_init=1.0)
    x = torch.tensor([-1.0, 0.2, 0.5, 1.5, 3.0], requires_grad=True)
    y = p(x)
    # levels {0, 1/3, 2/3, 1}: relu, clip at alpha=1, round
    torch.testing.assert_close(y.detach(), torch.tensor([0.0, 1 / 3, 2 / 3, 1.0, 1.0]))
    y.sum().backward()
    assert float(p.alpha.grad) == pytest.approx(2.0)  # two inputs above alpha
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0]
    p.alpha.grad = None
    model = nn.Sequential(nn.Linear(2, 2), p)
    pact_penalty(model).backward()
    assert float(p.alpha.grad) == pytest.approx(2.0)  # d(alpha^2)/d alpha, a real gradient


def test_actquant_calibrate_then_fixed():
    a = ActQuant(lowbit.quantizer("uint8"))
    a.calibrating = True
    x = torch.rand(4, 10, generator=_gen(7)) * 3
    assert torch.equal(a(x), x)  # calibration passes the float input through
    a.freeze()
    assert a.q.frozen and not a.calibrating
    y = a(x)
    assert len(torch.unique(y)) <= 256 and float((y - x).abs().max()) <= float(a.q.scale) / 2 + 1e-6


def test_actquant_tracking_uses_the_moving_average():
    a = ActQuant(lowbit.quantizer("uint4"), momentum=0.5)
    a.tracking = True
    a.train()
    a(torch.full((2, 3), 2.0))
    a(torch.full((2, 3), 4.0))
    assert float(a.running_hi) == pytest.approx(3.0)
    a.eval()
    y = a(torch.tensor([[3.0, 5.0]]))
    assert float(y.max()) == pytest.approx(3.0)  # clipped at the average range, not this batch's


def test_fold_bn_keeps_outputs():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    m.train()
    for _ in range(3):
        m(torch.randn(8, 2, 6, 6))
    m.eval()
    x = torch.randn(3, 2, 6, 6)
    ref = m(x)
    assert fold_bn(m) == ["1"]
    assert isinstance(m[1], nn.Identity) and m[0].bias is not None
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)


def test_layer_rejects_a_granularity_that_does_not_fit():
    with pytest.raises(ValueError, match="group size 64"):
        QuantConv2d.from_float(nn.Conv2d(3, 8, 3), lowbit.quantizer("int4:group64"))


def test_untrained_batchnorm_is_kept_not_folded():
    import warnings

    from lowbit.nn.fold import fold_bn

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert fold_bn(model) == []
    assert isinstance(model[1], nn.BatchNorm2d) and any("never seen data" in str(x.message) for x in w)
    model.train()
    model(torch.randn(8, 1, 6, 6))  # one batch of statistics: now it folds
    model.eval()
    x = torch.randn(2, 1, 6, 6)
    want = model(x)
    assert fold_bn(model) == ["1"] and torch.allclose(model(x), want, atol=1e-5)
