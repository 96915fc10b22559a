"""Attention, transformer layers and embeddings (issue 21): equal to torch in float, one network when quantized."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import Tensor, nn

import lowbit
from lowbit.api import quantized_layers
from lowbit.nn import QuantLayer
from lowbit.nn.attention import (
    LowbitTransformerDecoderLayer,
    LowbitTransformerEncoder,
    LowbitTransformerEncoderLayer,
    QuantMultiheadAttention,
    transformer_handler,
)
from lowbit.nn.embedding import QuantEmbedding, QuantEmbeddingBag
from lowbit.qtensor import QTensor

TOL = 1e-6


def _close(a: Tensor, b: Tensor) -> float:
    return float((a - b).detach().abs().max())


def _mha_cases():
    # (constructor kwargs, self-attention?)
    yield dict(embed_dim=16, num_heads=4, batch_first=True), True
    yield dict(embed_dim=16, num_heads=4, batch_first=False), True
    yield dict(embed_dim=16, num_heads=2, batch_first=True, kdim=8, vdim=12), False
    yield dict(embed_dim=16, num_heads=4, bias=False), True
    yield dict(embed_dim=16, num_heads=4, add_bias_kv=True, add_zero_attn=True), True


def _inputs(mha: nn.MultiheadAttention, self_attn: bool, batched: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    shape = lambda n, d: ((3, n, d) if mha.batch_first else (n, 3, d)) if batched else (n, d)  # noqa: E731
    q = torch.randn(*shape(5, mha.embed_dim), generator=g)
    if self_attn:
        return q, q, q
    return q, torch.randn(*shape(7, mha.kdim), generator=g), torch.randn(*shape(7, mha.vdim), generator=g)


@pytest.mark.parametrize("case", range(5))
@pytest.mark.parametrize("need_weights", [True, False])
def test_mha_equals_torch_in_float_with_and_without_masks(case, need_weights):
    kwargs, self_attn = list(_mha_cases())[case]
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(**kwargs).eval()
    ours = QuantMultiheadAttention.from_float(ref).eval()
    q, k, v = _inputs(ref, self_attn)
    s = k.shape[1 if ref.batch_first else 0]
    kpm = torch.zeros(3, s, dtype=torch.bool)
    kpm[0, -2:] = True
    causal = torch.zeros(5, s, dtype=torch.bool)  # True = not attended (torch's convention)
    causal[:, 0] = True
    for masks in ({}, {"key_padding_mask": kpm}, {"attn_mask": causal}, {"attn_mask": causal, "key_padding_mask": kpm}):
        for no_grad in (False, True):
            with torch.set_grad_enabled(not no_grad):
                a, wa = ref(q, k, v, need_weights=need_weights, **masks)
                b, wb = ours(q, k, v, need_weights=need_weights, **masks)
            assert a.shape == b.shape and _close(a, b) < TOL, (masks, no_grad, _close(a, b))
            assert (wa is None) == (wb is None)
            if wa is not None:
                assert _close(wa, wb) < TOL


def test_mha_unbatched_per_head_weights_and_dropout_in_train_mode():
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(16, 4, dropout=0.3, batch_first=True)
    ours = QuantMultiheadAttention.from_float(ref)
    q = torch.randn(5, 16)
    a, wa = ref.eval()(q, q, q, average_attn_weights=False)
    b, wb = ours.eval()(q, q, q, average_attn_weights=False)
    assert wa.shape == wb.shape == (4, 5, 5) and _close(a, b) < TOL and _close(wa, wb) < TOL
    x = torch.randn(2, 5, 16)
    for need_weights in (True, False):  # the same random draws as torch's dropout
        torch.manual_seed(3)
        a, _ = ref.train()(x, x, x, need_weights=need_weights)
        torch.manual_seed(3)
        b, _ = ours.train()(x, x, x, need_weights=need_weights)
        assert _close(a, b) < TOL
    torch.manual_seed(3)
    c, _ = ours(x, x, x)
    torch.manual_seed(4)
    d, _ = ours(x, x, x)
    assert _close(c, d) > 1e-3  # dropout is really on in train mode


def _float_shells(model: nn.Module) -> nn.Module:
    """``model`` with lowbit's unfused classes and float attention (no quantizer anywhere)."""
    model = copy.deepcopy(model)
    for name, mod in list(model.named_modules()):
        parent, _, child = name.rpartition(".")
        host = model.get_submodule(parent) if name else None
        if isinstance(mod, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.TransformerEncoder)):
            new = transformer_handler(mod, None, None)
        elif isinstance(mod, nn.MultiheadAttention):
            new = QuantMultiheadAttention.from_float(mod)
        else:
            continue
        setattr(host, child, new)
    return model


