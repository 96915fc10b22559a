"""``lowbit train``: train a reference model (float, or QAT with ``--qat CONFIG``) and save it.

Nothing is written until training ends: the checkpoint appears at ``--out`` (atomically) only
when it is complete, so an interrupted run leaves nothing there; rerun the command to start again.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..api import prepare_qat, save
from ..config import QuantConfig
from ..data import get_dataset, loader
from ..models import build_model, model_names
from ..train import evaluate, fit, seed_everything
from ._common import add_common, add_out, check_finite, check_fits, data_packages, model_arch, setup

HELP = "train a reference model (float, or quantization-aware with --qat) and save a checkpoint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``lowbit train``."""
    add_common(p)
    p.add_argument("--model", default=None, choices=model_names(),
                   help="reference model (default: vgg, or the --init file's model)")
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


def _initial_model(args: argparse.Namespace, ds: object) -> tuple[object, str]:
    """The model to train and its name: built by name, or loaded from ``--init`` (checked against --data)."""
    if not args.init:
        name = args.model or "vgg"
        return build_model(name, ds.input_shape, ds.num_classes), name  # type: ignore[attr-defined]
    from ..api import load, read_metadata

    meta = read_metadata(args.init)
    arch = model_arch(meta) or {}
    name = str(arch.get("name", "model"))
    if args.model and arch and args.model != name:
        raise ValueError(f"--init {args.init} holds a {name!r} model but --model says {args.model!r}; drop --model")
    check_fits(args.init, meta, ds.input_shape, ds.num_classes, f"--data {args.data}")  # type: ignore[attr-defined]
    model = load(args.init)
    check_finite(model, args.init)
    return model, name


def run(args: argparse.Namespace) -> int:
    """Train, print the test accuracy, save (float and quantized weights for QAT)."""
    setup(args)
    for opt in ("epochs", "batch_size", "nproc"):
        if getattr(args, opt) < 1:
            raise ValueError(f"--{opt.replace('_', '-')} must be >= 1, got {getattr(args, opt)}")
    if args.qat:
        QuantConfig.parse(args.qat)  # a typo fails before the data is read
    ds = get_dataset(args.data)
    seed_everything(args.seed)
    model, name = _initial_model(args, ds)
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
    save(model, args.out, metadata={"lowbit.data": args.data, "lowbit.accuracy": f"{acc:.4f}", "lowbit.seed": str(args.seed)})
    print(f"{'QAT ' + args.qat if args.qat else 'float'} {name} on {ds.name}: test accuracy {acc:.2f} % "
          f"({hist.time_per_step * 1e3:.1f} ms/step) -> {args.out}")
    return 0
