"""One spec, one meaning: parsed once into a QuantSpec, one factory, 'did you mean', the core's layering."""
import ast
import math
import pathlib
import warnings

import pytest
import torch
from torch import nn

import lowbit
import lowbit.quantizers.spec as spec_mod
from lowbit import formats
from lowbit.config import QuantConfig
from lowbit.nn.handlers import act_quantizer, weight_quantizer
from lowbit.quantizers import LSQQuantizer, Quantizer, build_quantizer, parse_spec

SRC = pathlib.Path(lowbit.__file__).parent


def test_lsq_means_the_same_in_the_core_and_in_qat_layers():
    w = torch.randn(8, 16)
    core = lowbit.quantizer("int4:channel:lsq")
    layer = weight_quantizer("int4:channel:lsq", w)
    assert type(core) is type(layer) is LSQQuantizer and core.spec == layer.spec == "int4:channel:lsq"
    # without init data it starts from the first batch, as the layer starts from its weight
    assert torch.equal(core(w), layer(w))
    assert isinstance(act_quantizer("uint8:lsq").q, LSQQuantizer)
    assert type(lowbit.quantizer("int4:channel:mse")) is Quantizer
    assert type(lowbit.quantizer("dorefa2")).__name__ == "DoReFaQuantizer"
    assert type(lowbit.quantizer("binary")).__name__ == "CenteredQuantizer"


def test_lsq_with_pow2_or_a_gradient_token_is_refused_at_parse():
    for bad in ("int4:lsq:pow2", "int4:lsq:clipped"):
        with pytest.raises(ValueError, match="'lsq' learns its step size"):
            parse_spec(bad)


def test_quant_spec_carries_format_and_builds_fresh_instances():
    p = parse_spec("shared")
    assert p.bits == p.fmt.bits and p.learned is False and parse_spec("int4:lsq.mse").learned is True
    a, b = p.build_format(), p.build_format()
    assert a is not b and a is not p.fmt  # a learned codebook's levels change: never shared by accident
    assert build_quantizer(p).spec == build_quantizer("shared").spec == "shared:fixed"


def test_a_config_is_parsed_once_and_keeps_typed_specs(monkeypatch):
    calls, builds = [], []
    real_parse, real_build = spec_mod._parse, spec_mod.format_from_spec
    monkeypatch.setattr(spec_mod, "_parse", lambda s: calls.append(s) or real_parse(s))
    monkeypatch.setattr(spec_mod, "format_from_spec", lambda t: builds.append(t) or real_build(t))
    spec_mod._CACHE.clear()
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    cfg = QuantConfig.parse("w3:lsq")
    assert cfg.weight_qspec("0", model[0]) == parse_spec("int3:channel:lsq")
    lowbit.prepare_qat(model, cfg)
    assert calls == ["int3:channel:lsq"]  # once, however many layers
    assert len(builds) == 1 + 3  # once at parse, once per quantizer


@pytest.mark.parametrize(
    "spec, message",
    [
        ("int4:chanel", "unknown token 'chanel' in spec 'int4:chanel'; did you mean 'channel'?"),
        ("int4:grup64", "unknown token 'grup64' in spec 'int4:grup64'; did you mean 'group64'?"),
        ("int4:msee", "unknown token 'msee' in spec 'int4:msee'; did you mean 'mse'?"),
        ("int4:stochastik", "unknown token 'stochastik' in spec 'int4:stochastik'; did you mean 'stochastic'?"),
        ("nf5", "unknown format 'nf5'; did you mean 'nf4'?"),
        ("unit4:channel", "unknown format 'unit4' in spec 'unit4:channel'; did you mean 'uint4'?"),
    ],
)
def test_typos_get_did_you_mean(spec, message):
    with pytest.raises(ValueError) as e:
        lowbit.quantizer(spec)
    assert str(e.value) == message


def test_no_close_match_lists_the_kinds_briefly():
    with pytest.raises(ValueError) as e:
        parse_spec("int4:bogus")
    msg = str(e.value)
    assert "did you mean" not in msg and "ranges: minmax" in msg and "nf4" not in msg and len(msg) < 400
    with pytest.raises(ValueError) as e:
        parse_spec("zzz9")
    assert "valid formats: int<b>" in str(e.value) and len(str(e.value)) < 400


def test_pair_operands_are_marked_by_the_format():
    assert formats.format_from_spec("sym17").pair_q == 8 and formats.format_from_spec("sym255").pair_q == 127
    assert formats.format_from_spec("nf4").pair_q is None and formats.format_from_spec("ternary").pair_q is None
    from lowbit.targets.mcu.pairs import pair46

    p = pair46(17)
    assert (p.x_format.pair_q, p.w_format.pair_q) == (15, 8)


