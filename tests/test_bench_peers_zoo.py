"""bench_peers' zoo and PTQ side-by-side helpers: the counting and formatting the tables rely on, and lowbit's row."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import _peers_ptq  # noqa: E402
import _peers_zoo  # noqa: E402


class _Marked(nn.Linear):
    """Stands for a quantized layer."""


def test_count_follows_names_and_containers():
    float_model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)), nn.ReLU(), nn.Linear(4, 2))
    owners = _peers_zoo._owners(float_model)
    assert owners == ["0", "1.0", "1.1", "3"]
    # layer 0 swapped, the container 1 replaced by one whose children are both quantized, 3 left float
    q = nn.Sequential(_Marked(4, 4), nn.Sequential(_Marked(4, 4), _Marked(4, 4)), nn.ReLU(), nn.Linear(4, 2))
    assert _peers_zoo._count(owners, q, lambda m: isinstance(m, _Marked)) == "3/4"
    # a renamed child: "1.0" is missing, so its nearest ancestor "1" decides, and it holds a float weight
    q2 = nn.Sequential(_Marked(4, 4), nn.Sequential(), nn.ReLU(), _Marked(4, 2))
    q2[1].add_module("x", _Marked(4, 4))
    q2[1].add_module("y", nn.Linear(4, 4))
    assert _peers_zoo._count(owners, q2, lambda m: isinstance(m, _Marked)) == "2/4"


def test_short_error_is_one_public_line_safe_in_a_table():
    class _Private(ValueError):
        pass

    s = _peers_zoo._short(_Private("a | b\nsecond line"), n=40)
    assert s == "ValueError: a / b"
    long = _peers_zoo._short(RuntimeError("x" * 200), n=30)
    assert len(long) == 30 and long.endswith("…") and long.startswith("RuntimeError: ")


def test_zoo_markdown_has_one_column_per_cell():
    rows = [("resnet8", [f"c{i}" for i in range(len(_peers_zoo.COLUMNS))])]
    lines = _peers_zoo.zoo_markdown(rows, "## h").splitlines()
    assert lines[2].count("|") == lines[3].count("|") == lines[4].count("|") == len(_peers_zoo.COLUMNS) + 2
    assert lines[4].startswith("| resnet8 | c0 |")


def test_ptq_markdown_means_accuracy_and_takes_time_ratios():
    res = {(m, w, b): [(90.0, 2.0), (92.0, 4.0)] if w == "lowbit" else [(80.0, 4.0), (80.0, 8.0)]
           for m in _peers_ptq.METHODS for w in ("lowbit", "brevitas") for b in (4,)}
    text = _peers_ptq.ptq_markdown({"digits": (95.0, res, 2)}, "## h", bits=(4,))
    assert "float 95.00 % (mean of 2 seeds)" in text
    assert "| GPTQ | W4 | 91.00 (-4.00) | 80.00 (-15.00) | +11.00 pt | 3.00 | 6.00 | 0.50x |" in text


def test_ptq_rows_from_slices_merge_to_the_same_table(tmp_path):
    import json

    f = tmp_path / "rows.jsonl"
    runs = [("digits", s, 4, m, w, 90.0 + s + (w == "lowbit"), 1.0 + s) for s in (0, 1) for m in _peers_ptq.METHODS
            for w in ("lowbit", "brevitas")]
    with open(f, "w") as fh:  # two slices appended one after the other, as two processes would
        for d, s, b, m, w, a, t in runs:
            fh.write(json.dumps({"data": d, "seed": s, "float": 95.0 + s, "bits": b, "method": m, "who": w,
                                 "acc": a, "s": t}) + "\n")
    out, seeds = _peers_ptq.ptq_from_rows(str(f))
    assert seeds == [0, 1]
    fl, res, n = out["digits"]
    assert (fl, n) == (95.5, 2)
    assert res["gptq", "lowbit", 4] == [(91.0, 1.0), (92.0, 2.0)]
    text = _peers_ptq.ptq_markdown(out, "## h", bits=(4,))
    assert "| GPTQ | W4 | 91.50 (-4.00) | 90.50 (-5.00) | +1.00 pt | 1.50 | 1.50 | 1.00x |" in text


def test_lowbit_handles_the_conv1d_row(tmp_path):
    fm, batches, x, owners = _peers_zoo._setup("conv1d")
    torch.manual_seed(0)
    cells = _peers_zoo._lowbit(fm, batches, x, owners, tmp_path)
    n = len(owners)
    assert cells == [f"works {n}/{n}", f"works {n}/{n}, bit-exact", "works, verified"]
