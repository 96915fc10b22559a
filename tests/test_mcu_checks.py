"""MCU export: clear errors naming the layer, the memory report and budgets, atomic writes, the
``lowbit export-c`` command, and the pieces of the integer arithmetic (packing, rounding)."""
from __future__ import annotations

import copy
import itertools
import re

import numpy as np
import pytest
import torch
from torch import nn

import lowbit
from lowbit.cli import main
from lowbit.data.images import loader
from lowbit.models import build_from_arch
from lowbit.targets.mcu import export, lower, memory_report, parse_bytes, reference, render
from lowbit.targets.mcu.export import pack_weights


def _q(model: nn.Module, config: str, x: torch.Tensor) -> nn.Module:
    return lowbit.quantize(model, config, calib=[(x, None)])


@pytest.fixture(scope="module")
def mlp_int4(_float_mlp, digits):
    """The trained MLP, int4 weights and uint8 inputs, and 512 calibration inputs."""
    x = digits.train.tensors[0][:512]
    return lowbit.quantize(copy.deepcopy(_float_mlp[0]), "w4,a8", calib=loader(digits.train, 256)), x


# --------------------------------------------------------------------------- errors naming the layer


def test_unsupported_layer_is_named():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Sigmoid(), nn.Linear(16, 10))
    x = torch.rand(32, 1, 8, 8)
    with pytest.raises(ValueError, match=r"layer '2' \(Sigmoid\) is not supported by the MCU target; supported: Linear"):
        lower(_q(m, "w4,a8", x), x)


def test_unsupported_conv_and_pool_geometry_is_named():
    x = torch.rand(8, 1, 8, 8)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect"), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))
    with pytest.raises(ValueError, match=r"layer '0' \(QuantConv2d\) is not supported by the MCU target: padding_mode 'reflect' \(only zero padding\); supported: Linear, Conv1d/Conv2d"):
        lower(_q(m, "w4,a8", x), x)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ValueError, match=r"layer '2' \(AdaptiveAvgPool2d\).*output size \(4, 4\) does not divide the input \(6, 6\)"):
        lower(_q(m, "w4,a8", x), x)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2, padding=1), nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ValueError, match=r"layer '1' \(MaxPool2d\).*pooling with padding or ceil_mode"):
        lower(_q(m, "w4,a8", x), x)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AvgPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(36, 10))
    with pytest.raises(ValueError, match=r"layer '2' \(ReLU\).*a ReLU after an average pool"):
        lower(_q(m, "w4,a8", x), x)
    # a layer kind the C code has no loop for: the error names it and lists what is supported
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Upsample(scale_factor=2), nn.Flatten(), nn.Linear(576, 10))
    with pytest.raises(ValueError, match=r"layer '1' \(Upsample\) is not supported by the MCU target; supported: .*AdaptiveAvgPool1d/2d"):
        lower(_q(m, "w4,a8", x), x)
    from lowbit.targets.mcu.lower import SUPPORTED_LAYERS

    for name in ("Linear", "Conv1d/Conv2d", "depthwise", "'same'", "MaxPool1d/2d", "AvgPool1d/2d", "AdaptiveAvgPool1d/2d", "ReLU", "BatchNorm1d/2d", "Flatten"):
        assert name in SUPPORTED_LAYERS, name


def test_int32_overflow_is_named():
    m = nn.Sequential(nn.Linear(70_000, 2))
    with torch.no_grad():
        m[0].weight.fill_(0.01)  # every weight quantizes to 127: 70,000 x 127 x 255 > 2^31
    x = torch.rand(4, 70_000)
    with pytest.raises(ValueError, match=r"layer '0': int32 accumulation can overflow: \|sum\| up to 2,266,950,000"):
        lower(_q(m, "w8,a8", x), x)
    # a shorter row fits
    m2 = nn.Sequential(nn.Linear(60_000, 2))
    with torch.no_grad():
        m2[0].weight.fill_(0.01)
    x2 = torch.rand(4, 60_000)
    prog = lower(_q(m2, "w8,a8", x2), x2)
    assert prog.compute_ops[0].kind == "i8"


