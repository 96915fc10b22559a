"""Streaming PTQ benchmark: quantize a generated safetensors checkpoint; time and peak memory against its size.

The checkpoint (``--size`` GB of ``--shape`` matrices, plus a 1-D norm per matrix)
is generated tensor by tensor, never whole in memory. Each tool runs in its own
child process, which reports its resident set after imports and its peak
(``VmHWM`` from /proc), so the table shows what the quantization itself adds:

- ``lowbit stream``: ``lowbit.streaming.quantize_checkpoint`` (what
  ``lowbit quantize-checkpoint`` runs);
- ``lowbit in-memory``: ``safetensors.torch.load_file`` + ``quantizer(spec).encode``
  per tensor + ``save_qtensors`` (the naive way; ``--no-inmemory`` skips it);
- ``torchao``: int4 group-128 affine quantization of the same tensors (torchao's
  ``choose_qparams_affine`` / ``quantize_affine``), when ``import torchao`` works.

Run (the numbers in the README come from ``--size 1``)::

    .venv/bin/python benchmarks/bench_streaming.py --size 1
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

from lowbit.streaming import write_safetensors_streaming

_DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}

_PRELUDE = textwrap.dedent(
    """
    import json, sys, time
    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    """
)

_STREAM = _PRELUDE + textwrap.dedent(
    """
    import torch
    from lowbit.streaming import quantize_checkpoint
    torch.set_num_threads(int(sys.argv[4]))
    base = rss("VmRSS:")
    t0 = time.perf_counter()
    quantize_checkpoint(sys.argv[1], sys.argv[2], sys.argv[3], progress=False, chunk_mb=float(sys.argv[5]))
    print(json.dumps({"seconds": time.perf_counter() - t0, "base": base, "peak": rss("VmHWM:")}))
    """
)

_INMEMORY = _PRELUDE + textwrap.dedent(
    """
    import torch
    from safetensors.torch import load_file
    from lowbit import quantizer, save_qtensors
    torch.set_num_threads(int(sys.argv[4]))
    base = rss("VmRSS:")
    t0 = time.perf_counter()
    tensors = load_file(sys.argv[1])
    out = {k: (quantizer(sys.argv[3]).encode(v) if v.dim() >= 2 else v) for k, v in tensors.items()}
    save_qtensors(sys.argv[2], out)
    print(json.dumps({"seconds": time.perf_counter() - t0, "base": base, "peak": rss("VmHWM:")}))
    """
)

_TORCHAO = _PRELUDE + textwrap.dedent(
    """
    import torch, torchao
    from safetensors import safe_open
    from torchao.quantization.quant_primitives import MappingType, choose_qparams_affine, quantize_affine
    torch.set_num_threads(int(sys.argv[4]))
    base = rss("VmRSS:")
    t0 = time.perf_counter()
    kept = 0
    with safe_open(sys.argv[1], framework="pt") as f:
        for k in f.keys():
            x = f.get_tensor(k)
            if x.dim() < 2:
                continue
            block = (1, 128)
            scale, zp = choose_qparams_affine(x, MappingType.ASYMMETRIC, block, torch.int32, 0, 15)
            q = quantize_affine(x, block, scale, zp, torch.int32, 0, 15)
            kept += q.numel() // 2 + scale.numel() * 4  # packed int4 + scales, as lowbit stores them
            del q
    print(json.dumps({"seconds": time.perf_counter() - t0, "base": base, "peak": rss("VmHWM:"),
                      "version": torchao.__version__}))
    """
)


def generate(path: Path, size_gb: float, shape: tuple[int, int], dtype: torch.dtype, seed: int) -> tuple[int, int]:
    """Write the checkpoint tensor by tensor; return (file bytes, largest tensor bytes)."""
    esize = torch.empty(0, dtype=dtype).element_size()
    per = shape[0] * shape[1] * esize + shape[1] * esize
    n = max(1, round(size_gb * 2**30 / per))
    layout = []
    for i in range(n):
        layout += [(f"layers.{i}.weight", dtype, shape), (f"layers.{i}.norm", dtype, (shape[1],))]

    def make(name: str, d: torch.dtype, s: tuple[int, ...]) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed + sum(map(ord, name)))
        return (torch.randn(s, generator=g) * 0.02).to(d)

    size = write_safetensors_streaming(path, layout, make, {"generated_by": "bench_streaming"})
    return size, shape[0] * shape[1] * esize


def run_child(script: str, args: list[str]) -> dict[str, float] | str:
    """Run one tool in a fresh process; its JSON report, or the error text."""
    r = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env={**os.environ, "CI": "true"})
    if r.returncode != 0:
        return (r.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    """Generate, quantize with each tool, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=float, default=4.0, help="checkpoint size in GB (default: 4)")
    ap.add_argument("--shape", type=int, nargs=2, default=(4096, 4096), help="matrix shape (default: 4096 4096)")
    ap.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16", help="weights dtype (default: bf16)")
    ap.add_argument("--spec", default="int4:group128", help="lowbit spec (default: int4:group128)")
    ap.add_argument("--chunk-mb", type=float, default=8.0, help="lowbit streaming chunk, float32 MB (default: 8)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in each tool (default: 2)")
    ap.add_argument("--dir", default=None, help="where to write the files (default: a temporary folder)")
    ap.add_argument("--no-inmemory", action="store_true", help="skip the in-memory baseline (it needs RAM ~ the file)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="lowbit-bench-", dir=args.dir) as tmp:
        src = Path(tmp) / "model.safetensors"
        t0 = time.perf_counter()
        size, largest = generate(src, args.size, tuple(args.shape), _DTYPES[args.dtype], args.seed)
        gen_s = time.perf_counter() - t0
        common = [args.spec, str(args.threads), str(args.chunk_mb)]
        rows: list[tuple[str, dict[str, float] | str]] = [
            ("lowbit stream", run_child(_STREAM, [str(src), str(Path(tmp) / "stream.lowbit"), *common]))
        ]
        out_size = (Path(tmp) / "stream.lowbit").stat().st_size if (Path(tmp) / "stream.lowbit").exists() else 0
        if not args.no_inmemory:
            rows.append(("lowbit in-memory", run_child(_INMEMORY, [str(src), str(Path(tmp) / "mem.lowbit"), *common])))
        try:
            import torchao  # noqa: F401

            rows.append(("torchao int4 g128", run_child(_TORCHAO, [str(src), "-", *common])))
        except ImportError:
            rows.append(("torchao int4 g128", "skipped: torchao is not installed in this environment"))

    mib = 2**20
    print(f"# streaming PTQ: {size / mib:.0f} MiB {args.dtype} checkpoint ({args.shape[0]}x{args.shape[1]} matrices, "
          f"largest tensor {largest / mib:.0f} MiB), spec {args.spec}, output {out_size / mib:.0f} MiB")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{args.threads} threads; generated in {gen_s:.1f} s\n")
    print("| tool | time (s) | MB/s | peak RSS (MiB) | RSS growth (MiB) | growth / largest tensor | growth / file |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows:
        if isinstance(r, str):
            print(f"| {name} | – | – | – | – | – | {r} |")
            continue
        growth = r["peak"] - r["base"]
        print(f"| {name} | {r['seconds']:.1f} | {size / 1e6 / r['seconds']:.0f} | {r['peak'] / mib:.0f} | "
              f"{growth / mib:.0f} | {growth / largest:.2f} | {growth / size:.3f} |")


if __name__ == "__main__":
    main()
