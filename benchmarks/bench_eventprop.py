"""EventProp vs BPTT: accuracy (float, 8-bit and 4-bit fixed-point weights), epoch time and backward memory.

    python benchmarks/bench_eventprop.py                  # latency digits + Randman, 100 steps
    python benchmarks/bench_eventprop.py --quick          # small sizes, a minute or two
    python benchmarks/bench_eventprop.py --threads 1 --seed 0 --epochs 16
    python benchmarks/bench_eventprop.py --seed 1 --out s1.json ...; --merge s0.json s1.json ...   # seed means
    python benchmarks/bench_eventprop.py --weights 8 4 --methods eventprop --routing float --timing mlgenn \
        --scope connection --no-ttfs     # mlGeNN's EventProp QAT (PR #88): float error routing, gradient one batch late

Both trainers start from the same weights and see the same batches:

- EventProp: :class:`lowbit.snn.eventprop.EventPropSNN` trained by its adjoint pass
  (exact gradient of the discretised network, memory per spike);
- BPTT: :class:`lowbit.snn.SNN` with the same neurons (tau_mem, tau_syn, reset to zero) and
  the same readout (default ``exp``: mlGeNN's exponentially weighted average of the leaky
  integrator) trained by :func:`lowbit.snn.train` (surrogate gradient through time).

QAT weights are fixed point fitted to the 99th percentile (``fxp<b>:p99``) per population
(``--scope``; mlGeNN's EventProp compiler fits per connection), refitted every batch.
``--routing`` / ``--timing`` set EventProp's ``error_routing`` (``quantized``: errors through
Q(w); ``float``: through the float weights, as mlGeNN) and ``gradient_timing`` (``same_batch``,
or ``mlgenn``: each gradient applied one batch late). "backward MB" is the memory autograd keeps for the backward pass of one
batch (tensors saved by the graph, counted with ``saved_tensors_hooks``): the part of peak memory
that grows with time steps. (EventProp also holds ``chunk_steps`` = 32 steps of dense state
while it runs, whatever the trial length.) Epoch time is wall time on this machine (min over
epochs). A last table trains EventProp with a first-spike-time readout (spiking output,
Wunderlich & Pehle's loss); lowbit's BPTT network has no such readout to compare with.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lowbit.data.spiking import randman_raster, spiking_digits, split  # noqa: E402
from lowbit.snn import SNN, evaluate, train  # noqa: E402
from lowbit.snn.eventprop import EventPropSNN  # noqa: E402
from lowbit.snn.eventprop_train import train_eventprop  # noqa: E402


def saved_mb(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Megabytes autograd keeps for the backward pass of ``model(x)`` (parameters excluded)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(v for k, v in seen.items() if k not in params) / 2**20


def run_task(name: str, data: tuple, n_in: int, n_out: int, args: argparse.Namespace, log) -> list[dict]:  # type: ignore[no-untyped-def]
    """Train EventProp and BPTT at every weight precision on one task; one row per run."""
    xtr, ytr, xte, yte = data
    rows = []
    for prec in args.weights:
        spec = None if prec == "float" else f"fxp{prec}:p99"
        for method in args.methods:
            ep = EventPropSNN(n_in, args.hidden, n_out, init_scale=args.init_scale, init_mean=args.init_mean,
                              out_init_scale=args.out_init_scale, readout=args.readout, reset="zero", seed=args.seed,
                              error_routing=args.routing, gradient_timing=args.timing)
            if method == "eventprop":
                model = ep
            else:
                model = SNN(n_in, args.hidden, n_out, recurrent=False, tau_mem=20.0, tau_syn=5.0, reset="zero",
                            readout=args.readout, seed=args.seed)
                with torch.no_grad():
                    model.fc[0].copy_(ep.fc[0])
                    model.w_out.copy_(ep.w_out)
            if spec is not None:
                model.quantize_weights(spec, scope=args.scope)
            mem = saved_mb(model, xtr[: args.batch_size])
            times = []
            for ep_i in range(args.epochs):
                t0 = time.perf_counter()
                if method == "eventprop":
                    train_eventprop(model, xtr, ytr, epochs=1, batch_size=args.batch_size, lr=args.lr, seed=args.seed + ep_i)
                else:
                    train(model, xtr, ytr, epochs=1, batch_size=args.batch_size, lr=args.lr, seed=args.seed + ep_i)
                times.append(time.perf_counter() - t0)
            acc = evaluate(model, xte, yte)
            row = {"task": name, "method": method, "weights": prec, "acc": acc, "epoch_s": min(times), "backward_mb": mem,
                   "scope": args.scope, "routing": args.routing, "timing": args.timing}
            log(json.dumps(row))
            rows.append(row)
    return rows


def run_ttfs(name: str, data: tuple, n_in: int, n_out: int, args: argparse.Namespace, log) -> dict:  # type: ignore[no-untyped-def]
    """EventProp with a spiking output read out by first-spike times (float weights; BPTT has no such readout here)."""
    xtr, ytr, xte, yte = data
    m = EventPropSNN(n_in, args.hidden, n_out, init_scale=args.init_scale, init_mean=0.05, out_init_scale=1.0,
                     readout="ttfs", reset="zero", seed=args.seed)
    times = []
    for ep_i in range(args.epochs):
        t0 = time.perf_counter()
        train_eventprop(m, xtr, ytr, epochs=1, batch_size=args.batch_size, lr=args.ttfs_lr, seed=args.seed + ep_i)
        times.append(time.perf_counter() - t0)
    row = {"task": name, "method": "eventprop-ttfs", "weights": "float", "acc": evaluate(m, xte, yte), "epoch_s": min(times)}
    log(json.dumps(row))
    return row


def _weights(prec: str, r: dict) -> str:
    if prec == "float":
        return "float"
    opts = "" if (r.get("routing"), r.get("timing")) in ((None, None), ("quantized", "same_batch")) else \
        f", errors via {r['routing']} w, gradient {'one batch late' if r['timing'] == 'mlgenn' else 'same batch'}"
    return f"fxp{prec} (p99, per {r.get('scope', 'population')}{opts})"


def table(rows: list[dict]) -> str:
    """Markdown table: one line per task and weight precision, EventProp beside BPTT (a dash where not run)."""
    out = ["| task | weights | EventProp acc | BPTT acc | EventProp epoch (s) | BPTT epoch (s) | EventProp backward MB | BPTT backward MB |",
           "|---|---|---|---|---|---|---|---|"]
    keyed = {(r["task"], r["weights"], r["method"]): r for r in rows}
    none = {"acc": float("nan"), "epoch_s": float("nan"), "backward_mb": float("nan")}
    for task, prec in dict.fromkeys((r["task"], r["weights"]) for r in rows if r["method"] != "eventprop-ttfs"):
        e, b = keyed.get((task, prec, "eventprop"), none), keyed.get((task, prec, "bptt"), none)
        w = _weights(prec, e if e is not none else b)
        out.append((f"| {task} | {w} | {100 * e['acc']:.1f} | {100 * b['acc']:.1f} | {e['epoch_s']:.2f} | {b['epoch_s']:.2f} "
                    f"| {e['backward_mb']:.2f} | {b['backward_mb']:.2f} |").replace("nan", "-"))
    ttfs = [r for r in rows if r["method"] == "eventprop-ttfs"]
    if ttfs:
        out += ["", "| task | EventProp, first-spike-time readout (float) acc | epoch (s) |", "|---|---|---|"]
        out += [f"| {r['task']} | {100 * r['acc']:.1f} | {r['epoch_s']:.2f} |" for r in ttfs]
    return "\n".join(out)


def merged_table(paths: list[str]) -> str:
    """Mean (min-max) over several seeds' result files: one line per task and weight precision."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    seeds = [r["args"]["seed"] for r in runs]
    acc: dict[tuple, list[float]] = {}
    for run in runs:
        for r in run["rows"]:
            if r["method"] != "eventprop-ttfs":
                acc.setdefault((r["task"], r["weights"], r["method"]), []).append(100 * r["acc"])
    out = [f"Mean over seeds {', '.join(map(str, seeds))} (min-max):", "",
           "| task | weights | EventProp acc | BPTT acc | EventProp - BPTT (pt) |", "|---|---|---|---|---|"]
    first = {(r["task"], r["weights"]): r for run in runs for r in run["rows"]}
    for task, prec in dict.fromkeys((k[0], k[1]) for k in acc):
        e, b = acc.get((task, prec, "eventprop"), []), acc.get((task, prec, "bptt"), [])
        d = [x - y for x, y in zip(e, b)]

        def stat(v: list[float], fmt: str = ".1f", sep: str = "-") -> str:
            return f"{sum(v) / len(v):{fmt}} ({min(v):{fmt}}{sep}{max(v):{fmt}})" if v else "-"

        w = _weights(prec, first[(task, prec)])
        out.append(f"| {task} | {w} | {stat(e)} | {stat(b)} | {stat(d, '+.1f', ' to ')} |")
    return "\n".join(out)


