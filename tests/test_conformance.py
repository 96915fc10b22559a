"""The conformance suite (lowbit.testing), generated from the registries: one test item per case and check.

- every registered format (``format_examples``) x every format check;
- every registered range (``range_examples``) x formats x granularities (tensor, channel, group):
  each range with a fixed panel of formats at every granularity, and every format with one
  range and granularity in rotation, so every format and every range appears;
- every quantizer class the factory builds (uniform, codebook, centred, DoReFa, LSQ) over every
  format, every range, clipped and stochastic variants, plus PACT, ActQuant (calibrated and
  learned), StateQuantizer and state_quantizer, each x every quantizer check;
- hypothesis varies the data for every format and for one case of every quantizer class.

Bad input is handled on purpose: ``encode`` refuses NaN (``quantize``, the hot path, does not check);
an empty x raises ValueError wherever a scale would be fitted to it or codes written, and gives an
empty output from a frozen scale.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from lowbit.formats import STATE_KINDS, format_examples, format_from_spec, state_levels
from lowbit.nn import PACT, ActQuant
from lowbit.quantizers import StateQuantizer, build_quantizer, parse_spec, state_quantizer
from lowbit.testing import format_checks, quantizer_checks, range_checks, range_examples

FORMATS = format_examples()
RANGES = range_examples()
GRANS = ("tensor", "channel", "group16")
FORMAT_CHECKS = [name for name, _ in format_checks(format_from_spec("int4"))]
RANGE_CHECKS = [name for name, _ in range_checks("int4")]
QUANTIZER_CHECKS = [name for name, _ in quantizer_checks(build_quantizer("int4"))]



def _data(seed: int = 0, scale: float = 0.5) -> torch.Tensor:
    return torch.randn(8, 64, generator=torch.Generator().manual_seed(seed)) * scale


# --------------------------------------------------------------------------- formats


def _format_params() -> list:
    return [pytest.param(token, check, id=f"{token}-{check}") for token in FORMATS for check in FORMAT_CHECKS]


def _run(checks, name: str, x) -> None:  # type: ignore[no-untyped-def]
    dict(checks)[name](x)


@pytest.mark.parametrize("token, check", _format_params())
def test_format(token, check):
    _run(format_checks(format_from_spec(token)), check, None)


@pytest.mark.parametrize("token", FORMATS)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=200))
def test_format_on_random_values(token, data):
    for name, check in format_checks(format_from_spec(token)):
        if name != "nan":  # the NaN check takes no data
            check(torch.tensor(data))


def test_every_registered_format_and_range_is_in_the_suite():
    assert len(FORMATS) >= 80 and {"int4", "uint8", "nf4", "fp4", "dorefa4", "state_thr4", "shared"} <= set(FORMATS)
    assert set(RANGES) >= {"minmax", "p99", "mse", "octav", "prop", "absmean", "fixed", "mx", "lsq", "state"}
    # every registered range contributes an example (a range whose help names none would be missed)
    from lowbit.ranges import range_names

    for h in range_names():
        assert any(h.startswith(r) or f" {r}" in h or f"e.g. {r}" in h for r in RANGES), f"range {h!r} has no example"


# --------------------------------------------------------------------------- ranges

RANGE_PANEL = ("int4", "uint4", "nf4", "fp8_e4m3", "uapot3", "state_thr4")  # signed, affine, codebooks, one-sided


def _range_specs() -> list[str]:
    specs = [f"{f}:{g}:{r}" for r in RANGES for f in RANGE_PANEL for g in GRANS]
    for i, f in enumerate(FORMATS):  # every format with one range and granularity, in rotation
        specs.append(f"{f}:{GRANS[i % len(GRANS)]}:{RANGES[i % len(RANGES)]}")
    return list(dict.fromkeys(specs))


RANGE_SPECS = _range_specs()


@pytest.mark.parametrize("spec, check", [pytest.param(s, c, id=f"{s}-{c}") for s in RANGE_SPECS for c in RANGE_CHECKS])
def test_range(spec, check):
    _run(range_checks(spec), check, _data())


def test_the_range_cases_cover_every_format_range_and_granularity():
    parsed = [parse_spec(s) for s in RANGE_SPECS]
    assert {p.format for p in parsed} == set(FORMATS)
    assert {p.range for p in parsed} == set(RANGES)
    assert {p.granularity for p in parsed} == set(GRANS)


# --------------------------------------------------------------------------- quantizers


def _quantizer_cases() -> dict[str, nn.Module]:
    cases: dict[str, nn.Module] = {}

    def add(q: nn.Module, detail: str) -> None:
        cases[f"{type(q).__name__}-{detail}"] = q

    for i, f in enumerate(FORMATS):  # every format through the factory, granularity in rotation
        spec = f"{f}:{GRANS[i % len(GRANS)]}"
        add(build_quantizer(spec), spec)
    for r in RANGES:  # every range through the factory
        add(build_quantizer(f"int4:channel:{r}"), f"int4:channel:{r}")
    for i, f in enumerate(("int2", "int4", "uint4", "int8", "fp4", "ternary")):  # LSQ at every granularity
        spec = f"{f}:{GRANS[i % len(GRANS)]}:lsq"
        add(build_quantizer(spec), spec)
    for spec in ("int4:channel:clipped", "uint3:group16:clipped", "int4:stochastic", "nf4:group16:stochastic"):
        add(build_quantizer(spec), spec)
    for bits in (2, 4, 8):
        add(PACT(bits, alpha_init=1.5), f"uint{bits}:pact")
    for spec in ("uint8", "int8:channel", "uint4:p99", "int8:lsq"):
        add(ActQuant(build_quantizer(spec)), spec)
    for kind in STATE_KINDS:
        for bits in (2, 4):
            add(StateQuantizer(state_levels(kind, bits)), f"state_{kind}{bits}")
        add(state_quantizer(kind, 4), f"state_quantizer_{kind}4")
    return cases


QUANTIZERS = _quantizer_cases()


def _quantizer_params() -> list:
    return [pytest.param(case, check, id=f"{case}-{check}") for case in QUANTIZERS for check in QUANTIZER_CHECKS]


@pytest.mark.parametrize("case, check", _quantizer_params())
def test_quantizer(case, check):
    _run(quantizer_checks(QUANTIZERS[case]), check, _data())


def test_every_quantizer_class_is_in_the_suite():
    names = {type(q).__name__ for q in QUANTIZERS.values()}
    assert names >= {"Quantizer", "LSQQuantizer", "DoReFaQuantizer", "CenteredQuantizer", "PACT", "ActQuant", "StateQuantizer"}
    fmts = {type(q.fmt).__name__ for q in QUANTIZERS.values() if type(q).__name__ == "Quantizer"}
    assert {"Uniform", "Codebook", "LearnedCodebook"} <= fmts  # uniform and codebook quantizers
    assert any(isinstance(q, ActQuant) and q.learned for q in QUANTIZERS.values())


# one case of every class under hypothesis-varied data (scale over six decades, any seed)
HYPO_CASES = sorted({type(q).__name__ + ("-learned" if isinstance(q, ActQuant) and q.learned else ""): c
                     for c, q in QUANTIZERS.items()}.values())  # fmt: skip


@pytest.mark.parametrize("case", HYPO_CASES)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**16))
def test_quantizer_on_random_data(case, scale, seed):
    q = QUANTIZERS[case]
    for _, check in quantizer_checks(q):
        check(_data(seed, scale))


def test_suite_catches_a_broken_quantizer():
    """The checks are only as good as what they reject: a quantizer that skips rounding fails on_grid."""

    class Broken(type(build_quantizer("int4"))):  # type: ignore[misc]
        def forward(self, x):  # type: ignore[no-untyped-def]
            return x * 1.0

    checks = dict(quantizer_checks(Broken("int4")))
    with pytest.raises(AssertionError, match="grid"):
        checks["on_grid"](_data())
    with pytest.raises(AssertionError, match="encode"):
        checks["encode_dequantize"](_data())
