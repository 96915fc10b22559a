"""The command line and ``lowbit.load`` take a user's model; a file never makes lowbit run code it names.

A user's network is given as ``path/to/file.py:build_fn`` or ``package.module:build_fn`` with a
``state_dict`` (``--weights``: torch.load with weights_only=True, or safetensors), or as a
``torch.export`` program (``.pt2``). ``lowbit.load`` rebuilds such a model only from a builder the
caller passes; a hostile builder path planted in a file's metadata is refused and never imported.
"""
from __future__ import annotations

import re
import sys
import textwrap

import pytest
import torch
from torch import nn

import lowbit
from lowbit.api import read_metadata
from lowbit.cli import main
from lowbit.data.images import loader
from lowbit.info import set_info
from lowbit.train import evaluate

USER_MODEL = '''
import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    """A user's digits CNN: functional ReLU, no nn.Sequential."""

    def __init__(self, width=8, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.head = nn.Linear(width * 16, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.head(torch.flatten(x, 1))


def build(num_classes=10):
    return Net(num_classes=num_classes)


def build_wide():
    return Net(width=12)


def build_mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


class Tokens(nn.Module):
    """A user's sequence classifier: token ids -> embedding -> LSTM -> last step -> linear."""

    def __init__(self, vocab=50, num_classes=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, 8)
        self.rnn = nn.LSTM(8, 8, batch_first=True)
        self.head = nn.Linear(8, num_classes)

    def forward(self, ids):
        out, _ = self.rnn(self.embed(ids))
        return self.head(out[:, -1])


def build_tokens():
    return Tokens()
'''


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``argv``; assert exit code 2 and one ``lowbit <cmd>: error:`` line without a traceback; return it."""
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"lowbit {argv[0]}: error: "), err
    return lines[0]


def _accuracy(out: str) -> float:
    return float(re.search(r"test accuracy on digits: ([\d.]+) %", out).group(1))


@pytest.fixture
def user(tmp_path, digits):
    """(builder spec, weights file, the trained float model): a user's model trained for a few steps."""
    src = tmp_path / "mynet.py"
    src.write_text(USER_MODEL)
    ns: dict = {}
    exec(compile(USER_MODEL, str(src), "exec"), ns)
    torch.manual_seed(0)
    model = ns["build"]()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _, (x, y) in zip(range(40), loader(digits.train, 64, shuffle=True, seed=0)):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    return f"{src}:build", str(weights), model.eval()


