"""Streaming PTQ of safetensors checkpoints: exact codes, bounded memory, atomic and resumable output."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lowbit import QTensor, load_qtensors, quantizer
from lowbit.cli import main
from lowbit.streaming import quantize_checkpoint, read_safetensors_header, write_safetensors_streaming

LAYOUT = [
    ("embed.weight", torch.bfloat16, (96, 256)),
    ("layers.0.attn.weight", torch.float32, (128, 256)),
    ("layers.0.attn.bias", torch.float32, (128,)),
    ("layers.0.norm.weight", torch.float16, (256,)),
    ("layers.0.mlp.weight", torch.float32, (200, 384)),
    ("layers.0.odd.weight", torch.float32, (64, 100)),  # 100 is not a multiple of 128
    ("position_ids", torch.int64, (1, 512)),
    ("mask", torch.bool, (16, 16)),
    ("tiny.weight", torch.float32, (4, 8)),
]


def _make(name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    if dtype == torch.int64:
        return torch.arange(shape[-1]).reshape(shape)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    return (torch.randn(shape, generator=g) * 0.05).to(dtype)


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    p = tmp_path / "model.safetensors"
    write_safetensors_streaming(p, LAYOUT, _make, {"format": "pt"})
    return p


@pytest.mark.parametrize("spec", ["int4:group128", "uint4:group64", "nf4", "int8:channel", "int4", "int3:channel1"])
def test_streaming_equals_in_memory_encode(ckpt, tmp_path, spec):
    out = tmp_path / "q.lowbit"
    # a tiny chunk forces several chunks per tensor
    res = quantize_checkpoint(ckpt, out, spec, chunk_mb=0.03, progress=False)
    got, meta = load_qtensors(out, with_metadata=True)
    assert set(got) == {n for n, _, _ in LAYOUT}
    assert meta["lowbit.spec"] == str(quantizer(spec).spec) and meta["source.format"] == "pt"
    for name, dtype, shape in LAYOUT:
        src = _make(name, dtype, shape)
        if name in res.quantized:
            ref = quantizer(spec).encode(src)
            qt = got[name]
            assert isinstance(qt, QTensor) and tuple(qt.shape) == shape
            assert torch.equal(qt.data, ref.data), name
            assert torch.equal(qt.scale, ref.scale), name
            assert (qt.zero_point is None) == (ref.zero_point is None)
            if ref.zero_point is not None:
                assert torch.equal(qt.zero_point, ref.zero_point)
            assert torch.equal(qt.dequantize(), ref.dequantize())
        else:
            assert got[name].dtype == dtype and torch.equal(got[name], src), name
    # 1-D, tiny, integer and boolean tensors are copied, with the reason
    assert {"layers.0.attn.bias", "layers.0.norm.weight", "position_ids", "mask", "tiny.weight"} <= set(res.copied)
    assert "not floating point (I64)" in res.copied["position_ids"]
    grouped = spec.split(":")[0] == "nf4" or "group" in spec
    assert ("layers.0.odd.weight" in res.copied) == grouped  # 100 columns do not split into groups
    assert "embed.weight" in res.quantized and "layers.0.mlp.weight" in res.quantized
    assert res.bytes_out == out.stat().st_size and res.ratio > 2.5
    # a valid safetensors file for the reference reader too
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(out))["embed.weight/scale"], got["embed.weight"].scale)


def test_options_quantize_1d_and_min_numel(ckpt, tmp_path):
    out = tmp_path / "q.lowbit"
    res = quantize_checkpoint(ckpt, out, "int8:group32", min_numel=16, quantize_1d=True, progress=False)
    assert {"layers.0.attn.bias", "layers.0.norm.weight"} <= set(res.quantized)
    assert "shape does not fit group32" in res.copied["tiny.weight"]  # 8 columns: no group of 32
    got = load_qtensors(out)
    torch.testing.assert_close(got["layers.0.attn.bias"].dequantize(), _make("layers.0.attn.bias", torch.float32, (128,)), atol=2e-3, rtol=0)


_PEAK_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    from lowbit.streaming import quantize_checkpoint
    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    base = rss("VmRSS:")
    res = quantize_checkpoint(sys.argv[1], sys.argv[2], sys.argv[3], progress=False)
    print(json.dumps({"base": base, "peak": rss("VmHWM:"), "n": len(res.quantized)}))
    """
)


def test_peak_memory_is_bounded_by_the_largest_tensor_not_the_file(tmp_path):
    src = tmp_path / "big.safetensors"
    layout = [(f"layers.{i}.weight", torch.float32, (3072, 4096)) for i in range(4)]  # 48 MiB each
    layout += [(f"layers.{i}.bias", torch.float32, (4096,)) for i in range(4)]
    size = write_safetensors_streaming(src, layout, lambda n, d, s: torch.randn(s, dtype=d))
    largest = 3072 * 4096 * 4
    assert size > 190 * 2**20
    r = subprocess.run([sys.executable, "-c", _PEAK_CHILD, str(src), str(tmp_path / "q.lowbit"), "int4:group128"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "CI": "true"})
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    growth = m["peak"] - m["base"]
    assert m["n"] == 4
    assert growth <= 2.5 * largest + 48 * 2**20, f"RSS grew {growth / 2**20:.0f} MiB for a {largest / 2**20:.0f} MiB tensor"
    assert growth < size / 2  # bounded by a tensor, not the file