def test_float_layer_and_group_scales_and_skip_connections_are_refused():
    x = torch.rand(16, 128)
    m = nn.Sequential(nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, 10))
    q = lowbit.quantize(m, "*=int4:channel,2=none,a:0=uint8", calib=[(x, None)])
    with pytest.raises(ValueError, match=r"layer '2' \(Linear\) is not quantized"):
        lower(q, x)
    with pytest.raises(ValueError, match=r"layer '0': weight granularity 'group64' is not supported"):
        lower(_q(m, "*=int4:channel,0=nf4,a8", x), x)  # nf4's default: blocks of 64 in rows of 128

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 4)

        def forward(self, x):
            return self.b(x + self.a(x))

    class Gated(Residual):
        def forward(self, x):
            return self.b(x * self.a(x))

    x16 = torch.rand(64, 16)
    # a skip connection is a residual add: lowered through the traced graph, the integers follow the float model
    q = _q(Residual(), "w8,a8", x16)
    prog = lower(q, x16)
    assert [type(o).__name__ for o in prog.ops] == ["ComputeOp", "AddOp", "ComputeOp"] and prog.ops[1].src == (-1, 0)
    ref = reference.run(prog, prog.quantize_input(x16)) * prog.logit_scale
    with torch.no_grad():
        assert np.corrcoef(lowbit.convert(q)(x16).numpy().ravel(), ref.ravel())[0, 1] > 0.99
    with pytest.raises(ValueError, match="shift='dynamic' is not supported for models with skip connections"):
        lower(q, x16, shift="dynamic")
    # a functional op the C code has no loop for is named
    with pytest.raises(ValueError, match=r"node 'mul' \(the functional op mul\) is not supported by the MCU target; supported: Linear"):
        lower(_q(Gated(), "w8,a8", x16), x16)


def test_bad_arguments_are_named(mlp_int4, tmp_path):
    q, x = mlp_int4
    with pytest.raises(ValueError, match="shift must be 'static' or 'dynamic'"):
        lower(q, x, shift="fast")
    with pytest.raises(ValueError, match="ternary must be 'base3' or '2bit'"):
        lower(q, x, ternary="3bit")
    with pytest.raises(ValueError, match="name must be a C identifier"):
        export(q, tmp_path / "c", calib=x, name="1model")
    # every layer has an input quantizer: calib may be left out
    assert render(lower(q))["lowbit_model.h"] == render(lower(q, x))["lowbit_model.h"]
    with pytest.raises(ValueError, match="calib is required: layer 'features.0' has no input quantizer"):
        lower(lowbit.quantize(build_from_arch(q.lowbit_arch), "w4"))
    with pytest.raises(ValueError, match="calib inputs of shape \\(5,\\) do not fit the model"):
        lower(q, torch.rand(4, 5))
    with pytest.raises(ValueError, match="calib contains NaN"):
        lower(q, torch.full((4, 1, 8, 8), float("nan")))


# --------------------------------------------------------------------------- memory report, budgets, files


def test_memory_report_counts_bytes(mlp_int4):
    q, x = mlp_int4
    rep = memory_report(lower(q, x))
    assert [(m.name, m.weights) for m in rep.layers] == [("features.0", 4096), ("features.2", 4096), ("classifier", 320)]
    assert rep.weights == (64 * 128 + 128 * 64 + 64 * 10) // 2
    assert rep.tables == 6 * (128 + 64 + 10) + 3 * 100  # int16 multiplier + int32 bias per output, op table
    assert rep.activations == 64 + 128  # largest input + output pair
    assert (rep.col, rep.ybuf, rep.logits) == (0, 0, 40)
    assert rep.flash == rep.weights + rep.tables + rep.code and rep.ram == 232
    dyn = memory_report(lower(q, x, shift="dynamic"))
    assert dyn.ybuf == 4 * 128  # int32 outputs of the widest hidden layer
    assert "| flash | " in rep.markdown() and "| features.0 | dense | int4 | p4 | 4.00 | 4,096 |" in rep.markdown()


def test_parse_bytes():
    assert [parse_bytes(s) for s in ("16k", "2k", "1.5k", "512", "1m", "4KB", 100)] == [16384, 2048, 1536, 512, 1048576, 4096, 100]
    for bad in ("", "16q", "-1k", "0", "k"):
        with pytest.raises(ValueError, match="memory budget"):
            parse_bytes(bad)


