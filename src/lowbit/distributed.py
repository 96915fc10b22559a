"""Distributed quantization-aware training and calibration (``torch.distributed``, DDP).

::

    res = lowbit.distributed.train_distributed(qat_model, ds.train, nproc=2, epochs=5, batch_size=64)
    res.model, res.history                      # rank 0's trained model, global loss per epoch

- **Launch.** ``train_distributed`` spawns ``nproc`` local processes (gloo on CPU,
  NCCL when every rank has a GPU) that rendezvous on 127.0.0.1 at a free port;
  under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) or inside an initialised
  process group it runs in the calling process instead.
- **Same global batches as one process.** Every epoch draws the global batches
  exactly as ``lowbit.data.loader(ds, batch_size, shuffle=True, seed=seed)``
  does; rank ``r`` takes the ``r``-th contiguous part of each. The loss is the
  per-rank *sum* scaled by ``world / global_batch``, so DDP's gradient average
  is the gradient of the global mean, however a batch splits. Adam + cosine
  decay + cross-entropy, as :func:`lowbit.train.fit`.
- **Learned scales** (LSQ step sizes, PACT clips) are parameters, so DDP keeps
  them in sync. Lazily created LSQ activation scales are created before DDP
  wraps the model, from the first global batch (an eval-mode pass). LSQ scales
  a step size's gradient by ``1/sqrt(elements per step)``; an activation
  quantizer sees only its rank's part of the batch, so its gradient is
  rescaled by ``sqrt(local/global)``: the result is the one-process gradient.
- **Observed ranges** (QAT moving averages, PTQ calibration) are reduced
  across ranks so that every rank holds the same scales:
  ``minmax`` ranges per tensor (or per channel on an axis other than the batch
  axis) by an all-reduce of min and max, which is exact; every other range
  (``p99``, ``mse``, ``group`` granularity...) by gathering the samples
  themselves (``all_gather`` of the inputs, exact as well: the estimator sees
  the global batch; it costs one copy of the input per rank).
- **Files.** Only rank 0 writes checkpoints; at the end every rank's scales
  (and a digest of its weights) are compared, and a divergence is an error.
"""
from __future__ import annotations

import copy
import gc
import hashlib
import os
import socket
import tempfile
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate

from .api import batch_inputs
from .loop import Hook, LoopState, evaluate, run_epochs
from .nn.act import PACT, ActQuant
from .nn.lsq import LSQQuantizer
from .quantizer import Quantizer
from .ranges import MinMax
from .train import Checkpoint, History, PactPenalty, seed_everything

