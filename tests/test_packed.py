"""Converted layers hold packed weights (no float copy), stay bit-equal to fake quant, and the opt-in kernels keep their bound."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lowbit
from lowbit.nn import kernels
from lowbit.nn.layers import QuantLinear

SPECS = ["w8", "w4:group128", "w4:nf4:group64", "w3", "w2:group64"]


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 64))


@pytest.mark.parametrize("spec", SPECS)
def test_converted_layer_holds_packed_codes_only_and_equals_fake_quant(spec: str) -> None:
    q = lowbit.quantize(_mlp(), spec)
    c = lowbit.convert(q)
    x = torch.randn(5, 256)
    assert torch.equal(c(x), q(x))
    sd = c.state_dict()
    assert "0.weight" not in sd and "0.qweight_codes" in sd
    assert not any(v.is_floating_point() and v.numel() >= 64 * 128 for v in sd.values())  # no float weight anywhere
    bits = c[0].qweight.bits
    for i, (n, k) in ((0, (128, 256)), (2, (64, 128))):
        qt = c[i].qweight
        expect = math.ceil(n * k * bits / 8) + qt.scale.numel() * 4
        held = sum(v.numel() * v.element_size() for key, v in sd.items() if key.startswith(f"{i}.qweight_"))
        assert held == expect
        assert torch.equal(c[i].weight, qt.dequantize())  # the weight still reads as the decoded codes


def test_saved_file_is_packed_size_and_loads_equal(tmp_path) -> None:
    torch.manual_seed(1)
    f = nn.Sequential(nn.Linear(1024, 1024, bias=False))
    c = lowbit.convert(lowbit.quantize(f, "w4:group128"))
    p = tmp_path / "m.lowbit"
    lowbit.save(c, p)
    packed = 1024 * 1024 // 2 + (1024 * 1024 // 128) * 4
    assert packed <= p.stat().st_size <= packed * 1.01
    back = lowbit.load(p, model=f)
    x = torch.randn(3, 1024)
    assert torch.equal(back(x), c(x))
    assert "0.weight" not in back.state_dict()
    fast = lowbit.load(p, model=f, kernels="auto")
    assert fast[0].kernel is not None and fast[0].kernel.name == "int4"
    assert torch.equal(fast[0].qweight.data, c[0].qweight.data)


def test_old_file_with_float_weight_beside_codes_loads(tmp_path) -> None:
    # files from before packed layers: the converted layer's float weight sat in the file
    # next to its QTensor; the codes are the truth
    f = _mlp()
    c = lowbit.convert(lowbit.quantize(f, "w4:group64"))
    meta = lowbit.info.info_of(c).to_metadata()
    tensors = {k: v.clone() for k, v in c.state_dict().items() if "qweight_" not in k}
    tensors["0.weight"] = c[0].qweight
    tensors["2.weight"] = c[2].qweight
    p = tmp_path / "old.lowbit"
    lowbit.save_qtensors(p, tensors, meta)
    back = lowbit.load(p, model=f)
    x = torch.randn(4, 256)
    assert torch.equal(back(x), c(x))


def test_kernels_argument_is_checked() -> None:
    q = lowbit.quantize(_mlp(), "w8")
    with pytest.raises(ValueError, match="kernels must be one of"):
        lowbit.convert(q, kernels="fast")


@torch.no_grad()
def _bound_ratio(layer: QuantLinear, dtype: torch.dtype) -> float:
    """max_i |y_i - r_i| / ((2 + 2 sqrt(K)) eps a_i): at most 1 by the bound stated in lowbit.nn.kernels."""
    k = layer.in_features
    x = torch.randn(7, k).to(dtype)
    y = layer.kernel.run(layer, x, layer.bias).double()
    w = layer.qweight.dequantize().double()
    r = x.double() @ w.T + layer.bias.double()
    a = x.double().abs() @ w.abs().T
    return float(((y - r).abs() / ((2 + 2 * math.sqrt(k)) * torch.finfo(dtype).eps * a)).max())


@pytest.mark.parametrize("spec,kind", [("w8", "int8"), ("w4:group128", "int4"), ("uint4:group64", "int4")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_within_stated_bound_and_codes_round_trip(spec: str, kind: str, dtype: torch.dtype) -> None:
    torch.manual_seed(2)
    f = nn.Sequential(nn.Linear(512, 256))
    q = lowbit.quantize(f, spec)
    exact, auto = lowbit.convert(q), lowbit.convert(q, kernels="auto")
    layer = auto[0]
    assert layer.kernel is not None and layer.kernel.name == kind
    assert f"qweight_{'int8' if kind == 'int8' else 'int4pack'}" in layer.state_dict()
    assert "qweight_codes" not in layer.state_dict()  # one copy of the weight: the kernel's layout
    assert torch.equal(layer.qweight.data, exact[0].qweight.data)  # codes read back exactly from that layout
    assert _bound_ratio(layer, dtype) <= 1.0


@pytest.mark.parametrize("spec", ["w4:group128", "uint4:group64"])
@torch.no_grad()
def test_int4_scales_kept_in_half_precision_models_only_and_follow_the_scale(spec: str) -> None:
    torch.manual_seed(3)
    q = lowbit.quantize(nn.Sequential(nn.Linear(256, 64)), spec)
    auto = lowbit.convert(q, kernels="auto")
    layer, x = auto[0], torch.randn(2, 256)
    kern = layer.kernel
    assert kern.name == "int4"
    run = lambda xx: kern.run(layer, xx, layer.bias)  # noqa: E731  the kernel path itself, whatever the table picks here
    run(x)
    assert "qweight_int4_sz" not in layer._buffers  # float32: built per call, the model stays 7.5x smaller
    fp32_bytes = sum(b.numel() * b.element_size() for b in layer._buffers.values())
    auto.to(torch.bfloat16)
    y = run(x.bfloat16())
    sz = layer._buffers["qweight_int4_sz"]
    assert torch.equal(sz, kern._scales_and_zeros(layer, torch.bfloat16))
    assert "qweight_int4_sz" not in layer.state_dict()  # a cache: files and state dicts keep the packed form
    half_bytes = sum(b.numel() * b.element_size() for b in layer._buffers.values())
    groups = layer._buffers["qweight_scale"].numel()
    assert half_bytes == fp32_bytes + 2 * groups  # the 2-byte half scale + 4 bytes a group of cache vs float32's 4
    assert torch.equal(run(x.bfloat16()), y) and layer._buffers["qweight_int4_sz"] is sz  # reused, not rebuilt
    # a changed scale (loading another state dict) rebuilds it: the output follows the new scale
    old = sz[..., 0].clone()
    sd = auto.state_dict()
    sd["0.qweight_scale"] = sd["0.qweight_scale"] * 2
    auto.load_state_dict(sd)
    y2 = run(x.bfloat16())
    assert torch.equal(layer._buffers["qweight_int4_sz"][..., 0], old * 2)
    assert torch.allclose(y2.float() - layer.bias.float(), 2 * (y.float() - layer.bias.float()), rtol=1e-2, atol=1e-2)
    auto.float()
    auto(x)  # through the measured table: whichever path it takes, the stale cache goes
    assert "qweight_int4_sz" not in layer._buffers


def test_auto_falls_back_to_exact_where_no_kernel_fits() -> None:
    q = lowbit.quantize(_mlp(), "w4:nf4:group64")
    a = lowbit.convert(q, kernels="auto")
    x = torch.randn(3, 256)
    assert all(m.kernel is None for m in a.modules() if isinstance(m, QuantLinear))
    assert torch.equal(a(x), q(x))


def test_choice_is_measured_once_and_cached() -> None:
    q = lowbit.quantize(nn.Sequential(nn.Linear(256, 96)), "w8")
    a = lowbit.convert(q, kernels="auto")
    a(torch.randn(1, 256))
    key = ("int8", 96, 256, "float32", "1")
    table = kernels.measured_table()
    assert table[key] in ("int8", "int8@bf16", "decode")
    other = "decode" if table[key] != "decode" else "int8"
    kernels._TABLE[key] = other  # a cached entry is used as is, never re-measured
    assert kernels.path_for(a[0].kernel, 96, 256, torch.float32, 1, a[0]) == other
    assert kernels.choice(a[0].kernel, 96, 256, torch.float32, 1, a[0]) is (other != "decode")
    kernels._TABLE[key] = table[key]


def test_inspect_reports_format_bits_bytes_and_kernel(capsys) -> None:
    a = lowbit.convert(lowbit.quantize(_mlp(), "w4:group64"), kernels="auto")
    rows = lowbit.inspect(a)
    assert [r.name for r in rows] == ["0", "2"]
    assert rows[0].format == "int4" and rows[0].bits == 4
    assert rows[0].nbytes == 128 * 256 // 2 + 128 * 256 // 64 * 4
    assert rows[0].kernel_bf16 in ("int4", "decode")
    assert "int4" in capsys.readouterr().out
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        lowbit.inspect("model")  # type: ignore[arg-type]


# ------------------------------------------------------------------ the decode: one look-up pass from the packed bytes

def _decode_as_before(qt: lowbit.QTensor) -> torch.Tensor:
    # the decode before unpack_lookup: unpack to codes, fmt.decode, subtract, scale
    v = qt.fmt.decode(qt.codes())
    if qt.zero_point is not None:
        v = v - qt.zero_point.float()[:, None]
    return qt.granularity.from_rows(v * qt.scale[:, None], qt.shape)


@pytest.mark.parametrize("chunk", [24, 1 << 15])  # 24: many ragged chunks, each code path's seams
def test_dequantize_equals_the_previous_decode_for_every_format(chunk: int, monkeypatch) -> None:
    from lowbit.formats import Uniform, format_examples, format_from_spec
    from lowbit.packing import unpack_lookup  # noqa: F401  (the path under test)
    from lowbit.ranges import Granularity

    monkeypatch.setattr(lowbit.packing, "_CHUNK", chunk)
    g = torch.Generator().manual_seed(3)
    cases = [((24, 40), "tensor"), ((24, 40), "channel0"), ((24, 40), "channel1"), ((24, 40), "group8"), ((7, 9), "channel0")]
    for token in format_examples():
        fmt = format_from_spec(token)
        n_codes = fmt.qmax - fmt.qmin + 1 if isinstance(fmt, Uniform) else fmt.levels.numel()
        for shape, gran in cases:
            gr, shape = Granularity.from_spec(gran), torch.Size(shape)
            ns = gr.n_slices(shape)
            codes = torch.randint(0, n_codes, (shape.numel(),), generator=g)
            scale = torch.rand(ns, generator=g) + 0.01
            zps = [None, torch.randint(-3, 4, (ns,), generator=g)] if isinstance(fmt, Uniform) else [None]
            for zp in zps:
                qt = lowbit.QTensor.from_codes(codes, scale, zp, fmt, gr, shape)
                new, old = qt.dequantize(), _decode_as_before(qt)
                assert new.dtype == old.dtype == torch.float32 and new.shape == shape
                assert torch.equal(new, old), (token, gran, zp is not None)


def test_unpack_lookup_equals_table_at_unpacked_codes_and_checks_its_input() -> None:
    from lowbit.packing import pack, unpack, unpack_lookup

    g = torch.Generator().manual_seed(4)
    table = torch.randn(256, generator=g)
    for bits in range(1, 9):
        for n in (0, 1, 7, 8, 9, 1001):
            data = pack(torch.randint(0, 2**bits, (n,), generator=g), bits)
            want = table[: 2**bits][unpack(data, bits, n).long()]
            assert torch.equal(unpack_lookup(data, bits, n, table), want)
    i16 = torch.arange(16, dtype=torch.int16) * 7  # an integer table: 2-byte entries, other word widths
    data = pack(torch.arange(16), 4)
    assert torch.equal(unpack_lookup(data, 4, 16, i16), i16)
    with pytest.raises(ValueError, match="bits must be at most 8"):
        unpack_lookup(data, 9, 16, table)
    with pytest.raises(ValueError, match="table must be a 1-D tensor with at least 16"):
        unpack_lookup(data, 4, 16, table[:8])
    with pytest.raises(ValueError, match="packed data holds 8 bytes"):
        unpack_lookup(data, 4, 17, table)