def test_budget_failure_writes_nothing(mlp_int4, tmp_path):
    q, x = mlp_int4
    out = tmp_path / "c"
    with pytest.raises(ValueError, match=r"does not fit: flash needs 1\d,\d{3} B > budget 8,192 B .*largest layer 'features.0' 4,096 B"):
        export(q, out, calib=x, flash="8k", ram="2k")
    with pytest.raises(ValueError, match=r"does not fit: RAM needs 232 B > budget 200 B \(activations 192"):
        export(q, out, calib=x, ram=200)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    res = export(q, out, calib=x, flash="16k", ram="2k")
    assert sorted(p.name for p in out.iterdir()) == ["lowbit_model.c", "lowbit_model.h"]
    assert res.report.flash <= 16384 and res.report.ram <= 2048


def test_writes_are_atomic(mlp_int4, tmp_path, monkeypatch):
    q, x = mlp_int4
    out = tmp_path / "c"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    (out / "lowbit_model.h").write_text("old")
    export(q, out, calib=x)
    assert (out / "keep.txt").read_text() == "mine"
    assert (out / "lowbit_model.h").read_text().startswith("/* lowbit_model.h")
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    # a failure while writing a new folder leaves neither the folder nor temporaries
    import pathlib

    real = pathlib.Path.write_text
    calls = []

    def flaky(self, *a, **k):
        calls.append(self.name)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(self, *a, **k)

    monkeypatch.setattr(pathlib.Path, "write_text", flaky)
    fresh = tmp_path / "fresh"
    with pytest.raises(OSError, match="disk full"):
        export(q, fresh, calib=x, harness=True)
    monkeypatch.undo()
    assert not fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_generated_source_is_integer_only(mlp_int4):
    q, x = mlp_int4
    files = render(lower(q, x, shift="dynamic"), harness=True)
    src = files["lowbit_model.c"]
    code = re.sub(r"/\*.*?\*/", "", src, flags=re.S)
    assert not re.search(r"\b(float|double|malloc|calloc|free)\b", code)
    assert "static uint8_t lb_arena[LB_ARENA_BYTES];" in src
    assert "lb_dot_p4_u8" in src and "LB_DOT_P4(lb_dot_p4_u8, uint8_t)" in src
    assert re.findall(r"^LB_DOT_\w+\(\w+", src, re.M) == ["LB_DOT_P4(lb_dot_p4_u8"]  # only the kernel in use
    hdr = files["lowbit_model.h"]
    for d in ("#define LB_INPUT_SIZE 64", "#define LB_NUM_OUTPUTS 10", "#define LB_ARENA_BYTES 192", "#define LB_DYNAMIC 1",
              "static const uint8_t L0_W[4096]", "static const int16_t L0_M[128]", "static const int32_t L2_B[10]"):
        assert d in hdr, d


# --------------------------------------------------------------------------- pieces of the arithmetic


def test_ternary_base3_bytes_decode_with_multiply_by_three():
    # every group of 5 trits: the C loop "p *= 3; trit = p >> 8; p &= 255" gives them back, first trit first
    from lowbit.targets.mcu.export import _trits

    groups = np.array(list(itertools.product(range(3), repeat=5)))  # 243 x 5
    packed = _trits(groups)[:, 0].astype(np.int64)
    assert packed.max() <= 255 and len(np.unique(packed)) == 243
    p = packed.copy()
    got = []
    for _ in range(5):
        p = p * 3
        got.append(p >> 8)
        p &= 255
    assert np.array_equal(np.stack(got, 1), groups)


def test_pack_weights_is_lsb_first_with_byte_aligned_rows():
    from lowbit.targets.mcu.lower import ComputeOp

    codes = np.array([[1, 2, 3], [4, 5, 6]])
    op = ComputeOp(name="x", op="dense", kind="p4", codes=codes, values=codes - 8, off=-8, step=1, lut=None, pt_lo=0,
                   pt_stride=0, pt_table=None, mult=np.ones(2, np.int64), bias=np.zeros(2, np.int64), shift=0, in_lo=0,
                   in_hi=255, out_lo=0, out_hi=255, in_shape=(3,), out_shape=(2,), code_bits=4)
    assert pack_weights(op).tolist() == [[0x21, 0x03], [0x54, 0x06]]
    op.kind, op.codes = "p2", np.array([[1, 2, 3], [0, 1, 2]])
    assert pack_weights(op).tolist() == [[0b111001], [0b100100]]


