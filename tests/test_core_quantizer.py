"""Quantizer: the conformance suite over many specs, spec parsing, calibration, gradients, bad input."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit
from lowbit import Quantizer, parse_spec, quantizer
from lowbit.testing import check_quantizer

SPECS = [
    "int8", "int4", "int2", "int1", "int3n", "uint8", "uint4", "uint2", "int16",
    "int4:channel", "int4:channel1", "int4:group16", "uint4:group16", "int8:p99", "uint8:p99.5",
    "int4:channel:mse", "uint3:mse", "fxp8", "fxp4:p99:channel", "int4:pow2", "uint4:pow2",
    "int4:clipped", "int4:stochastic", "int2:channel:mse:clipped",
]


@pytest.fixture(scope="module")
def weight():
    return torch.randn(32, 64, generator=torch.Generator().manual_seed(0)) * 0.05


@pytest.mark.parametrize("spec", SPECS)
def test_every_spec_conforms(spec, weight):
    q = quantizer(spec, generator=torch.Generator().manual_seed(0))
    check_quantizer(q, weight)


@pytest.mark.parametrize("spec", ["int4", "uint4:mse", "int3:group16", "fxp6:p99:channel"])
@settings(max_examples=20, deadline=None)
@given(scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**16))
def test_conformance_over_random_scales(spec, scale, seed):
    x = torch.randn(8, 32, generator=torch.Generator().manual_seed(seed)) * scale
    check_quantizer(quantizer(spec), x)


def test_uniform_error_is_at_most_half_a_step(weight):
    q = quantizer("int4:channel")
    y = q(weight)
    s = q.fit(weight).scale[:, None]
    assert ((y - weight).abs() <= s / 2 + 1e-7).all()


def test_levels_used_per_bits(weight):
    for b in (1, 2, 3, 4):
        assert quantizer(f"int{b}")(weight).unique().numel() <= 2**b


def test_spec_parsing_and_canonical_form():
    assert parse_spec("int4:channel:mse") == parse_spec("int4:mse:channel")
    assert str(parse_spec("INT4:MSE:channel")) == "int4:channel:mse"
    assert parse_spec("fxp8").pow2 and parse_spec("fxp8").range == "p99"
    assert parse_spec("fxp8:p95").range == "p95"  # the user's token wins over the default
    assert quantizer("int4:group64").spec == "int4:group64"
    assert parse_spec("int4:stochastic:clipped") == lowbit.QuantSpec("int4", rounding="stochastic", gradient="clipped")


@pytest.mark.parametrize(
    "spec, match",
    [
        ("int4:bogus", r"unknown token 'bogus'; valid tokens are formats: .*granularity.*ranges.*mse"),
        ("nope4", "unknown format 'nope4'"),
        ("int4:mse:minmax", "more than one range"),
        ("int0", "bits must be in 1..16"),
        ("", "non-empty"),
        ("int4:p101", "percentile must be in"),
    ],
)
def test_bad_specs_say_what_is_allowed(spec, match):
    with pytest.raises(ValueError, match=match):
        quantizer(spec)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="rounding"):
        Quantizer("int4", rounding="up")
    with pytest.raises(ValueError, match="gradient"):
        Quantizer("int4", gradient="none")
    with pytest.raises(ValueError, match="unknown range"):
        Quantizer("int4", range="max")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("spec", ["int8", "int4:p99", "int4:mse", "uint4"])
def test_nan_and_inf_are_rejected(bad, spec):
    x = torch.randn(64)
    x[5] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantizer(spec)(x)
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantizer(spec).encode(x)


def test_frozen_encode_rejects_nan():
    q = quantizer("int8").fit(torch.randn(10))
    with pytest.raises(ValueError, match="NaN or Inf"):
        q.encode(torch.tensor([1.0, float("nan")]))


def test_empty_and_non_float_input():
    with pytest.raises(ValueError, match="empty"):
        quantizer("int8")(torch.empty(0))
    with pytest.raises(TypeError, match="floating-point"):
        quantizer("int8")(torch.arange(4))


def test_calibration_freezes_the_scale():
    q = quantizer("int8")
    batches = [torch.tensor([-1.0, 0.5]), torch.tensor([0.2, 2.0])]
    q.calibrate(batches)
    assert q.frozen and q.scale.item() == pytest.approx(2.0 / 127)
    # frozen: a larger input clips instead of rescaling
    assert q(torch.tensor([10.0])).item() == pytest.approx(2.0)
    q.reset()
    assert not q.frozen and q(torch.tensor([10.0])).item() == pytest.approx(10.0)


def test_percentile_calibration_averages_batches():
    q = quantizer("int8:p100")
    q.observe(torch.tensor([1.0, -0.5]))
    q.observe(torch.tensor([3.0, -0.5]))
    q.freeze()
    assert q.scale.item() == pytest.approx(2.0 / 127)


def test_freeze_without_observe_and_shape_mismatch():
    with pytest.raises(ValueError, match="observe"):
        quantizer("int8").freeze()
    q = quantizer("int4:channel").fit(torch.randn(4, 8))
    with pytest.raises(ValueError, match="calibrated with 4 scales"):
        q(torch.randn(5, 8))


def test_population_shares_one_scale():
    w_ff = torch.randn(20, 10) * 0.1
    w_rec = torch.randn(20, 20) * 0.5
    q = quantizer("fxp8:p99").fit([w_ff, w_rec])
    joint = quantizer("fxp8:p99").fit(torch.cat([w_ff.flatten(), w_rec.flatten()]))
    assert q.scale.item() == joint.scale.item()
    assert q.scale.item() != quantizer("fxp8:p99").fit(w_ff).scale.item()
    with pytest.raises(ValueError, match="population"):
        quantizer("int4:group5").fit([w_ff, w_ff])


def test_straight_through_gradients():
    x = torch.linspace(-2, 2, 41, requires_grad=True)
    q = quantizer("int2").fit(torch.tensor([-1.0, 1.0]))  # scale max(1/1, -1/-2) = 1: levels -2..1
    q(x).pow(2).sum().backward()
    assert torch.allclose(x.grad, 2 * q(x.detach()))
    x.grad = None
    qc = quantizer("int2:clipped").fit(torch.tensor([-1.0, 0.5]))  # scale 0.5, levels -1..0.5
    qc(x).sum().backward()
    inside = (x.detach() >= -1.0) & (x.detach() <= 0.5)
    assert torch.equal(x.grad, inside.float())


def test_state_dict_round_trip_keeps_the_scale():
    q = quantizer("int4:channel").fit(torch.randn(6, 5))
    q2 = quantizer("int4:channel")
    q2.load_state_dict(q.state_dict())
    x = torch.randn(6, 5)
    assert torch.equal(q(x), q2(x))


def test_quantizer_is_a_module_that_moves_with_its_parent():
    m = torch.nn.Module()
    m.q = quantizer("uint8").fit(torch.rand(10))
    assert "q.scale" in m.state_dict() and "q.zero_point" in m.state_dict()
    assert math.isclose(m.state_dict()["q.scale"].item(), m.q.scale.item())


def test_set_scale_freezes_a_given_scale():
    q = quantizer("uint4").set_scale(0.5, 3)
    assert q.frozen and q(torch.tensor([0.0, 1.0, -1.5, 10.0])).tolist() == [0.0, 1.0, -1.5, 6.0]
    with pytest.raises(ValueError, match="finite values > 0"):
        quantizer("int4").set_scale(0.0)
    with pytest.raises(ValueError, match="zero_point has 2 values"):
        quantizer("uint4").set_scale(1.0, [1, 2])


def test_fake_quant_is_exactly_on_the_grid_with_gradients():
    x = torch.randn(1000, requires_grad=True)
    q = quantizer("int4").fit(x.detach())
    y = q(x)
    with torch.no_grad():
        assert torch.equal(y, q(x)) and torch.equal(y.detach(), q.encode(x.detach()).dequantize())
