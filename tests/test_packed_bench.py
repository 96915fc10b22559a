"""bench_packed's helpers: the bytes it reports for a model are the tensors it holds, and bad sizes are refused."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

import lowbit
from lowbit.nn import packed

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_packed  # noqa: E402


def test_tensor_bytes_counts_packed_buffers_and_float_weights() -> None:
    f = nn.Sequential(nn.Linear(256, 128, bias=False))
    assert bench_packed._tensor_bytes(f) == 256 * 128 * 4
    c = lowbit.convert(lowbit.quantize(f, "w4:group128"), kernels="auto")
    assert c[0].kernel is not None
    assert bench_packed._tensor_bytes(c) == packed.packed_nbytes_of(c[0]) == 256 * 128 // 2 + 128 * 2 * 4


def test_a_lowbit_layer_is_built_without_its_float_copy() -> None:
    layer = bench_packed._layer("w8", 256, 128, torch.bfloat16)
    assert layer.kernel.name == "int8" and "weight" not in layer.state_dict()
    assert layer._buffers["qweight_scale"].dtype == torch.bfloat16


def test_bad_sizes_are_refused() -> None:
    r = subprocess.run([sys.executable, str(BENCH / "bench_packed.py"), "--dim", "100"], capture_output=True, text=True)
    assert r.returncode != 0 and "--dim and --ffn must be multiples of 128" in r.stderr
