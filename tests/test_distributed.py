"""Distributed QAT and calibration: 2 CPU processes with gloo on 127.0.0.1 agree with one process.

Every test here spawns processes (each imports torch), so they are few and small.
"""
from __future__ import annotations

import copy
import os

import pytest
import torch
from torch.utils.data import TensorDataset

from lowbit.api import calibrate, load, prepare_qat, read_metadata
from lowbit.distributed import (
    all_gather_cat,
    free_port,
    global_batches,
    quantizer_state,
    train_distributed,
)
from lowbit.models import build_model
from lowbit.nn.act import PACT, ActQuant
from lowbit.nn.lsq import LSQQuantizer

# features.0: LSQ activation step (created lazily, before DDP wraps the model);
# features.1 (ReLU): PACT clip; classifier input: a p99 moving average (gathered samples).
QAT_CONFIG = "w4:lsq, a4:pact, a:features.0=uint8:lsq, a:classifier=uint8:p99"


@pytest.fixture(scope="module")
def small_digits(digits):
    n = 384  # 3 global batches of 128 per epoch
    return TensorDataset(digits.train.tensors[0][:n], digits.train.tensors[1][:n])


def _qat_model(ds) -> torch.nn.Module:
    m = build_model("mlp", (1, 8, 8), 10, seed=0, hidden=(32,))
    return prepare_qat(m, QAT_CONFIG)


def test_global_batches_are_the_loaders_batches(small_digits):
    from lowbit.data.images import loader

    ours = global_batches(len(small_digits), 100, seed=3, epochs=2)
    dl = loader(TensorDataset(torch.arange(len(small_digits))), 100, shuffle=True, seed=3)
    theirs = [[b[0] for b in dl] for _ in range(2)]
    assert [len(e) for e in ours] == [4, 4]
    for e_ours, e_theirs in zip(ours, theirs):
        for a, b in zip(e_ours, e_theirs):
            assert torch.equal(a, b)
    assert not torch.equal(ours[0][0], ours[1][0])  # a new permutation each epoch


