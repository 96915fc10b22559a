"""``lowbit snn``: the ablation table, the report files, and same seed -> same numbers."""
import json

import pytest

from lowbit.cli import main

TINY = ["snn", "--bits", "2", "--epochs", "2", "--qat-epochs", "1", "--samples", "12", "--classes", "3",
        "--units", "10", "--steps", "10", "--hidden", "12", "--threads", "1"]


def test_snn_command_table_report_and_determinism(tmp_path, capsys):
    assert main(TINY + ["--seed", "1", "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    for row in ("| FP32 |", "| PTQ | weights only |", "| QAT | weights only |", "| SQUAT | uniform |",
                "| SQUAT | thr |", "| QAT+SQUAT | uniform |", "| QAT+SQUAT | thr |"):
        assert row in out
    assert "% clip" in out
    assert (tmp_path / "a" / "state_levels.png").stat().st_size > 1000
    res_a = json.loads((tmp_path / "a" / "ablation.json").read_text())
    assert len(res_a["rows"]) == 2 + 8  # FP32, FP32 fine-tuned, 8 quantized variants per bit width
    assert "| FP32 fine-tuned |" in out
    assert main(TINY + ["--seed", "1", "--no-plots", "--out", str(tmp_path / "b")]) == 0
    res_b = json.loads((tmp_path / "b" / "ablation.json").read_text())
    assert [r["acc"] for r in res_a["rows"]] == [r["acc"] for r in res_b["rows"]]
    assert not (tmp_path / "b" / "state_levels.png").exists()


def test_snn_command_bad_bits(capsys):
    assert main(["snn", "--bits", "1", "--no-plots"]) == 2
    assert "bits" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--state-range", "--scope"])
def test_snn_command_rejects_unknown_choice(flag):
    with pytest.raises(SystemExit):
        main(["snn", flag, "bogus"])


@pytest.mark.parametrize("value", ["4=x", "4", "4=1.5"])
def test_snn_command_rejects_bad_thr_multiplier(value, capsys):
    assert main(["snn", "--thr-multiplier", value, "--no-plots"]) == 2
    assert "multiplier" in capsys.readouterr().err


def test_snn_command_with_the_eventprop_trainer(tmp_path, capsys):
    """`lowbit snn --trainer eventprop` trains with EventProp and prints float / PTQ / QAT rows, deterministically."""
    import re

    from lowbit.cli import main

    argv = ["snn", "--trainer", "eventprop", "--bits", "8", "--epochs", "2", "--qat-epochs", "1", "--hidden", "16",
            "--samples", "30", "--classes", "3", "--steps", "20", "--seed", "0", "--out", str(tmp_path)]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert (tmp_path / "eventprop.md").read_text().count("| EventProp (exp readout) |") == 3  # --out honoured
    rows = re.findall(r"^\| EventProp \(exp readout\) \| (.+?) \| ([\d.]+) \|$", first, re.M)
    assert [r[0].split()[0] for r in rows] == ["float", "PTQ", "QAT"]
    assert all(0.0 <= float(r[1]) <= 100.0 for r in rows)
    assert main(argv) == 0
    assert re.findall(r"^\| EventProp .*$", capsys.readouterr().out, re.M) == re.findall(r"^\| EventProp .*$", first, re.M)
    assert main([*argv, "--readout", "ttfs"]) == 0  # the first-spike-time readout
    assert len(re.findall(r"^\| EventProp \(ttfs readout\) \| .+ \| [\d.]+ \|$", capsys.readouterr().out, re.M)) == 3