__all__ = [
    "DistributedResult",
    "train_distributed",
    "calibrate_distributed",
    "sync_observations",
    "track_ranges_globally",
    "all_gather_cat",
    "quantizer_state",
    "global_batches",
    "free_port",
    "default_backend",
    "main",
]


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_backend() -> str:
    """``nccl`` when CUDA and NCCL are available, else ``gloo``."""
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _collective_device() -> torch.device:
    # NCCL reduces CUDA tensors only
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_cat(x: Tensor, group: Any = None) -> Tensor:
    """Concatenate every rank's ``x`` along dim 0, in rank order (dim-0 sizes may differ)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return x
    world = dist.get_world_size(group)
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.int64)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n, group=group)
    counts = [int(s) for s in sizes]
    m = max(counts)
    pad = x.new_zeros((m - x.shape[0], *x.shape[1:])) if m > x.shape[0] else None
    xp = torch.cat([x, pad]) if pad is not None else x.contiguous()
    parts = [torch.empty_like(xp) for _ in range(world)]
    dist.all_gather(parts, xp, group=group)
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


def _reducible(q: Quantizer, ndim: int | None = None) -> bool:
    """True when a min/max all-reduce of per-rank statistics equals the statistics of the global batch."""
    if not isinstance(q.range, MinMax):
        return False
    g = q.granularity
    if g.kind == "tensor":
        return True
    # channel on an axis other than the batch axis: the rows are the same on every rank
    return g.kind == "channel" and ndim is not None and g.axis % ndim != 0


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def quantizer_state(model: nn.Module) -> dict[str, Tensor]:
    """Every scale-like tensor of a quantized model: quantizer scales/zero points, LSQ steps, PACT clips, running ranges."""
    out: dict[str, Tensor] = {}
    for name, m in _unwrap(model).named_modules():
        if isinstance(m, Quantizer):
            out[f"{name}.scale"] = m.scale.detach().cpu().clone()
            if m.zero_point.numel():
                out[f"{name}.zero_point"] = m.zero_point.detach().cpu().clone()
        elif isinstance(m, ActQuant) and m.running_lo.numel():
            out[f"{name}.running_lo"] = m.running_lo.detach().cpu().clone()
            out[f"{name}.running_hi"] = m.running_hi.detach().cpu().clone()
        elif isinstance(m, PACT):
            out[f"{name}.alpha"] = m.alpha.detach().cpu().clone()
    return out


def _digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in _unwrap(model).state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- calibration (PTQ)


def sync_observations(model: nn.Module, group: Any = None) -> int:
    """All-reduce the range statistics every quantizer observed (``observe``) so far; return how many were reduced.

    ``minmax`` statistics are reduced exactly (min of the minima, max of the
    maxima). For other ranges, whose ``freeze()`` averages per-batch ranges,
    every rank's per-batch ranges are gathered and all of them kept, so that
    ``freeze()`` gives the mean over all ranks' batches: identical on every
    rank, but not the range of the global batch (use
    :func:`calibrate_distributed` with ``mode="gather"`` for that).
    """
    _, world = _world()
    count = 0
    for m in _unwrap(model).modules():
        if not isinstance(m, Quantizer) or not m._obs:
            continue
        los = torch.stack([o[0] for o in m._obs])
        his = torch.stack([o[1] for o in m._obs])
        if world > 1:
            if isinstance(m.range, MinMax):
                los, his = los.amin(0, keepdim=True).contiguous(), his.amax(0, keepdim=True).contiguous()
                dist.all_reduce(los, dist.ReduceOp.MIN, group=group)
                dist.all_reduce(his, dist.ReduceOp.MAX, group=group)
            else:
                los, his = all_gather_cat(los, group), all_gather_cat(his, group)
        m._obs[:] = list(zip(los.unbind(0), his.unbind(0)))
        count += 1
    return count


@torch.no_grad()
def calibrate_distributed(
    model: nn.Module, batches: Iterable[object], max_batches: int = 8, *, mode: str = "auto", group: Any = None
) -> nn.Module:
    """Calibrate activation ranges from every rank's local batches so that all ranks get the same scales.

    ``mode="reduce"``: each rank observes its own batches, then the statistics
    are all-reduced (exact for ``minmax``; see :func:`sync_observations`).
    ``mode="gather"``: the batches are gathered first and every rank calibrates
    on the global batches: exact for every range, at the cost of running the
    calibration passes on the global batch on each rank. ``"auto"`` reduces when
    every activation quantizer is ``minmax`` per tensor, else gathers.
    """
    from .api import calibrate

    if mode not in ("auto", "reduce", "gather"):
        raise ValueError(f"mode must be 'auto', 'reduce' or 'gather', got {mode!r}")
    if max_batches < 1:
        raise ValueError(f"max_batches must be >= 1, got {max_batches}")
    model = _unwrap(model)
    local = [batch_inputs(b) for b in islice(batches, max_batches)]
    n = torch.tensor([len(local)], device=_collective_device())
    if _world()[1] > 1:
        dist.all_reduce(n, dist.ReduceOp.MIN, group=group)  # every rank runs the same number of passes
    local = local[: int(n)]
    if not local:
        raise ValueError("calib gave no batches (on at least one rank)")
    aqs = [a for a in model.modules() if isinstance(a, ActQuant) and not a.learned]
    if mode == "auto":
        mode = "reduce" if all(isinstance(a.q.range, MinMax) and a.q.granularity.kind == "tensor" for a in aqs) else "gather"
    if mode == "gather":
        return calibrate(model, [all_gather_cat(x, group) for x in local], max_batches)
    # The same calibration as one process, with the observations reduced across ranks before the freeze.
    return calibrate(model, local, len(local), sync=lambda m: sync_observations(m, group))


# --------------------------------------------------------------------------- QAT range tracking


class _GlobalTracking:
    """Forward hooks that feed every ActQuant's moving average with the global batch's range."""

    def __init__(self, model: nn.Module, group: Any) -> None:
        self.group = group
        self.handles = []
        for m in model.modules():
            if isinstance(m, ActQuant) and not m.learned:
                self.handles.append(m.register_forward_pre_hook(self._pre))
                self.handles.append(m.register_forward_hook(self._post))

    def _pre(self, mod: ActQuant, args: tuple[Any, ...]) -> None:
        if not (mod.training and mod.tracking) or mod.calibrating:
            return
        x = args[0].detach()
        q = mod.q
        if _reducible(q, x.dim()):
            lo, hi = q.range(q.granularity.to_rows(x).float(), q.fmt)
            lo, hi = lo.contiguous(), hi.contiguous()
            dist.all_reduce(lo, dist.ReduceOp.MIN, group=self.group)
            dist.all_reduce(hi, dist.ReduceOp.MAX, group=self.group)
        else:
            lo, hi = q.range(q.granularity.to_rows(all_gather_cat(x, self.group)).float(), q.fmt)
        # The same update as ActQuant._track, with the global batch's range.
        if mod.running_lo.numel() == 0:
            mod.running_lo, mod.running_hi = lo.clone(), hi.clone()
        else:
            mod.running_lo.lerp_(lo, mod.momentum)
            mod.running_hi.lerp_(hi, mod.momentum)
        mod.training = False  # the module's own forward now only quantizes with the updated average
        mod._lowbit_global_track = True  # type: ignore[attr-defined]

    @staticmethod
    def _post(mod: ActQuant, args: tuple[Any, ...], out: Any) -> None:
        if getattr(mod, "_lowbit_global_track", False):
            mod.training = True
            del mod._lowbit_global_track  # type: ignore[attr-defined]

    def remove(self) -> None:
        """Remove the hooks."""
        for h in self.handles:
            h.remove()
        self.handles.clear()


def track_ranges_globally(model: nn.Module, group: Any = None) -> _GlobalTracking:
    """Make every QAT activation range (moving average) track the global batch; ``.remove()`` undoes it."""
    return _GlobalTracking(_unwrap(model), group)


# --------------------------------------------------------------------------- training


@dataclass
class DistributedResult:
    """The trained model (rank 0's, or this rank's under torchrun), its history, and every rank's scales."""

    model: nn.Module
    history: History
    rank: int = 0
    world_size: int = 1
    rank_scales: list[dict[str, Tensor]] = field(default_factory=list)


