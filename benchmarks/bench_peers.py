"""lowbit against its peers (Brevitas, torchao, snnTorch), side by side in one run on this machine.

    python benchmarks/bench_peers.py            # full run (~10-20 min on 2 shared cores)
    python benchmarks/bench_peers.py --quick    # fewer epochs and repeats, 1e7 weights

The peers are never lowbit dependencies: the script creates its own virtualenv
``benchmarks/.peers-venv`` (git-ignored) with ``pip install torch==<this torch>``
pinned in the same command as brevitas, torchao and snntorch (so their install
cannot replace torch), then re-runs itself there with lowbit from ``src/``.

Prints one markdown table and writes it to ``benchmarks/results/peers.md``:
QAT accuracy (W8/W4/W2) lowbit vs Brevitas, PTQ accuracy (W8/W4) lowbit vs
torchao, QAT step time / float step time, int4 group-128 quantization time,
NF4 error and time vs torchao's ``to_nf4``, SNN epoch time and accuracy vs snnTorch.
Times are medians of several runs; ratios are lowbit / peer unless said otherwise.

Two sections write their own tables: ``--only zoo`` (issue 21: which zoo models lowbit, Brevitas
and torchao quantize, run and export; ``results/peers_zoo.md``, see ``_peers_zoo.py``) and
``--only ptq2`` (issue 17: lowbit's GPTQ / AdaRound vs Brevitas' GPTQ / learned round on
bench_ptq's digits VGG and MNIST-5k CNN; ``results/peers_ptq.md``, see ``_peers_ptq.py``).
The venv also gets aihwkit-lightning, for the CIM peer script.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from _timing import wall_times  # benchmarks/ is on sys.path when a script runs
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "benchmarks" / ".peers-venv"
RESULTS = ROOT / "benchmarks" / "results" / "peers.md"
RESULTS_ZOO = ROOT / "benchmarks" / "results" / "peers_zoo.md"
RESULTS_PTQ = ROOT / "benchmarks" / "results" / "peers_ptq.md"
TORCH_PIN = "torch==2.13.0"
PEERS = ["brevitas", "torchao", "snntorch"]
OPTIONAL = ["aihwkit-lightning"]  # for the CIM peer script; left out (error kept) when pip cannot install it
# lowbit's own needs (and its [onnx], [mnist] extras); for Brevitas: accelerate (its learned-round trainer),
# onnxoptimizer (its TorchScript QCDQ export)
EXTRA = ["numpy", "safetensors", "scikit-learn", "onnx", "onnxruntime", "mlxtend", "accelerate", "onnxoptimizer"]


# --------------------------------------------------------------------------- the virtualenv


def _venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _venv_ok() -> bool:
    py = _venv_python()
    if not py.exists():
        return False
    code = "import importlib.metadata as m; print(m.version('torch')); [m.version(p) for p in ('brevitas','torchao','snntorch')]"
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    return r.returncode == 0 and r.stdout.strip().startswith(TORCH_PIN.split("==")[1])


def _missing(names: list[str]) -> list[str]:
    """The distributions of ``names`` that the peers' venv lacks."""
    code = "import importlib.metadata as m, sys\nfor n in sys.argv[1:]:\n  try: m.version(n)\n  except Exception: print(n)"
    r = subprocess.run([str(_venv_python()), "-c", code, *names], capture_output=True, text=True)
    return r.stdout.split()


