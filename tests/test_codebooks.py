"""Named codebooks (NF4, FP4/FP8, PoT/APoT, BitNetMCU, DoReFa, SNN states, 4.6-bit), their ranges and packing."""
import math
from fractions import Fraction as F

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit
from lowbit.formats import NF4_LEVELS, LearnedCodebook, apot_levels, state_levels
from lowbit.qtensor_storage import bits_per_param, double_quantize, double_quantize_scales
from lowbit.quantizers import CenteredQuantizer, DoReFaQuantizer, build_quantizer, state_quantizer
from lowbit.ranges import Octav
from lowbit.targets.mcu.pairs import lut_dot, pair46, product_table
from lowbit.formats import format_from_spec
from lowbit.packing import pack, pack_trits, packed_trits_nbytes, unpack, unpack_trits
from lowbit.qtensor import load_qtensors, save_qtensors
from lowbit.quantizer import parse_spec, quantizer
from lowbit.testing import check_quantizer

NEW_FORMATS = [
    "nf4", "fp4", "fp8_e4m3", "fp8_e5m2", "mxfp4", "mxfp8_e4m3", "mxfp8_e5m2", "pot2", "pot3", "pot4", "pot8",
    "fp130", "apot3", "apot4", "apot5", "uapot2", "uapot3", "uapot4", "binary", "binarysym", "ternary",
    "2bitsym", "3bitsym", "4bitsym", "4bit", "8bit", "dorefa1", "dorefa2", "dorefa4", "sym3", "sym17", "sym31",
    "sym255", "state_uniform4", "state_thr2", "state_thr4", "state_zero4", "state_thr3_t0.5_l0.1_u0.5_m0.3",
]  # fmt: skip
SCALED_SPECS = [
    "nf4", "fp4", "fp4:group32:pow2", "mxfp4", "mxfp8_e4m3", "fp8_e5m2:channel", "pot4:mse", "apot4", "uapot3",
    "fp130", "ternary", "binarysym", "2bitsym", "4bitsym:channel", "4bit:prop", "8bit", "sym17", "state_thr4",
]  # fmt: skip


