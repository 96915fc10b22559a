"""ONNX export of embeddings, LSTM/GRU and transformer encoders (issue 21), checked in onnxruntime.

Every case compares onnxruntime with PyTorch on the example input and 5 seeded random inputs:
weight-only models (no output quantizer) within 1e-5 of the output range (float summation
order only; exact up to float rounding for a table look-up); models with quantized activations
through ``export_onnx(..., verify=True)``, whose bound is in quantization steps
(:mod:`lowbit.targets.onnx_verify`): each activation moves at most one step on at most 1 % of
its elements, the output within 0.05 of the last activation's step.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import lowbit  # noqa: E402
from lowbit.models import build_model  # noqa: E402
from lowbit.models.zoo import ZOO, zoo_input  # noqa: E402
from lowbit.targets.onnx_export import export_onnx, onnx_ops, to_onnx  # noqa: E402
from lowbit.targets.onnx_verify import verify_onnx  # noqa: E402

FLOAT_BOUND = 1e-5  # of the output range, for graphs without quantized activations


def _run_all(proto, x: torch.Tensor) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    arr = x.numpy().astype(np.int64 if not x.is_floating_point() else np.float32)
    return sess.run(None, {sess.get_inputs()[0].name: arr})


def _inputs(example: torch.Tensor, n: int = 5) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    if not example.is_floating_point():
        return [example] + [torch.randint(0, int(example.max()) + 1, example.shape, generator=g) for _ in range(n)]
    return [example] + [torch.randn(example.shape, generator=g) for _ in range(n)]


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]


def _assert_float_bound(model: nn.Module, example: torch.Tensor, exact: bool = False) -> object:
    """Every output of the graph within FLOAT_BOUND of its range (or bit-equal with ``exact``) on 6 inputs."""
    proto = to_onnx(model, example)
    for x in _inputs(example):
        with torch.no_grad():
            refs = [r.numpy() for r in _flat(model(x))]
        got = _run_all(proto, x)
        assert len(got) == len(refs)
        for a, b in zip(got, refs):
            assert a.shape == b.shape
            if exact:
                assert np.array_equal(a, b)
            else:
                assert float(np.abs(a - b).max()) <= FLOAT_BOUND * float(b.max() - b.min()), float(np.abs(a - b).max())
    return proto


def _quantize(model: nn.Module, config: str, calib: list[torch.Tensor]) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lowbit.quantize(model.eval(), config, calib=calib).eval()


# --------------------------------------------------------------------------- embeddings


class _Embed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 12, padding_idx=0)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embed(tokens)


def test_embedding_is_a_gather_of_the_per_row_dequantized_table():
    torch.manual_seed(0)
    q = _quantize(_Embed(), "w4", [torch.randint(0, 50, (4, 9))])
    proto = _assert_float_bound(q, torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(1)), exact=True)
    assert onnx_ops(proto) == {"DequantizeLinear": 1, "Gather": 1, "Identity": 1}
    deq = next(n for n in proto.graph.node if n.op_type == "DequantizeLinear")
    assert [a.i for a in deq.attribute if a.name == "axis"] == [0]  # one scale per row
    codes = next(i for i in proto.graph.initializer if i.name == deq.input[0])
    assert codes.data_type == onnx.TensorProto.INT8 and list(codes.dims) == [50, 12]
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64  # token ids stay integers


# --------------------------------------------------------------------------- recurrent layers


class _RNN(nn.Module):
    def __init__(self, kind: str, batch_first: bool, bidirectional: bool, layers: int) -> None:
        super().__init__()
        cls = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = cls(6, 8, num_layers=layers, batch_first=batch_first, bidirectional=bidirectional)

    def forward(self, x: torch.Tensor):
        return self.rnn(x)  # the whole sequence and the final states: every gate's output is compared


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("batch_first, bidirectional, layers", [(True, False, 1), (False, True, 2)])
def test_rnn_exports_with_onnx_gate_order(kind, batch_first, bidirectional, layers):
    torch.manual_seed(0)
    model = _RNN(kind, batch_first, bidirectional, layers).eval()
    x = torch.randn((3, 7, 6) if batch_first else (7, 3, 6))
    q = _quantize(model, "w4", [x])
    assert type(q.rnn).__name__ == ("QuantLSTM" if kind == "lstm" else "QuantGRU")
    proto = _assert_float_bound(q, x)  # output sequence, h_n (and c_n)
    assert onnx_ops(proto)[kind.upper()] == layers * (2 if bidirectional else 1)
    _assert_float_bound(model, x)  # the float layer maps to the same ops


def test_wrong_gate_order_is_caught():
    # the gate permutation is what makes the ONNX op compute PyTorch's recurrence: undone, it fails
    torch.manual_seed(0)
    x = torch.randn(3, 7, 6)
    q = _quantize(_RNN("lstm", True, False, 1), "w4", [x])
    proto = to_onnx(q, x)
    for init in proto.graph.initializer:
        if init.name.endswith("gate_order"):
            init.CopyFrom(onnx.numpy_helper.from_array(np.arange(32, dtype=np.int64), init.name))
    with pytest.raises(ValueError, match="output differs"):
        verify_onnx(q, proto, x)


def test_rnn_with_quantized_inputs_verifies_in_steps(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(4, 7, 6)
    q = _quantize(_RNN("lstm", True, True, 2), "w4,a8", [x])
    proto = to_onnx(q, x)
    rep = verify_onnx(q, proto, x)
    assert rep.inputs == 6 and rep.worst <= 1.0
    assert {"rnn.ih_l0.input_quant", "rnn.ih_l0_reverse.input_quant", "rnn.ih_l1.input_quant"} <= set(rep.moved)
    assert max(rep.moved.values()) <= 0.01


def test_state_quantizer_and_initial_states_are_refused():
    from lowbit.nn.act import ActQuant
    from lowbit.nn.rnn import QuantLSTM
    from lowbit.quantizer import quantizer

    torch.manual_seed(0)
    lstm = QuantLSTM.from_float(nn.LSTM(6, 8, batch_first=True), state_quant=lambda: ActQuant(quantizer("int8")))
    with pytest.raises(ValueError, match=r"'rnn' \(QuantLSTM\): a quantized hidden state"):
        to_onnx(_Wrap(lstm), torch.randn(2, 5, 6))


class _Wrap(nn.Module):
    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


# --------------------------------------------------------------------------- attention and encoders


class _Attn(nn.Module):
    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=batch_first)

    def forward(self, x: torch.Tensor):
        out, w = self.attn(x, x, x)
        return out, w


@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_weight_only_and_its_averaged_weights(batch_first):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16)
    q = _quantize(_Attn(batch_first), "w4", [x])
    assert type(q.attn).__name__ == "QuantMultiheadAttention"
    proto = _assert_float_bound(q, x)
    assert {"MatMul", "Softmax", "ReduceMean"} <= set(onnx_ops(proto))


@pytest.mark.parametrize("norm_first, activation, batch_first", [(True, "gelu", True), (False, "relu", False)])
def test_encoder_layers_export_and_verify(norm_first, activation, batch_first, tmp_path):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, activation=activation, batch_first=batch_first, norm_first=norm_first)
    model = nn.Sequential(nn.Linear(8, 16), nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)).eval()
    x = torch.randn(4, 6, 8)
    _assert_float_bound(model, x)  # torch's own classes (its fused path under no_grad) map to the same graph
    _assert_float_bound(_quantize(model, "w4", [x]), x)
    q = _quantize(model, "w4,a8", [x, torch.randn(4, 6, 8)])
    export_onnx(q, tmp_path / "m.onnx", x)  # verify=True: in steps of the quantized activations
    ops = onnx_ops(onnx.load(str(tmp_path / "m.onnx")))
    assert ops["LayerNormalization"] == 4 and ops["Softmax"] == 2 and ops.get("Erf", 0) == (2 if activation == "gelu" else 0)


def test_layer_norm_needs_opset_17():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    with pytest.raises(ValueError, match=r"'1' \(LayerNorm\): LayerNormalization needs opset >= 17"):
        to_onnx(model, torch.randn(2, 4), opset=16)


def test_masks_are_refused_with_the_layer_named():
    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 1, enable_nested_tensor=False)
            self.register_buffer("mask", torch.zeros(3, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.enc(x, mask=self.mask)

    with pytest.raises(ValueError, match=r"'enc' \(TransformerEncoder\): a call with masks"):
        to_onnx(Masked(), torch.randn(2, 3, 8))


# --------------------------------------------------------------------------- the zoo's ViT and LSTM classifier


def _zoo(name: str) -> tuple[nn.Module, list[torch.Tensor], torch.Tensor]:
    e = ZOO[name]
    model = build_model(name, e.small_input_shape, e.num_classes, seed=0, **e.small).eval()
    return model, [zoo_input(name, 8, seed=s) for s in range(3)], zoo_input(name, 2, seed=99)


def _qat_w4a8(model: nn.Module, batches: list[torch.Tensor], classes: int) -> nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = lowbit.prepare_qat(model, "w4:lsq,a8")
    opt = torch.optim.SGD(q.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(7)
    q.train()
    for b in batches[:2]:  # two steps: shadow weights, LSQ steps and activation ranges move
        opt.zero_grad()
        F.cross_entropy(q(b), torch.randint(0, classes, (b.shape[0],), generator=g)).backward()
        opt.step()
    return q.eval()


@pytest.mark.parametrize("name", ["vit", "lstm"])
@pytest.mark.parametrize("mode", ["ptq_w8", "qat_w4a8", "converted"])
def test_zoo_sequence_models_export_and_verify(name, mode, tmp_path):
    model, batches, x = _zoo(name)
    if mode == "ptq_w8":
        q = _quantize(model, "w8", batches)  # weight-only: the float bound of the output range
    else:
        q = _qat_w4a8(model, batches, ZOO[name].num_classes)
        if mode == "converted":
            q = lowbit.convert(q)
    path = export_onnx(q, tmp_path / "m.onnx", x)  # raises past the bound, on x and 5 random inputs
    rep = verify_onnx(q, onnx.load(str(path)), x, seed=1)  # 5 other random inputs
    assert rep.inputs == 6 and rep.worst <= 1.0
    if mode == "ptq_w8":
        assert rep.bound == "output range" and rep.moved == {}
    else:
        assert rep.bound == "last activation step" and max(rep.moved.values()) <= 0.01
        n_act = sum(getattr(m, "input_quant", None) is not None for m in lowbit.api.quantized_layers(q).values())
        assert len(rep.moved) >= n_act  # every quantized activation was compared
    for b in _inputs(x):  # the file, in a fresh session, against PyTorch
        with torch.no_grad():
            ref = q(b).numpy()
        got = _run_all(onnx.load(str(path)), b)[0]
        assert (got.argmax(1) == ref.argmax(1)).all()


@pytest.mark.parametrize("opset", [17, 18])
def test_vit_mean_pooling_float_and_quantized(opset, tmp_path):
    # mean over tokens: ReduceMean with axes as an attribute (opset 17) or an input (18 on)
    model = build_model("vit", (3, 16, 16), 10, seed=0, dim=32, depth=1, heads=4, pool="mean").eval()
    x = zoo_input("vit", 2, seed=3)
    proto = to_onnx(model, x, opset=opset)
    rep = verify_onnx(model, proto, x)  # the float model: its fused fast path against the unfused graph
    assert rep.bound == "output range" and rep.worst <= 1.0 and onnx_ops(proto)["ReduceMean"] == 1
    q = _quantize(model, "w4,a8", [zoo_input("vit", 8, seed=s) for s in range(2)])
    export_onnx(q, tmp_path / "m.onnx", x, opset=opset)
    assert verify_onnx(q, onnx.load(str(tmp_path / "m.onnx")), x, seed=2).bound == "last activation step"
