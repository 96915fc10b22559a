"""Ranges: the mlGeNN fixed-point fit by hand, percentiles against numpy, MSE, granularity, edge cases."""
import math

import numpy as np
import pytest
import torch

from lowbit import quantizer
from lowbit.formats import Codebook, Uniform
from lowbit.ranges import Granularity, fixed_point_scale, percentile, scale_from_range


def mlgenn_reference(data: np.ndarray, bits: int, p: float):
    """mlGeNN's find_signed_scale / quantise_signed, transcribed from reference/snn.md §1.2."""
    pos, neg = data[data > 0], data[data <= 0]
    max_val = max(np.percentile(pos, p), np.percentile(-neg, p))
    high_bit = math.floor(math.log2(max_val))
    low_bit = high_bit - (bits - 2)
    scale = 2.0**low_bit
    min_q, max_q = -(2.0 ** (high_bit + 1)), 2.0 ** (high_bit + 1) - scale
    return scale, np.clip(scale * np.round(data / scale), min_q, max_q)


def test_fixed_point_fit_by_hand():
    # positives 0.1, 0.2, 0.3, 0.45: p100 = 0.45; non-positives 0, -0.2 -> |.| p100 = 0.2
    w = torch.tensor([0.1, 0.2, 0.3, 0.45, 0.0, -0.2])
    q = quantizer("fxp8:p100")
    q.fit(w)
    # max_val = 0.45, high_bit = floor(log2 0.45) = -2, scale = 2^(-2 - 6) = 2^-8
    assert q.scale.item() == 2.0**-8
    # range [-2^-1, 2^-1 - 2^-8]
    assert q(torch.tensor([1.0, -1.0])).tolist() == [0.5 - 2**-8, -0.5]
    # 4 bits: scale = 2^(-2 - 2) = 1/16; 0.45/0.0625 = 7.2 -> 7 -> 0.4375
    q4 = quantizer("fxp4:p100")
    q4.fit(w)
    assert q4.scale.item() == 1 / 16
    assert q4(w).tolist() == [0.125, 0.1875, 0.3125, 0.4375, 0.0, -0.1875]


def test_fixed_point_percentile_interpolates_like_numpy():
    # positives 1..10: p99 = 9.91 (linear); |non-positives| 0..3: p99 = 2.97
    w = torch.cat([torch.arange(1.0, 11.0), -torch.arange(0.0, 4.0)])
    q = quantizer("fxp8:p99").fit(w)
    # max_val = 9.91, high_bit = 3, scale = 2^(3-6) = 1/8
    assert q.scale.item() == 0.125


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("p", [99.0, 95.0, 100.0])
def test_fixed_point_equals_mlgenn_on_random_weights(bits, p):
    rng = np.random.default_rng(bits)
    w = (rng.standard_normal(20_000) * 0.03).astype(np.float32)
    scale, ref = mlgenn_reference(w, bits, p)
    q = quantizer(f"fxp{bits}:p{p:g}")
    out = q(torch.from_numpy(w))
    assert q.fit(torch.from_numpy(w)).scale.item() == scale
    np.testing.assert_array_equal(out.numpy(), ref.astype(np.float32))


def test_fixed_point_worked_example_of_the_reference():
    # reference/snn.md: N(0, 0.03), p99 of |w| ~ 0.0776 -> high_bit -4; 2 bits -> {-0.125, -0.0625, 0, 0.0625}
    w = torch.randn(100_000, generator=torch.Generator().manual_seed(0)) * 0.03
    q = quantizer("fxp2:p99").fit(w)
    assert q.scale.item() == 2.0**-4
    assert sorted(q(w).unique().tolist()) == [-0.125, -0.0625, 0.0, 0.0625]


@pytest.mark.parametrize(
    "w",
    [torch.zeros(10), torch.full((10,), 0.3), torch.full((10,), -0.3), torch.rand(10) + 0.1, -torch.rand(10) - 0.1],
    ids=["zeros", "const-pos", "const-neg", "all-pos", "all-neg"],
)
@pytest.mark.parametrize("spec", ["fxp8:p99", "int4", "uint4", "int4:mse", "int8:p99.9", "uint8:p99"])
def test_edge_case_tensors_quantize_without_nan(w, spec):
    out = quantizer(spec)(w)
    assert torch.isfinite(out).all()
    if bool((w == w[0]).all()) and not spec.startswith("fxp"):
        # every range fitted to a constant tensor represents it (up to float rounding)
        assert torch.allclose(out, w, atol=1e-6 * (1 + w.abs().max().item()))