def _gauss(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- conformance


@pytest.mark.parametrize("spec", SCALED_SPECS)
def test_every_new_quantizer_conforms(spec):
    check_quantizer(quantizer(spec), _gauss(8, 64) * 0.1)


def test_spec_defaults():
    assert parse_spec("nf4").granularity == "group64" and parse_spec("nf4").range == "minmax"
    mx = parse_spec("mxfp4")
    assert (mx.granularity, mx.range) == ("group32", "mx")
    assert parse_spec("2bitsym").range == "octav" and parse_spec("2bitsym:prop").range == "prop"
    assert parse_spec("ternary").range == "absmean" and parse_spec("state_thr4").range == "fixed"
    assert parse_spec("4bit:prop0.5").range == "prop0.5" and parse_spec("fp130:octav20").range == "octav20"
    assert quantizer("4bitsym:channel").encode(_gauss(3, 50)).scale.numel() == 3


@pytest.mark.parametrize("token, match", [("pot9", "2..8"), ("apot2", r"\(3, 4, 5\)"), ("uapot5", r"\(2, 3, 4\)"),
                                          ("dorefa9", "1..8"), ("sym4", "odd"), ("1bitsym", "2..8")])  # fmt: skip
def test_bad_members_name_the_allowed_values(token, match):
    with pytest.raises(ValueError, match=match):
        format_from_spec(token)


# --------------------------------------------------------------------------- tables, value by value


def test_nf4_table():
    lv = format_from_spec("nf4").levels
    assert lv.numel() == 16 and format_from_spec("nf4").bits == 4
    assert torch.allclose(lv, torch.tensor(NF4_LEVELS), atol=1e-6, rtol=0)
    assert lv[7] == 0 and lv[0] == -1 and lv[15] == 1
    assert abs(float(lv[8]) - 0.07958029955625534) < 1e-6 and abs(float(lv[1]) + 0.6961928009986877) < 1e-6


def test_fp_tables():
    fp4 = format_from_spec("fp4").levels
    assert fp4[fp4 >= 0].tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert torch.equal(fp4, -fp4.flip(0)) and format_from_spec("fp4").bits == 4
    e4 = format_from_spec("fp8_e4m3").levels
    assert e4.numel() == 253 and e4[-1] == 448 and e4[-2] == 416 and e4[127] == 2**-9  # 126 negatives, 0, 2^-9
    e5 = format_from_spec("fp8_e5m2").levels
    assert e5.numel() == 247 and e5[-1] == 57344 and e5[124] == 2**-16
    assert all(format_from_spec(t).bits == 8 for t in ("fp8_e4m3", "fp8_e5m2"))


def test_fp_saturate_and_mx_scales_are_powers_of_two():
    q = quantizer("fp8_e4m3:tensor")
    q.fit(torch.tensor([-448.0, 448.0]))  # scale 1
    assert q(torch.tensor([1e6, -1e6, 500.0])).tolist() == [448.0, -448.0, 448.0]
    w = _gauss(4, 64)
    qt = quantizer("mxfp4").encode(w)
    amax = w.reshape(-1, 32).abs().amax(1)
    assert torch.equal(qt.scale, 2.0 ** (torch.floor(torch.log2(amax)) - 2))  # OCP: 2^(floor(log2 amax) - emax)
    top = (w.reshape(-1, 32) / qt.scale[:, None]).abs() > 6
    assert torch.equal(qt.dequantize().reshape(-1, 32).abs()[top], (6 * qt.scale[:, None]).expand(-1, 32)[top])
    lowbit_pow2 = quantizer("fp4:group32:pow2").encode(w)  # the smallest power of two that clips nothing
    assert bool((amax <= 6 * lowbit_pow2.scale).all()) and bool((lowbit_pow2.scale <= 2 * qt.scale).all())
    assert not torch.isnan(qt.dequantize()).any()
    assert bits_per_param(qt) == 4 + 32 / 32 and bits_per_param(qt, scale_bits=8) == 4 + 8 / 32  # E8M0 exponents
    with pytest.raises(ValueError, match="power-of-two"):
        bits_per_param(quantizer("fp4:group32").encode(w), scale_bits=8)


def test_pot_fp130_apot_bitsym_dorefa_tables():
    assert format_from_spec("pot3").levels.tolist() == [-1, -0.5, -0.25, 0, 0.25, 0.5, 1]
    assert format_from_spec("pot2").levels.tolist() == [-1, 0, 1]
    powers = [2.0**e for e in range(8)]
    assert format_from_spec("fp130").levels.tolist() == [-p for p in reversed(powers)] + powers
    apot3 = [0, F(1, 10), F(2, 10), F(3, 10), F(4, 10), F(6, 10), F(8, 10), 1]  # APoT 3-bit table
    apot4 = [0, F(1, 48), F(1, 24), F(1, 16), F(1, 12), F(1, 8), F(1, 6), F(3, 16), F(1, 4), F(1, 3), F(3, 8),
             F(1, 2), F(2, 3), F(11, 16), F(3, 4), 1]  # fmt: skip
    assert torch.allclose(format_from_spec("uapot3").levels, torch.tensor([float(v) for v in apot3]), atol=1e-7)
    assert torch.allclose(format_from_spec("uapot4").levels, torch.tensor([float(v) for v in apot4]), atol=1e-7)
    assert format_from_spec("uapot2").levels.tolist() == [0, 0.25, 0.5, 1]
    signed4 = format_from_spec("apot4").levels  # 4-bit weights: sign + the 3-bit table
    assert torch.allclose(signed4, torch.cat([-apot_levels(3, False).flip(0)[:-1], apot_levels(3, False)]))
    assert format_from_spec("apot5").levels.numel() == 31 and format_from_spec("apot5").bits == 5
    assert format_from_spec("2bitsym").levels.tolist() == [-1.5, -0.5, 0.5, 1.5]
    assert format_from_spec("4bitsym").levels.tolist() == [k + 0.5 for k in range(-8, 8)]
    assert format_from_spec("4bit").levels.tolist() == list(range(-8, 8))
    assert torch.allclose(format_from_spec("dorefa4").levels, torch.arange(-15, 16, 2) / 15)
    assert format_from_spec("dorefa1").levels.tolist() == [-1, 1]


# --------------------------------------------------------------------------- NF4 blocks and double quantization


def test_nf4_block_absmax():
    w = _gauss(16, 128)
    q = quantizer("nf4")
    qt = q.encode(w)
    blocks = w.reshape(-1, 64)
    assert torch.equal(qt.scale, blocks.abs().amax(1))
    assert qt.data.numel() == w.numel() // 2  # 4-bit codes, two per byte
    nf4 = torch.tensor(NF4_LEVELS)
    ref = nf4[(blocks[:, :, None] / blocks.abs().amax(1)[:, None, None] - nf4).abs().argmin(-1)] * qt.scale[:, None]
    assert torch.allclose(qt.dequantize().reshape(-1, 64), ref, atol=1e-6)
    assert bits_per_param(qt) == pytest.approx(4 + 32 / 64)


def test_double_quantization():
    w = _gauss(64, 1024)  # 1024 block scales -> 4 blocks of 256
    qt = quantizer("nf4").encode(w)
    qt2, dq = double_quantize(qt)
    assert dq.q.dtype == torch.int8 and dq.q.numel() == 1024 and dq.step.numel() == 4
    assert torch.allclose(dq.mean, qt.scale.mean())
    # Dequantization uses the reconstructed scales: level[code] * (q * step + mean), and nothing else changes.
    lv = qt.fmt.levels[qt.codes().long()]
    scales = dq.q.float() * dq.step.repeat_interleave(256) + dq.mean
    assert torch.equal(qt2.dequantize(), (lv * scales[:, None]).reshape(w.shape))
    assert torch.equal(qt2.data, qt.data)
    assert bool(((scales - qt.scale).abs() <= dq.step.repeat_interleave(256) / 2 + 1e-6).all())
    err1 = ((qt.dequantize() - w) ** 2).mean()
    err2 = ((qt2.dequantize() - w) ** 2).mean()
    assert err2 < 1.02 * err1
    assert bits_per_param(qt2, dq) == pytest.approx(4 + 8 / 64 + (32 * 4 + 32) / w.numel())
    assert bits_per_param(qt) - bits_per_param(qt2, dq) > 0.37


def test_double_quantize_constant_and_partial_blocks():
    dq = double_quantize_scales(torch.full((300,), 0.5))
    assert torch.equal(dq.dequantize(), torch.full((300,), 0.5)) and dq.step.numel() == 2
    with pytest.raises(ValueError, match="finite"):
        double_quantize_scales(torch.tensor([1.0, math.nan]))


# --------------------------------------------------------------------------- BitNetMCU types and ranges


def _octav_by_hand(a, bits, iters=10):
    s = a.mean()
    for _ in range(iters):
        over = a > s
        s = a[over].sum() / (4.0**-bits / 3 * (~over).sum() + over.sum())
    return s


def test_octav_is_the_fixed_point_and_known_for_gaussians():
    w = _gauss(200_000)
    lo, hi = Octav()(w.reshape(1, -1), format_from_spec("fp130"))  # fp130: the clip is the top level
    s = float(hi[0])
    assert s == pytest.approx(float(_octav_by_hand(w.abs(), 4)), rel=1e-5)
    assert 2.5 < s < 2.62  # 4-bit OCTAV clip of N(0, 1) is about 2.56 sigma
    assert float(lo[0]) == -s


def test_bitnetmcu_uniform_types_match_their_formulas():
    w = _gauss(4096) * 0.05
    s = _octav_by_hand(w.abs(), 2)
    u = torch.clamp(torch.round(w * 2 / s - 0.5), -2, 1) + 0.5  # BitNetMCU 2bitsym, scale = 2/s
    assert torch.allclose(quantizer("2bitsym")(w), u * s / 2, atol=1e-7)
    s4 = _octav_by_hand(w.abs(), 4)
    u4 = torch.clamp(torch.round(w * 8 / s4 - 0.5), -8, 7) + 0.5  # 4bitsym, scale = 8/s
    assert torch.allclose(quantizer("4bitsym")(w), u4 * s4 / 8, atol=1e-7)
    u8 = torch.clamp(torch.round(w * 8 / s4), -8, 7)  # 4bit two's complement
    assert torch.allclose(quantizer("4bit")(w), u8 * s4 / 8, atol=1e-7)
    sp = w.abs().mean() / 0.25  # prop: mean|w| / quantscale
    up = torch.clamp(torch.round(w * 8 / sp - 0.5), -8, 7) + 0.5
    assert torch.allclose(quantizer("4bitsym:prop")(w), up * sp / 8, atol=1e-7)


def test_fp130_uses_the_clip_as_top_level():
    w = _gauss(4096)
    qt = quantizer("fp130").encode(w)
    assert float(qt.scale) == pytest.approx(float(_octav_by_hand(w.abs(), 4)) / 128, rel=1e-5)
    assert set(qt.dequantize().div(qt.scale).abs().unique().tolist()) <= {2.0**e for e in range(8)}


def test_ternary_is_absmean():
    w = _gauss(64, 64)
    g = w.abs().mean()
    assert torch.allclose(quantizer("ternary")(w), torch.clamp(torch.round(w / g), -1, 1) * g, atol=1e-7)


def test_binary_is_sign_around_the_mean():
    w = _gauss(32, 64) + 0.3
    q = build_quantizer("binary:channel")
    assert isinstance(q, CenteredQuantizer)
    c = w - w.mean(1, keepdim=True)
    s = c.abs().mean(1, keepdim=True)
    expected = torch.where(c > 0, s, -s)
    assert torch.allclose(q(w), expected, atol=1e-6)
    qt = q.encode(w)
    assert torch.equal(qt.codes().bool(), c > 0) and torch.allclose(qt.dequantize(), expected, atol=1e-6)
    wg = w.clone().requires_grad_(True)
    q(wg).sum().backward()
    assert torch.equal(wg.grad, torch.ones_like(w))
    # sign around zero is binarysym
    assert torch.allclose(quantizer("binarysym")(w), torch.where(w > 0, 1.0, -1.0) * w.abs().mean(), atol=1e-6)


# --------------------------------------------------------------------------- DoReFa


def test_dorefa_matches_the_formula_and_is_differentiable():
    w = _gauss(16, 16) * 0.5
    q = build_quantizer("dorefa4")
    assert isinstance(q, DoReFaQuantizer)
    t = torch.tanh(w)
    u = t / (2 * t.abs().max()) + 0.5
    ref = 2 * torch.round(u * 15) / 15 - 1
    out = q(w)
    assert torch.allclose(out, ref, atol=1e-6)
    assert not (out == 0).any() and set(out.unique().mul(15).round().abs().tolist()) <= set(range(1, 16, 2))
    qt = q.encode(w)
    assert torch.equal(qt.scale, torch.ones(1)) and torch.allclose(qt.dequantize(), out)
    # Gradient: straight through the rounding only, so d q / d w = d (tanh w / max|tanh w|) / d w.
    wg, wr = w.clone().requires_grad_(True), w.clone().requires_grad_(True)
    g = _gauss(16, 16, seed=1)
    (q(wg) * g).sum().backward()
    tr = torch.tanh(wr)
    (tr / tr.abs().max() * g).sum().backward()
    assert torch.allclose(wg.grad, wr.grad, atol=1e-6) and not torch.allclose(wg.grad, g)


# --------------------------------------------------------------------------- SNN state levels


def test_state_levels_by_hand():
    assert torch.allclose(state_levels("uniform", 2).levels, torch.tensor([-1, -1 + 2.2 / 3, -1 + 4.4 / 3, 1.2]))
    # 2-bit threshold-centred, thr 1, limits 0 / 0.2, m = 0.1: 3 levels below 1, 1 above.
    r = (1 + 0.1 + 0.01) / 2.0
    assert torch.allclose(state_levels("thr", 2).levels, torch.tensor([-1, -1 + 1 / r, -1 + 1.1 / r, 1.2]))
    # 3-bit zero-centred, thr 0.5, lower 0.1, upper 0.5, m = 0.3: range [-0.55, 0.75],
    # floor(8 * 0.55 / 1.3) = 3 levels below zero, 5 above.
    lo, hi, m = -0.55, 0.75, 0.3
    r_lo = (1 + m + m**2) / (0 - lo)
    r_hi = (1 + m + m**2 + m**3 + m**4) / hi
    below = [lo, lo + 1 / r_lo, lo + (1 + m) / r_lo]
    above = [m**4 / r_hi, (m**4 + m**3) / r_hi, (m**4 + m**3 + m**2) / r_hi, (m**4 + m**3 + m**2 + m) / r_hi, hi]
    got = state_levels("zero", 3, threshold=0.5, lower_limit=0.1, upper_limit=0.5, multiplier=0.3)
    assert torch.allclose(got.levels, torch.tensor(below + above), atol=1e-6)
    assert got.spec == "state_zero3_t0.5_l0.1_u0.5_m0.3" and format_from_spec(got.spec) == got
    # Default multipliers per bit width (snnTorch): 4 bits -> 0.5.
    lv4 = state_levels("thr", 4).levels
    # floor(16 * 2 / 2.2) = 14 levels below 1, 2 above: gaps m / R and 1 / R from the threshold.
    assert float(lv4[-1]) == pytest.approx(1.2)
    assert float((lv4[-2] - 1) / (lv4[-1] - lv4[-2])) == pytest.approx(0.5, rel=1e-5)
    assert state_levels("thr", 8).levels.numel() == 256


def test_state_quantizer_is_absolute_nearest_and_straight_through():
    q = state_quantizer("thr", 3, threshold=2.0)
    lv = state_levels("thr", 3, threshold=2.0).levels
    assert q.frozen and torch.equal(q.scale, torch.ones(1))
    v = torch.linspace(-3, 3, 501, requires_grad=True)
    out = q(v)
    nearest = lv[(v.detach()[:, None] - lv).abs().argmin(1)]
    assert torch.equal(q(v.detach()), nearest) and torch.allclose(out, nearest, atol=1e-6)
    out.sum().backward()
    assert torch.equal(v.grad, torch.ones_like(v))
    assert torch.equal(quantizer("state_thr3_t2.0")(v.detach()), nearest)


BAD_STATES = [
    (dict(kind="exp", num_bits=4), "kind"),
    (dict(kind="thr", num_bits=0), "num_bits"),
    (dict(kind="thr", num_bits=4, threshold=-1.0), "threshold"),
    (dict(kind="thr", num_bits=4, upper_limit=-0.5), "centre"),
]


@pytest.mark.parametrize("kwargs, match", BAD_STATES)
def test_state_levels_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        state_levels(**kwargs)


# --------------------------------------------------------------------------- 4.6-bit pairs


def test_pairs_and_product_table():
    assert (pair46(3).nx, pair46(17).nx) == (255, 31)
    for nw in range(3, 256, 2):
        p = pair46(nw)
        assert (p.nx // 2) * (nw // 2) <= 127 and p.nx % 2 == 1
    assert pair46(17).bits == pytest.approx(math.log2(31 * 17) / 2)
    t = pair46(17).table()
    assert t.dtype == torch.int8 and t.shape == (31, 17)
    assert int(t[0, 0]) == 120 and int(t[30, 0]) == -120 and int(t[15, 3]) == 0 and int(t[16, 9]) == 1
    assert torch.equal(pair46(3).table().long(), torch.arange(-127, 128)[:, None] * torch.tensor([-1, 0, 1]))
    with pytest.raises(ValueError, match="int8"):
        product_table(33, 17)


@settings(max_examples=30, deadline=None)
@given(nw=st.sampled_from([3, 5, 9, 17, 23]), k=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_lut_dot_equals_the_integer_dot_product(nw, k, seed):
    p = pair46(nw)
    g = torch.Generator().manual_seed(seed)
    xc = torch.randint(0, p.nx, (3, k), generator=g, dtype=torch.uint8 if p.nx <= 256 else torch.int32)
    wc = torch.randint(0, p.nw, (5, k), generator=g, dtype=torch.uint8)
    xi = p.x_format.decode(xc).long()
    wi = p.w_format.decode(wc).long()
    out = lut_dot(xc[:, None, :], wc[None, :, :], p.table())
    assert out.dtype == torch.int32 and torch.equal(out.long(), xi @ wi.T)


def test_46_quantizers_produce_the_codes():
    w = _gauss(4, 34)
    qt = quantizer("sym17:channel").encode(w)
    assert qt.fmt.levels.tolist() == list(range(-8, 9)) and int(qt.codes().max()) <= 16


# --------------------------------------------------------------------------- learned codebooks


def test_learned_codebook_round_trip_and_sharing(tmp_path):
    cb = LearnedCodebook([0.3, -0.1, 0.3, -0.7, 0.05], name="shared")
    assert cb.levels.tolist() == pytest.approx([-0.7, -0.1, 0.05, 0.3]) and cb.bits == 2
    qa, qb = lowbit.Quantizer(cb, "fixed"), lowbit.Quantizer(cb, "fixed")
    w = _gauss(8, 8) * 0.3
    assert set(qa(w).unique().tolist()) <= set(cb.levels.tolist())
    save_qtensors(tmp_path / "w.safetensors", {"w": qa.encode(w)})
    back = load_qtensors(tmp_path / "w.safetensors")["w"]
    assert torch.equal(back.fmt.levels, cb.levels) and torch.equal(back.dequantize(), qa(w))
    cb.set_levels(torch.linspace(-1, 1, 8))  # a weight-sharing step refills the shared codebook
    assert cb.bits == 3 and torch.equal(qb(torch.tensor([0.9, -2.0])), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="name"):
        LearnedCodebook([0.0, 1.0], name="Bad Name")


@pytest.mark.parametrize("spec", ["nf4", "mxfp4", "apot4:channel", "state_zero4", "2bitsym"])
def test_named_codebooks_round_trip_through_files(tmp_path, spec):
    w = _gauss(4, 64)
    qt = quantizer(spec).encode(w)
    save_qtensors(tmp_path / "q.safetensors", {"q": qt})
    back = load_qtensors(tmp_path / "q.safetensors")["q"]
    assert back.fmt == qt.fmt and torch.equal(back.dequantize(), qt.dequantize())


# --------------------------------------------------------------------------- packing


@settings(max_examples=60, deadline=None)
@given(data=st.lists(st.integers(0, 2), max_size=200))
def test_trit_packing_round_trip(data):
    c = torch.tensor(data, dtype=torch.uint8)
    packed = pack_trits(c)
    assert packed.numel() == packed_trits_nbytes(len(data)) == math.ceil(len(data) / 5)
    assert torch.equal(unpack_trits(packed, len(data)), c)


@settings(max_examples=40, deadline=None)
@given(token=st.sampled_from(NEW_FORMATS), seed=st.integers(0, 2**16), n=st.integers(0, 300))
def test_codes_pack_at_their_storage_bits(token, seed, n):
    fmt = format_from_spec(token)
    c = torch.randint(0, fmt.levels.numel(), (n,), generator=torch.Generator().manual_seed(seed)).to(torch.uint8)
    assert torch.equal(unpack(pack(c, fmt.bits), fmt.bits, n), c)


def test_trit_layout_and_bad_input():
    assert pack_trits(torch.tensor([2, 1, 0, 0, 1, 2])).tolist() == [2 + 3 + 81, 2]
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        pack_trits(torch.tensor([3]))
    with pytest.raises(ValueError, match="242"):
        unpack_trits(torch.tensor([250], dtype=torch.uint8), 5)
    qt = quantizer("ternary").encode(_gauss(10, 100))
    assert bits_per_param(qt, trits=True) == pytest.approx(1.6 + 32 / 1000)
    assert bits_per_param(qt) == pytest.approx(2 + 32 / 1000)
    with pytest.raises(ValueError, match="at most 3 levels"):
        bits_per_param(quantizer("nf4").encode(_gauss(64)), trits=True)
