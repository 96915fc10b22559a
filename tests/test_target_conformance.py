"""One conformance check per target: a quantized model exports exactly (or within the target's
stated bound), or the target raises a ValueError that names the layer it refuses.

Targets: checkpoint (``lowbit.save``/``load``: bit-exact), ONNX (``export_onnx`` verifies in
onnxruntime; the exact session is then within 1e-5 of the output range), MCU (``targets.mcu``:
the compiled C equals the NumPy integer reference bit for bit), crossbar (``targets.cim.simulate``
with an ideal read-out: within 1e-5 of the fake-quantized model, as tests/test_cim.py states),
NIR (``targets.nir``: the exported weights are the quantized weights, exactly).

Models: the reference MLP and VGG, and the zoo's resnet8, dscnn, conv1d, lstm and vit at their
small test sizes, each PTQ ``w4,a8`` on a batch of 8. ``EXPECTED`` names each refusal's layer;
a case that is neither exact nor a ValueError naming a layer is ``xfail(strict=True)`` with what
was measured.
"""
from __future__ import annotations

import copy
import functools
import warnings

import numpy as np
import pytest
import torch

import lowbit
from lowbit.models import build_model
from lowbit.models.zoo import ZOO, zoo_input

MODELS = ("mlp", "vgg", "resnet8", "dscnn", "conv1d", "lstm", "vit")
TARGETS = ("checkpoint", "onnx", "mcu", "cim")

# (model, target) -> the layer named in the target's ValueError (measured on torch 2.13 CPU)
EXPECTED_REFUSAL = {
    ("mlp", "mcu"): "features.0",  # signed inputs give the uint8 input quantizer a zero point (MCU needs 0)
    ("vgg", "mcu"): "features.0",
    ("resnet8", "mcu"): "stem.0",  # signed inputs: the uint8 input quantizer's zero point (strides and adds export)
    ("resnet8", "cim"): "stack1.conv1",  # no integer input before it
    ("dscnn", "mcu"): "stem.0",  # signed inputs (any kernel exports; tests/test_mcu_mlperf.py)
    ("dscnn", "cim"): "blocks.0.0",  # depthwise (groups > 1)
    ("conv1d", "mcu"): "features.0",  # signed inputs (Conv1d exports: tests/test_mcu_layers.py)
    ("conv1d", "cim"): "features.0",
    ("lstm", "mcu"): "embed",
    ("lstm", "cim"): "embed",
    ("vit", "mcu"): "patch_embed",  # signed inputs (attention would be refused next)
}
XFAIL: dict[tuple[str, str], str] = {}  # (model, target) -> what was measured, for a case that fails today