def global_batches(n: int, batch_size: int, seed: int, epochs: int) -> list[list[Tensor]]:
    """Per epoch, the index batches that ``lowbit.data.loader(ds, batch_size, shuffle=True, seed=seed)`` yields."""
    from torch.utils.data import DataLoader

    # The DataLoader itself (not just its sampler): each epoch's iterator also
    # draws a base seed from the generator, which shifts the permutations.
    g = torch.Generator().manual_seed(seed)
    dl = DataLoader(_Indices(n), batch_size=batch_size, shuffle=True, generator=g)
    return [list(dl) for _ in range(epochs)]


class _Indices(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _collate(ds: Dataset, idx: Tensor) -> tuple[Tensor, Tensor]:
    if hasattr(ds, "tensors"):  # TensorDataset: index all at once
        x, y = ds.tensors[0][idx], ds.tensors[1][idx]  # type: ignore[attr-defined]
        return x, y
    return default_collate([ds[int(i)] for i in idx])


@dataclass
class _Opts:
    epochs: int
    lr: float
    batch_size: int
    weight_decay: float
    pact_lambda: float
    seed: int
    checkpoint: str | None
    metadata: dict[str, str]
    threads: int
    progress: bool | None
    desc: str


def _no_buffer_sync() -> dict[str, bool]:
    import inspect

    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    # torch >= 2.13 renamed broadcast_buffers (deprecated) to forward_sync_buffers
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def _init_lazy_scales(model: nn.Module, x: Tensor) -> None:
    # LSQ activation step sizes are created by the first forward call; DDP needs
    # every parameter to exist (with its final shape) before it wraps the model.
    if not any(isinstance(m, LSQQuantizer) and not m.frozen for m in model.modules()):
        return
    was = model.training
    model.eval()  # no moving averages, no batch-norm statistics
    with torch.no_grad():
        model(x)
    model.train(was)


def _run(model: nn.Module, train: Dataset, test: Dataset | None, o: _Opts, device: torch.device) -> DistributedResult:
    rank, world = _world()
    seed_everything(o.seed)
    torch.set_num_threads(o.threads)
    model = model.to(device)
    epochs = global_batches(len(train), o.batch_size, o.seed, o.epochs)  # type: ignore[arg-type]
    # A final global batch smaller than the world would leave a rank without data.
    epochs = [[b for b in ep if len(b) >= world] for ep in epochs]
    steps = sum(len(ep) for ep in epochs)
    if steps == 0:
        raise ValueError(f"the training set ({len(train)} samples) gives no batch of at least {world} samples")  # type: ignore[arg-type]
    x0, _ = _collate(train, epochs[0][0])
    _init_lazy_scales(model, x0.to(device))
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (a converted model cannot be trained)")
    tracking = None
    net: nn.Module = model
    if world > 1:
        tracking = track_ranges_globally(model)
        # Quantizer buffers change size as ranges are tracked: never broadcast them.
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, **_no_buffer_sync()
        )
    # LSQ scales its step-size gradient by 1/sqrt(elements per step); an
    # activation quantizer sees only the local part of the batch, so rescale
    # by sqrt(local/global) and DDP's average is the one-process gradient.
    lsq_factor = [1.0]
    grad_hooks = []
    if world > 1:
        for m in model.modules():
            if isinstance(m, ActQuant) and m.learned:
                grad_hooks.append(m.q.scale.register_hook(lambda g: g * lsq_factor[0]))
    shard = _Shard(train, epochs, rank, world, device, lsq_factor)
    opt = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    hooks: list[Hook] = [shard, PactPenalty(model, o.pact_lambda)]
    if test is not None:
        hooks.append(_RankZeroAccuracy(model, test, rank, world, device))
    if o.checkpoint is not None and rank == 0:
        hooks.append(Checkpoint(model, o.checkpoint, dict(o.metadata, **{"lowbit.world_size": str(world)})))
    try:
        st = run_epochs(net, shard.batches, epochs=len(epochs), optimizer=opt, scheduler=sched, loss_fn=shard.loss,
                        hooks=hooks, desc=f"{o.desc} (x{world})", progress=o.progress if rank == 0 else False)
    finally:
        if tracking is not None:
            tracking.remove()
        for h in grad_hooks:
            h.remove()
    hist = History(loss=st.history["loss"], accuracy=st.history.get("accuracy", []), step_time=st.step_time, steps=st.steps)
    states: list[Any] = [(quantizer_state(model), _digest(model))]
    if world > 1:
        states = [None] * world
        dist.all_gather_object(states, (quantizer_state(model), _digest(model)))
        _check_same(states)
        dist.barrier()  # rank 0's checkpoint is complete before anyone returns
    return DistributedResult(model, hist, rank, world, [s for s, _ in states])


