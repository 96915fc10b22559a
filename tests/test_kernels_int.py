"""The integer path (w8,a8 by torch._int_mm) is exact in integers; every kernel path keeps its bound; models agree end to end."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import lowbit
from lowbit.nn import kernels
from lowbit.nn.layers import QuantLinear


def _w8a8(k: int, n: int, spec: str = "w8,a8", seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    f = nn.Sequential(nn.Linear(k, n))
    q = lowbit.quantize(f, spec, calib=[torch.randn(64, k) * 2 + 0.5])
    return q, lowbit.convert(q, kernels="auto")


def _int_reference(q: nn.Module, x: torch.Tensor) -> np.ndarray:
    """lowbit's integer reference: (activation level - zero point) @ (weight level).T in NumPy int64."""
    layer = q[0]
    at = layer.input_quant.q.encode(x.reshape(-1, x.shape[-1]))
    act = at.codes().reshape(at.shape).numpy().astype(np.int64) + at.fmt.qmin
    if at.zero_point is not None:
        act = act - int(at.zero_point.reshape(-1)[0])
    wt = layer.weight_quant.encode(layer.weight.detach())
    w = wt.codes().reshape(wt.shape).numpy().astype(np.int64) + wt.fmt.qmin
    return act @ w.T


@pytest.mark.parametrize("k,n,rows", [(256, 96, 40), (60, 36, 1), (128, 64, 17), (64, 40, 3)])
@pytest.mark.parametrize("spec", ["w8,a8", "w8,a8:int8"])
def test_int_mm_accumulator_equals_the_integer_reference_bit_for_bit(k: int, n: int, rows: int, spec: str) -> None:
    q, c = _w8a8(k, n, spec)
    layer = c[0]
    assert isinstance(layer.kernel, kernels.Int8x8Kernel)
    x = torch.randn(rows, k) * 3  # beyond the calibrated range too: clipped codes are codes
    acc = layer.kernel.accumulate(layer, layer.input_quant(x))
    assert acc.dtype == torch.int32
    ref = _int_reference(q, x)
    assert np.array_equal(acc.numpy().astype(np.int64), ref)
    assert np.abs(ref).max() > 1000  # a real accumulation, not zeros


def test_integer_fallback_where_int_mm_does_not_fit_is_equal(monkeypatch) -> None:
    q, c = _w8a8(64, 40)
    x = torch.randn(5, 64)
    want = c[0].kernel.accumulate(c[0], c[0].input_quant(x))
    monkeypatch.setattr(kernels, "_int_mm_ok", lambda *a: False)
    assert torch.equal(c[0].kernel.accumulate(c[0], c[0].input_quant(x)), want)
    assert torch.equal(want.long(), torch.from_numpy(_int_reference(q, x)))


def test_int_mm_is_used_only_where_a_probe_finds_it_exact() -> None:
    # torch 2.13's CPU _int_mm is wrong without AVX-512 VNNI (ONEDNN_MAX_CPU_ISA=AVX2/SSE41): the probe must see it
    g = torch.Generator().manual_seed(1)
    a = torch.randint(-128, 128, (40, 256), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (256, 96), generator=g, dtype=torch.int8)
    exact_here = torch.equal(torch._int_mm(a, b).long(), a.long() @ b.long())
    assert kernels.int_mm_exact("cpu") == exact_here
    assert kernels._int_mm_ok(40, 256, 96, torch.device("cpu")) == exact_here


def test_int_mm_shape_rule(monkeypatch) -> None:
    monkeypatch.setattr(kernels, "int_mm_exact", lambda device="cpu": True)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert kernels._int_mm_ok(1, 60, 36, cpu)  # measured: the CPU op takes any shape
    assert kernels._int_mm_ok(1, 64, 32, cuda) and not kernels._int_mm_ok(32, 60, 32, cuda)
    assert not kernels._int_mm_ok(32, 64, 36, cuda)


@torch.no_grad()
def test_int_mm_float_output_within_two_eps_of_exact_and_the_kernel_bound_of_fake_quant() -> None:
    q, c = _w8a8(512, 128)
    layer = c[0]
    x = torch.randn(9, 512)
    y = layer.kernel.run(layer, layer.input_quant(x), layer.bias).double()
    xq = q[0].input_quant(x).double()
    w = q[0].weight_quant(q[0].weight).double()
    r = xq @ w.T + layer.bias.double()
    a = xq.abs() @ w.abs().T
    eps = torch.finfo(torch.float32).eps
    assert float(((y - r).abs() / (2 * eps * (a + layer.bias.double().abs()))).max()) <= 1.0
    fq = q(x).double()  # the fake-quantized layer: its own float32 sum, within the kernel bound of both
    assert float(((y - fq).abs() / ((2 + 2 * math.sqrt(512)) * eps * (a + layer.bias.double().abs()))).max()) <= 1.0


def test_int8x8_is_chosen_by_the_table_and_printed(capsys) -> None:
    _, c = _w8a8(256, 96, seed=3)
    c(torch.randn(1, 256))
    assert kernels.measured_table()[("int8x8", 96, 256, "float32", "1")] in ("int8x8", "decode")
    assert set(c[0].kernel.paths(torch.bfloat16)) == {"decode"}  # bf16 quantized inputs do not round back exactly
    rows = lowbit.inspect(c)
    assert rows[0].kernel_fp32 in ("int8x8", "decode") and rows[0].kernel_bf16 == "decode"
    assert rows[0].kernel_fp32 in capsys.readouterr().out


