"""Shared plumbing: one atomic writer (0644, reproducible bytes), one training loop with hooks, one evaluate, one record."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lowbit
from lowbit import progress
from lowbit.info import FORMAT_VERSION, LowbitInfo, attach, info_of
from lowbit.loop import Hook, count_correct, evaluate, run_epochs
from lowbit.models import build_model
from lowbit.train import fit


@pytest.fixture
def private_umask():
    """A umask that would make ordinary writes private: outputs must still be 0644."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _data(n: int = 96, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    return TensorDataset(x, (x.flatten(1)[:, :10].argmax(1)))


def _mlp() -> nn.Module:
    return build_model("mlp", (1, 8, 8), 10, seed=0, hidden=(16,))


def _no_temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- one atomic writer

_SAVE = """
import sys, torch, lowbit
from lowbit.models import build_model
m = lowbit.convert(lowbit.quantize(build_model("mlp", (1, 8, 8), 10, seed=0, hidden=(16,)), "w4"))
lowbit.save(m, sys.argv[1], metadata={"zeta": "1", "alpha": "2", "mid": "3"})
"""


def test_save_is_byte_identical_across_processes_and_0644(tmp_path, private_umask):
    # The reference safetensors writer orders the metadata by a per-process hash: two
    # processes wrote different bytes for the same model before the header was sorted.
    paths = [tmp_path / f"m{i}.lowbit" for i in range(3)]
    for p in paths:
        subprocess.run([sys.executable, "-c", _SAVE, str(p)], check=True, timeout=120)
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    assert len(digests) == 1
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in paths)
    assert _no_temporaries(tmp_path) == []
    meta = lowbit.api.read_metadata(paths[0])
    assert (meta["zeta"], meta["alpha"], meta["lowbit.stage"]) == ("1", "2", "converted")


def test_qat_save_twice_is_identical_and_loads(tmp_path):
    q = lowbit.prepare_qat(_mlp(), "w4:lsq,a8")
    lowbit.save(q, tmp_path / "a.lowbit")
    lowbit.save(copy.deepcopy(q), tmp_path / "b.lowbit")
    assert (tmp_path / "a.lowbit").read_bytes() == (tmp_path / "b.lowbit").read_bytes()
    back = lowbit.load(tmp_path / "a.lowbit")
    x = _data(8).tensors[0]
    q.eval(), back.eval()
    torch.testing.assert_close(back(x), q(x), rtol=0, atol=0)


def test_every_writer_makes_0644_files_and_leaves_no_temporaries(tmp_path, private_umask):
    from lowbit.streaming import quantize_checkpoint, write_safetensors_streaming
    from lowbit.targets.mcu.export import export

    x = _data(32).tensors[0].abs()  # inputs >= 0: the C target needs input zero point 0
    q = lowbit.convert(lowbit.quantize(_mlp(), "w4,a8", calib=[x]))
    src = tmp_path / "src.safetensors"
    write_safetensors_streaming(src, [("w", torch.float32, (64, 128))], lambda n, d, s: torch.ones(s, dtype=d))
    quantize_checkpoint(src, tmp_path / "q.lowbit", "int4:group64", min_numel=1, progress=False)
    lowbit.save_qtensors(tmp_path / "t.lowbit", {"w": torch.ones(3)})
    export(q, tmp_path / "c", calib=x)  # a new folder
    export(q, tmp_path / "c", calib=x)  # an existing one
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == ["lowbit_model.c", "lowbit_model.h", "q.lowbit", "src.safetensors", "t.lowbit"]
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(0o644) for p in files}
    assert _no_temporaries(tmp_path) == []


def test_canonical_header_sorts_keys_and_keeps_the_data():
    from safetensors.torch import load, save

    from lowbit.safetensors_header import canonical

    t = {"b": torch.arange(5, dtype=torch.float32), "a": torch.ones(2, 3, dtype=torch.int8)}
    raw = save(t, metadata={"z": "1", "a": "\u00e9\n"})
    out = canonical(raw)
    n = int.from_bytes(out[:8], "little")
    head = out[8 : 8 + n].decode()
    assert head.index('"__metadata__"') < head.index('"a"') < head.index('"b"') and n % 8 == 0
    assert canonical(out) == out
    back = load(out)
    assert set(back) == {"a", "b"} and all(torch.equal(back[k], t[k]) for k in t)
    with pytest.raises(ValueError, match="not a safetensors file"):
        canonical(b"\x01")


# --------------------------------------------------------------------------- one loop