@functools.lru_cache(maxsize=None)
def _quantized(name: str, nonneg: bool = False) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name in ("mlp", "vgg"):
        kw = {"hidden": (32, 16)} if name == "mlp" else {"widths": (8, 16)}
        model = build_model(name, (1, 8, 8), 10, seed=0, **kw)
        x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        if nonneg:  # pixel-like inputs: the MCU target's zero-point-free input quantizer
            x = x.abs()
    else:
        e = ZOO[name]
        model = build_model(name, e.small_input_shape or e.input_shape, e.num_classes, seed=0, **e.small)
        x = zoo_input(name, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = lowbit.quantize(model.eval(), "w4,a8", calib=[x])
    return q.eval(), x


def _model(name: str, nonneg: bool = False) -> tuple[torch.nn.Module, torch.Tensor]:
    q, x = _quantized(name, nonneg)
    return copy.deepcopy(q), x


def _checkpoint(name: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, x = _model(name)
    path = tmp_path / "m.safetensors"
    lowbit.save(model, path)
    back = lowbit.load(path).eval()
    with torch.no_grad():
        assert torch.equal(back(x), model(x)), "save/load must give bit-equal outputs"


def _onnx(name: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("onnxruntime")
    from lowbit.targets.onnx_export import export_onnx, run_onnx

    model, x = _model(name)
    path = export_onnx(model, tmp_path / "m.onnx", x[:2])  # verify=True: raises ValueError past the step bound
    with torch.no_grad():
        ref = model(x).numpy()
    got = run_onnx(path, x, exact=True)
    assert got.shape == ref.shape
    assert float(np.abs(got - ref).max()) <= 1e-5 * float(ref.max() - ref.min()), "the exact ONNX session must match"


def _mcu(name: str, tmp_path, nonneg: bool = False) -> None:  # type: ignore[no-untyped-def]
    from lowbit.targets.mcu import export, reference
    from lowbit.targets.mcu.toolchain import compile_harness, find_cc, run_harness

    model, x = _model(name, nonneg)
    res = export(model, tmp_path / "c", calib=x, harness=True)  # a refused layer raises here
    if find_cc() is None:
        pytest.skip("needs a system C compiler (cc) to run the exported C")
    xi = res.program.quantize_input(x)
    c = run_harness(compile_harness(tmp_path / "c"), res.program, xi)
    assert np.array_equal(c, reference.run(res.program, xi)), "the C logits must equal the integer reference"


def _cim(name: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from lowbit.targets.cim import CrossbarConfig, simulate

    model, x = _model(name)
    sim = simulate(model, CrossbarConfig(adc_bits=None))
    assert CrossbarConfig(adc_bits=None).ideal
    with torch.no_grad():
        torch.testing.assert_close(sim(x), model(x), rtol=0, atol=1e-5)


RUN = {"checkpoint": _checkpoint, "onnx": _onnx, "mcu": _mcu, "cim": _cim}


def _params() -> list:
    out = []
    for m in MODELS:
        for t in TARGETS:
            marks = [pytest.mark.xfail(strict=True, reason=XFAIL[m, t])] if (m, t) in XFAIL else []
            out.append(pytest.param(m, t, id=f"{m}-{t}", marks=marks))
    return out


@pytest.mark.parametrize("model, target", _params())
def test_target_exports_exactly_or_names_the_layer(model, target, tmp_path):
    layer = EXPECTED_REFUSAL.get((model, target))
    if layer is None:
        RUN[target](model, tmp_path)
        return
    with pytest.raises(ValueError) as err:
        RUN[target](model, tmp_path)
    assert f"'{layer}'" in str(err.value), f"the error must name layer {layer!r}: {err.value}"


def test_mcu_exports_the_mlp_with_nonnegative_inputs(tmp_path):
    # the refusal above is about the input's zero point, not the MLP: with pixel-like inputs it exports exactly
    _mcu("mlp", tmp_path, nonneg=True)


def test_nir_exports_the_quantized_weights_exactly(tmp_path):
    nir = pytest.importorskip("nir")
    from lowbit.snn import SNN
    from lowbit.targets.nir import export_nir

    torch.manual_seed(0)
    m = SNN(6, 5, 3, recurrent=True).quantize_weights("int4:channel")
    g = nir.read(export_nir(m, tmp_path / "snn.nir"))
    eff = {k: v.detach().numpy() for k, v in m.effective_weights().items()}
    for name in ("fc0", "rec0", "out"):
        assert np.array_equal(g.nodes[name].weight, eff[name]), f"NIR weight {name} must be the quantized weight"
    with pytest.raises(TypeError, match="SNN"):  # a non-spiking model is refused, by type
        export_nir(torch.nn.Linear(2, 2), tmp_path / "x.nir")


class _Residual(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(16, 16), torch.nn.Linear(16, 4)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.b(x + self.a(x))


class _Tanh(_Residual):
    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.b(torch.tanh(self.a(x)))  # tanh is no edge op: the module path, caught by comparing outputs


@pytest.mark.parametrize("cls, named", [(_Tanh, "layer 'b'")])  # residual adds export (tests/test_mcu_checks.py)
def test_mcu_refusal_of_a_non_sequential_model_names_the_layer(cls, named):
    from lowbit.targets.mcu.lower import lower

    torch.manual_seed(0)
    x = torch.rand(8, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = lowbit.quantize(cls(), "w8,a8", calib=[(x, None)])
    with pytest.raises(ValueError, match="not the plain sequence of its layers") as err:
        lower(q, x)
    assert named in str(err.value), f"the refusal must name {named}: {err.value}"
