"""``lowbit train``: train a model (float, or QAT with ``--qat CONFIG``) and save it.

The model is a reference model by name, a user's (``--model file.py:build_fn`` with optional
``--weights``, or a ``.pt2`` program), or a saved lowbit file (``--init``).

Nothing is written until training ends: the checkpoint appears at ``--out`` (atomically) only
when it is complete, so an interrupted run leaves nothing there; rerun the command to start again.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..api import prepare_qat, save
from ..config import QuantConfig
from ..data import loader
from ..train import evaluate, fit
from ._common import add_common, add_model_source, add_out, data_packages, model_arch, model_source, setup

HELP = "train a model (float, or quantization-aware with --qat) and save a checkpoint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``lowbit train``."""
    add_common(p)
    add_model_source(p, positional=None, model_help="the model (default: vgg, or the --init file's model): ")
    p.add_argument("--init", default=None, metavar="FILE", help="start from this float checkpoint (for QAT)")
    p.add_argument("--qat", default=None, metavar="CONFIG", help="quantization-aware training with this config, e.g. 'w4:lsq.mse'")
    p.add_argument("--epochs", type=int, default=15, help="epochs (default: 15)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: 3e-3 float, 3e-4 QAT)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
    p.add_argument("--pact-lambda", type=float, default=1e-4, help="L2 weight on PACT clips (default: 1e-4)")
    add_out(p, "runs/model.lowbit", "checkpoint path, written once training ends")
    p.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes (DDP: gloo on CPU, NCCL on GPUs); --batch-size is then the "
                        "global batch (default: 1)")


def requires(args: argparse.Namespace) -> tuple[str, ...]:
    """The reader of ``--data``."""
    return data_packages(args.data)


def _initial_model(args: argparse.Namespace) -> tuple[object, str, object, dict[str, str]]:
    """The model to train, its name, the dataset and the metadata to save: built (--model) or loaded (--init)."""
    src = model_source(args, file_attr="init", file_flag="--init", default_model="vgg", build_seed=args.seed)
    arch = model_arch(src.meta) if args.init else None
    name = str((arch or {}).get("name") or (src.label if not args.init else args.model or "model"))
    return src.model, name, src.dataset, src.record


def run(args: argparse.Namespace) -> int:
    """Train, print the test accuracy, save (float and quantized weights for QAT)."""
    setup(args)
    for opt in ("epochs", "batch_size", "nproc"):
        if getattr(args, opt) < 1:
            raise ValueError(f"--{opt.replace('_', '-')} must be >= 1, got {getattr(args, opt)}")
    if args.qat:
        QuantConfig.parse(args.qat)  # a typo fails before the data is read
    model, name, ds, record = _initial_model(args)
    if args.qat:
        model = prepare_qat(model, args.qat)
    lr = args.lr if args.lr is not None else (3e-4 if args.qat else 3e-3)
    desc = "qat" if args.qat else "train"
    pact_lambda = args.pact_lambda if args.qat else 0.0
    test = loader(ds.test, 256)
    if args.nproc > 1 or "WORLD_SIZE" in os.environ:
        from ..distributed import train_distributed

        res = train_distributed(model, ds.train, nproc=args.nproc, epochs=args.epochs, lr=lr, batch_size=args.batch_size,
                                pact_lambda=pact_lambda, seed=args.seed, test=ds.test, checkpoint=None,
                                threads=args.threads or 1, desc=desc)
        if res.rank != 0:
            return 0  # only rank 0 reports and writes
        model, hist = res.model, res.history
    else:
        train = loader(ds.train, args.batch_size, shuffle=True, seed=args.seed)
        hist = fit(model, train, epochs=args.epochs, lr=lr, test=test, pact_lambda=pact_lambda, desc=desc)
    acc = evaluate(model, test)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save(model, args.out, metadata={**record, "lowbit.data": args.data, "lowbit.accuracy": f"{acc:.4f}", "lowbit.seed": str(args.seed)})
    print(f"{'QAT ' + args.qat if args.qat else 'float'} {name} on {ds.name}: test accuracy {acc:.2f} % "
          f"({hist.time_per_step * 1e3:.1f} ms/step) -> {args.out}")
    return 0
