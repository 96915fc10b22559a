"""Config parsing and matching, quantize / prepare_qat / convert, lossless save / load, clear errors."""
import os
import warnings

import pytest
import torch
from torch import nn

import lowbit
from lowbit import QuantConfig
from lowbit.models import build_model
from lowbit.nn import PACT, QuantConv2d, QuantLinear



@pytest.fixture(scope="module")
def float_model():
    m = build_model("vgg", (1, 8, 8), 10, seed=0, widths=(8, 16))
    m.train()
    with torch.no_grad():  # give BN real statistics
        for i in range(4):
            m(torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(i)))
    return m.eval()


def _batches(n=3, seed=10):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(n)]


X = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(99))


# ------------------------------------------------------------------ config


def test_config_string_round_trip_and_shorthands():
    c = QuantConfig.parse("*=int4:channel:mse, classifier=int8, features.0=none, a:*=uint8, type:Linear=w3, fold_bn=false")
    assert c.weights == {"*": "int4:channel:mse", "classifier": "int8", "features.0": None, nn.Linear: "int3:channel:mse"}
    assert c.acts == {"*": "uint8"} and c.fold_bn is False
    assert QuantConfig.parse(str(c)) == c
    s = QuantConfig.parse("w4:lsq, a8")
    assert s.weights == {"*": "int4:channel:lsq"} and s.acts == {"*": "uint8:p99.99"}
    assert QuantConfig.parse("a4:pact").acts == {"*": "uint4:pact"}
    assert QuantConfig.parse("int4:tensor:p99").weights == {"*": "int4:tensor:p99"}


@pytest.mark.parametrize(
    "text,match",
    [
        ("*=int0", "bits"),
        ("*=int4:bogus", "unknown token 'bogus'"),
        ("classifier", "expected 'pattern=spec'"),
        ("fold_bn=maybe", "fold_bn must be true or false"),
        ("type:Nope=int4", "unknown module type 'Nope'"),
        ("w3:int4", "has 4 bits, not 3"),
        ("*=int4:pact", "activation"),
    ],
)
def test_bad_config_strings_get_clear_errors(text, match):
    with pytest.raises(ValueError, match=match):
        QuantConfig.parse(text)


def test_last_matching_rule_wins(float_model):
    q = lowbit.quantize(float_model, {"*": "int4:channel:mse", "classifier": "int8", "features.0": None})
    assert not isinstance(q.features[0], QuantConv2d)  # kept float
    assert q.features[3].weight_spec == "int4:channel:mse"
    assert q.classifier.weight_spec == "int8"
    assert isinstance(q.features[1], nn.Identity)  # BN folded


def test_type_rules_and_conv_layers_are_quantized(float_model):
    q = lowbit.quantize(float_model, {nn.Conv2d: "int4:channel", nn.Linear: "int8:channel"})
    convs = [m for m in q.modules() if isinstance(m, QuantConv2d)]
    assert len(convs) == 4 and all(m.weight_spec == "int4:channel" for m in convs)
    assert isinstance(q.classifier, QuantLinear)


def test_config_errors_name_the_module(float_model):
    with pytest.raises(ValueError, match="'clasifier' matches no module"):
        lowbit.quantize(float_model, {"*": "int8", "clasifier": "int4"})
    emb = nn.Sequential(nn.PReLU(), nn.Flatten(), nn.Linear(8, 2))  # PReLU: a module with weights and no handler
    with pytest.raises(ValueError, match=r"module '0' \(PReLU\) cannot be quantized"):
        lowbit.quantize(emb, {"0": "int4"})
    with pytest.warns(UserWarning, match=r"0 \(PReLU\)"):
        q = lowbit.quantize(emb, "w4")
    assert isinstance(q[2], QuantLinear)
    with pytest.raises(ValueError, match=r"module .features.0. \(Conv2d\): group size 64"):
        lowbit.quantize(float_model, "*=int4:group64")
    with pytest.raises(ValueError, match="calib="):
        lowbit.quantize(float_model, "w8,a8")
    with pytest.raises(TypeError, match="config must be"):
        lowbit.quantize(float_model, 4)


def test_quantize_copies_unless_inplace(float_model):
    before = {k: v.clone() for k, v in float_model.state_dict().items()}
    lowbit.quantize(float_model, "w4")
    assert all(torch.equal(before[k], v) for k, v in float_model.state_dict().items())


# ------------------------------------------------------------------ convert: exact


@pytest.mark.parametrize("config", ["w8", "w4", "*=int3:tensor:p99.9", "*=uint4:channel", "w4,a8", "w2,a:*=uint4:mse"])
def test_convert_equals_fake_quant_forward_exactly(float_model, config):
    q = lowbit.quantize(float_model, config, calib=_batches())
    with torch.no_grad():
        fake = q(X)
    c = lowbit.convert(q)
    with torch.no_grad():
        real = c(X)
    assert torch.equal(fake, real)
    for name, layer in lowbit.api.quantized_layers(c).items():
        assert layer.converted and not layer.weight.requires_grad
        ints = layer.qweight.int_repr()
        assert not ints.is_floating_point() and torch.equal(layer.qweight.dequantize(), layer.weight)
        fmt = layer.qweight.fmt
        assert int(ints.min()) >= fmt.qmin and int(ints.max()) <= fmt.qmax


