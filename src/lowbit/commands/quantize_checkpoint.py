"""``lowbit quantize-checkpoint``: stream a safetensors checkpoint into a quantized lowbit file, tensor by tensor."""
from __future__ import annotations

import argparse

from ..streaming import quantize_checkpoint
from ._common import add_progress, add_seed, add_threads, renamed, setup

HELP = "quantize a safetensors checkpoint tensor by tensor (bounded memory, resumable) into a lowbit file"
RESUMES = True  # an interrupted run leaves <dst>.partial, which the same command continues


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``lowbit quantize-checkpoint``."""
    p.add_argument("src", help="input .safetensors file (read memory-mapped)")
    p.add_argument("dst", help="output lowbit file (written atomically; read it with lowbit.load_qtensors)")
    p.add_argument("--spec", default="int4:group128", help="weight quantizer spec, e.g. int4:group128, nf4, int8:channel (default: int4:group128)")
    p.add_argument("--min-numel", type=int, default=1024, help="copy tensors with fewer elements unquantized (default: 1024)")
    p.add_argument("--quantize-1d", action="store_true", help="also quantize 1-D tensors (biases, norms); by default they are copied")
    p.add_argument("--restart", action="store_true", help="ignore a partial output from an interrupted run and start again")
    p.add_argument("--chunk-mb", type=float, default=8.0, help="float32 megabytes quantized at a time (default: 8)")
    add_seed(p, "random seed (rounding is deterministic; kept for the same options everywhere)")
    add_threads(p)
    add_progress(p)
    renamed(p, "--no-progress", "--progress none", "no_progress", flag=True)


def run(args: argparse.Namespace) -> int:
    """Quantize the checkpoint and print a one-line summary."""
    if getattr(args, "no_progress", False):
        args.progress = "none"
    setup(args)
    r = quantize_checkpoint(
        args.src, args.dst, args.spec, min_numel=args.min_numel, quantize_1d=args.quantize_1d,
        resume=not args.restart, chunk_mb=args.chunk_mb, progress=False if args.progress == "none" else None,
    )
    resumed = f", {r.resumed} resumed from a partial run" if r.resumed else ""
    print(f"{args.src} -> {args.dst} ({args.spec}): {len(r.quantized)} tensors quantized, {len(r.copied)} copied{resumed}; "
          f"{r.bytes_in / 2**20:.1f} MiB -> {r.bytes_out / 2**20:.1f} MiB ({r.ratio:.2f}x) in {r.seconds:.1f} s")
    return 0
