"""Packed converted models in PyTorch: resident memory (a fresh process per variant) and latency (interleaved) against float and torchao.

    nice -n 5 .venv/bin/python benchmarks/bench_packed.py [--dim 4096] [--ffn 11008] [--repeat 3]

The model is a stack of linears without bias: dim x dim twice, then dim -> ffn and ffn -> dim
(an LLM block's shapes). Variants: float; lowbit w8 (int8 per channel, min-max range: the
range choice does not change size or speed), w4 (int4, group 128) and nf4 (group 64), all
converted with ``kernels="auto"``; torchao's int8 weight-only (``Int8WeightOnlyConfig``) and
int4 weight-only, group 128 (``PrototypeInt4WeightOnlyConfig``, its CPU int4 layout) when
``benchmarks/.peers-venv`` (made by ``bench_peers.py``) imports torchao — else they are
skipped with a note.

Memory: each variant in its own subprocess with 2 threads. Before the baseline RSS is read,
the process runs the same variant once on a tiny model (imports, first-call allocations,
the kernel table's code paths): that one-time cost is reported apart as "first use". The
model is then built layer by layer (each float layer freed, ``malloc_trim``) and its RSS
delta is what the model holds; "weights" is the bytes of its tensors.

Latency: one subprocess holds every variant (float32 and bfloat16 copies) and times them
interleaved — for each setting, call after call round-robin over the variants — so machine
load hits all alike; median of ``--repeat`` calls after one warm-up call (which also fills
lowbit's kernel table). With torchao present this process runs under the peers venv's
interpreter (the same pinned torch) with ``PYTHONPATH=src``. "fp32 via bf16" times lowbit's
opt-in ``allow_bf16_activations`` paths (float32 inputs through the kernels in bfloat16).
"bf16 model weights" is the tensor bytes each bfloat16 model holds after its calls (kernel
caches included, e.g. lowbit's int4 scales-and-zeros), against the float32 model's weights.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS_PY = ROOT / "benchmarks" / ".peers-venv" / "bin" / "python"
LOWBIT = {"w8": "int8:channel", "w4": "w4:group128", "nf4": "w4:nf4:group64"}
AO = {"torchao-int8": "ao8", "torchao-int4": "ao4"}
SETTINGS = [("float32", 1), ("float32", 32), ("bfloat16", 1), ("bfloat16", 32)]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed float weights back to the OS: RSS shows what is held
    except OSError:
        pass


def _shapes(dim: int, ffn: int) -> list[tuple[int, int]]:
    return [(dim, dim), (dim, dim), (dim, ffn), (ffn, dim)]


def _layer(variant: str, k: int, n: int, dtype):  # type: ignore[no-untyped-def]
    """One linear of ``variant`` (in ``dtype``), its float copy gone."""
    import torch
    from torch import nn

    import lowbit

    lin = nn.Linear(k, n, bias=False)
    if variant == "float":
        return lin.to(dtype)
    if variant in AO:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        seq = nn.Sequential(lin.to(dtype))
        if variant == "torchao-int8":
            quantize_(seq, Int8WeightOnlyConfig())
        else:
            from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

            quantize_(seq, PrototypeInt4WeightOnlyConfig(group_size=128))
        return seq[0]
    layer = lowbit.convert(lowbit.quantize(nn.Sequential(lin), LOWBIT[variant]), inplace=True, kernels="auto")[0]
    return layer.to(dtype) if dtype != torch.float32 else layer


def _tensor_bytes(model) -> int:  # type: ignore[no-untyped-def]
    """Bytes of every parameter and buffer, looking inside tensor subclasses (torchao's packed weights)."""
    seen, total = set(), 0

    def add(t) -> None:  # type: ignore[no-untyped-def]
        nonlocal total
        if hasattr(t, "__tensor_flatten__") and type(t).__name__ not in ("Tensor", "Parameter"):
            names, _ = t.__tensor_flatten__()
            for nm in names:
                add(getattr(t, nm))
            return
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()

    for m in model.modules():
        for t in list(m._parameters.values()) + list(m._buffers.values()):
            if t is not None:
                add(t)
    return total


def _child_memory(variant: str, dim: int, ffn: int) -> dict[str, object]:
    import torch
    from torch import nn

    torch.set_num_threads(2)
    torch.manual_seed(0)
    _trim()
    after_import = _rss()
    for dtype in (torch.float32, torch.bfloat16):  # the one-time cost of this variant's code paths
        tiny = _layer(variant, 256, 256, dtype)
        with torch.no_grad():
            tiny(torch.randn(1, 256).to(dtype))
        del tiny
    _trim()
    base = _rss()
    layers = []
    for k, n in _shapes(dim, ffn):
        layers.append(_layer(variant, k, n, torch.float32))
        _trim()
    model = nn.Sequential(*layers).eval()
    _trim()
    return {"variant": variant, "rss_mb": (_rss() - base) / 2**20, "weights_mb": _tensor_bytes(model) / 2**20,
            "first_use_mb": (base - after_import) / 2**20}


def _child_latency(variants: list[str], dim: int, ffn: int, repeat: int) -> dict[str, object]:
    import torch
    from torch import nn

    from lowbit.nn import kernels

    torch.set_num_threads(2)
    torch.manual_seed(0)
    models: dict[tuple[str, str], nn.Module] = {}
    for v in variants:
        for dt in ("float32", "bfloat16"):
            if v in LOWBIT and dt == "bfloat16":  # the same packed model, scales cast: as a user would
                models[(v, dt)] = copy.deepcopy(models[(v, "float32")]).to(torch.bfloat16)
                continue
            models[(v, dt)] = nn.Sequential(*[_layer(v, k, n, getattr(torch, dt)) for k, n in _shapes(dim, ffn)]).eval()
    for v in ("w8", "w4"):  # float32 inputs through the kernels in bfloat16 (opt-in; the bfloat16 bound; nf4 has no kernel)
        if v in variants:
            models[(v + "@bf16", "float32")] = m = copy.deepcopy(models[(v, "float32")])
            kernels.allow_bf16_activations(m)
    out: dict[str, dict[str, float]] = {}
    for dt, batch in SETTINGS:
        x = torch.randn(batch, dim).to(getattr(torch, dt))
        runs = {v: m for (v, d), m in models.items() if d == dt}
        ts: dict[str, list[float]] = {v: [] for v in runs}
        with torch.no_grad():
            for i in range(repeat + 1):
                for v, m in runs.items():  # round-robin: load hits every variant alike
                    t = time.perf_counter()
                    m(x)
                    if i:  # the first call is the warm-up (and lowbit's kernel-table measurement)
                        ts[v].append(time.perf_counter() - t)
        for v, t in ts.items():
            out.setdefault(v, {})[f"{dt}/b{batch}"] = 1e3 * statistics.median(t)
    table = {"|".join(map(str, k)): p for k, p in kernels.measured_table().items()}
    # tensors a bfloat16 model holds after its calls (a kernel's caches included): what it costs to serve in bfloat16
    half = {v: _tensor_bytes(m) / 2**20 for (v, d), m in models.items() if d == "bfloat16"}
    return {"latency_ms": out, "table": table, "bf16_weights_mb": half}


def _run(py: str, args: list[str]) -> dict | str:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    r = subprocess.run([py, __file__, *args], capture_output=True, text=True, env=env)
    if r.returncode:
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        return f"failed: {lines[-1] if lines else r.returncode}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def _peers_python() -> str | None:
    if not PEERS_PY.exists():
        return None
    r = subprocess.run([str(PEERS_PY), "-c", "import torchao"], capture_output=True)
    return str(PEERS_PY) if r.returncode == 0 else None


def main() -> None:
    """Measure memory per variant (fresh processes) and latency (one interleaved process); print both tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--ffn", type=int, default=11008)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--child-memory", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-latency", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.dim < 128 or a.ffn < 128 or a.dim % 128 or a.ffn % 128:
        raise SystemExit(f"--dim and --ffn must be multiples of 128 (the int4 group), got {a.dim}, {a.ffn}")
    if a.repeat < 1:
        raise SystemExit(f"--repeat must be at least 1, got {a.repeat}")
    size = ["--dim", str(a.dim), "--ffn", str(a.ffn), "--repeat", str(a.repeat)]
    if a.child_memory:
        print(json.dumps(_child_memory(a.child_memory, a.dim, a.ffn)))
        return
    if a.child_latency:
        print(json.dumps(_child_latency(a.child_latency.split(","), a.dim, a.ffn, a.repeat)))
        return
    peers = _peers_python()
    variants = ["float", *LOWBIT]
    if peers:
        variants += list(AO)
    else:
        print("torchao rows skipped: benchmarks/.peers-venv is absent or cannot import torchao (python benchmarks/bench_peers.py makes it)")
    t0 = time.perf_counter()
    mem = {}
    for v in variants:
        r = _run(peers if v in AO else sys.executable, ["--child-memory", v, *size])
        if isinstance(r, str):
            print(f"{v} memory: {r}")
        else:
            mem[v] = r
    lat = _run(peers or sys.executable, ["--child-latency", ",".join(variants), *size])
    if isinstance(lat, str):
        raise SystemExit(f"latency: {lat}")
    L = lat["latency_ms"]
    cols = [f"{d}/b{b}" for d, b in SETTINGS]
    print(f"\nlinears {a.dim}x{a.dim} x2, {a.dim}->{a.ffn}, {a.ffn}->{a.dim}, no bias; 2 threads; "
          f"latency: median of {a.repeat} interleaved calls (ms), (x) = float's time / this time; "
          f"memory: RSS the model holds (MB), (x) = float32's / this; run in {time.perf_counter() - t0:.0f} s"
          f"{'; latency under ' + peers if peers else ''}")
    print(f"| variant | RSS MB | × smaller | weights MB | first use MB (imports, first calls) | "
          "bf16 model weights MB (× vs float32) | " + " | ".join(c.replace("/", " ") + " ms" for c in cols) + " |")
    print("|---|" + "---:|" * (5 + len(cols)))
    half = lat.get("bf16_weights_mb", {})
    fm, fl = mem.get("float"), L["float"]
    for v in variants + ["w8@bf16", "w4@bf16"]:
        if v not in L:
            continue
        m = mem.get(v.split("@")[0]) if "@" not in v else None
        memtxt = (f"{m['rss_mb']:.1f} | {fm['rss_mb'] / m['rss_mb']:.2f} | {m['weights_mb']:.1f} | {m['first_use_mb']:.1f}"
                  if m and fm else " | | | ")
        lt = " | ".join(f"{L[v][c]:.2f} ({fl[c] / L[v][c]:.2f}x)" if c in L[v] else "" for c in cols)
        name = v.replace("@bf16", " (fp32 via bf16)")
        hm = f"{half[v]:.1f} ({fm['weights_mb'] / half[v]:.2f}x)" if v in half and fm else ""
        print(f"| {name} | {memtxt} | {hm} | {lt} |")
    paths: dict[str, set[str]] = {}
    for key, p in lat["table"].items():
        kern, n, k, dt, b = key.split("|")
        paths.setdefault(f"{kern} {dt} b{b}", set()).add(p)
    print("\nlowbit kernel table (kernel dtype batch: paths chosen over the layer shapes): "
          + "; ".join(f"{k}: {','.join(sorted(v))}" for k, v in sorted(paths.items())))


if __name__ == "__main__":
    main()
