"""The command line: the tour prints the error table with sensible values; bad options exit 2 with a message."""
import re

from lowbit.cli import main


def test_tour_prints_the_error_table(capsys):
    assert main(["tour", "--seed", "1", "--shape", "64", "128", "--spec", "int8", "--spec", "int4:channel"]) == 0
    out = capsys.readouterr().out
    rows = {m.group(1): m.groups()[1:] for m in re.finditer(r"^\| (\S+) \| ([\d.]+) \| ([\d.e-]+) \| ([\d.]+) \|", out, re.M)}
    assert set(rows) == {"int8", "int4:channel"}
    assert float(rows["int8"][0]) == round(8 + 32 / (64 * 128), 3)  # one float32 scale
    # SQNR of uniform quantization: about 6 dB per bit
    assert 35 < float(rows["int8"][2]) < 45 and 14 < float(rows["int4:channel"][2]) < 22


def test_tour_is_deterministic(capsys):
    main(["tour", "--seed", "3", "--shape", "8", "64", "--spec", "int4"])
    a = capsys.readouterr().out
    main(["tour", "--seed", "3", "--shape", "8", "64", "--spec", "int4"])
    b = capsys.readouterr().out
    strip = lambda s: [line.rsplit("|", 2)[0] for line in s.splitlines()]  # drop the timing column
    assert strip(a) == strip(b)


def test_bad_spec_is_a_clear_error(capsys):
    assert main(["tour", "--spec", "int4:wat"]) == 2
    assert "unknown token 'wat'" in capsys.readouterr().err
