"""The MLPerf Tiny reference shapes through the MCU export, random weights and synthetic inputs:
DS-CNN keyword spotting (49x10 MFCC input; a (10, 4) stride-2 stem, depthwise and pointwise
convs, global average pooling) as int8, int4 and mixed 8/4/2 (8-bit stem, 2-bit pointwise,
4-bit depthwise and classifier). On 200 inputs per weight type the int32 logits of the C code
equal the NumPy integer reference bit for bit, on the host compiler and in QEMU for rv32imc and
Cortex-M4; the linked flash/RAM of the 4-bit model fits a 64 KB flash / 20 KB RAM part.
ResNet-8 (32x32x3; residual adds, strided 1x1 shortcuts) goes through the traced-graph path
(lowbit.graph's GraphModule): int8 and int4, bit-exact on the host and in QEMU. MobileNetV1-0.25
(96x96x3 visual wake words) and the FC autoencoder (640 inputs; its int32 reconstruction is
the output) in int4 (and int8 for the autoencoder), the same checks.

Without the cross toolchains the emulated tests skip naming what is missing -- except in CI.
"""
from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import lowbit
from lowbit.models.zoo import warm_zoo
from lowbit.targets.mcu.lower import AddOp
from lowbit.targets.mcu.report import arena_layout
from lowbit.targets.mcu import export, export_program, reference
from lowbit.targets.mcu.cross import build_target, linked_size, model_size, run_target
from lowbit.targets.mcu.toolchain import compile_harness, find_cc, run_harness

from test_mcu_cross import _need  # tests/test_mcu_cross.py: skip here, fail in CI

pytestmark = pytest.mark.skipif(find_cc() is None, reason="needs a system C compiler (cc)")

N_INPUTS = 200
# MFCC features are signed: the stem's input is int8, later layers' uint8 (after ReLU)
DSCNN_TYPES = {
    "int8": ("w8,a8,a:stem=int8", ["i8"] * 10),
    "int4": ("w4,a8,a:stem=int8", ["p4"] * 10),
    "mixed-8/4/2": ("w4,stem=int8:channel,blocks.*.3=int2:channel,a8,a:stem=int8", ["i8"] + ["p4", "p2"] * 4 + ["p4"]),
}


def warm_dscnn(seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor]:
    """DS-CNN (64 filters, 12 classes) with random weights and BatchNorm statistics from synthetic inputs."""
    return warm_zoo("DSCNN", (1, 49, 10), 12, True, N_INPUTS, seed)


@pytest.fixture(scope="module")
def dscnn_float():
    return warm_dscnn()


@pytest.fixture(scope="module", params=list(DSCNN_TYPES))
def dscnn(request, dscnn_float, tmp_path_factory):
    model, x = dscnn_float
    config, kinds = DSCNN_TYPES[request.param]
    q = lowbit.quantize(copy.deepcopy(model), config, calib=[(x, None)])
    out = tmp_path_factory.mktemp("dscnn")
    res = export(q, out / "host", calib=x, harness=True)
    xi = res.program.quantize_input(x)
    with torch.no_grad():
        fq = lowbit.convert(q)(x).numpy()
    return SimpleNamespace(name=request.param, q=q, x=x, out=out, res=res, xi=xi, kinds=kinds, fq=fq,
                           ref=reference.run(res.program, xi), host=run_harness(compile_harness(out / "host"), res.program, xi))


def test_dscnn_host_c_equals_reference(dscnn):
    prog = dscnn.res.program
    assert [o.kind for o in prog.compute_ops] == dscnn.kinds
    stem, dw, pw = prog.compute_ops[:3]
    assert (stem.kernel, stem.stride, stem.pads, stem.out_shape) == ((10, 4), (2, 2), (5, 1, 5, 1), (64, 25, 5))
    assert (dw.groups, dw.n, pw.kernel, pw.n) == (64, 9, (1, 1), 64)
    assert prog.input_lo == -128 and dscnn.xi.shape == (N_INPUTS, 490)
    np.testing.assert_array_equal(dscnn.host, dscnn.ref, err_msg=dscnn.name)
    assert dscnn.host.shape == (N_INPUTS, 12) and len(np.unique(dscnn.host)) > 150
    # the integer model follows the fake-quantized one
    r = np.corrcoef(dscnn.fq.ravel(), dscnn.ref.astype(np.float64).ravel())[0, 1]
    assert r > 0.99, (dscnn.name, r)
    assert (dscnn.fq.argmax(1) == dscnn.ref.argmax(1)).mean() >= 0.9