def test_codebooks_names_still_import_and_warn_with_their_new_home():
    import lowbit.codebooks as cb

    with pytest.warns(DeprecationWarning, match="lowbit.formats.nf4_levels"):
        f = cb.nf4_levels
    assert f is formats.nf4_levels
    with pytest.warns(DeprecationWarning, match="lowbit.targets.mcu.pairs.lut_dot"):
        from lowbit.codebooks import lut_dot  # noqa: F401
    with pytest.raises(AttributeError):
        cb.no_such_name  # noqa: B018
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in lowbit.__all__:
            assert getattr(lowbit, name) is not None  # every public name, without a warning
        assert lowbit.pair46(3).nx == 255 and lowbit.FourSixPair(31, 17).bits > 4.5


def _imports(path: pathlib.Path) -> set[str]:
    """Absolute names of the lowbit modules a file imports (relative imports resolved)."""
    pkg = ".".join(("lowbit",) + path.relative_to(SRC).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1] if node.level else []
            out.add(".".join(base + ([node.module] if node.module else [])))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("lowbit")}


@pytest.mark.parametrize(
    "package, allowed",
    [
        ("formats", ("lowbit.formats", "lowbit.suggest")),
        ("ranges", ("lowbit.formats", "lowbit.ranges")),
        # suggest and signatures are leaf plumbing (tests/test_layering.py holds that they import nothing of lowbit)
        ("quantizers", ("lowbit.formats", "lowbit.ranges", "lowbit.quantizers", "lowbit.qtensor", "lowbit.suggest",
                        "lowbit.signatures")),
    ],
)
def test_the_core_imports_nothing_above_it(package, allowed):
    for f in sorted((SRC / package).glob("*.py")):
        bad = {m for m in _imports(f) if not m.startswith(allowed)}
        assert not bad, f"{f.name} imports {bad}"


# --------------------------------------------------------------------------- one state quantizer


@pytest.mark.parametrize("token", [t for t in formats.format_examples() if not t.startswith(("int", "uint", "fxp", "4bit", "8bit"))])
def test_every_codebook_rounds_through_its_exact_table_as_bucketize_does(token):
    fmt = formats.format_from_spec(token)
    lv, mids = fmt.levels, fmt._mid
    span = float(lv[-1] - lv[0])
    x = torch.cat([torch.linspace(float(lv[0]) - span, float(lv[-1]) + span, 20001), mids,
                   torch.nextafter(mids, torch.tensor(math.inf)), torch.nextafter(mids, torch.tensor(-math.inf)), lv])  # fmt: skip
    ref = lv[torch.bucketize(x, mids)]
    # a table where a small one resolves the levels (pot7/pot8 span 2^-62..1: bucketize)
    assert (fmt.table() is not None) == (token not in ("pot7", "pot8"))
    assert torch.equal(fmt.quantize(x), ref)
    assert torch.equal(fmt.quantize(x.double()).float(), ref)  # other dtypes: bucketize, same answer
    assert torch.equal(fmt.quantize(x[::2].reshape(-1, 1).t()), ref[::2].reshape(1, -1))  # strided views too


def test_a_nan_rounds_to_a_level_instead_of_crashing():
    fmt = formats.format_from_spec("nf4")
    out = fmt.quantize(torch.tensor([math.nan, math.inf, -math.inf, 0.3]))
    assert bool(torch.isin(out, fmt.levels).all()) and out[1] == 1.0 and out[2] == -1.0


def test_snn_and_core_state_quantizers_are_one_implementation():
    from lowbit.snn import StateQuantizer, state_quantizer

    core = lowbit.state_quantizer("thr", 4, 1.0, 0.1, 0.3)
    snn = state_quantizer("thr", 4, 1.0, 0.1, 0.3)
    assert isinstance(snn, StateQuantizer) and type(snn.fmt) is type(core.fmt) is formats.Codebook
    assert torch.equal(snn.levels, core.fmt.levels) and snn.fmt.spec == core.fmt.spec
    x = torch.randn(5000) * 1.5
    assert torch.equal(snn(x), core(x)) and snn._table is core.fmt.table()  # one table per level set


def test_state_range_is_a_registered_range():
    from lowbit.ranges import StateRange, calibrate_state_range

    mem = torch.cat([torch.linspace(-0.4, 1.3, 1000)])
    q = lowbit.quantizer("state_uniform4:state")
    assert isinstance(q.range, StateRange) and q.spec == "state_uniform4:state"
    lower, upper = calibrate_state_range(mem, 1.0)
    lo, hi = q.range(mem.reshape(1, -1), q.fmt)
    assert float(lo) == pytest.approx(-(1 + lower)) and float(hi) == pytest.approx(1 + upper)
    assert float(q.fit(mem).scale) == pytest.approx(max(float(hi) / q.fmt.hi, float(lo) / q.fmt.lo))