class _EncDec(nn.Module):
    def __init__(self, norm_first: bool) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.1, batch_first=True, norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=not norm_first)
        self.decoder = nn.TransformerDecoderLayer(16, 4, 32, dropout=0.1, batch_first=True, norm_first=norm_first)

    def forward(self, x: Tensor, mask: Tensor | None = None, kpm: Tensor | None = None) -> Tensor:
        mem = self.encoder(x, mask=mask, src_key_padding_mask=kpm)
        return self.decoder(x, mem, tgt_mask=mask, memory_key_padding_mask=kpm)


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_layers_equal_torch_in_float_train_and_eval(norm_first):
    torch.manual_seed(0)
    ref = _EncDec(norm_first)
    ours = _float_shells(ref)
    assert type(ours.encoder) is LowbitTransformerEncoder and type(ours.decoder) is LowbitTransformerDecoderLayer
    assert type(ours.encoder.layers[0]) is LowbitTransformerEncoderLayer
    assert isinstance(ours.encoder.layers[1].self_attn, QuantMultiheadAttention)
    x = torch.randn(3, 6, 16)
    kpm = torch.zeros(3, 6, dtype=torch.bool)
    kpm[1, -2:] = True
    mask = nn.Transformer.generate_square_subsequent_mask(6)
    for kw in ({}, {"kpm": kpm}, {"mask": mask}):
        for no_grad in (False, True):  # no_grad: torch takes its fused / nested path, lowbit never does
            with torch.set_grad_enabled(not no_grad):
                a, b = ref.eval()(x, **kw), ours.eval()(x, **kw)
            if "kpm" in kw:  # torch's nested path leaves padded positions at 0; compare the real tokens
                a, b = a[~kpm], b[~kpm]
            assert _close(a, b) < TOL, (kw, no_grad, _close(a, b))
        torch.manual_seed(5)
        a = ref.train()(x, **kw)
        torch.manual_seed(5)
        b = ours.train()(x, **kw)
        assert _close(a, b) < TOL, (kw, "train")


def _spy_calls(model: nn.Module, x: Tensor) -> set[str]:
    layers = quantized_layers(model)
    called: set[str] = set()
    for n, m in layers.items():
        m.__dict__["quantized_weight"] = (lambda f, n: lambda: (called.add(n), f())[1])(m.quantized_weight, n)
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for m in layers.values():
            del m.__dict__["quantized_weight"]
    return called


def test_fast_path_is_never_taken_when_a_narrow_pattern_quantizes_inside():
    torch.manual_seed(0)
    model = nn.Sequential(nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 32, batch_first=True), 2, enable_nested_tensor=False))
    x = torch.randn(2, 5, 16)
    q = lowbit.prepare_qat(model, {"0.layers.1.linear1": "int4:channel"})  # attention left float
    assert set(quantized_layers(q)) == {"0.layers.1.linear1"}
    assert type(q[0].layers[1]) is LowbitTransformerEncoderLayer
    assert _spy_calls(q, x) == {"0.layers.1.linear1"}  # under no_grad torch's fused kernel would skip it
    with torch.no_grad():
        a = q.eval()(x)
    assert _close(a, q(x).detach()) < 1e-5  # the float attention may take its own fused path: float rounding only


def _model_with_attention() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16),
        nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True),
        nn.TransformerDecoderLayer(16, 2, 32, dropout=0.0, batch_first=False),
    )


class _Seq2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = _model_with_attention()

    def forward(self, x: Tensor) -> Tensor:
        h = self.body[1](self.body[0](x))
        return self.body[2](h, h)