def test_int8x8_needs_a_per_tensor_8bit_input_quantizer() -> None:
    torch.manual_seed(0)
    q = lowbit.quantize(nn.Sequential(nn.Linear(64, 32)), "w8,a4", calib=[torch.randn(16, 64)])
    assert lowbit.convert(q, kernels="auto")[0].kernel.name == "int8"  # weight-only int8 instead
    q = lowbit.quantize(nn.Sequential(nn.Linear(64, 32)), "w8")
    assert lowbit.convert(q, kernels="auto")[0].kernel.name == "int8"


# ------------------------------------------------------------------ float32 activations: no layout round trip per call

@pytest.mark.parametrize("spec", ["w8", "w4:group128", "uint4:group64"])
def test_decode_rows_are_dequantize_bit_for_bit(spec: str) -> None:
    torch.manual_seed(5)
    c = lowbit.convert(lowbit.quantize(nn.Sequential(nn.Linear(256, 192)), spec), kernels="auto")
    layer, kern = c[0], c[0].kernel
    want = layer.qweight.dequantize()
    step = kern.block
    got = torch.cat([kern.decode_rows(layer, r, min(192, r + step), torch.empty(min(192, r + step) - r, 256))
                     for r in range(0, 192, step)])
    assert torch.equal(got, want)


def _ratio(y: torch.Tensor, layer: QuantLinear, x: torch.Tensor, eps: float, w: torch.Tensor) -> float:
    w = w.double()
    r = x.double() @ w.T + layer.bias.double()
    a = x.double().abs() @ w.abs().T + layer.bias.double().abs()
    return float(((y.double() - r).abs() / ((2 + 2 * math.sqrt(x.shape[-1])) * eps * a)).max())


@pytest.mark.parametrize("spec,kind", [("w8", "int8"), ("w4:group128", "int4"), ("uint4:group64", "int4")])
def test_every_path_keeps_its_bound_and_none_rebuilds_the_generic_codes(spec: str, kind: str, monkeypatch) -> None:
    torch.manual_seed(6)
    c = lowbit.convert(lowbit.quantize(nn.Sequential(nn.Linear(512, 256)), spec), kernels="auto")
    layer = c[0]
    assert layer.kernel.name == kind
    w = layer.qweight.dequantize()
    # no path may convert the kernel's layout back to the generic codes (the old per-call cost)
    monkeypatch.setattr(type(layer.kernel), "codes", lambda *a: pytest.fail("layout converted back per call"))
    x = torch.randn(7, 512)
    assert set(layer.kernel.paths(torch.float32)) == {kind, "decode"}  # bf16 for fp32 inputs only on request
    with pytest.raises(TypeError, match="allow must be a bool"):
        kernels.allow_bf16_activations(c, 1)  # type: ignore[arg-type]
    assert kernels.allow_bf16_activations(c) == 1
    paths = layer.kernel.paths(torch.float32)
    assert set(paths) == {kind, kind + "@bf16", "decode"}
    with torch.no_grad():
        assert _ratio(paths[kind](layer, x, layer.bias), layer, x, torch.finfo(torch.float32).eps, w) <= 1.0
        assert _ratio(paths[kind + "@bf16"](layer, x, layer.bias), layer, x, torch.finfo(torch.bfloat16).eps, w) <= 1.0
        assert _ratio(paths["decode"](layer, x, layer.bias), layer, x, torch.finfo(torch.float32).eps, w) <= 1.0
        xb = x.to(torch.bfloat16)
        assert _ratio(layer.kernel.paths(torch.bfloat16)["decode"](layer, xb, layer.bias), layer, xb.float(),
                      torch.finfo(torch.bfloat16).eps, w) <= 1.0
        layer.kernel(layer, x[:1], layer.bias)  # the table's measurement and the chosen path: no round trip either
    assert (kind + "+bf16", 256, 512, "float32", "1") in kernels.measured_table()  # its own table entry


# ------------------------------------------------------------------ end to end: same predictions as fake quant

@torch.no_grad()
def _agree(q: nn.Module, c: nn.Module, x: torch.Tensor) -> float:
    return float((q(x).argmax(-1) == c(x).argmax(-1)).float().mean())


def test_digits_mlp_w8a8_and_w4_predict_as_the_fake_quantized_model() -> None:
    pytest.importorskip("sklearn")
    from lowbit.data.images import load_digits
    from lowbit.models import build_model

    d = load_digits()
    xtr, ytr = d.train.tensors
    xte, _ = d.test.tensors
    torch.manual_seed(0)
    m = build_model("mlp", input_shape=(1, 8, 8), num_classes=10)
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(m(xtr), ytr).backward()
        opt.step()
    m.eval()
    for spec, names in (("w8,a8", {"int8x8", "int8"}), ("w4:group32", {"int4", "int8"})):
        q = lowbit.quantize(m, spec, calib=[xtr[:256]]) if ",a" in spec else lowbit.quantize(m, spec)
        c = lowbit.convert(q, kernels="auto")
        kinds = {mod.kernel.name for mod in c.modules() if isinstance(mod, QuantLinear) and mod.kernel is not None}
        assert kinds and kinds <= names, (spec, kinds)
        assert _agree(q, c, xte) == 1.0
        assert len(xte) > 300


def test_zoo_vit_w8_predicts_as_the_fake_quantized_model() -> None:
    from lowbit.models import build_model
    from lowbit.models.zoo import ZOO, zoo_input

    e = ZOO["vit"]
    torch.manual_seed(0)
    m = build_model("vit", input_shape=e.small_input_shape, num_classes=10, **e.small).eval()
    q = lowbit.quantize(m, "w8")
    c = lowbit.convert(q, kernels="auto")
    assert any(getattr(mod, "kernel", None) is not None and mod.kernel.name == "int8" for mod in c.modules())
    x = torch.cat([zoo_input("vit", 32, seed=s) for s in range(4)])
    assert _agree(q, c, x) == 1.0