@pytest.mark.emulated
@pytest.mark.parametrize("tgt", ["rv32imc", "cortex-m4"])
def test_dscnn_emulated_equals_reference(dscnn, tgt):
    _need(tgt)
    d = dscnn.out / tgt
    res = export_program(dscnn.res.program, d, harness=True, target=tgt)  # the host's program: no second lowering
    elf = build_target(d, tgt)
    c = run_target(elf, tgt, res.program, dscnn.xi, timeout=600)
    np.testing.assert_array_equal(c, dscnn.ref, err_msg=f"{dscnn.name} on {tgt}")
    model = model_size(d / "lowbit_model.map")
    image = linked_size(elf, tgt)
    # the linker's numbers beside the estimate: weights and buffers are most of both
    assert res.report.weights < model.flash <= res.report.flash * 1.15, (model, res.report.flash)
    assert arena_layout(res.program)[0] <= model.ram <= res.report.ram, (model, res.report.ram)  # the estimate also counts the input
    if dscnn.name != "int8":  # the 4-bit and mixed models fit a 64 KB flash / 20 KB RAM part, harness and libc included
        assert image.flash <= 64 * 1024 and image.ram + image.stack <= 20 * 1024, (dscnn.name, tgt, image)


RESNET8_TYPES = {"int8": "w8,a8", "int4": "w4,a8"}


def warm_resnet8(seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor]:
    """ResNet-8 (16/32/64 filters, 10 classes), random weights, BatchNorm statistics from synthetic images."""
    return warm_zoo("ResNet8", (3, 32, 32), 10, False, N_INPUTS, seed)


@pytest.fixture(scope="module")
def resnet8_float():
    return warm_resnet8()


@pytest.fixture(scope="module", params=list(RESNET8_TYPES))
def resnet8(request, resnet8_float, tmp_path_factory):
    model, x = resnet8_float
    q = lowbit.quantize(copy.deepcopy(model), RESNET8_TYPES[request.param], calib=[(x, None)])
    out = tmp_path_factory.mktemp("resnet8")
    res = export(q, out / "host", calib=x, harness=True)
    xi = res.program.quantize_input(x)
    with torch.no_grad():
        fq = lowbit.convert(q)(x).numpy()
    return SimpleNamespace(name=request.param, q=q, x=x, out=out, res=res, xi=xi, fq=fq,
                           ref=reference.run(res.program, xi), host=run_harness(compile_harness(out / "host"), res.program, xi))


def test_resnet8_host_c_equals_reference(resnet8):
    prog = resnet8.res.program
    adds = [o for o in prog.ops if isinstance(o, AddOp)]
    assert [o.name for o in adds] == ["add", "add_1", "add_2"] and all(o.lo == 0 for o in adds)  # the ReLU after each add is fused
    assert adds[0].src == (0, 2)  # the identity shortcut reads the stem's output, kept in the arena
    names = [o.name for o in prog.ops]
    assert names.index("stack2.shortcut") < names.index("add_1") and prog.ops[names.index("stack2.shortcut")].stride == (2, 2)
    # three 16 KB tensors alive at once (stem output, branch, add output), not the whole network's
    assert resnet8.res.report.activations == 3 * 16 * 32 * 32
    np.testing.assert_array_equal(resnet8.host, resnet8.ref, err_msg=resnet8.name)
    assert resnet8.host.shape == (N_INPUTS, 10) and len(np.unique(resnet8.host)) > 150
    r = np.corrcoef(resnet8.fq.ravel(), resnet8.ref.astype(np.float64).ravel() * prog.logit_scale)[0, 1]
    assert r > 0.99, (resnet8.name, r)


