"""QTensor: lossless files, size against the ideal, atomic writes, clear errors on bad files."""
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit import QTensor, load_qtensors, quantizer, save_qtensors
from lowbit.formats import Codebook
from lowbit.qtensor import FILE_VERSION


@pytest.mark.parametrize("spec", ["int8", "int4:channel", "uint3:group8", "int2:mse", "fxp5:p99", "int1", "int12", "uint7"])
def test_round_trip_through_a_file_is_lossless(tmp_path, spec):
    x = torch.randn(24, 40, generator=torch.Generator().manual_seed(1))
    qt = quantizer(spec).encode(x)
    path = tmp_path / "w.safetensors"
    save_qtensors(path, {"w": qt, "bias": torch.arange(3.0)})
    back = load_qtensors(path)
    assert torch.equal(back["bias"], torch.arange(3.0))
    b = back["w"]
    assert isinstance(b, QTensor) and b.shape == qt.shape and b.fmt == qt.fmt and b.granularity == qt.granularity
    assert torch.equal(b.data, qt.data) and torch.equal(b.scale, qt.scale)
    assert torch.equal(b.dequantize(), qt.dequantize())
    assert torch.equal(b.dequantize(), quantizer(spec)(x))


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 33), bits=st.integers(1, 8), signed=st.booleans(), seed=st.integers(0, 999))
def test_encode_dequantize_equals_fake_quant(rows, cols, bits, signed, seed):
    x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    q = quantizer(f"{'int' if signed else 'uint'}{bits}:channel")
    assert torch.allclose(q.encode(x).dequantize(), q(x), atol=1e-6)


def test_int_repr_is_the_twos_complement_integer():
    q = quantizer("int4").fit(torch.tensor([-8.0, 7.0]))  # scale 1
    qt = q.encode(torch.tensor([[-8.0, -1.0, 0.0, 7.0]]))
    assert qt.int_repr().tolist() == [[-8, -1, 0, 7]]
    assert qt.codes().tolist() == [[0, 7, 8, 15]]


def test_learned_codebook_round_trips_with_its_levels(tmp_path):
    from lowbit import Quantizer

    cb = Codebook([-0.7, -0.1, 0.0, 0.3, 0.9], name="learned")
    q = Quantizer(cb)
    x = torch.randn(100)
    qt = q.encode(x)
    save_qtensors(tmp_path / "c.safetensors", {"w": qt})
    b = load_qtensors(tmp_path / "c.safetensors")["w"]
    assert torch.equal(b.fmt.levels, cb.levels) and torch.equal(b.dequantize(), qt.dequantize())


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_file_size_is_within_one_percent_of_ideal(tmp_path, bits):
    n = 1_000_000
    x = torch.randn(1000, 1000)
    qt = quantizer(f"int{bits}:channel").encode(x)
    path = tmp_path / "big.safetensors"
    save_qtensors(path, {"w": qt})
    ideal = n * bits / 8 + 1000 * 4  # codes + per-channel float32 scales
    assert os.path.getsize(path) <= 1.01 * ideal


def test_metadata_round_trip(tmp_path):
    save_qtensors(tmp_path / "m.safetensors", {"w": quantizer("int8").encode(torch.ones(3))}, {"model": "mlp"})
    _, meta = load_qtensors(tmp_path / "m.safetensors", with_metadata=True)
    assert meta == {"model": "mlp"}


def test_truncated_file_gives_a_clear_error(tmp_path):
    path = tmp_path / "t.safetensors"
    save_qtensors(path, {"w": quantizer("int4").encode(torch.randn(1000))})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable lowbit file"):
        load_qtensors(path)
    path.write_bytes(data[:5])
    with pytest.raises(ValueError, match="not a readable lowbit file"):
        load_qtensors(path)


def test_foreign_files_give_clear_errors(tmp_path):
    from safetensors.torch import save_file

    foreign = tmp_path / "f.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match="not a lowbit file"):
        load_qtensors(foreign)
    text = tmp_path / "t.txt"
    text.write_text("hello world, not a checkpoint")
    with pytest.raises(ValueError, match="not a readable lowbit file"):
        load_qtensors(text)
    with pytest.raises(FileNotFoundError, match="no such quantized checkpoint"):
        load_qtensors(tmp_path / "missing.safetensors")
    newer = tmp_path / "v.safetensors"
    save_file({"x": torch.zeros(2)}, str(newer), metadata={"lowbit": "99", "index": "{}"})
    with pytest.raises(ValueError, match=f"reads version {FILE_VERSION}"):
        load_qtensors(newer)


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "a.safetensors"
    save_qtensors(path, {"w": quantizer("int8").encode(torch.ones(4))})
    before = path.read_bytes()

    import safetensors.torch

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_qtensors(path, {"w": quantizer("int8").encode(torch.zeros(4))})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]  # no temp file left behind


def test_bad_arguments_to_save(tmp_path):
    with pytest.raises(ValueError, match="non-empty mapping"):
        save_qtensors(tmp_path / "x", {})
    with pytest.raises(TypeError, match="QTensor or a Tensor"):
        save_qtensors(tmp_path / "x", {"w": [1, 2]})
    with pytest.raises(ValueError, match="without '/'"):
        save_qtensors(tmp_path / "x", {"a/b": torch.ones(1)})
    assert not (tmp_path / "x").exists()


def test_a_population_encodes_to_independent_tensors(tmp_path):
    a, b = torch.randn(4, 3), torch.randn(4, 5)
    q = quantizer("fxp8:p99:channel").fit([a, b])
    qa, qb = q.encode(a), q.encode(b)
    qa.scale.mul_(2)  # owning its scales, one QTensor cannot change another or the quantizer
    assert torch.equal(qb.scale, q.scale)
    save_qtensors(tmp_path / "p.safetensors", {"a": q.encode(a), "b": qb})
    assert torch.equal(load_qtensors(tmp_path / "p.safetensors")["b"].dequantize(), q(b))