def main() -> int:
    """Run both tasks and print the markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=100, help="time steps of both tasks (default 100)")
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--init-scale", type=float, default=1.0)
    ap.add_argument("--init-mean", type=float, default=0.0)
    ap.add_argument("--readout", default="exp", choices=["mean", "exp", "sum", "max", "last"],
                    help="readout of both networks (default exp: mlGeNN's exponentially weighted average)")
    ap.add_argument("--out-init-scale", type=float, default=0.2, help="readout weight std x sqrt(fan-in) (default 0.2)")
    ap.add_argument("--weights", nargs="+", default=["float", "8", "4"], help="float and/or bit widths")
    ap.add_argument("--methods", nargs="+", default=["eventprop", "bptt"], choices=["eventprop", "bptt"])
    ap.add_argument("--scope", default="population", choices=["population", "connection"],
                    help="weight scale per population (default) or per connection (mlGeNN's EventProp)")
    ap.add_argument("--routing", default="quantized", choices=["quantized", "float"],
                    help="EventProp's error_routing: errors through Q(w) (default) or the float weights (mlGeNN)")
    ap.add_argument("--timing", default="same_batch", choices=["same_batch", "mlgenn"],
                    help="EventProp's gradient_timing: each gradient at its own step (default) or one batch late (mlGeNN)")
    ap.add_argument("--tasks", nargs="+", default=["digits", "randman"], choices=["digits", "randman"])
    ap.add_argument("--randman-dim", type=int, default=2, help="Randman manifold dimension (default 2)")
    ap.add_argument("--randman-samples", type=int, default=100, help="Randman samples per class (default 100)")
    ap.add_argument("--no-ttfs", action="store_true", help="skip the first-spike-time readout rows")
    ap.add_argument("--ttfs-lr", type=float, default=3e-3, help="learning rate of the first-spike-time runs (default 3e-3)")
    ap.add_argument("--quick", action="store_true", help="small sizes: 40 steps, 3 epochs, 600 digits")
    ap.add_argument("--out", default="benchmarks/results/eventprop.json")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="only print the mean table of earlier runs' --out files")
    args = ap.parse_args()
    if args.merge:
        print(merged_table(args.merge))
        return 0
    if args.quick:
        args.steps, args.epochs = 40, 3
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rows: list[dict] = []
    t0 = time.perf_counter()
    if "digits" in args.tasks:
        x, y = spiking_digits(args.steps)  # latency code: brighter pixels spike earlier
        data = split(x, y, 0.2, seed=args.seed)
        if args.quick:
            data = (data[0][:600], data[1][:600], data[2], data[3])
        rows += run_task(f"latency digits ({args.steps} steps)", data, 64, 10, args, print)
        if not args.no_ttfs:
            rows.append(run_ttfs(f"latency digits ({args.steps} steps)", data, 64, 10, args, print))
    if "randman" in args.tasks:
        x, y = randman_raster(nb_classes=10, nb_units=50, nb_steps=args.steps, nb_samples=args.randman_samples,
                              dim_manifold=args.randman_dim, seed=args.seed)
        data = split(x, y, 0.2, seed=args.seed)
        rname = f"Randman 10 classes, {args.randman_dim}-D ({args.steps} steps)"
        rows += run_task(rname, data, 50, 10, args, print)
        if not args.no_ttfs:
            rows.append(run_ttfs(rname, data, 50, 10, args, print))
    print()
    print(table(rows))
    print(f"\nwall time {time.perf_counter() - t0:.0f} s, {args.threads} threads, seed {args.seed}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=1))
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