@pytest.mark.emulated
@pytest.mark.parametrize("tgt", ["rv32imc", "cortex-m4"])
def test_resnet8_emulated_equals_reference(resnet8, tgt):
    _need(tgt)
    d = resnet8.out / tgt
    res = export_program(resnet8.res.program, d, harness=True, target=tgt)
    elf = build_target(d, tgt)
    c = run_target(elf, tgt, res.program, resnet8.xi, timeout=900)
    np.testing.assert_array_equal(c, resnet8.ref, err_msg=f"resnet8-{resnet8.name} on {tgt}")
    model = model_size(d / "lowbit_model.map")
    assert res.report.weights < model.flash <= res.report.flash * 1.15, (model, res.report.flash)
    assert arena_layout(res.program)[0] <= model.ram <= res.report.ram, (model, res.report.ram)  # the estimate also counts the input


# name -> (factory, input shape, outputs, {weight type: config}, signed synthetic input)
OTHERS = {
    "mobilenetv1": ("MobileNetV1", (3, 96, 96), 2, {"int4": "w4,a8"}, False),
    "autoencoder": ("FCAutoencoder", (640,), 640, {"int8": "w8,a8,a:layers.0=int8", "int4": "w4,a8,a:layers.0=int8"}, True),
}


@pytest.fixture(scope="module", params=[(m, t) for m in OTHERS for t in OTHERS[m][3]], ids=lambda p: f"{p[0]}-{p[1]}")
def other(request, tmp_path_factory):
    import lowbit.models.zoo as zoo

    name, wtype = request.param
    factory, shape, outputs, configs, signed = OTHERS[name]
    torch.manual_seed(0)
    model = getattr(zoo, factory)(shape, outputs)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn((N_INPUTS, *shape), generator=gen) if signed else torch.rand((N_INPUTS, *shape), generator=gen)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)
    q = lowbit.quantize(model.eval(), configs[wtype], calib=[(x, None)])
    out = tmp_path_factory.mktemp(name)
    res = export(q, out / "host", calib=x, harness=True)
    xi = res.program.quantize_input(x)
    with torch.no_grad():
        fq = lowbit.convert(q)(x).numpy()
    return SimpleNamespace(name=f"{name}-{wtype}", out=out, res=res, xi=xi, fq=fq, outputs=outputs,
                           ref=reference.run(res.program, xi), host=run_harness(compile_harness(out / "host"), res.program, xi))


def test_mobilenet_and_autoencoder_host_c_equals_reference(other):
    prog = other.res.program
    np.testing.assert_array_equal(other.host, other.ref, err_msg=other.name)
    assert other.host.shape == (N_INPUTS, other.outputs) and other.host.dtype == np.int32
    r = np.corrcoef(other.fq.ravel(), other.ref.astype(np.float64).ravel() * prog.logit_scale)[0, 1]
    assert r > 0.99, (other.name, r)
    if other.name.startswith("mobilenetv1"):
        dws = [o for o in prog.compute_ops if o.groups > 1]
        assert len(dws) == 13 and all(o.n == 9 for o in dws) and [o.stride for o in dws].count((2, 2)) == 4
        assert prog.compute_ops[0].out_shape == (8, 48, 48) and prog.compute_ops[-2].out_shape == (256, 3, 3)
    else:  # the reconstruction: 640 int32 outputs per input, real values
        assert len(np.unique(other.host)) > 10_000


@pytest.mark.emulated
@pytest.mark.parametrize("tgt", ["rv32imc", "cortex-m4"])
def test_mobilenet_and_autoencoder_emulated_equal_reference(other, tgt):
    _need(tgt)
    d = other.out / tgt
    res = export_program(other.res.program, d, harness=True, target=tgt)
    elf = build_target(d, tgt)
    c = run_target(elf, tgt, res.program, other.xi, timeout=900)
    np.testing.assert_array_equal(c, other.ref, err_msg=f"{other.name} on {tgt}")
    model = model_size(d / "lowbit_model.map")
    assert res.report.weights < model.flash <= res.report.flash * 1.15, (model, res.report.flash)
    assert arena_layout(res.program)[0] <= model.ram <= res.report.ram, (model, res.report.ram)  # the estimate also counts the input
