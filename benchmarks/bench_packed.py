"""Packed converted models in PyTorch: resident memory and latency against float, each variant in a fresh process.

    nice .venv/bin/python benchmarks/bench_packed.py [--dim 4096] [--ffn 11008] [--repeat 20]

The model is a stack of linears: dim x dim, then dim -> ffn and ffn -> dim (an LLM block's
shapes). Variants: float, lowbit w8 / w4 (group 128) / nf4 (group 64), converted with
``kernels="auto"``, and torchao's int8/int4 weight-only when torchao is importable. Each
variant runs in its own subprocess with 2 threads: resident memory is RSS after the model
is built (layer by layer, the float copy freed and returned to the OS with malloc_trim)
minus RSS before; latency is the median of ``--repeat`` calls at batch 1 and 32, float32
and bfloat16 activations (a bfloat16 run casts the model: float weights become bfloat16).
Ratios are against float measured in the same run.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time

VARIANTS = {"float": None, "w8": "w8", "w4": "w4:group128", "nf4": "w4:nf4:group64", "torchao-int8": "ao8", "torchao-int4": "ao4"}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed float weights back to the OS: RSS shows what is held
    except OSError:
        pass


def _child(variant: str, dim: int, ffn: int, repeat: int) -> dict[str, object]:
    import torch
    from torch import nn

    import lowbit

    torch.set_num_threads(2)
    torch.manual_seed(0)
    spec = VARIANTS[variant]
    shapes = [(dim, dim), (dim, dim), (dim, ffn), (ffn, dim)]
    _trim()
    base = _rss()
    layers = []
    for k, n in shapes:
        lin = nn.Linear(k, n, bias=False)
        if spec is None:
            layers.append(lin)
        elif spec.startswith("ao"):
            from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

            seq = nn.Sequential(lin)
            quantize_(seq, Int8WeightOnlyConfig() if spec == "ao8" else Int4WeightOnlyConfig(group_size=128))
            layers.append(seq[0])
        else:
            conv = lowbit.convert(lowbit.quantize(nn.Sequential(lin), spec), inplace=True, kernels="auto")
            layers.append(conv[0])
        del lin
        _trim()
    model = nn.Sequential(*layers).eval()
    _trim()
    held = _rss() - base
    out: dict[str, object] = {"variant": variant, "rss_mb": held / 2**20, "latency_ms": {}}
    for dtype in (torch.float32, torch.bfloat16):
        m = model.to(dtype)  # lowbit: the float buffers (scales) follow, the packed codes stay
        for batch in (1, 32):
            x = torch.randn(batch, dim).to(dtype)
            with torch.no_grad():
                m(x)  # warm-up (and the kernel table's measurement)
                ts = []
                for _ in range(repeat):
                    t = time.perf_counter()
                    m(x)
                    ts.append(time.perf_counter() - t)
            out["latency_ms"][f"{str(dtype)[6:]}/b{batch}"] = 1e3 * statistics.median(ts)  # type: ignore[index]
    if spec is not None and not spec.startswith("ao"):
        out["kernels"] = sorted({str(getattr(layer, "kernel", None) and layer.kernel.name) for layer in layers})
    return out


def main() -> None:
    """Run every variant in a fresh subprocess and print the table with ratios against float."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--ffn", type=int, default=11008)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(_child(a.child, a.dim, a.ffn, a.repeat)))
        return
    rows = []
    for v in VARIANTS:
        if v.startswith("torchao"):
            try:
                import torchao  # noqa: F401
            except ImportError:
                print(f"{v}: torchao is not importable here (no benchmarks/.peers-venv): not measured")
                continue
        r = subprocess.run([sys.executable, __file__, "--child", v, "--dim", str(a.dim), "--ffn", str(a.ffn),
                            "--repeat", str(a.repeat)], capture_output=True, text=True)
        if r.returncode:
            print(f"{v}: failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
            continue
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    if not rows or rows[0]["variant"] != "float":
        return
    f = rows[0]
    cols = list(f["latency_ms"])
    print(f"\nlinears {a.dim}x{a.dim} x2, {a.dim}->{a.ffn}, {a.ffn}->{a.dim}; 2 threads; latency median of {a.repeat} (ms);"
          " (x) = float's time / this time, memory = float's RSS / this RSS; bf16 float = weights cast to bf16")
    print(f"{'variant':<14} {'RSS MB':>8} {'(x)':>6}  " + "  ".join(f"{c:>17}" for c in cols) + "  kernels")
    for r in rows:
        lat = "  ".join(f"{r['latency_ms'][c]:>9.2f} ({f['latency_ms'][c] / r['latency_ms'][c]:>4.2f}x)" for c in cols)
        print(f"{r['variant']:<14} {r['rss_mb']:>8.1f} {f['rss_mb'] / r['rss_mb']:>5.2f}x  {lat}  {','.join(r.get('kernels', []))}")


if __name__ == "__main__":
    main()