def _reference_bytes(ckpt: Path, tmp_path: Path, spec: str = "int4:group128") -> bytes:
    ref = tmp_path / "ref.lowbit"
    quantize_checkpoint(ckpt, ref, spec, progress=False)
    return ref.read_bytes()


def test_exception_midway_leaves_no_output_and_resumes_to_identical_bytes(ckpt, tmp_path):
    want = _reference_bytes(ckpt, tmp_path)
    out = tmp_path / "q.lowbit"
    seen: list[str] = []

    def boom(name: str) -> None:
        seen.append(name)
        if len(seen) == 3:
            raise KeyboardInterrupt  # as a Ctrl-C would

    with pytest.raises(KeyboardInterrupt):
        quantize_checkpoint(ckpt, out, "int4:group128", progress=False, on_tensor=boom)
    assert not out.exists()
    partial, state = tmp_path / "q.lowbit.partial", tmp_path / "q.lowbit.partial.json"
    assert partial.exists() and sorted(json.loads(state.read_text())["done"]) == sorted(seen)
    with pytest.raises(ValueError, match="not a readable lowbit file"):
        load_qtensors(partial)  # a partial file cannot be mistaken for a finished one
    res = quantize_checkpoint(ckpt, out, "int4:group128", progress=False)
    assert res.resumed == 3
    assert out.read_bytes() == want
    assert not partial.exists() and not state.exists()


def test_partial_from_other_options_or_a_damaged_partial_restarts_cleanly(ckpt, tmp_path):
    want = _reference_bytes(ckpt, tmp_path)
    out = tmp_path / "q.lowbit"

    def stop(name: str) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        quantize_checkpoint(ckpt, out, "int8:channel", progress=False, on_tensor=stop)
    res = quantize_checkpoint(ckpt, out, "int4:group128", progress=False)  # other spec: start again
    assert res.resumed == 0 and out.read_bytes() == want
    out.unlink()
    with pytest.raises(RuntimeError):
        quantize_checkpoint(ckpt, out, "int4:group128", progress=False, on_tensor=stop)
    partial = tmp_path / "q.lowbit.partial"
    with open(partial, "r+b") as f:
        f.truncate(partial.stat().st_size - 10)  # damaged
    res = quantize_checkpoint(ckpt, out, "int4:group128", progress=False)
    assert res.resumed == 0 and out.read_bytes() == want


_KILL_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from lowbit.streaming import quantize_checkpoint
    n = []
    def kill(name):
        n.append(name)
        if len(n) == 4:
            os.kill(os.getpid(), signal.SIGKILL)
    quantize_checkpoint(sys.argv[1], sys.argv[2], "int4:group128", progress=False, on_tensor=kill)
    """
)


def test_killed_process_leaves_no_output_and_the_rerun_gives_identical_bytes(ckpt, tmp_path):
    want = _reference_bytes(ckpt, tmp_path)
    out = tmp_path / "q.lowbit"
    r = subprocess.run([sys.executable, "-c", _KILL_CHILD, str(ckpt), str(out)], capture_output=True, timeout=120)
    assert r.returncode == -9
    assert not out.exists() and (tmp_path / "q.lowbit.partial").exists()
    assert main(["quantize-checkpoint", str(ckpt), str(out), "--no-progress"]) == 0
    assert out.read_bytes() == want


def test_bad_input_gives_clear_errors(ckpt, tmp_path, capsys):
    out = tmp_path / "q.lowbit"
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        quantize_checkpoint(tmp_path / "missing.safetensors", out)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"PK\x03\x04 this is a zip file, not safetensors" * 10)
    with pytest.raises(ValueError, match="not a safetensors file"):
        quantize_checkpoint(junk, out)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(ckpt.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        quantize_checkpoint(cut, out)
    with pytest.raises(ValueError, match="unknown token 'group12x'"):
        quantize_checkpoint(ckpt, out, "int4:group12x")
    with pytest.raises(ValueError, match="deterministic rounding"):
        quantize_checkpoint(ckpt, out, "int4:group128:stochastic")
    nan = tmp_path / "nan.safetensors"
    write_safetensors_streaming(nan, [("w", torch.float32, (8, 128))], lambda n, d, s: torch.full(s, float("nan")))
    with pytest.raises(ValueError, match="tensor 'w'.*NaN"):
        quantize_checkpoint(nan, out)
    assert not out.exists()
    # the command line: exit code 2 and the message
    assert main(["quantize-checkpoint", str(junk), str(out)]) == 2
    assert "not a safetensors file" in capsys.readouterr().err
    assert main(["quantize-checkpoint", str(ckpt), str(out), "--spec", "int4:wat"]) == 2
    assert "unknown token 'wat'" in capsys.readouterr().err


def test_cli_summary_and_header_reader(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CI", "true")  # no progress bar
    out = tmp_path / "q.lowbit"
    assert main(["quantize-checkpoint", str(ckpt), str(out), "--spec", "nf4"]) == 0
    line = capsys.readouterr().out
    assert "3 tensors quantized, 6 copied" in line  # nf4 is group64: odd.weight (100 columns) is copied
    entries, meta, _ = read_safetensors_header(ckpt)
    assert [e.name for e in entries] == [n for n, _, _ in LAYOUT] and meta == {"format": "pt"}
    assert entries[1].dtype == "F32" and entries[1].shape == (128, 256) and entries[1].nbytes == 128 * 256 * 4