def test_two_gloo_processes_equal_one_process(small_digits, tmp_path):
    model = _qat_model(small_digits)
    kinds = {type(m) for m in model.modules()}
    assert {PACT, ActQuant, LSQQuantizer} <= kinds
    ckpt = tmp_path / "ddp.lowbit"
    kw = dict(epochs=2, batch_size=128, lr=3e-3, seed=0, pact_lambda=1e-4, progress=False)
    one = train_distributed(copy.deepcopy(model), small_digits, nproc=1, **kw)
    # fork: the workers inherit the imported torch (the default, spawn, imports it again: seconds per worker)
    two = train_distributed(copy.deepcopy(model), small_digits, nproc=2, checkpoint=ckpt, metadata={"run": "x"},
                            start_method="fork", **kw)

    # identical scales on both ranks (bit for bit), and non-trivial ones
    assert two.world_size == 2 and len(two.rank_scales) == 2
    s0, s1 = two.rank_scales
    assert set(s0) == set(s1)
    for k in s0:
        assert torch.equal(s0[k], s1[k]), k
    assert "features.0.input_quant.q.scale" in s0  # the lazily created LSQ step
    assert "features.1.alpha" in s0  # PACT
    assert "classifier.input_quant.running_hi" in s0  # p99 moving average
    assert float(s0["classifier.input_quant.running_hi"]) > 0

    # the same global batches as one process: the same weights and scales, to float rounding
    assert len(two.history.loss) == 2 and two.history.steps == one.history.steps == 6
    assert two.history.loss == pytest.approx(one.history.loss, rel=1e-5)
    assert two.history.loss[-1] < two.history.loss[0]
    sd1, sd2 = one.model.state_dict(), two.model.state_dict()
    assert set(sd1) == set(sd2)
    for k, v in sd1.items():
        torch.testing.assert_close(sd2[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert float((sd2["classifier.weight"] - model.classifier.weight.detach()).abs().max()) > 1e-3  # training moved them

    # the checkpoint: written by rank 0 only, complete, and equal to the returned model
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.lowbit"]  # no temp or per-rank files
    meta = read_metadata(ckpt)
    assert meta["lowbit.world_size"] == "2" and meta["lowbit.epoch"] == "2" and meta["run"] == "x"
    back = load(ckpt, model=build_model("mlp", (1, 8, 8), 10, seed=0, hidden=(32,)))
    x = small_digits.tensors[0][:50]
    two.model.eval(), back.eval()
    torch.testing.assert_close(back(x), two.model(x), rtol=0, atol=0)


def _calib_worker(rank: int, world: int, port: int, out: str) -> None:
    """One rank: calibrate on its own half of the data, in both modes; save its scales."""
    import torch.distributed as dist

    from lowbit.distributed import calibrate_distributed, quantizer_state as qs

    torch.set_num_threads(1)  # a forked child must not reuse the parent's thread pool
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        x = torch.load(out + ".data.pt")
        local = [b.tensor_split(world)[rank] for b in x]
        gathered = torch.cat([all_gather_cat(b) for b in local])
        res = {"gathered_ok": torch.equal(gathered, torch.cat(list(x)))}
        for cfg, mode in (("w4, a8:minmax", "reduce"), ("w4, a8", "gather")):
            m = prepare_qat(build_model("mlp", (1, 8, 8), 10, seed=0, hidden=(32,)), cfg)
            calibrate_distributed(m, local, mode=mode)
            res[cfg] = qs(m)
        torch.save(res, f"{out}.{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_calibration_statistics_are_reduced_across_ranks(digits, tmp_path):
    import torch.multiprocessing as mp

    x = digits.train.tensors[0][:240].reshape(3, 80, 1, 8, 8).clone()  # a copy: the session data stays intact
    x[1, 7] *= 3.0  # rank 0's half of batch 1 holds the largest values
    x[2, 45] *= 5.0  # rank 1's half of batch 2 holds the largest values
    out = str(tmp_path / "calib")
    torch.save(x, out + ".data.pt")
    # fork: the children inherit the imported torch (spawn would import it again, seconds each)
    mp.start_processes(_calib_worker, args=(2, free_port(), out), nprocs=2, join=True, start_method="fork")
    r0, r1 = torch.load(out + ".0.pt"), torch.load(out + ".1.pt")
    assert r0["gathered_ok"] and r1["gathered_ok"]
    for cfg in ("w4, a8:minmax", "w4, a8"):
        # one process calibrating on the global batches
        ref = prepare_qat(build_model("mlp", (1, 8, 8), 10, seed=0, hidden=(32,)), cfg)
        calibrate(ref, list(x))
        want = quantizer_state(ref)
        assert set(r0[cfg]) == set(r1[cfg]) == set(want)
        for k, v in want.items():
            assert torch.equal(r0[cfg][k], r1[cfg][k]), (cfg, k)  # identical on both ranks
            torch.testing.assert_close(r0[cfg][k], v, rtol=1e-6, atol=0, msg=f"{cfg} {k}")  # = global batches
    # the largest input is rank 1's: a rank-local minmax would differ between ranks
    assert float(r0["w4, a8:minmax"]["features.0.input_quant.q.scale"]) == pytest.approx(float(x.max()) / 255, rel=1e-6)


def test_spawned_workers_with_torch_multiprocessing_defaults(small_digits):
    """The default start method (spawn), as ``lowbit train --nproc 2`` uses it."""
    model = _qat_model(small_digits)
    kw = dict(epochs=1, batch_size=192, lr=3e-3, seed=1, progress=False)
    two = train_distributed(copy.deepcopy(model), small_digits, nproc=2, **kw)
    one = train_distributed(copy.deepcopy(model), small_digits, nproc=1, **kw)
    assert two.world_size == 2 and all(torch.equal(two.rank_scales[0][k], v) for k, v in two.rank_scales[1].items())
    for k, v in one.model.state_dict().items():
        torch.testing.assert_close(two.model.state_dict()[k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_bad_arguments_are_clear_errors(small_digits, tmp_path):
    m = _qat_model(small_digits)
    with pytest.raises(ValueError, match="nproc must be an int >= 1"):
        train_distributed(m, small_digits, nproc=0)
    with pytest.raises(ValueError, match="batch_size .* must be >= the number of processes"):
        train_distributed(m, small_digits, nproc=4, batch_size=2)
    with pytest.raises(ValueError, match="start_method must be"):
        train_distributed(m, small_digits, start_method="thread")
    with pytest.raises(ValueError, match="backend must be"):
        train_distributed(m, small_digits, backend="mpi")
    with pytest.raises(FileNotFoundError, match="checkpoint folder"):
        train_distributed(m, small_digits, nproc=1, checkpoint=tmp_path / "nope" / "x.lowbit")


def test_train_command_runs_data_parallel(tmp_path, capsys, digits):
    """`lowbit train --nproc 2` trains with DDP and rank 0 writes one checkpoint that loads back."""
    import re

    import lowbit
    from lowbit.cli import main
    from lowbit.data.images import loader
    from lowbit.train import evaluate

    out = tmp_path / "ddp.lowbit"
    assert main(["train", "--model", "mlp", "--qat", "w4", "--epochs", "1", "--lr", "3e-3", "--nproc", "2", "--out", str(out)]) == 0
    printed = float(re.search(r"test accuracy ([\d.]+) %", capsys.readouterr().out).group(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.lowbit"]
    model = lowbit.load(out).eval()
    assert evaluate(model, loader(digits.test, 256)) == pytest.approx(printed, abs=0.01)
    assert printed > 50  # one epoch of QAT from scratch learns something