@pytest.mark.parametrize("verb, config", [("ptq", "w4,a8"), ("qat", "w4:lsq,a8"), ("qat", "w8:lsq")])
def test_attention_model_convert_no_grad_and_save_load_are_one_network(verb, config, tmp_path):
    fm = _Seq2().eval()
    batches = [torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no layer left float with a warning
        if verb == "ptq":
            q = lowbit.quantize(fm, config, calib=batches)
        else:
            q = lowbit.prepare_qat(fm, config)
            opt = torch.optim.SGD(q.parameters(), lr=1e-2)
            for b in batches:
                opt.zero_grad()
                q(b).square().mean().backward()
                opt.step()
    q.eval()
    layers = quantized_layers(q)
    assert {"body.1.self_attn.q_proj", "body.1.self_attn.out_proj", "body.2.multihead_attn.v_proj", "body.2.linear2"} <= set(layers)
    x = torch.randn(3, 5, 8)
    assert _spy_calls(q, x) == set(layers)
    ref = q(x).detach()
    with torch.no_grad():
        assert torch.equal(ref, q(x))
    conv = lowbit.convert(q)
    assert all(isinstance(m.qweight, QTensor) for m in quantized_layers(conv).values())
    for no_grad in (False, True):
        with torch.set_grad_enabled(not no_grad):
            assert torch.equal(conv(x).detach(), ref)
    for model in (q, conv):
        lowbit.save(model, tmp_path / "m.lowbit")
        back = lowbit.load(tmp_path / "m.lowbit", model=_Seq2())
        for no_grad in (False, True):
            with torch.set_grad_enabled(not no_grad):
                assert torch.equal(back.eval()(x).detach(), ref)
    # the float model is a different network: quantization really happened
    assert _close(fm(x), ref) > 1e-4


def test_out_proj_alone_is_warned_as_float_and_layernorm_is_float_without_a_warning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.TransformerEncoderLayer(16, 4, 32, batch_first=True))
    with pytest.warns(UserWarning, match="out_proj.*stays float"):
        q = lowbit.prepare_qat(model, {"*": "int4:channel", nn.MultiheadAttention: None})
    assert "0.self_attn.out_proj" not in quantized_layers(q)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = lowbit.prepare_qat(model, "w4")  # LayerNorm matched by the wildcard: float, no warning
    assert isinstance(q[0].norm1, nn.LayerNorm) and not isinstance(q[0].norm1, QuantLayer)
    with pytest.raises(ValueError, match=r"'0.norm1' \(LayerNorm\) cannot be quantized"):
        lowbit.prepare_qat(model, {"0.norm1": "int4:channel"})


class _SelfDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dec = nn.TransformerDecoderLayer(16, 4, 32, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(x, x)


def test_decoder_layer_has_no_onnx_form_and_the_error_names_the_layer(tmp_path):
    # encoder layers export (tests/test_onnx_seq.py); a decoder layer is refused by name
    pytest.importorskip("onnx")
    from lowbit.targets.onnx_export import export_onnx

    q = lowbit.convert(lowbit.quantize(_SelfDecoder().eval(), "w8"))
    with pytest.raises(ValueError, match=r"'dec' \(LowbitTransformerDecoderLayer\) has no ONNX form"):
        export_onnx(q, tmp_path / "m.onnx", torch.randn(2, 5, 16))
    assert not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------ embeddings


def test_embedding_equals_torch_in_float_and_quantizes_per_row():
    torch.manual_seed(0)
    ref = nn.Embedding(20, 6, padding_idx=0)
    tokens = torch.tensor([[0, 3, 19, 7], [5, 0, 0, 1]])
    assert torch.equal(QuantEmbedding.from_float(ref, None)(tokens), ref(tokens))
    q = lowbit.prepare_qat(nn.Sequential(ref), "w4:lsq")
    emb = q[0]
    assert isinstance(emb, QuantEmbedding) and emb.weight_quant.scale.shape[0] == 20  # one scale per row
    out = emb(tokens)
    assert torch.equal(out[0, 0], torch.zeros(6))  # the padding row is zero on any grid
    assert len(torch.unique(emb.quantized_weight()[3] / emb.weight_quant.scale[3])) <= 16
    out.sum().backward()
    assert torch.equal(emb.weight.grad[0], torch.zeros(6)) and emb.weight.grad[3].abs().sum() > 0  # no grad to padding
    conv = lowbit.convert(q)
    assert torch.equal(conv(tokens), q.eval()(tokens).detach()) and isinstance(conv[0].qweight, QTensor)


def test_embedding_bag_equals_torch_in_float_and_max_norm_is_refused_naming_the_layer():
    torch.manual_seed(0)
    bag = nn.EmbeddingBag(20, 6, mode="mean")
    tokens, offsets = torch.tensor([1, 2, 4, 5, 4, 3]), torch.tensor([0, 2])
    assert torch.equal(QuantEmbeddingBag.from_float(bag, None)(tokens, offsets), bag(tokens, offsets))
    qb = lowbit.quantize(nn.Sequential(bag), "w8")[0]
    assert isinstance(qb, QuantEmbeddingBag) and _close(qb(tokens, offsets), bag(tokens, offsets)) < 0.02
    with pytest.raises(ValueError, match=r"module '0' \(Embedding\): max_norm=1.0 .*set max_norm=None"):
        lowbit.quantize(nn.Sequential(nn.Embedding(10, 4, max_norm=1.0)), "w4")