def _old_fit(model: nn.Module, loader: DataLoader, epochs: int, lr: float, pact_lambda: float) -> list[float]:
    """The loop ``fit`` ran before it became a configuration of ``run_epochs`` (kept here as the reference)."""
    from lowbit.nn.act import pact_penalty

    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * len(loader)))
    model.train()
    losses = []
    for _ in range(epochs):
        run, n = 0.0, 0
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            if pact_lambda > 0:
                loss = loss + pact_lambda * pact_penalty(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run += float(loss.detach()) * len(y)
            n += len(y)
        losses.append(run / n)
    return losses


@pytest.mark.parametrize("config, pact_lambda", [(None, 0.0), ("w4:lsq,a4:pact", 1e-3)])
def test_fit_is_the_old_loop_bit_for_bit(config, pact_lambda):
    def model() -> nn.Module:
        m = _mlp()
        return lowbit.prepare_qat(m, config) if config else m

    ds = _data()
    a, b = model(), model()
    want = _old_fit(a, DataLoader(ds, 32, shuffle=True, generator=torch.Generator().manual_seed(0)), 2, 3e-3, pact_lambda)
    got = fit(b, DataLoader(ds, 32, shuffle=True, generator=torch.Generator().manual_seed(0)), epochs=2, lr=3e-3,
              pact_lambda=pact_lambda, progress=False)
    assert got.loss == want and got.steps == 6
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_snn_train_is_the_old_loop_bit_for_bit():
    from lowbit.snn import SNN, train

    g = torch.Generator().manual_seed(1)
    x, y = (torch.rand(40, 12, 6, generator=g) < 0.3).float(), torch.randint(0, 3, (40,), generator=g)
    a, b = SNN(6, 8, 3, seed=0), SNN(6, 8, 3, seed=0)
    # the loop snn.train ran before: a fresh permutation per epoch from one generator
    opt, gen, want = torch.optim.Adam(a.parameters(), lr=2e-3), torch.Generator().manual_seed(5), []
    for _ in range(2):
        perm, tot = torch.randperm(40, generator=gen), 0.0
        for s in range(0, 40, 16):
            idx = perm[s : s + 16]
            loss = F.cross_entropy(a(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
        want.append(tot / 40)
    h = train(b, x, y, epochs=2, batch_size=16, seed=5, x_val=x, y_val=y)
    assert h["loss"] == want and len(h["step_s"]) == 2
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert h["val_acc"][-1] == lowbit.snn.evaluate(b, x, y)


class _Record(Hook):
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def on_epoch_start(self, s):  # type: ignore[no-untyped-def]
        self.log.append(f"epoch{s.epoch}")

    def on_batch_start(self, s):  # type: ignore[no-untyped-def]
        s.x = s.x * 0  # hooks may replace the batch: all-zero inputs
        self.log.append("batch")

    def extra_loss(self, s):  # type: ignore[no-untyped-def]
        return torch.tensor(10.0)

    def on_step_end(self, s):  # type: ignore[no-untyped-def]
        self.log.append("step")

    def on_epoch_end(self, s):  # type: ignore[no-untyped-def]
        s.notes.append("custom note")
        self.log.append("end")


def test_run_epochs_calls_hooks_in_order_and_adds_extra_loss(capsys):
    model = nn.Linear(4, 3, bias=False)
    nn.init.zeros_(model.weight)
    batches = [(torch.ones(2, 4), torch.tensor([0, 1])), (torch.ones(3, 4), torch.tensor([2, 2, 2]))]
    log: list[str] = []
    progress.set_mode("lines")
    try:
        s = run_epochs(model, lambda e: iter(batches), epochs=2, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                       hooks=[_Record(log)], accuracy=True, desc="unit", progress=None)
    finally:
        progress.set_mode("auto")
    assert log == ["epoch0", "batch", "step", "batch", "step", "end"] * 1 + ["epoch1", "batch", "step", "batch", "step", "end"]
    # zero inputs give uniform logits: cross-entropy log(3) plus the extra 10, in every batch
    assert s.history["loss"] == pytest.approx([10 + torch.log(torch.tensor(3.0)).item()] * 2, abs=1e-6)
    assert s.steps == 4 and s.history["steps"] == [2.0, 2.0]
    assert s.history["train_acc"] == [pytest.approx(1 / 5)] * 2  # argmax of equal logits is class 0: one of five
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["unit 1/2", "unit 2/2"] and "custom note" in lines[0]


def test_fit_prints_one_line_per_epoch_in_lines_mode(capsys):
    ds = _data(64)
    progress.set_mode("lines")
    try:
        h = fit(_mlp(), DataLoader(ds, 32), epochs=2, lr=1e-3, test=DataLoader(ds, 64), desc="mlp")
        fit(_mlp(), DataLoader(ds, 32), epochs=1, lr=1e-3, progress=False)  # progress=False stays silent
    finally:
        progress.set_mode("auto")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for i, ln in enumerate(lines):
        assert ln.startswith(f"mlp {i + 1}/2: loss ") and f"test {h.accuracy[i]:.1f} %" in ln and ln.endswith(" s")


def test_run_epochs_rejects_bad_arguments():
    m = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="epochs must be a non-negative int"):
        run_epochs(m, [], epochs=-1, optimizer=torch.optim.SGD(m.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        run_epochs(m, [], epochs=1, optimizer="adam")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- one evaluate


def test_one_evaluate_for_loaders_and_tensors():
    from lowbit.snn import SNN
    from lowbit.snn import evaluate as snn_evaluate

    ds = _data(50)
    m = _mlp()
    c, n = count_correct(m, DataLoader(ds, 7))
    assert n == 50 and evaluate(m, DataLoader(ds, 7)) == 100 * c / 50
    assert evaluate(m, *ds.tensors, batch_size=3) == 100 * c / 50 == lowbit.train.evaluate(m, DataLoader(ds, 50))
    assert m.training  # the mode is restored
    snn = SNN(6, 8, 3, seed=0)
    x, y = torch.zeros(9, 5, 6), torch.tensor([0, 1, 2] * 3)
    assert snn_evaluate(snn, x, y) == 1 / 3 and evaluate(snn, x, y) == pytest.approx(100 / 3)  # the fraction form
    with pytest.raises(ValueError, match="no samples"):
        evaluate(m, DataLoader(TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))))
    with pytest.raises(ValueError, match="one label per sample"):
        evaluate(m, ds.tensors[0], ds.tensors[1][:3])
    with pytest.raises(TypeError, match="data must be a loader"):
        evaluate(m, 3.0)


# --------------------------------------------------------------------------- one record


def test_the_verbs_write_one_record_and_save_load_round_trip_it(tmp_path):
    x = _data(16).tensors[0]
    fp = _mlp()
    assert info_of(fp) == LowbitInfo(arch=fp.lowbit_info.arch) and fp.lowbit_info.arch["name"] == "mlp"
    q = lowbit.quantize(fp, "w4,a8", calib=[x])
    info = q.lowbit_info
    assert (info.stage, info.config, info.fold_bn, info.version) == ("ptq", str(lowbit.QuantConfig.parse("w4,a8")), True, FORMAT_VERSION)
    assert set(info.layers) == {"features.0", "classifier"} and not any(d.get("converted") for d in info.layers.values())
    c = lowbit.convert(q)
    assert c.lowbit_info == info.converted() and q.lowbit_info == info  # convert copies; the PTQ record is unchanged
    assert all(d["converted"] for d in c.lowbit_info.layers.values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.lowbit_info.stage = "qat"  # type: ignore[misc]
    # the earlier attribute names still read the same values
    assert (c.lowbit_stage, c.lowbit_config, c.lowbit_layers, c.lowbit_arch) == ("converted", info.config, c.lowbit_info.layers, info.arch)
    lowbit.save(c, tmp_path / "c.lowbit")
    back = lowbit.load(tmp_path / "c.lowbit")
    assert back.lowbit_info == c.lowbit_info
    assert LowbitInfo.from_metadata(c.lowbit_info.to_metadata()) == c.lowbit_info


def test_record_checks_and_attached_results():
    with pytest.raises(ValueError, match="stage must be one of float, ptq, qat, converted"):
        LowbitInfo(stage="done")
    with pytest.raises(ValueError, match="version 9"):
        LowbitInfo.from_metadata({"lowbit.info_version": "9"})
    layers = {"fc": {"kind": "QuantLinear"}}
    rec = LowbitInfo(stage="qat", layers=layers)
    layers["fc"]["kind"] = "changed"
    assert rec.layers["fc"]["kind"] == "QuantLinear"  # a private copy
    m = nn.Linear(2, 2)
    attach(m, "fixing_log", [{"fixed": 1.0}])
    assert m.lowbit_info.extra == {"fixing_log": [{"fixed": 1.0}]} and m.lowbit_fixing_log == [{"fixed": 1.0}]
    with pytest.raises(ValueError, match="key must be an identifier"):
        attach(m, "not a key", 1)