def test_eval_and_quantize_a_users_model(user, digits, tmp_path, capsys):
    spec, weights, model = user
    want = evaluate(model, loader(digits.test, 256))
    assert main(["eval", "--model", spec, "--weights", weights, "--data", "digits"]) == 0
    assert _accuracy(capsys.readouterr().out) == pytest.approx(want, abs=0.005)
    out = tmp_path / "q.lowbit"
    assert main(["quantize", "--model", spec, "--weights", weights, "--config", "w8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"-> {out}" in printed
    meta = read_metadata(out)
    assert meta["lowbit.source"] == spec and meta["lowbit.input_shape"] == "1,8,8" and meta["lowbit.stage"] == "converted"
    # the saved file names its builder, but lowbit does not import it on its own
    msg = _error(["eval", str(out)], capsys)
    assert "--model" in msg and spec in msg
    assert main(["eval", str(out), "--model", spec]) == 0
    q_acc = _accuracy(capsys.readouterr().out)
    assert abs(q_acc - want) <= 2.0  # 8-bit weights: within 2 points of float on 360 digits
    # the API: load() says exactly what it needs; builder= rebuilds bit for bit
    with pytest.raises(ValueError, match=r"pass model=.* or builder=.*mynet\.py:build"):
        lowbit.load(out)
    back = lowbit.load(out, builder=spec)
    x = digits.test.tensors[0]
    mod = sys.modules[[k for k in sys.modules if k.startswith("lowbit_user_mynet_")][0]]
    same = lowbit.load(out, model=mod.build())
    with torch.no_grad():
        assert torch.equal(back(x), same(x))
    assert evaluate(back, loader(digits.test, 256)) == pytest.approx(q_acc, abs=0.005)
    with pytest.raises(ValueError, match="not both"):
        lowbit.load(out, model=mod.build(), builder=spec)


def test_package_module_builder_and_safetensors_weights(user, tmp_path, monkeypatch, capsys, digits):
    from safetensors.torch import save_file

    spec, _, model = user
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(st))
    assert main(["eval", "--model", "userpkg.nets:build", "--weights", str(st)]) == 0
    assert _accuracy(capsys.readouterr().out) == pytest.approx(evaluate(model, loader(digits.test, 256)), abs=0.005)
    monkeypatch.delitem(sys.modules, "userpkg.nets", raising=False)
    monkeypatch.delitem(sys.modules, "userpkg", raising=False)


def test_train_qat_export_onnx_and_export_c_take_a_users_model(user, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    spec, weights, _ = user
    qat = tmp_path / "qat.lowbit"
    assert main(["train", "--model", spec, "--weights", weights, "--qat", "w4,a8", "--epochs", "1",
                 "--progress", "none", "--out", str(qat)]) == 0
    assert f"-> {qat}" in capsys.readouterr().out
    meta = read_metadata(qat)
    assert meta["lowbit.stage"] == "qat" and meta["lowbit.source"] == spec
    onnx_out = tmp_path / "m.onnx"
    assert main(["export-onnx", str(qat), str(onnx_out), "--model", spec]) == 0
    assert "QuantizeLinear" in capsys.readouterr().out and onnx_out.is_file()
    # a float user model straight from --model/--weights, with --input-shape
    assert main(["export-onnx", "--model", spec, "--weights", weights, "--input-shape", "1,8,8",
                 str(tmp_path / "f.onnx")]) == 0
    assert "Conv x1" in capsys.readouterr().out
    # the C target lowers module sequences (a functional max_pool2d is beyond it): a user's MLP
    mlp = spec.replace(":build", ":build_mlp")
    q = tmp_path / "q.lowbit"
    assert main(["quantize", "--model", mlp, "--config", "w4", "--out", str(q)]) == 0
    capsys.readouterr()
    assert main(["export-c", str(q), "--model", mlp, "--out", str(tmp_path / "c")]) == 0
    text = capsys.readouterr().out
    fq, integer = map(float, re.search(r"fake-quantized ([\d.]+) %, integer .* ([\d.]+) %", text).groups())
    assert (tmp_path / "c" / "lowbit_model.c").is_file() and abs(fq - integer) <= 1.0


def test_a_torch_export_program_is_quantized(user, tmp_path, capsys, digits):
    spec, weights, model = user
    x = digits.test.tensors[0]
    program = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(model, (x[:2],)), str(program))
    built = lowbit.models.build_user_model(str(program))
    with torch.no_grad():
        assert torch.equal(built(x), model(x))  # any batch size: the export's batch guard is dropped
    assert sorted(built.state_dict()) == sorted(model.state_dict())
    out = tmp_path / "p.lowbit"
    assert main(["quantize", "--model", str(program), "--config", "w8", "--out", str(out)]) == 0
    capsys.readouterr()
    q = lowbit.load(out, builder=str(program))
    assert sorted(lowbit.api.quantized_layers(q)) == ["conv", "head"]  # the lifted linear/conv calls
    ref = lowbit.convert(lowbit.quantize(model, "w8"))
    with torch.no_grad():
        assert torch.equal(q(x), ref(x))


def test_mismatches_are_one_line(user, tmp_path, capsys):
    spec, weights, _ = user
    msg = _error(["eval", "--model", spec, "--weights", weights, "--data", "mnist1d"], capsys)
    assert "does not take inputs of shape 1,40" in msg and "--data mnist1d" in msg
    msg = _error(["eval", "--model", spec, "--weights", weights, "--input-shape", "1,9,9"], capsys)
    assert "1,9,9" in msg and "1,8,8" in msg
    msg = _error(["eval", "--model", spec.replace(":build", ":build_wide"), "--weights", weights], capsys)
    assert "does not fit" in msg
    assert "does not exist" in _error(["eval", "--model", spec, "--weights", str(tmp_path / "no.pt")], capsys)
    assert "has no function 'nope'" in _error(["eval", "--model", spec.replace(":build", ":nope")], capsys)
    (tmp_path / "pickle.pt").write_bytes(b"not a zip")
    assert "weights_only" in _error(["eval", "--model", spec, "--weights", str(tmp_path / "pickle.pt")], capsys)
    with pytest.raises(SystemExit) as e:
        main(["quantize", "--model", "resnet9"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "did you mean 'resnet8'" in err


@pytest.mark.parametrize("planted", ["os:system", "EVIL", "builtins:exec"])
def test_a_hostile_builder_in_a_file_is_never_run(planted, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.py"
    evil.write_text(textwrap.dedent(f"""
        open({str(marker)!r}, "w").write("ran")

        def build(*args, **kwargs):
            open({str(marker)!r}, "w").write("ran")
            raise SystemExit(0)
    """))
    name = f"{evil}:build" if planted == "EVIL" else planted
    monkeypatch.chdir(tmp_path)
    model = lowbit.quantize(lowbit.models.build_model("mlp", (1, 8, 8), 10, seed=0), "w4")
    set_info(model, arch={"name": name, "input_shape": [1, 8, 8], "num_classes": 10})
    path = tmp_path / "hostile.lowbit"
    lowbit.save(model, path, metadata={"lowbit.source": f"{evil}:build", "lowbit.data": "digits"})
    assert name in read_metadata(path)["lowbit.arch"]
    with pytest.raises(ValueError, match="not a registered lowbit model") as e:
        lowbit.load(path)
    assert len(str(e.value).splitlines()) == 1 and "builder=" in str(e.value)
    msg = _error(["eval", str(path)], capsys)
    assert "not a registered lowbit model" in msg
    with pytest.raises(ValueError, match="registered"):
        lowbit.models.build_from_arch({"name": name, "input_shape": [1, 8, 8], "num_classes": 10})
    with pytest.raises(ValueError, match="plain values"):  # kwargs are data, never objects
        lowbit.models.build_from_arch({"name": "mlp", "input_shape": [1, 8, 8], "num_classes": 10,
                                       "kwargs": {"hidden": object()}})
    assert not marker.exists()


def test_export_onnx_takes_a_token_id_model(user, tmp_path, capsys):
    """A model whose first layer is an embedding is probed and exported with token ids, not floats."""
    pytest.importorskip("onnxruntime")
    spec = user[0].replace(":build", ":build_tokens")
    out = tmp_path / "tok.onnx"
    assert main(["export-onnx", "--model", spec, "--input-shape", "12", str(out)]) == 0
    text = capsys.readouterr().out
    # verified against PyTorch on token ids (export-onnx verifies unless --no-verify)
    assert out.is_file() and "Gather x" in text and "LSTM x1" in text
