"""Quantized LSTM / GRU (issue 21): torch's recurrence in float, weights per gate and channel, one network."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import lowbit
from lowbit.api import quantized_layers
from lowbit.nn.rnn import QuantGRU, QuantLSTM
from lowbit.qtensor import QTensor

TOL = 1e-6
KINDS = {"lstm": (nn.LSTM, QuantLSTM), "gru": (nn.GRU, QuantGRU)}


def _close(a: Tensor, b: Tensor) -> float:
    return float((a - b).detach().abs().max())


def _flat(out: object) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("layers, bidirectional, batch_first", [(1, False, True), (2, True, False), (3, True, True)])
def test_rnn_equals_torch_in_float(kind, layers, bidirectional, batch_first):
    ref_cls, q_cls = KINDS[kind]
    torch.manual_seed(0)
    ref = ref_cls(5, 7, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first).eval()
    ours = q_cls.from_float(ref).eval()
    x = torch.randn((3, 6, 5) if batch_first else (6, 3, 5))
    d = 2 if bidirectional else 1
    h0 = torch.randn(layers * d, 3, 7)
    hx = (h0, torch.randn(layers * d, 3, 7)) if kind == "lstm" else h0
    for args in ((x,), (x, hx)):
        for no_grad in (False, True):
            with torch.set_grad_enabled(not no_grad):
                a, b = _flat(ref(*args)), _flat(ours(*args))
            assert [t.shape for t in a] == [t.shape for t in b]
            assert max(_close(p, q) for p, q in zip(a, b)) < TOL
    # unbatched input (a 2-D sequence)
    a, b = _flat(ref(x[0] if batch_first else x[:, 0])), _flat(ours(x[0] if batch_first else x[:, 0]))
    assert max(_close(p, q) for p, q in zip(a, b)) < TOL


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_rnn_dropout_between_layers_in_train_mode_and_gradients_match_torch(kind):
    ref_cls, q_cls = KINDS[kind]
    torch.manual_seed(0)
    ref = ref_cls(4, 6, num_layers=2, dropout=0.5, batch_first=True).train()
    ours = q_cls.from_float(ref).train()
    x = torch.randn(2, 5, 4)
    torch.manual_seed(1)
    a = ref(x)[0]
    torch.manual_seed(1)
    b = ours(x)[0]
    assert _close(a, b) < TOL
    a.sum().backward()
    b.sum().backward()
    assert _close(ref.weight_hh_l1.grad, ours.hh_l1.weight.grad) < 1e-5
    assert _close(ref.weight_ih_l0.grad, ours.ih_l0.weight.grad) < 1e-5


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_rnn_weights_are_quantized_per_gate_and_channel_biases_float(kind):
    ref_cls, _ = KINDS[kind]
    torch.manual_seed(0)
    model = nn.Sequential(ref_cls(4, 6, num_layers=2, bidirectional=True))
    q = lowbit.quantize(model, "w4")
    names = {f"0.{k}_l{i}{s}" for k in ("ih", "hh") for i in (0, 1) for s in ("", "_reverse")}
    assert set(quantized_layers(q)) == names
    gates = 4 if kind == "lstm" else 3
    hh = q[0].hh_l1_reverse
    assert hh.weight_quant.scale.numel() == gates * 6  # one scale per gate row
    w = hh.quantized_weight()
    assert torch.equal(w, hh.weight_quant.encode(hh.weight.detach()).dequantize())
    assert torch.equal(hh.bias, model[0].bias_hh_l1_reverse)  # biases stay float
    for row in range(gates * 6):
        assert len(torch.unique(w[row])) <= 15  # int4 symmetric: at most 15 levels per row


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("verb, config", [("ptq", "w4,a8"), ("qat", "w4:lsq")])
def test_rnn_convert_no_grad_and_save_load_are_one_network(kind, verb, config, tmp_path):
    ref_cls, _ = KINDS[kind]

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.rnn = ref_cls(4, 8, num_layers=2, bidirectional=True, batch_first=True)
            self.fc = nn.Linear(16, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(self.rnn(x)[0][:, -1])

    batches = [torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    if verb == "ptq":
        q = lowbit.quantize(Net(), config, calib=batches)
    else:
        q = lowbit.prepare_qat(Net(), config)
        opt = torch.optim.SGD(q.parameters(), lr=1e-2)
        for b in batches:
            opt.zero_grad()
            q(b).square().mean().backward()
            opt.step()
    q.eval()
    x = torch.randn(3, 5, 4)
    ref = q(x).detach()
    with torch.no_grad():
        assert torch.equal(q(x), ref)
    conv = lowbit.convert(q)
    assert all(isinstance(m.qweight, QTensor) for m in quantized_layers(conv).values())
    for model in (q, conv):
        for no_grad in (False, True):
            with torch.set_grad_enabled(not no_grad):
                assert torch.equal(model(x).detach(), ref)
        lowbit.save(model, tmp_path / "m.lowbit")
        back = lowbit.load(tmp_path / "m.lowbit", model=Net())
        assert torch.equal(back.eval()(x).detach(), ref)
    assert _close(Net()(x), ref) > 1e-4


def test_rnn_refuses_what_it_cannot_quantize():
    with pytest.raises(ValueError, match=r"module '0' \(LSTM\): proj_size=2 .*not supported"):
        lowbit.quantize(nn.Sequential(nn.LSTM(4, 6, proj_size=2)), "w4")
    q = QuantLSTM.from_float(nn.LSTM(4, 6))
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(5, 2, 4), [5, 3])
    with pytest.raises(TypeError, match="PackedSequence"):
        q(packed)
    with pytest.raises(ValueError, match="input_size=4"):
        q(torch.randn(5, 2, 3))
    with pytest.raises(TypeError, match="mod must be an nn.GRU"):
        QuantGRU.from_float(nn.LSTM(4, 6))