def ensure_venv() -> Path:
    """Create benchmarks/.peers-venv with the pinned torch and the peers (no-op when it is already there)."""
    if _venv_ok():
        lack = _missing(EXTRA)
        if lack:  # a venv made before EXTRA grew: add what is missing, torch pinned again
            subprocess.run([str(_venv_python()), "-m", "pip", "install", "-q", TORCH_PIN, *lack], check=True)
        return _venv_python()
    print(f"creating {VENV} (torch pinned: {TORCH_PIN}; then {', '.join(PEERS)}) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    # torch is pinned in the same command so that no peer's requirement can replace it
    pip = [str(_venv_python()), "-m", "pip", "install", "-q", TORCH_PIN, *PEERS, *EXTRA]
    r = subprocess.run(pip + OPTIONAL, capture_output=True, text=True)
    if r.returncode != 0:
        # an optional peer that cannot be installed is left out; its exact error is kept for the report
        err = [ln for ln in (r.stderr or r.stdout).splitlines() if ln.strip()]
        print(f"pip could not install {OPTIONAL} beside {TORCH_PIN}; leaving them out:\n  " + "\n  ".join(err[-6:]), flush=True)
        (VENV / "optional-peers-error.txt").write_text(r.stderr + r.stdout)
        subprocess.run(pip, check=True)
    if not _venv_ok():
        raise SystemExit(f"{VENV}: torch is not {TORCH_PIN} after the install; refusing to benchmark")
    return _venv_python()


# --------------------------------------------------------------------------- helpers


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    return statistics.median(wall_times(fn, repeats, warmup))


class Table:
    """Rows of the results table."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str]] = []
        self.notes: list[str] = []

    def add(self, what: str, lowbit: str, peer: str, ratio: str, verdict: str) -> None:
        """Add (and print) one row."""
        self.rows.append((what, lowbit, peer, ratio, verdict))
        print(f"  {what}: lowbit {lowbit} | peer {peer} | {ratio} | {verdict}", flush=True)

    def markdown(self, header: str) -> str:
        """The table as markdown under ``header``."""
        lines = [header, "", "| Measure | lowbit | Peer | Ratio | Verdict |", "|---|---|---|---|---|"]
        lines += [f"| {' | '.join(r)} |" for r in self.rows]
        if self.notes:
            lines += ["", "Notes:"] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def _acc(model, x, y) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean()) * 100


def _train(model, train_set, epochs: int, lr: float, seed: int) -> None:
    import torch
    import torch.nn.functional as F

    from lowbit.data.images import loader

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for ep in range(epochs):
        for xb, yb in loader(train_set, 64, shuffle=True, seed=seed + ep):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()


def _verdict(lowbit_better: bool, tie: bool = False) -> str:
    return "tie" if tie else ("lowbit wins" if lowbit_better else "**lowbit loses**")


# --------------------------------------------------------------------------- sections


def brevitas_model(float_model: Any, bits: int) -> Any:
    """A copy of ``float_model`` with Brevitas per-channel ``bits``-bit weight quantizers on Conv2d/Linear."""
    import brevitas.nn as qnn
    from brevitas.quant import Int8WeightPerChannelFloat
    from torch import nn

    m = copy.deepcopy(float_model)

    def swap(parent: nn.Module) -> None:
        for name, c in parent.named_children():
            if isinstance(c, nn.Conv2d):
                q = qnn.QuantConv2d(c.in_channels, c.out_channels, c.kernel_size, stride=c.stride, padding=c.padding,
                                    bias=c.bias is not None, weight_quant=Int8WeightPerChannelFloat, weight_bit_width=bits)
            elif isinstance(c, nn.Linear):
                q = qnn.QuantLinear(c.in_features, c.out_features, bias=c.bias is not None,
                                    weight_quant=Int8WeightPerChannelFloat, weight_bit_width=bits)
            else:
                swap(c)
                continue
            q.weight.data.copy_(c.weight.data)
            if c.bias is not None:
                q.bias.data.copy_(c.bias.data)
            setattr(parent, name, q)

    swap(m)
    return m


def section_qat(t: Table, args: argparse.Namespace, ds: Any) -> None:
    """QAT accuracy W8/W4/W2 and step-time ratios, lowbit vs Brevitas, same float start, data, epochs, seed."""
    import torch

    import lowbit
    from lowbit.models import build_model

    x, y = ds.test.tensors
    base = build_model("vgg", ds.input_shape, ds.num_classes, seed=args.seed, widths=(16, 32))
    torch.manual_seed(args.seed)
    _train(base, ds.train, args.float_epochs, 3e-3, args.seed)
    t.add("float small-VGG (16,32) on digits, test accuracy", f"{_acc(base, x, y):.2f} %", "same model", "-", "baseline")
    for bits in (8, 4, 2):
        lb = lowbit.prepare_qat(base, f"w{bits}:lsq, fold_bn=false")
        torch.manual_seed(args.seed)
        _train(lb, ds.train, args.qat_epochs, 1e-3, args.seed)
        bv = brevitas_model(base, bits)
        torch.manual_seed(args.seed)
        _train(bv, ds.train, args.qat_epochs, 1e-3, args.seed)
        a, b = _acc(lb, x, y), _acc(bv, x, y)
        t.add(f"QAT W{bits} accuracy ({args.qat_epochs} epochs)", f"{a:.2f} %", f"Brevitas {b:.2f} %",
              f"{a - b:+.2f} pt", _verdict(a > b, abs(a - b) < 0.3))
    # step time: interleaved rounds so that the shared machine's load hits every model alike
    xb, yb = next(iter(torch.utils.data.DataLoader(ds.train, batch_size=64, shuffle=False)))
    models = {"float": copy.deepcopy(base), "lowbit": lowbit.prepare_qat(base, "w4:lsq, fold_bn=false"),
              "brevitas": brevitas_model(base, 4)}
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in models.items()}

    def step(k: str) -> None:
        m, o = models[k], opts[k]
        o.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(m(xb), yb).backward()
        o.step()

    times: dict[str, list[float]] = {k: [] for k in models}
    for k in models:
        models[k].train()
        for _ in range(5):
            step(k)
    for _ in range(args.rounds):
        for k in models:
            t0 = time.perf_counter()
            for _ in range(10):
                step(k)
            times[k].append((time.perf_counter() - t0) / 10)
    med = {k: statistics.median(v) for k, v in times.items()}
    rl, rb = med["lowbit"] / med["float"], med["brevitas"] / med["float"]
    t.add("W4 QAT step / float step (batch 64, 1 thread)", f"{rl:.2f}x ({med['lowbit'] * 1e3:.1f} ms)",
          f"Brevitas {rb:.2f}x ({med['brevitas'] * 1e3:.1f} ms)", f"float {med['float'] * 1e3:.1f} ms",
          _verdict(rl < rb) + ("; aim <= 1.2x " + ("met" if rl <= 1.2 else "**missed**")))


def section_ptq(t: Table, args: argparse.Namespace, ds: Any) -> None:
    """PTQ W8/W4 on Linear layers (MLP): lowbit vs torchao weight-only int8 / int4."""
    import torch
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    import lowbit
    from lowbit.models import build_model

    x, y = ds.test.tensors
    mlp = build_model("mlp", ds.input_shape, ds.num_classes, seed=args.seed)
    torch.manual_seed(args.seed)
    _train(mlp, ds.train, args.float_epochs, 3e-3, args.seed)
    t.add("float MLP (128, 64) on digits, test accuracy", f"{_acc(mlp, x, y):.2f} %", "same model", "-", "baseline")
    cases = [
        (8, "w8", "int8:channel (minmax)", "int8:channel", lambda: Int8WeightOnlyConfig()),
        (4, "w4", "int4:group32 (minmax)", "int4:group32", lambda: IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32))),
    ]
    for bits, best, same_name, same_spec, cfg in cases:
        ta = copy.deepcopy(mlp)
        quantize_(ta, cfg())
        b = _acc(ta, x, y)
        a_same = _acc(lowbit.quantize(mlp, f"*={same_spec}"), x, y)
        a_best = _acc(lowbit.quantize(mlp, best), x, y)
        peer = "torchao Int8WeightOnly (per row)" if bits == 8 else "torchao IntxWeightOnly int4 PerGroup(32)"
        t.add(f"PTQ W{bits} accuracy, same granularity as torchao", f"{a_same:.2f} % ({same_name})", f"{peer} {b:.2f} %",
              f"{a_same - b:+.2f} pt", _verdict(a_same > b, abs(a_same - b) < 0.3))
        t.add(f"PTQ W{bits} accuracy, lowbit default '{best}' (channel, MSE clip)", f"{a_best:.2f} %", f"{b:.2f} %",
              f"{a_best - b:+.2f} pt", _verdict(a_best > b, abs(a_best - b) < 0.3))


def section_int4_speed(t: Table, args: argparse.Namespace) -> None:
    """Time to quantize N weights to int4, group 128: lowbit vs torchao's choose_qparams_affine + quantize_affine."""
    import torch
    from torchao.quantization.quant_primitives import MappingType, choose_qparams_affine, quantize_affine

    import lowbit

    torch.set_num_threads(args.threads_big)
    for n in args.sizes:
        cols = 6400 if n >= 1e8 else 640
        w = torch.randn(int(n) // cols, cols, generator=torch.Generator().manual_seed(0))
        q = lowbit.quantizer("int4:group128")

        def ours_encode():
            return q.encode(w)

        def ours_codes():  # scales + codes (uint8, unpacked): the same work torchao does
            rows = q.granularity.to_rows(w)
            scale, _ = q.compute_scale(w)
            return q.fmt.encode(rows / scale[:, None])

        def ours_fake():
            with torch.no_grad():
                return q(w)

        def theirs():
            s, z = choose_qparams_affine(w, MappingType.SYMMETRIC, (1, 128), torch.int8, quant_min=-8, quant_max=7)
            return quantize_affine(w, (1, 128), s, z, torch.int8, quant_min=-8, quant_max=7)

        def one_pass():
            return torch.mul(w, 2.0)

        reps = args.repeats_big if n >= 1e8 else args.repeats
        res = {k: median_time(f, reps) for k, f in
               (("encode", ours_encode), ("codes", ours_codes), ("fake", ours_fake), ("torchao", theirs), ("pass", one_pass))}
        # Same work, same answer: torchao's quantize_affine with lowbit's scales gives lowbit's codes.
        # (torchao's own symmetric scale is amax/7.5, lowbit's max(max/7, -min/8): different grids.)
        s_ours, _ = q.compute_scale(w)
        s2 = s_ours.reshape(-1, w.shape[1] // 128)
        tq = quantize_affine(w, (1, 128), s2, torch.zeros_like(s2, dtype=torch.int32), torch.int8, quant_min=-8, quant_max=7)
        oq = ours_codes().to(torch.int32) - 8
        agree = float((tq.reshape(-1, 128).to(torch.int32) == oq).float().mean()) * 100
        tag = f"{n:.0e}".replace("+0", "")
        t.add(f"int4 group-128 quantize {tag} weights: QTensor (scales, codes, 4-bit packing)",
              f"{res['encode']:.3f} s", f"torchao {res['torchao']:.3f} s", f"{res['encode'] / res['torchao']:.2f}x",
              _verdict(res["encode"] < res["torchao"]))
        t.add(f"int4 group-128 {tag}: scales + unpacked codes (torchao's work)", f"{res['codes']:.3f} s",
              f"torchao {res['torchao']:.3f} s", f"{res['codes'] / res['torchao']:.2f}x",
              _verdict(res["codes"] < res["torchao"]) + f"; codes equal to torchao's at lowbit's scales: {agree:.4f} %")
        t.add(f"int4 group-128 {tag}: fake quantization q(w)", f"{res['fake']:.3f} s",
              f"one elementwise pass {res['pass']:.3f} s", f"{res['fake'] / res['pass']:.1f} passes", "reference")
        del w


def section_nf4(t: Table, args: argparse.Namespace) -> None:
    """NF4 (block 64) error and time: lowbit vs torchao's to_nf4 on the same tensor."""
    import torch
    try:
        from torchao.dtypes import to_nf4
    except ImportError:  # torchao >= 0.15 moved it
        from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import to_nf4

    import lowbit
    from lowbit.qtensor_storage import double_quantize

    torch.set_num_threads(args.threads_big)
    n = int(args.nf4_size)
    # torchao needs the number of blocks of 64 to be a multiple of its scaler block (256)
    w = torch.randn(n // (64 * 256) * 4, 4096, generator=torch.Generator().manual_seed(1)) * 0.02
    n = w.numel()
    q = lowbit.quantizer("nf4:group64")
    qt = q.encode(w)
    nf = to_nf4(w, 64, 256)
    ref_ao = nf.get_original_weight()
    qt_dq, _ = double_quantize(qt, 256)
    mse = lambda a: float(((a.float() - w) ** 2).mean())  # noqa: E731
    e_ours, e_dq, e_ao = mse(qt.dequantize()), mse(qt_dq.dequantize()), mse(ref_ao)
    codes_ao = torch.stack([nf.quantized_data >> 4, nf.quantized_data & 15], dim=-1).reshape(-1)
    agree = float((codes_ao.to(torch.int32) == qt.codes().reshape(-1).to(torch.int32)).float().mean()) * 100
    t.add(f"NF4 block-64 MSE ({n:.0e} N(0,0.02) weights), fp32 block scales", f"{e_ours:.4e}", f"torchao {e_ao:.4e}",
          f"{e_ours / e_ao:.4f}x", _verdict(e_ours < e_ao, abs(e_ours / e_ao - 1) < 1e-3))
    t.add("NF4 MSE with QLoRA double-quantized scales (block 256), as torchao", f"{e_dq:.4e}", f"torchao {e_ao:.4e}",
          f"{e_dq / e_ao:.4f}x", _verdict(e_dq < e_ao, abs(e_dq / e_ao - 1) < 1e-3) + f"; codes equal {agree:.3f} %")
    tq = median_time(lambda: q.encode(w), args.repeats)
    ta = median_time(lambda: to_nf4(w, 64, 256), args.repeats)
    t.add(f"NF4 quantize {n:.0e} weights", f"{tq:.3f} s", f"torchao to_nf4 {ta:.3f} s", f"{ta / tq:.1f}x faster" if tq < ta else f"{tq / ta:.1f}x slower",
          _verdict(tq < ta) + ("; aim >= 5x " + ("met" if ta / tq >= 5 else "**missed**")))


def section_snn(t: Table, args: argparse.Namespace) -> None:
    """Feed-forward SNN 64-100-10 (LIF, leaky readout, max over time) on rate-coded digits: lowbit vs snnTorch."""
    import snntorch as snn
    import torch
    import torch.nn.functional as F
    from snntorch import surrogate
    from torch import nn

    from lowbit.data.images import load_digits
    from lowbit.snn import SNN
    from lowbit.snn.encoders import rate_encode

    ds = load_digits(seed=args.seed)
    steps = 25
    xtr = rate_encode(ds.train.tensors[0].flatten(1), steps, seed=args.seed)
    xte = rate_encode(ds.test.tensors[0].flatten(1), steps, seed=args.seed + 1)
    ytr, yte = ds.train.tensors[1], ds.test.tensors[1]
    ours = SNN(64, 100, 10, recurrent=False, beta=0.9, readout="max", seed=args.seed)

    class SnnTorchNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 100, bias=False)
            self.out = nn.Linear(100, 10, bias=False)
            self.lif = snn.Leaky(beta=0.9, threshold=1.0, spike_grad=surrogate.fast_sigmoid(slope=25), reset_mechanism="subtract")
            self.li = snn.Leaky(beta=0.9, reset_mechanism="none")

        def forward(self, x):
            cur = self.fc(x)  # [batch, time, 100], one matmul outside the time loop as lowbit does
            mem = torch.zeros(x.shape[0], 100)
            spikes = []
            for xt in cur.unbind(1):
                spk, mem = self.lif(xt, mem)
                spikes.append(spk)
            drive = self.out(torch.stack(spikes, 1))
            v = torch.zeros(x.shape[0], 10)
            vs = []
            for dt in drive.unbind(1):
                _, v = self.li(dt, v)
                vs.append(v)
            return torch.stack(vs, 1).amax(1)

    theirs = SnnTorchNet()
    with torch.no_grad():  # the same initial weights
        theirs.fc.weight.copy_(ours.fc[0])
        theirs.out.weight.copy_(ours.w_out)

    def run(model) -> tuple[float, float]:
        torch.manual_seed(args.seed)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        g = torch.Generator().manual_seed(args.seed)
        ep_times = []
        for _ in range(args.snn_epochs):
            model.train()
            perm = torch.randperm(len(ytr), generator=g)
            t0 = time.perf_counter()
            for s in range(0, len(ytr), 128):
                idx = perm[s:s + 128]
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
                opt.step()
            ep_times.append(time.perf_counter() - t0)
        model.eval()
        with torch.no_grad():
            acc = float((model(xte).argmax(1) == yte).float().mean()) * 100
        return statistics.median(ep_times), acc

    (to, ao), (tt, at) = run(ours), run(theirs)
    t.add(f"SNN 64-100-10, {steps} steps: epoch time (median of {args.snn_epochs})", f"{to:.2f} s", f"snnTorch {tt:.2f} s",
          f"{to / tt:.2f}x", _verdict(to < tt))
    t.add(f"SNN test accuracy after {args.snn_epochs} epochs", f"{ao:.2f} %", f"snnTorch {at:.2f} %", f"{ao - at:+.2f} pt",
          _verdict(ao > at, abs(ao - at) < 1.0))


def _write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    print(f"wrote {path.relative_to(ROOT)}")


def _machine(vers: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = float("nan")
    return (f"Machine: {cpu}, {os.cpu_count()} CPU cores, Python {platform.python_version()}; {vers}. "
            f"Load average at the end: {load1:.1f} (a shared machine: times are noisy).")


def section_zoo(args: argparse.Namespace, vers: str) -> None:
    """Which zoo models lowbit, Brevitas and torchao quantize, run and export (issue 21): its own table."""
    from _peers_zoo import zoo_markdown, zoo_rows

    rows = zoo_rows(args.zoo_models)
    header = (
        f"## Zoo models: lowbit vs Brevitas vs torchao (works / fails)\n\n{_machine(vers)}\n"
        "Same seeded random-init zoo models (small widths, BatchNorms that have seen 3 random batches), same inputs, "
        "nothing downloaded. `k/n`: of the model's n weight layers (2+-dim weights: conv, linear, attention, embedding, "
        "LSTM), k are quantized. lowbit: `quantize(m, \"w8\", calib=3 batches)`; `prepare_qat(m, \"w4:lsq,a8\")`, two SGD "
        "steps, `convert` (bit-exact = `torch.equal` with the QAT model); `export_onnx` of that QAT model with its "
        "verification (example + 5 random inputs in onnxruntime). Brevitas: `preprocess_for_quantize` + `quantize` "
        "(its fx graph mode, int8 weights and activations, `calibration_mode` on the 3 batches) and `layerwise_quantize`; "
        "`export_onnx_qcdq` with its default dynamo exporter, then `dynamo=False` (TorchScript), run once in "
        "onnxruntime on the example input (ort Δ: largest difference / output range). torchao: `quantize_` with "
        "`Int8WeightOnlyConfig()` and `Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, "
        "weight_granularity=PerAxis(0))`, one forward, `torch.export.export`.\n"
        f"Command: `python benchmarks/bench_peers.py --only zoo`."
    )
    _write(RESULTS_ZOO, zoo_markdown(rows, header))


def section_ptq2(args: argparse.Namespace, vers: str) -> None:
    """lowbit's GPTQ / AdaRound vs Brevitas' GPTQ / learned round on bench_ptq's models (issue 17): its own tables."""
    from _peers_ptq import ptq_from_rows, ptq_markdown, ptq_rows

    if args.ptq_table:  # merge slices run as separate processes (e.g. one seed per core)
        out, got = ptq_from_rows(args.ptq_table)
        args.ptq_seeds, args.ptq_data = got, list(out)
    else:
        out = ptq_rows(args.ptq_data, args.ptq_seeds, args.ptq_epochs, args.ptq_iters, rows_file=args.ptq_rows)
    seeds = ",".join(map(str, args.ptq_seeds))
    header = (
        f"## PTQ side by side: lowbit vs Brevitas (GPTQ, learned rounding)\n\n{_machine(vers)}\n"
        f"Float VGG trained {args.ptq_epochs} epochs per seed (seeds {seeds}), 512 calibration samples, per-channel "
        f"W4/W3/W2 weights, float activations, BN folded; AdaRound / learned round {args.ptq_iters} iterations per "
        "layer, batch 32, Adam lr 1e-3 on both sides. Accuracy: mean over seeds; seconds: median; lowbit and "
        "Brevitas run alternately in one process (1 thread), so the machine's load hits both alike. Brevitas' "
        "seconds include its fx preprocessing and MSE scale search (lowbit's include its MSE clip search).\n"
        f"Command: `python benchmarks/bench_peers.py --only ptq2 --ptq-seeds {seeds} --ptq-epochs {args.ptq_epochs} "
        f"--ptq-iters {args.ptq_iters} --ptq-data {' '.join(args.ptq_data)}`"
        + (" — here run as slices (one process per seed and dataset, 1 thread each, two at a time) with "
           "`--ptq-rows FILE`, merged with `--ptq-table FILE`." if args.ptq_table else ".")
    )
    _write(RESULTS_PTQ, ptq_markdown(out, header))


# --------------------------------------------------------------------------- main


def inner(args: argparse.Namespace) -> int:
    """Run every section inside the peers' virtualenv and write the table."""
    sys.path.insert(0, str(ROOT / "src"))
    import importlib.metadata as md

    import torch

    from lowbit.data.images import load_digits

    torch.set_num_threads(1)
    t = Table()
    ds = load_digits(seed=args.seed)
    sections = [("qat", lambda: section_qat(t, args, ds)), ("ptq", lambda: section_ptq(t, args, ds)),
                ("int4", lambda: section_int4_speed(t, args)), ("nf4", lambda: section_nf4(t, args)),
                ("snn", lambda: section_snn(t, args))]
    vers = ", ".join(f"{p} {md.version(p)}" for p in ["torch", *PEERS])
    sections += [("zoo", lambda: section_zoo(args, vers)), ("ptq2", lambda: section_ptq2(args, vers))]
    own_table = ("qat", "ptq", "int4", "nf4", "snn")
    for name, fn in sections:
        if args.only and name not in args.only:
            continue
        print(f"[{name}]", flush=True)
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as e:  # one broken peer must not hide the other rows
            traceback.print_exc()
            t.add(f"{name} section", "failed", "-", "-", f"{type(e).__name__}: {str(e)[:120]}")
        print(f"[{name}] {time.perf_counter() - t0:.0f} s", flush=True)
    if args.only and not set(args.only) & set(own_table):
        return 0  # zoo / ptq2 wrote their own files; peers.md keeps the last full run
    cpu = platform.processor() or platform.machine()
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = float("nan")
    header = (
        f"## lowbit vs peers\n\nMachine: {cpu}, {os.cpu_count()} CPU cores, Python {platform.python_version()}; {vers}. "
        f"Load average at the end: {load1:.1f} (the machine was shared: timings are noisy). "
        f"Seed {args.seed}; QAT {args.qat_epochs} epochs after {args.float_epochs} float epochs; "
        f"training on 1 thread, weight-quantization timings on {args.threads_big}; medians of {args.repeats} runs "
        f"({args.repeats_big} for 1e8 weights), step times median of {args.rounds} rounds of 10 steps.\n"
        f"Command: `python benchmarks/bench_peers.py{' --quick' if args.quick else ''}`."
    )
    t.notes += [
        "Brevitas QAT: `Int8WeightPerChannelFloat` with `weight_bit_width=b` (narrow range: W2 has 3 levels); "
        "lowbit QAT: `w<b>:lsq` (int<b>, per channel, learned step size). BatchNorm kept (not folded) in both.",
        "torchao quantizes Linear layers only, so PTQ uses the MLP; Conv layers are lowbit-only.",
        "NF4: torchao rounds the NF4 table to 4 decimals and double-quantizes the block scales with step absmax/128; "
        "lowbit uses the exact QLoRA table and fp32 scales (or `double_quantize`, step absmax/127).",
    ]
    text = t.markdown(header)
    print("\n" + text)
    _write(RESULTS, text)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Set up the peers' virtualenv (once) and run the benchmark inside it."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer epochs/repeats; 1e7 weights only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="*", choices=["qat", "ptq", "int4", "nf4", "snn", "zoo", "ptq2"],
                   help="run only these sections (zoo and ptq2 write peers_zoo.md / peers_ptq.md)")
    p.add_argument("--zoo-models", nargs="*", default=None, help="zoo section: these models only (default: all)")
    p.add_argument("--ptq-data", nargs="*", default=None, choices=["digits", "mnist"],
                   help="ptq2 section: datasets (default both; --quick: digits)")
    p.add_argument("--ptq-seeds", type=lambda v: [int(s) for s in v.split(",")], default=[0], help="ptq2: seeds, e.g. 0,1,2")
    p.add_argument("--ptq-epochs", type=int, default=15, help="ptq2: float training epochs (bench_ptq's 15)")
    p.add_argument("--ptq-iters", type=int, default=None, help="ptq2: AdaRound / learned-round iterations per layer (1000; --quick: 300)")
    p.add_argument("--ptq-rows", default=None, help="ptq2: also append each run to this JSON-lines file")
    p.add_argument("--ptq-table", default=None, help="ptq2: only write peers_ptq.md from a --ptq-rows file (slices merged)")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    q = args.quick
    args.float_epochs, args.qat_epochs, args.snn_epochs = (3, 2, 2) if q else (8, 5, 3)
    args.repeats, args.repeats_big, args.rounds = (3, 1, 5) if q else (5, 3, 15)
    args.sizes = [1e7] if q else [1e7, 1e8]
    args.nf4_size = 1e7
    args.threads_big = min(2, os.cpu_count() or 1)
    args.ptq_data = args.ptq_data or (["digits"] if q else ["digits", "mnist"])
    args.ptq_iters = args.ptq_iters or (300 if q else 1000)
    if args.inner:
        return inner(args)
    py = ensure_venv()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), TORCHAO_FORCE_SKIP_LOADING_SO_FILES="1", PYTHONWARNINGS="ignore",
               TQDM_DISABLE="1")  # Brevitas' learned-round trainer draws a bar per layer
    return subprocess.run([str(py), str(Path(__file__).resolve()), "--inner", *(argv if argv is not None else sys.argv[1:])],
                          env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