def test_qat_then_convert_is_exact_and_gradients_reach_shadow_weights(float_model):
    q = lowbit.prepare_qat(float_model, "w3:lsq, a:*=uint8, a:features.0=none", calib=_batches())
    assert q.training and q.features[0].input_quant is None and q.features[3].input_quant is not None
    opt = torch.optim.Adam(q.parameters(), lr=1e-3)
    for x, y in _batches(3, seed=1):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(q(x), y).backward()
        assert q.features[3].weight.grad.abs().sum() > 0
        assert q.features[3].weight_quant.scale.grad.abs().sum() > 0
        opt.step()
    q.eval()
    with torch.no_grad():
        fake = q(X)
    c = lowbit.convert(q)
    with torch.no_grad():
        assert torch.equal(c(X), fake)


def test_pact_config_replaces_relus(float_model):
    q = lowbit.prepare_qat(float_model, "w4:lsq, a4:pact")
    pacts = [m for m in q.modules() if isinstance(m, PACT)]
    assert len(pacts) == 4 and all(p.bits == 4 for p in pacts)
    assert not any(isinstance(m, nn.ReLU) for m in q.modules())
    y = q.features[:3](X)
    assert len(torch.unique(y)) <= 16


# ------------------------------------------------------------------ save / load


@pytest.mark.parametrize("stage", ["float", "ptq", "qat", "converted", "converted_act", "pact"])
def test_save_load_gives_identical_logits(float_model, stage, tmp_path):
    m = {
        "float": lambda: float_model,
        "ptq": lambda: lowbit.quantize(float_model, "w4,a8", calib=_batches()),
        "qat": lambda: lowbit.prepare_qat(float_model, "w3:lsq,a:*=uint8", calib=_batches()),
        "converted": lambda: lowbit.convert(lowbit.quantize(float_model, "w2")),
        "converted_act": lambda: lowbit.convert(lowbit.prepare_qat(float_model, "w4:lsq,a8:lsq", calib=_batches())),
        "pact": lambda: lowbit.convert(lowbit.prepare_qat(float_model, "w4:lsq,a4:pact", calib=_batches())),
    }[stage]()
    m.eval()
    path = tmp_path / "m.lowbit"
    lowbit.save(m, path)
    m2 = lowbit.load(path)
    m2.eval()
    with torch.no_grad():
        assert torch.equal(m(X), m2(X))
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_converted_file_stores_integers(float_model, tmp_path):
    c = lowbit.convert(lowbit.quantize(float_model, "w2"))
    lowbit.save(c, tmp_path / "int.lowbit")
    lowbit.save(float_model, tmp_path / "float.lowbit")
    entries = lowbit.load_qtensors(tmp_path / "int.lowbit")
    assert isinstance(entries["features.3.weight"], lowbit.QTensor) and entries["features.3.weight"].bits == 2
    assert os.path.getsize(tmp_path / "int.lowbit") < os.path.getsize(tmp_path / "float.lowbit")


def test_checkpoint_keeps_float_and_quantized_weights(float_model, tmp_path):
    q = lowbit.prepare_qat(float_model, "w4:lsq")
    lowbit.save(q, tmp_path / "ck.lowbit")
    entries = lowbit.load_qtensors(tmp_path / "ck.lowbit")
    w = entries["features.3.weight"]
    qw = entries["features.3.weight:q"]
    assert torch.equal(w, q.features[3].weight.detach())
    with torch.no_grad():
        assert torch.equal(qw.dequantize(), q.features[3].weight_quant(q.features[3].weight))


def test_load_user_model_needs_the_architecture(tmp_path):
    torch.manual_seed(0)
    user = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(576, 3))
    c = lowbit.convert(lowbit.quantize(user, "w4"))
    lowbit.save(c, tmp_path / "u.lowbit")
    with pytest.raises(ValueError, match="pass model="):
        lowbit.load(tmp_path / "u.lowbit")
    fresh = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(576, 3))
    back = lowbit.load(tmp_path / "u.lowbit", model=fresh)
    x = torch.rand(2, 1, 14, 14)
    with torch.no_grad():
        assert torch.equal(back(x), c(x))
    wrong = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(576, 5))
    with pytest.raises(ValueError, match="same architecture|do not fit|size mismatch"):
        lowbit.load(tmp_path / "u.lowbit", model=wrong)


def test_load_rejects_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        lowbit.load(tmp_path / "missing.lowbit")
    lowbit.save_qtensors(tmp_path / "t.lowbit", {"w": torch.ones(3)})
    with pytest.raises(ValueError, match="not a model written by lowbit.save"):
        lowbit.load(tmp_path / "t.lowbit")
    (tmp_path / "junk.lowbit").write_bytes(b"not a file at all")
    with pytest.raises(ValueError):
        lowbit.load(tmp_path / "junk.lowbit")


def test_convert_needs_a_quantized_model(float_model):
    with pytest.raises(ValueError, match="no quantized layers"):
        lowbit.convert(float_model)
    q = lowbit.prepare_qat(float_model, "w4,a:*=uint8")
    with pytest.raises(ValueError, match="seen no data"):
        lowbit.convert(q)


def test_qat_from_scratch_keeps_batchnorm_and_save_load_round_trips(tmp_path, digits):
    from lowbit.models import build_model

    model = build_model("vgg", digits.input_shape, digits.num_classes, seed=0, widths=(4, 8))
    with pytest.warns(UserWarning, match="never seen data"):
        qat = lowbit.prepare_qat(model, "w4")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in qat.modules())
    qat.train()
    qat(digits.train.tensors[0][:64])  # BN statistics move: a trained BN, not folded
    qat.eval()
    lowbit.save(qat, tmp_path / "scratch.lowbit")
    back = lowbit.load(tmp_path / "scratch.lowbit").eval()
    x = digits.test.tensors[0][:32]
    with torch.no_grad():
        assert torch.equal(back(x), qat(x))