def test_fixed_point_all_zero_scale_is_one():
    assert fixed_point_scale(torch.tensor([0.0]), Uniform(8)).item() == 1.0


def test_fixed_point_exact_power_of_two():
    # max_val = 0.5 exactly: high_bit = -1 (no log rounding error), scale = 2^(-1-6)
    assert fixed_point_scale(torch.tensor([0.5]), Uniform(8)).item() == 2.0**-7


def test_percentile_matches_numpy():
    x = torch.randn(7, 513, generator=torch.Generator().manual_seed(3))
    for p in (0, 0.5, 10, 50, 90, 99, 99.9, 100):
        np.testing.assert_allclose(percentile(x, p).numpy(), np.percentile(x.numpy(), p, axis=1), rtol=1e-5, atol=1e-6)
        ref = [np.percentile(r[r > 0], p) for r in x.numpy()]
        np.testing.assert_allclose(percentile(x, p, x > 0).numpy(), ref, rtol=1e-5, atol=1e-6)


def test_percentile_of_empty_mask_is_nan():
    x = torch.tensor([[1.0, 2.0], [-1.0, -2.0]])
    out = percentile(x, 99, x > 0)
    assert out[0].item() == pytest.approx(1.99) and math.isnan(out[1].item())


def test_symmetric_scale_fits_both_ends():
    s, zp = scale_from_range(torch.tensor([-2.0]), torch.tensor([1.0]), Uniform(8))
    assert zp is None and s.item() == pytest.approx(2.0 / 128)
    s, _ = scale_from_range(torch.tensor([-1.0]), torch.tensor([2.0]), Uniform(8))
    assert s.item() == pytest.approx(2.0 / 127)


def test_affine_scale_and_zero_point():
    s, zp = scale_from_range(torch.tensor([-1.0]), torch.tensor([3.0]), Uniform(8, signed=False))
    assert s.item() == pytest.approx(4.0 / 255) and zp.item() == round(1.0 / (4.0 / 255))
    # non-negative data: zero point 0, zero exact
    q = quantizer("uint4")
    x = torch.tensor([0.0, 0.5, 1.5])
    assert q(x).tolist() == [0.0, 0.5, 1.5]


def test_one_sided_codebook_scales_its_top():
    s, zp = scale_from_range(torch.tensor([-5.0]), torch.tensor([3.0]), Codebook([0.0, 0.5, 1.0]))
    assert zp is None and s.item() == 3.0


def test_mse_beats_minmax_at_low_bits_per_channel():
    w = torch.randn(16, 256, generator=torch.Generator().manual_seed(0))
    w[0, 0] = 12.0  # an outlier in channel 0
    e_mm = ((quantizer("int3:channel")(w) - w) ** 2).sum(dim=1)
    e_mse = ((quantizer("int3:channel:mse")(w) - w) ** 2).sum(dim=1)
    assert (e_mse <= e_mm + 1e-6).all() and e_mse.sum() < 0.7 * e_mm.sum()


def test_granularity_rows_round_trip_and_counts():
    x = torch.arange(2 * 3 * 4.0).reshape(2, 3, 4)
    for tok, n in (("tensor", 1), ("channel", 2), ("channel1", 3), ("channel-1", 4), ("group2", 12), ("group4", 6)):
        g = Granularity.from_spec(tok)
        rows = g.to_rows(x)
        assert rows.shape[0] == n == g.n_slices(x.shape)
        assert torch.equal(g.from_rows(rows, x.shape), x)
    # per-channel rows really hold one channel each
    assert Granularity.from_spec("channel1").to_rows(x)[1].tolist() == x[:, 1, :].flatten().tolist()
    # axis 0 (also spelt -ndim): a view of x itself, the same rows as moving the axis
    for tok in ("channel", "channel-3"):
        rows = Granularity.from_spec(tok).to_rows(x)
        assert rows.data_ptr() == x.data_ptr() and torch.equal(rows, x.movedim(0, 0).reshape(2, -1))


@pytest.mark.parametrize("tok, match", [("channel3", "axis 3"), ("group5", "group size 5"), ("block7", "granularity")])
def test_bad_granularity(tok, match):
    with pytest.raises(ValueError, match=match):
        quantizer(f"int4:{tok}")(torch.zeros(2, 3, 4)) if tok != "block7" else quantizer(f"int4:{tok}")
