"""Formats: the shared conformance suite over every registered format, and the Codebook contract."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit
from lowbit.formats import Codebook, Uniform, format_examples, format_from_spec
from lowbit.testing import check_format

FORMATS = format_examples()


# Every registered format x every check: tests/test_conformance.py (generated from the registry).


@pytest.mark.parametrize("token", FORMATS)
@settings(max_examples=25, deadline=None)
@given(data=st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=300))
def test_conformance_on_random_values(token, data):
    check_format(format_from_spec(token), torch.tensor(data))


@settings(max_examples=50, deadline=None)
@given(levels=st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=2, max_size=40, unique=True))
def test_any_codebook_conforms(levels):
    lv = sorted(set(levels))
    if len(lv) < 2:
        return
    check_format(Codebook(lv))


@pytest.mark.parametrize("token", FORMATS)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_quantize_clamped_matches_quantize_on_clamped_values(token, rounding):
    fmt = format_from_spec(token)
    x = torch.randn(500, generator=torch.Generator().manual_seed(0)) * 2 * max(abs(fmt.lo), abs(fmt.hi))
    c = torch.clamp(x, fmt.lo, fmt.hi)
    kept = c.clone()
    got = fmt.quantize_clamped(c, rounding, torch.Generator().manual_seed(1))
    assert torch.equal(got, fmt.quantize(c, rounding, torch.Generator().manual_seed(1)))
    assert torch.equal(c, kept) and got.data_ptr() != c.data_ptr()  # a new tensor; the input stays


def test_uniform_levels_and_bits():
    assert Uniform(4).levels.tolist() == list(range(-8, 8))
    assert Uniform(4, narrow=True).levels.tolist() == list(range(-7, 8))
    assert Uniform(3, signed=False).levels.tolist() == list(range(8))
    assert Uniform(8).bits == 8 and Uniform(16).qmin == -32768


def test_uniform_rounds_half_to_even():
    q = Uniform(8).quantize(torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5]))
    assert q.tolist() == [0.0, 2.0, 2.0, -0.0, -2.0]


def test_codebook_ties_go_to_the_lower_level():
    cb = Codebook([-1.0, 0.0, 2.0])
    assert cb.quantize(torch.tensor([-0.5, 1.0, 1.0001])).tolist() == [-1.0, 0.0, 2.0]


def test_codebook_storage_bits():
    assert Codebook([0.0, 1.0]).bits == 1
    assert Codebook([0.0, 1.0, 2.0]).bits == 2
    assert Codebook(torch.arange(16.0)).bits == 4
    assert Codebook(torch.arange(17.0)).bits == 5


def test_stochastic_rounding_is_unbiased_and_seeded():
    x = torch.full((200_000,), 0.3)
    g = torch.Generator().manual_seed(0)
    for fmt in (Uniform(4), Codebook([-1.0, 0.0, 1.0])):
        q = fmt.quantize(x, "stochastic", g)
        assert set(q.unique().tolist()) <= {0.0, 1.0}
        assert abs(q.mean().item() - 0.3) < 0.005
    a = Uniform(4).quantize(x[:100], "stochastic", torch.Generator().manual_seed(1))
    b = Uniform(4).quantize(x[:100], "stochastic", torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


@pytest.mark.parametrize("bits", [0, 17, -1, 2.5, True])
def test_bad_bits_name_the_argument(bits):
    with pytest.raises((ValueError, TypeError), match="bits"):
        Uniform(bits)


@pytest.mark.parametrize(
    "levels, match",
    [([1.0], "at least 2"), ([1.0, 0.0], "increasing"), ([0.0, 0.0, 1.0], "increasing"), ([0.0, float("nan")], "finite")],
)
def test_bad_codebooks(levels, match):
    with pytest.raises(ValueError, match=match):
        Codebook(levels)


def test_unknown_format_lists_valid_ones():
    with pytest.raises(ValueError, match="valid formats: .*int<b>"):
        format_from_spec("int99x")
    with pytest.raises(ValueError, match="bits must be in 1..16"):
        format_from_spec("int0")


def test_public_names():
    assert lowbit.Uniform is Uniform and lowbit.Codebook is Codebook