def test_product_table_and_ternary_packing_options(mlp_int4, _float_mlp):
    from lowbit.targets.mcu.reference import _table_dot

    x = mlp_int4[1]
    q = lowbit.quantize(copy.deepcopy(_float_mlp[0]), "*=sym17:channel,a:*=sym31:p99.99", calib=[(x, None)])
    prog = lower(q, x)
    op = prog.compute_ops[0]  # the model input may be negative: all 31 rows
    assert (op.kind, op.pt_lo, op.pt_stride, op.in_hi, op.code_bits, op.pt_table.shape) == ("pt", -15, 32, 15, 8, (31, 32))
    assert (prog.compute_ops[1].pt_lo, prog.compute_ops[1].pt_table.shape) == (0, (16, 32))  # after a ReLU: 16 rows
    a = prog.quantize_input(x[:64])
    # the fast path (exact products) and the table look-ups agree
    assert np.array_equal(_table_dot(op, a), a @ op.values.T)
    q3 = lowbit.quantize(copy.deepcopy(_float_mlp[0]), "*=ternary:channel,a8", calib=[(x, None)])
    base3, two = lower(q3, x, ternary="base3"), lower(q3, x, ternary="2bit")
    assert [o.kind for o in base3.compute_ops] == ["t3"] * 3 and [o.kind for o in two.compute_ops] == ["p2"] * 3
    assert memory_report(base3).weights == 128 * 13 + 64 * 26 + 10 * 13  # ceil(n / 5) bytes a row
    assert memory_report(two).weights == (64 * 128 + 128 * 64 + 64 * 10) // 4
    xi = base3.quantize_input(x)
    assert np.array_equal(reference.run(base3, xi), reference.run(two, xi))


def test_round_shift_rounds_half_up():
    y = np.array([5, -5, 6, -6, 7, -7, 2**31 - 1, -(2**31)], dtype=np.int64)
    assert reference.round_shift(y, 1).tolist() == [3, -2, 3, -3, 4, -3, 2**30, -(2**30)]
    assert reference.round_shift(y, 0).tolist() == y.tolist()


# --------------------------------------------------------------------------- the command line


def test_cli_exports_a_saved_model(mlp_int4, tmp_path, capsys):
    q, _ = mlp_int4
    path = tmp_path / "m.lowbit"
    lowbit.save(q, path)
    out = tmp_path / "c"
    assert main(["export-c", str(path), "--out", str(out), "--flash", "16k", "--ram", "2k", "--harness"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"\| flash \| 1\d,\d{3} \| weights 8,512 \+", text)
    m = re.search(r"fake-quantized ([\d.]+) %, integer \(C = NumPy reference\) ([\d.]+) %", text)
    assert m and abs(float(m.group(1)) - float(m.group(2))) <= 0.5
    assert sorted(p.name for p in out.iterdir()) == ["lowbit_model.c", "lowbit_model.h", "lowbit_model_main.c"]
    # the saved-and-loaded model exports the same integers as the one in memory
    assert (out / "lowbit_model.h").read_text() == render(lower(q, loader_inputs(512)))["lowbit_model.h"]

    assert main(["export-c", str(path), "--out", str(tmp_path / "d"), "--flash", "4k", "--no-eval"]) == 2
    err = capsys.readouterr().err
    assert "lowbit export-c: error: the model does not fit: flash needs" in err and not (tmp_path / "d").exists()
    assert main(["export-c", str(path), "--out", str(tmp_path / "d"), "--ram", "2q"]) == 2
    assert "--ram: a memory budget must look like 16k" in capsys.readouterr().err


def loader_inputs(n: int) -> torch.Tensor:
    from lowbit.data import get_dataset

    return get_dataset("digits").train.tensors[0][:n]