class _Shard(Hook):
    """The sharding of the one loop: rank ``r`` takes its part of each global batch, and the loss is that of the global mean."""

    def __init__(self, ds: Dataset, epochs: list[list[Tensor]], rank: int, world: int, device: torch.device,
                 lsq_factor: list[float]) -> None:
        self.ds, self.epochs, self.rank, self.world, self.device = ds, epochs, rank, world, device
        self.lsq_factor, self.global_n, self.ce = lsq_factor, 1, torch.zeros(())
        self.acc = torch.zeros(2, dtype=torch.float64, device=device)

    def batches(self, epoch: int) -> Iterable[tuple[Tensor, Tensor]]:
        """This rank's part of every global batch of ``epoch``, on the device."""
        for idx in self.epochs[epoch]:
            part = idx.tensor_split(self.world)[self.rank]
            self.global_n = len(idx)
            self.lsq_factor[0] = (len(part) / len(idx)) ** 0.5
            x, y = _collate(self.ds, part)
            yield x.to(self.device), y.to(self.device)

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        """The local cross-entropy sum scaled so that DDP's gradient average is the gradient of the global mean."""
        self.ce = F.cross_entropy(out, y, reduction="sum")
        return self.ce * (self.world / self.global_n)

    def on_epoch_start(self, s: LoopState) -> None:
        """Reset the loss sum."""
        self.acc.zero_()

    def on_step_end(self, s: LoopState) -> None:
        """Add the batch's cross-entropy sum and sample count (before scaling and penalties)."""
        n = torch.tensor(float(len(s.y)), dtype=torch.float64, device=self.device)
        self.acc += torch.stack([self.ce.detach().double(), n])

    def on_epoch_end(self, s: LoopState) -> None:
        """The epoch's loss is the global mean cross-entropy (all ranks' sums)."""
        if self.world > 1:
            dist.all_reduce(self.acc)
        s.history["loss"][-1] = float(self.acc[0] / self.acc[1])


class _RankZeroAccuracy(Hook):
    """After every epoch rank 0 evaluates on the test set (percent) and broadcasts it."""

    def __init__(self, model: nn.Module, ds: Dataset, rank: int, world: int, device: torch.device) -> None:
        self.model, self.ds, self.rank, self.world, self.device = model, ds, rank, world, device

    def on_epoch_end(self, s: LoopState) -> None:
        """Evaluate on rank 0; every rank records the same number."""
        from torch.utils.data import DataLoader

        acc = evaluate(self.model, DataLoader(self.ds, batch_size=256)) if self.rank == 0 else 0.0
        a = torch.tensor([acc], dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.broadcast(a, 0)
        s.history.setdefault("accuracy", []).append(float(a))
        s.notes.append(f"test {float(a):.1f} %")


def _check_same(states: Sequence[tuple[dict[str, Tensor], str]]) -> None:
    ref, ref_digest = states[0]
    for r, (s, d) in enumerate(states[1:], 1):
        bad = [k for k in ref if k not in s or not torch.equal(ref[k], s[k])]
        if bad or set(s) != set(ref):
            raise RuntimeError(f"rank {r} holds different scales than rank 0: {bad[:5]}")
        if d != ref_digest:
            raise RuntimeError(f"rank {r} holds different weights than rank 0")


def _worker(rank: int, world: int, port: int, backend: str, model: nn.Module, train: Dataset,
            test: Dataset | None, o: _Opts, result: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only
    torch.set_num_threads(o.threads)  # before any op: a forked child must not use the parent's thread pool
    # torch.multiprocessing hands every process the *same* shared-memory
    # tensors: a private copy, or the ranks would step one set of weights.
    model = copy.deepcopy(model)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        device = torch.device("cuda", rank % torch.cuda.device_count()) if backend == "nccl" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        res = _run(model, train, test, o, device)
        if rank == 0:
            res.model = res.model.cpu()
            torch.save(res, result)
        del res
        if world > 1:
            dist.barrier()  # every rank tears its group down together, none while a peer still works
    finally:
        # DDP's reducer sits in reference cycles that hold the process group: collect them now, while the
        # group is alive, not at interpreter exit, where a gloo thread still joinable aborts the process
        # ("terminate called without an active exception", seen once in CI on a rank that exited first)
        gc.collect()
        dist.destroy_process_group()


def train_distributed(
    model: nn.Module,
    train: Dataset,
    *,
    nproc: int = 2,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    pact_lambda: float = 0.0,
    seed: int = 0,
    test: Dataset | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    metadata: Mapping[str, str] | None = None,
    backend: str | None = None,
    threads: int = 1,
    progress: bool | None = None,
    desc: str = "train",
    start_method: str = "spawn",
) -> DistributedResult:
    """Train (QAT or float) with DistributedDataParallel on ``nproc`` processes; ``batch_size`` is the global batch.

    ``start_method="fork"`` (Linux, CPU only) starts the workers without
    importing torch again; ``"spawn"`` (the default) is the safe choice with CUDA.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    for name, v, lo in (("nproc", nproc, 1), ("epochs", epochs, 1), ("batch_size", batch_size, 1), ("threads", threads, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if start_method not in ("spawn", "fork", "forkserver"):
        raise ValueError(f"start_method must be 'spawn', 'fork' or 'forkserver', got {start_method!r}")
    if backend not in (None, "gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo', 'nccl' or None (automatic), got {backend!r}")
    if len(train) == 0:  # type: ignore[arg-type]
        raise ValueError("the training set is empty")
    o = _Opts(epochs, float(lr), batch_size, float(weight_decay), float(pact_lambda), seed,
              None if checkpoint is None else str(checkpoint), dict(metadata or {}), threads, progress, desc)
    if checkpoint is not None and not Path(checkpoint).parent.is_dir():
        raise FileNotFoundError(f"checkpoint folder does not exist: {Path(checkpoint).parent}")

    if dist.is_available() and dist.is_initialized():
        rank, world = _world()
    elif "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # torchrun
        dist.init_process_group(backend or default_backend(), init_method="env://")
        rank, world = _world()
    else:
        rank, world = 0, nproc
    if batch_size < world:
        raise ValueError(f"batch_size ({batch_size}) is the global batch and must be >= the number of processes ({world})")
    if world == 1 or dist.is_initialized():
        be = dist.get_backend() if dist.is_initialized() else "gloo"
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count()) \
            if be == "nccl" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return _run(model, train, test, o, device)

    be = backend or default_backend()
    if be == "nccl" and torch.cuda.device_count() < nproc:
        raise ValueError(f"backend 'nccl' needs one GPU per process: {nproc} processes, {torch.cuda.device_count()} GPUs")
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="lowbit-ddp-") as tmp:
        result = os.path.join(tmp, "result.pt")
        try:
            mp.start_processes(_worker, args=(nproc, free_port(), be, model, train, test, o, result), nprocs=nproc,
                               join=True, start_method=start_method)
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
            raise RuntimeError(f"a training process failed:\n{e}") from None
        return torch.load(result, weights_only=False)
